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
from collections.abc import Collection, Iterable
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
# ASCII text (most of it) takes a faster path with the same result: every ASCII character
# that is not a word character (\w: letters, digits, underscore) becomes a space, then split.
_ASCII_SEPARATORS = str.maketrans({code: " " for code in range(128)
                                   if not (chr(code).isalnum() or chr(code) == "_")})
_MAX_TF = 2**16 - 1  # stored as uint16; BM25 saturates long before this


def words(text: str) -> list[str]:
    """Every maximal run of word characters in ``text``, lower-cased, stop words included."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered.translate(_ASCII_SEPARATORS).split()
    return _WORD.findall(lowered)


def tokenize(text: str, stop_words: Collection[str] = STOP_WORDS) -> list[str]:
    """The terms of ``text`` in order (see the module docstring); ``stop_words=()`` keeps all."""
    return [word for word in words(text) if word not in stop_words]


class _Vocabulary(dict):
    """term -> id, giving each new term the next id on first lookup (C-speed lookups in ``map``)."""

    def __missing__(self, term: str) -> int:
        term_id = self[term] = len(self)
        return term_id


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

    def build(self, items: Iterable[tuple[str, str]]) -> None:
        """Index every (id, text) of ``items`` (ids unique, none indexed yet) at once: what
        ``add`` one by one would give, several times faster, for the rebuild at start.

        Python only splits the texts and maps each word to a term id (stop words included,
        dropped afterwards by id); counting term frequencies and laying out
        the postings are sorts in numpy.
        """
        if self._count:
            raise ValueError("build fills an empty index; use add to change a filled one")
        # stop words get ids too, dropped below by id (they keep empty postings)
        vocabulary = self._term_ids = _Vocabulary()
        term_id_of = vocabulary.__getitem__
        tokens, lengths, slots = array("I"), array("I"), array("I")
        for id, text in items:
            slots.append(self._slots.assign(id))
            found = words(text)
            tokens.extend(array("I", map(term_id_of, found)))
            lengths.append(len(found))
        self._term_ids = dict(vocabulary)  # a plain dict again: a lookup must never insert
        if not slots:
            return
        if len(set(slots)) != len(slots):
            raise ValueError("build takes each id once")
        term_of_token = np.frombuffer(tokens, dtype=np.uint32).astype(np.int64)
        slot_of_token = np.repeat(np.frombuffer(slots, dtype=np.uint32).astype(np.int64),
                                  np.frombuffer(lengths, dtype=np.uint32))
        stop = np.zeros(len(vocabulary), dtype=bool)
        stop[[term_id for word, term_id in vocabulary.items() if word in self.stop_words]] = True
        keep = ~stop[term_of_token]
        term_of_token, slot_of_token = term_of_token[keep], slot_of_token[keep]
        high = int(max(slots)) + 1
        # one entry per (term, slot) pair, sorted by term then slot: the postings, in order
        pairs, tfs = np.unique(term_of_token * high + slot_of_token, return_counts=True)
        pair_terms, pair_slots = pairs // high, (pairs % high).astype(np.uint32)
        pair_tfs = np.minimum(tfs, _MAX_TF).astype(np.uint16)
        bounds = np.searchsorted(pair_terms, np.arange(len(vocabulary) + 1))
        self._posting_slots = [array("I", pair_slots[a:b].tobytes()) for a, b in zip(bounds[:-1], bounds[1:])]
        self._posting_tfs = [array("H", pair_tfs[a:b].tobytes()) for a, b in zip(bounds[:-1], bounds[1:])]
        # per slot: its distinct terms (the same pairs, by slot)
        by_slot = np.argsort(pair_slots, kind="stable")
        slot_bounds = np.searchsorted(pair_slots[by_slot], np.arange(high + 1))
        terms_by_slot = pair_terms[by_slot].astype(np.uint32)
        self._doc_terms = [None] * high
        for slot in slots:
            self._doc_terms[slot] = array("I", terms_by_slot[slot_bounds[slot]:slot_bounds[slot + 1]].tobytes())
        self._lengths = grow(self._lengths, high)
        self._lengths[np.frombuffer(slots, dtype=np.uint32)] = np.bincount(slot_of_token, minlength=high)[
            np.frombuffer(slots, dtype=np.uint32)]
        self._total_length = len(slot_of_token)
        self._count = len(slots)

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
        if k <= 0:
            return []
        scores, _ = self._score(text)
        if scores is None:
            return []
        candidates = np.flatnonzero(scores)
        if allowed is not None:
            candidates = candidates[self._slots.mask_of(allowed)[candidates]]
        return top_k(candidates, scores[candidates], k, self._slots.id_of)

    def evidence(self, text: str, ids: Iterable[str]) -> dict[str, tuple[float, bool]]:
        """For each indexed id of ``ids``: its BM25 score for ``text`` and whether it holds
        every distinct query term (False for all when a query term occurs nowhere or the
        query has none): what hybrid fusion needs about candidates the other half found."""
        scores, matched = self._score(text)
        found = {}
        for id in ids:
            slot = self._slots.get(id)
            if scores is None or slot is None or id not in self:
                found[id] = (0.0, False)
            else:
                found[id] = (float(scores[slot]), bool(matched[slot]))
        return found

    def _score(self, text: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """BM25 per slot, and per slot whether it holds every distinct query term; (None,
        None) when no query term occurs in any document."""
        terms = list(dict.fromkeys(tokenize(text, self.stop_words)))
        term_ids = [self._term_ids[t] for t in terms
                    if t in self._term_ids and self._posting_slots[self._term_ids[t]]]
        if not term_ids:
            return None, None
        k1, b = self.params.k1, self.params.b
        documents = len(self)
        average = max(self._total_length / documents, 1e-9)
        scores = np.zeros(self._slots.high_water, dtype=np.float32)
        holds = np.zeros(self._slots.high_water, dtype=np.int32)
        for term_id in term_ids:
            slots = np.frombuffer(self._posting_slots[term_id], dtype=np.uint32)
            tfs = np.frombuffer(self._posting_tfs[term_id], dtype=np.uint16).astype(np.float32)
            df = len(slots)
            idf = math.log(1.0 + (documents - df + 0.5) / (df + 0.5))
            norm = k1 * (1.0 - b + b * self._lengths[slots] / average)
            scores[slots] += np.float32(idf) * tfs * (k1 + 1.0) / (tfs + norm)
            holds[slots] += 1
        # a term missing from every document means no document holds them all
        return scores, holds == (len(terms) if len(term_ids) == len(terms) else -1)

    def memory_bytes(self) -> int:
        """Arrays and containers; term strings estimated by ``sys.getsizeof``."""
        per_array = sys.getsizeof(array("I"))
        postings = sum(len(a) for a in self._posting_slots)
        doc_terms = sum(len(a) for a in self._doc_terms if a is not None)
        vocabulary = sys.getsizeof(self._term_ids) + sum(sys.getsizeof(t) + 32 for t in self._term_ids)
        return (6 * postings + 4 * doc_terms + per_array * (2 * len(self._posting_slots) + len(self._doc_terms))
                + vocabulary + sys.getsizeof(self._posting_slots) * 2 + sys.getsizeof(self._doc_terms)
                + self._lengths.nbytes + (self._slots.memory_bytes() if self._owns_slots else 0))
