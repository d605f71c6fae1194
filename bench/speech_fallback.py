"""Whisper's fp32 fallback, measured: WER and RTF of the three step-decoder setups in process.

The served loop falls back to the fp32 step graph (``model.gpu.onnx`` of
``whisper_decoder_with_past``) when the int8 one fails its load-time row check on the
serving CPU, while the encoder and the first step stay int8. This runs that mix beside the
int8 default and the all-fp32 loop, one window at a time on 2 threads, on the speech
bench's full file set (``speech.files``), so the fallback's accuracy is known before a
CPU ever needs it. One round: the WER does not depend on timing, and the RTF is a guide.

    python bench/speech_fallback.py
"""
from __future__ import annotations

import os

import common  # noqa: E402  (puts the project root on sys.path)
import speech as speech_bench

from percolate_models.paths import ProjectPaths


def main() -> None:
    common.arguments(__doc__.splitlines()[0])
    paths = ProjectPaths.from_env()
    encoder, decoder, with_past = speech_bench.WEIGHTED

    def built(name: str, variant: str):
        return speech_bench.variant_file(paths, name, variant)

    served_fp32_step = paths.model_repository / with_past / "1" / "model.gpu.onnx"
    systems = {
        "int8 (the default)": [built(encoder, "int8"), built(decoder, "int8"), built(with_past, "int8")],
        "fallback: int8, fp32 step graph": [built(encoder, "int8"), built(decoder, "int8"), served_fp32_step],
        "fp32": [built(encoder, "fp32"), built(decoder, "fp32"), built(with_past, "fp32")],
    }
    items = speech_bench.files(quick=False)
    figures = speech_bench.measure_all({name: (speech_bench.in_process_system(paths, files), 1)
                                        for name, files in systems.items()}, items, rounds=1)
    rows = [[name, fig["rtf"], fig["wer"], " ".join(f"{w:.3f}" for w in fig["wer_per_file"])]
            for name, fig in figures.items()]
    common.print_table(f"Whisper step decoders in process ({len(items)} files, "
                       f"{next(iter(figures.values()))['audio_seconds']:.0f} s of audio; load average "
                       f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)",
                       ["setup", "RTF", "WER", "WER per file"], rows)
    common.write_results("speech_fallback", {"files": [name for name, _, _ in items], "figures": figures})


if __name__ == "__main__":
    main()
