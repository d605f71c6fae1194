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
from .catalog import MINILM, ModelSpec
from .configs import CPU_INTRA_OP_THREADS

TUNED = ("text_embedding",)
"""Models whose installed variant is chosen by measurement (when no ``--variant`` names one)."""
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


def rules_key() -> str:
    """Hash of the code that measures and picks (this module, the floors and probes in
    ``accuracy.py``, the tokenizer and pooling in ``reading_frontend/text.py``): a change to
    any of them measures again instead of reading an older choice."""
    from reading_frontend import text

    from . import accuracy

    digest = hashlib.sha256()
    for module in (__file__, accuracy.__file__, text.__file__):
        digest.update(Path(module).read_bytes())
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
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    say(f"timing variants {', '.join(spec.variants)} on this machine ({info['cpu']}; cached after)")
    measured = (measure or measure_embedding_variants)(spec, entry_dir)
    choice = pick(spec, measured)
    choice["machine"] = info
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(choice, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)
    say(f"{choice['reason']}")
    return choice


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
