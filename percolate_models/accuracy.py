"""Agreement of embedding variants with a reference, measured the same way everywhere.

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
