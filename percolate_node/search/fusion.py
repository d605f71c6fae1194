"""Fusing the semantic and keyword rankings into one hybrid ranking.

The default is a convex combination of normalised scores (Bruch et al., "An Analysis of
Fusion Functions for Hybrid Retrieval", 2023, whose "TM2C2" this is) plus a boost for
chunks holding every query term:

    score(d) = w * (cos(d) + 1) / (max cos + 1)         semantic: cosine, its floor -1
             + (1 - w) * bm25(d) / max bm25             keyword: BM25, its floor 0
             + all_terms_boost * [d holds every distinct query term]

over the union of both halves' candidates, each scored by both halves exactly (a chunk
the keyword half found is given its true cosine, and the reverse), so a chunk found
by one half only is not treated as unknown by the other. Unlike reciprocal rank fusion,
this keeps how sure each half is: a chunk that BM25 scores far above the rest (a
sentence copied from it) stays first even when its cosine is only middling, and when
the keyword scores are close (a paraphrase that shares few words) the semantic gaps
decide. Reciprocal rank fusion (``method="rrf"``) is kept for comparison.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Method = Literal["convex", "rrf"]
RRF_K = 60


@dataclass(frozen=True)
class FusionParams:
    method: Method = "convex"
    semantic_weight: float = 0.5
    """w above: 1 ranks by meaning alone, 0 by keywords alone."""
    all_terms_boost: float = 0.3
    """Added to a chunk that holds every distinct query term (a soft AND); 0 turns it off."""
    rrf_k: int = RRF_K

    def __post_init__(self) -> None:
        if self.method not in ("convex", "rrf"):
            raise ValueError(f"unknown fusion method {self.method!r}")
        if not 0.0 <= self.semantic_weight <= 1.0:
            raise ValueError(f"semantic_weight must be between 0 and 1, not {self.semantic_weight}")
        if not 0.0 <= self.all_terms_boost <= 1.0:
            raise ValueError(f"all_terms_boost must be between 0 and 1, not {self.all_terms_boost}")


@dataclass(frozen=True)
class Evidence:
    """What both halves say about one candidate: its cosine to the query (None without an
    embedding), its BM25 score (0 without a query term) and whether it holds them all."""

    cosine: float | None
    bm25: float
    all_terms: bool


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """Ids of all ``rankings`` (each best first) by summed 1 / (k + rank), ties by id."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, id in enumerate(ranking, start=1):
            fused[id] = fused.get(id, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))


def convex_fusion(evidence: Mapping[str, Evidence], params: FusionParams) -> list[tuple[str, float]]:
    """Ids of ``evidence`` by the combined score of the module docstring, ties by id."""
    cosines = [e.cosine for e in evidence.values() if e.cosine is not None]
    top_cos = max(cosines, default=0.0)
    top_bm25 = max((e.bm25 for e in evidence.values()), default=0.0)
    w = params.semantic_weight
    fused = {}
    for id, e in evidence.items():
        semantic = 0.0 if e.cosine is None else (e.cosine + 1.0) / (top_cos + 1.0) if top_cos > -1.0 else 0.0
        keyword = e.bm25 / top_bm25 if top_bm25 > 0 else 0.0
        fused[id] = w * semantic + (1.0 - w) * keyword + (params.all_terms_boost if e.all_terms else 0.0)
    return sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))
