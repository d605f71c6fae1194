"""Deterministic top-k selection shared by the indexes.

Scores tie often (BM25 over identical chunks, duplicated embeddings), and a tie broken
by array position would make results depend on insertion history. Every ranking here
orders by score, then by id, so the same content always ranks the same way.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

Ranked = list[tuple[str, float]]


def top_k(slots: np.ndarray, scores: np.ndarray, k: int, id_of: Callable[[int], str]) -> Ranked:
    """The best ``k`` (id, score) pairs among ``slots`` (``scores`` aligned with them),
    best first, ties by id. Only the candidates scoring at least the k-th best (ties
    included) are sorted, so a long candidate list costs one partition."""
    count = len(slots)
    if k <= 0 or count == 0:
        return []
    if k < count:
        keep = scores >= np.partition(scores, count - k)[count - k]
        slots, scores = slots[keep], scores[keep]
    ranked = sorted(zip(map(id_of, slots.tolist()), scores.tolist()), key=lambda pair: (-pair[1], pair[0]))
    return ranked[:k]
