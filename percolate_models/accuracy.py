"""Agreement of embedding variants with a reference, measured the same way everywhere, and
whether a variant's embedding of a text depends on the other texts batched with it.

The build records these figures in the manifest; tests and ``bench/embed.py`` reuse
``sample_sentences`` so every number comes from a known, reproducible text set.
"""
from __future__ import annotations

import numpy as np

_SUBJECTS = ["the committee", "my neighbour", "a small startup", "the river", "our new database",
             "the old library", "a tired engineer", "the city council", "this recipe", "the orchestra"]
_VERBS = ["approved", "described", "ignored", "rebuilt", "measured", "celebrated", "questioned",
          "flooded", "documented", "replaced"]
_OBJECTS = ["the annual budget", "a quiet street near the station", "every failing test",
            "the bridge after the storm", "three hundred invoices", "an unexpected result",
            "the concert hall", "a list of missing books", "the encryption keys", "the morning train"]
_TAILS = ["before the deadline", "without telling anyone", "in less than an hour",
          "for the second time this year", "while it was raining", "with great care",
          "despite the noise", "after a long debate", "on a Sunday afternoon", ""]


ACCURACY_SENTENCES = 256
"""Sentences each variant is compared on (the build's accuracy record and the tune's floor)."""

SHORT_TEXTS = [
    # single words
    "cat", "ok", "yes", "no", "why", "hi", "the", "I", "blue", "invoice", "password", "dentist",
    "budget", "recipe", "flight", "urgent", "tomorrow", "meeting", "coffee", "insurance",
    # two or three words
    "tax return", "dog food", "meeting notes", "password reset", "hello world", "bank account",
    "flight to Berlin", "dentist appointment", "Q3 revenue", "birthday gift ideas",
    "car insurance renewal", "python list sort",
    # numbers and codes
    "42", "2024", "3.14", "100%", "+1 555 0100", "ISBN 978-3-16",
    # names
    "Paris", "Angela Merkel", "John Smith", "New York City", "Zürich", "Ada Lovelace",
    # other languages
    "Schadenfreude", "café", "mañana", "東京", "привет", "bonjour", "Steuererklärung", "gracias",
]
"""Search queries as users type them: one to three words, numbers, names, other scripts.
After mean pooling such a text is mostly [CLS] and [SEP], whose activations hold this
model's outlier channels, so quantisation errors show here first: plain per-token int8
kept the floor on sentences (0.997) but fell to 0.992 on the single words. The tune's
floor holds on both groups (``short_agreement``)."""


def sample_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` varied English sentences of about 6 to 24 words, reproducible by seed."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(count):
        parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)]
        if rng.random() < 0.4:
            parts += ["and", rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        text = " ".join(p for p in parts if p)
        sentences.append(text[0].upper() + text[1:] + ".")
    return sentences


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    cos = cosine_rows(reference, candidate)
    return {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
            "sentences": int(len(cos))}


def short_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """``agreement`` on ``SHORT_TEXTS``, reported beside the sentences' under "short_texts"."""
    cos = cosine_rows(reference, candidate)
    return {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
            "texts": int(len(cos))}


def meets_floor(accuracy: dict, floor: dict[str, float]) -> bool:
    """Whether an accuracy record keeps ``floor`` on the sentences and on the short texts (a
    record without the short texts' figures does not)."""
    groups = (accuracy, accuracy.get("short_texts"))
    return all(g is not None and all(g[k] >= floor[k] for k in floor) for g in groups)


BATCH_INDEPENDENCE_MIN_COSINE = 0.9999
"""How closely a text's embedding must agree alone and inside a batch of other texts.

fp32 and the per-token int8 variant agree at >= 0.9999999 (only float summation order
differs with the batch shape; a rare tie could move one activation by one quantisation
step, well inside this bound); int8 with one activation scale per batch fell to about
0.989-0.991, a hundred times further than this bound allows."""

BATCH_MATES = [
    "ok",
    "42",
    "URGENT!!! WIRE TRANSFER 9,999,999.99 USD TO ACCOUNT 0000-1111-2222-3333 BEFORE 23:59 UTC!!!",
    "Die Quartalszahlen wurden gestern veröffentlicht; der Umsatz stieg um zwölf Prozent.",
    " ".join(["The long report describes, section by section and with many digressions, how the "
              "old bridge was surveyed, closed, rebuilt and reopened, who paid for which part, "
              "and why the second inspection found cracks the first one had missed."] * 3),
    "def f(x): return {k: v for k, v in x.items() if v is not None}  # 0x7fff_ffff",
]
"""Texts that differ from ordinary sentences in every way a batch can: length (so padding),
script, digits, capitals and code."""


def batch_independence(texts: list[str], tokenizer, run) -> dict[str, float]:
    """Agreement of each text embedded alone (its own padding) with the same text embedded
    inside one batch together with ``BATCH_MATES`` (padded to the longest of them).

    ``tokenizer`` is a ``reading_frontend.text.TextTokenizer``, ``run`` an ``EmbedFn``."""
    alone = np.concatenate([run(*_ids_mask(tokenizer, [text])) for text in texts])
    mixed = run(*_ids_mask(tokenizer, BATCH_MATES[:3] + texts + BATCH_MATES[3:]))[3:3 + len(texts)]
    cos = cosine_rows(alone, mixed)
    return {"cosine_min": round(float(cos.min()), 9), "max_abs_diff": float(np.abs(alone - mixed).max()),
            "texts": len(texts)}


def _ids_mask(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    batch = tokenizer.encode(texts, truncate=True)
    return batch.input_ids, batch.attention_mask
