"""Keyword index: Okapi BM25 over chunk text.

Tokenizer (``tokenize``): lower-case the text, take every maximal run of Unicode word
characters (``\\w``: letters and digits of any script, and underscore), drop English
stop words. No stemming, so "contract" and "contracts" are different terms; accents are
kept, so "café" and "cafe" are too. Scripts written without spaces (Chinese, Japanese)
become one token per run, which only matches the same run.

Scoring: BM25 with k1 = 1.2, b = 0.75 and the non-negative idf
ln(1 + (N - df + 0.5) / (df + 0.5)); each distinct query term counts once.

Postings are per-term growable arrays (slot, term frequency) that numpy reads in place,
so a query costs a few vectorised passes over the postings of its terms. Each document
also keeps its term ids, so a removal updates document frequencies exactly.
"""
from __future__ import annotations

import math
import re
import sys
from array import array
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from .ranking import Ranked, top_k
from .slots import SlotMap, grow, position

STOP_WORDS: frozenset[str] = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not now of off on once only or other our ours ourselves out
over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves
""".split())
"""Common English function words: they carry little meaning for ranking and make up
about a third of running text, so dropping them keeps postings short."""

_WORD = re.compile(r"\w+")
_MAX_TF = 2**16 - 1  # stored as uint16; BM25 saturates long before this


def tokenize(text: str, stop_words: Collection[str] = STOP_WORDS) -> list[str]:
    """The terms of ``text`` in order (see the module docstring); ``stop_words=()`` keeps all."""
    return [word for word in _WORD.findall(text.lower()) if word not in stop_words]


@dataclass(frozen=True)
class Bm25Params:
    k1: float = 1.2
    b: float = 0.75


class KeywordIndex:
    """BM25 over texts keyed by string ids.

    ``slots``: as for ``VectorIndex``, a ``SlotMap`` shared with other indexes, owned by
    whoever passes it. Not thread-safe: ``SearchIndex`` serialises calls.
    """

    def __init__(self, params: Bm25Params = Bm25Params(), stop_words: Collection[str] = STOP_WORDS,
                 slots: SlotMap | None = None) -> None:
        self.params = params
        self.stop_words = frozenset(stop_words)
        self._owns_slots = slots is None
        self._slots = SlotMap() if slots is None else slots
        self._count = 0
        self._term_ids: dict[str, int] = {}
        self._posting_slots: list[array] = []   # per term: slots of the documents holding it ('I')
        self._posting_tfs: list[array] = []     # per term: its frequency in each of them ('H')
        self._doc_terms: list[array | None] = []  # per slot: distinct term ids of the document
        self._lengths = np.zeros(0, dtype=np.float32)  # per slot: terms in the document
        self._total_length = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, id: object) -> bool:
        slot = self._slots.get(id) if isinstance(id, str) else None
        return slot is not None and slot < len(self._doc_terms) and self._doc_terms[slot] is not None

    def add(self, id: str, text: str) -> None:
        """Index ``text`` under ``id``, replacing what ``id`` had."""
        self.remove(id)
        terms = tokenize(text, self.stop_words)
        slot = self._slots.assign(id)
        term_ids = array("I")
        for term, tf in Counter(terms).items():
            term_id = self._term_ids.get(term)
            if term_id is None:
                term_id = self._term_ids[term] = len(self._posting_slots)
                self._posting_slots.append(array("I"))
                self._posting_tfs.append(array("H"))
            self._posting_slots[term_id].append(slot)
            self._posting_tfs[term_id].append(min(tf, _MAX_TF))
            term_ids.append(term_id)
        self._doc_terms.extend([None] * (slot + 1 - len(self._doc_terms)))
        self._doc_terms[slot] = term_ids
        self._lengths = grow(self._lengths, slot + 1)
        self._lengths[slot] = len(terms)
        self._total_length += len(terms)
        self._count += 1

    def remove(self, id: str) -> bool:
        """Drop ``id``; False when it was not indexed."""
        if id not in self:
            return False
        slot = self._slots.release(id) if self._owns_slots else self._slots.get(id)
        for term_id in self._doc_terms[slot]:
            at = position(self._posting_slots[term_id], slot)
            del self._posting_slots[term_id][at]
            del self._posting_tfs[term_id][at]
        self._doc_terms[slot] = None
        self._total_length -= int(self._lengths[slot])
        self._lengths[slot] = 0
        self._count -= 1
        return True

    def search(self, text: str, k: int, allowed: Collection[str] | None = None) -> Ranked:
        """The ``k`` best ids for ``text`` by BM25, best first, ties by id; only ``allowed``
        ones when given. Empty when no query term occurs in any document."""
        term_ids = [self._term_ids[t] for t in dict.fromkeys(tokenize(text, self.stop_words))
                    if t in self._term_ids and self._posting_slots[self._term_ids[t]]]
        if k <= 0 or not term_ids:
            return []
        k1, b = self.params.k1, self.params.b
        documents = len(self)
        average = max(self._total_length / documents, 1e-9)
        scores = np.zeros(self._slots.high_water, dtype=np.float32)
        for term_id in term_ids:
            slots = np.frombuffer(self._posting_slots[term_id], dtype=np.uint32)
            tfs = np.frombuffer(self._posting_tfs[term_id], dtype=np.uint16).astype(np.float32)
            df = len(slots)
            idf = math.log(1.0 + (documents - df + 0.5) / (df + 0.5))
            norm = k1 * (1.0 - b + b * self._lengths[slots] / average)
            scores[slots] += np.float32(idf) * tfs * (k1 + 1.0) / (tfs + norm)
        candidates = np.flatnonzero(scores)
        if allowed is not None:
            candidates = candidates[self._slots.mask_of(allowed)[candidates]]
        return top_k(candidates, scores[candidates], k, self._slots.id_of)

    def memory_bytes(self) -> int:
        """Arrays and containers; term strings estimated by ``sys.getsizeof``."""
        per_array = sys.getsizeof(array("I"))
        postings = sum(len(a) for a in self._posting_slots)
        doc_terms = sum(len(a) for a in self._doc_terms if a is not None)
        vocabulary = sys.getsizeof(self._term_ids) + sum(sys.getsizeof(t) + 32 for t in self._term_ids)
        return (6 * postings + 4 * doc_terms + per_array * (2 * len(self._posting_slots) + len(self._doc_terms))
                + vocabulary + sys.getsizeof(self._posting_slots) * 2 + sys.getsizeof(self._doc_terms)
                + self._lengths.nbytes + (self._slots.memory_bytes() if self._owns_slots else 0))
