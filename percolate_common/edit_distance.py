"""Levenshtein distance, for word error rates (speech) and character accuracy (OCR)."""
from __future__ import annotations

from typing import Sequence


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Insertions, deletions and substitutions that turn ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]
