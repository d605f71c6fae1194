"""Hybrid fusion: a copied sentence puts its source first even when its embedding is only
middling (reciprocal rank fusion lost it), close keyword scores leave the order to the
semantic half, the evidence helpers agree with the indexes, and the options are checked."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from percolate.node.v1 import node_pb2 as pb
from percolate_node.search import (FusionParams, KeywordIndex, ResourceMeta, SearchIndex, VectorIndex,
                                   convex_fusion)
from percolate_node.search.fusion import Evidence
from tests.test_node import ingest, node_env  # noqa: F401  (node_env: a node on the real stack)
from tests.test_reading_service import assert_status

DIM = 384
META = ResourceMeta("file:///memo.pdf", "memo", __import__("datetime").datetime(2025, 1, 1))
PLACES = ("Cobalt Harbor Juniper Sterling Alder Granite Meridian Willow Falcon Beacon Summit Cedar Orchard "
          "Lantern Redstone Bluewater Ironwood Silverlake Northgate Foxhollow Kestrel Marigold Highcliff "
          "Copperfield Ravenna Thornbury Westbrook Ashcombe Larkspur Pinecrest").split()


def with_cosine(query: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` to the unit ``query``."""
    noise = rng.standard_normal(DIM)
    noise -= noise.dot(query) * query
    noise /= np.linalg.norm(noise)
    return cosine * query + np.sqrt(1 - cosine ** 2) * noise


def template_corpus(fusion_index: SearchIndex) -> tuple[np.ndarray, str]:
    """Thirty memos written from one template: the source holds the copied sentence and
    sits 31st by meaning (cosine 0.30); the others are closer in meaning (0.50-0.79) and
    share the template's words. Returns the query vector and the copied sentence."""
    rng = np.random.default_rng(12)
    query = rng.standard_normal(DIM)
    query /= np.linalg.norm(query)
    sentence = ("The Ridgeway Data Center in Denver is designed for 40 megawatts of capacity, "
                "with the first phase opening in Q3 2027.")
    fusion_index.add("source", with_cosine(query, 0.30, rng), sentence + " Figures are unaudited.", META)
    for i, place in enumerate(PLACES):
        text = (f"The {place} Solar Farm in Austin is designed for {100 + i} megawatts of capacity, "
                f"with the first phase opening in Q1 2029. Figures are unaudited.")
        fusion_index.add(f"other-{place}", with_cosine(query, 0.50 + 0.01 * i, rng), text, META)
    return query, sentence


def test_a_copied_sentence_puts_its_source_first_in_hybrid_mode():
    index = SearchIndex()
    query, sentence = template_corpus(index)
    keyword = index.search(None, sentence, "keyword", k=3)
    semantic = index.search(query, None, "semantic", k=40)
    assert keyword[0].resource_id == "source"
    assert [h.resource_id for h in semantic].index("source") == 30  # last by meaning
    hits = index.search(query, sentence, "hybrid", k=3)
    assert hits[0].resource_id == "source"
    assert (hits[0].keyword_rank, hits[0].semantic_rank) == (1, 31)
    # reciprocal rank fusion, the old default, lets a middling-in-both memo win
    rrf = index.search(query, sentence, "hybrid", k=3, fusion=FusionParams(method="rrf"))
    assert rrf[0].resource_id != "source"


def test_close_keyword_scores_leave_the_order_to_meaning():
    rng = np.random.default_rng(3)
    query = rng.standard_normal(DIM)
    query /= np.linalg.norm(query)
    index = SearchIndex()
    index.add("near", with_cosine(query, 0.8, rng), "the bond financing closes in March", META)
    index.add("far", with_cosine(query, 0.2, rng), "the bond financing closes in April", META)
    for i in range(20):
        index.add(f"noise{i}", with_cosine(query, 0.1, rng), f"unrelated filler text number {i}", META)
    hits = index.search(query, "who arranges the bond financing", "hybrid", k=2)
    assert [h.resource_id for h in hits] == ["near", "far"]
    keyword_only = index.search(query, "who arranges the bond financing", "hybrid", k=2,
                                fusion=FusionParams(semantic_weight=0.0))
    assert {h.resource_id for h in keyword_only} == {"near", "far"}
    assert keyword_only[0].score == pytest.approx(keyword_only[1].score)


def test_convex_fusion_formula():
    evidence = {"a": Evidence(cosine=0.6, bm25=2.0, all_terms=True),
                "b": Evidence(cosine=0.2, bm25=4.0, all_terms=False),
                "c": Evidence(cosine=None, bm25=1.0, all_terms=False)}
    fused = dict(convex_fusion(evidence, FusionParams(semantic_weight=0.25, all_terms_boost=0.2)))
    assert fused["a"] == pytest.approx(0.25 * 1.0 + 0.75 * 0.5 + 0.2)
    assert fused["b"] == pytest.approx(0.25 * 1.2 / 1.6 + 0.75 * 1.0)
    assert fused["c"] == pytest.approx(0.75 * 0.25)


def test_evidence_matches_the_indexes():
    keyword = KeywordIndex()
    keyword.add("x", "alpha beta gamma")
    keyword.add("y", "alpha beta")
    keyword.add("z", "delta")
    scores = dict(keyword.search("alpha gamma", 5))
    found = keyword.evidence("alpha gamma", ["x", "y", "z", "missing"])
    assert found["x"] == (pytest.approx(scores["x"]), True)
    assert found["y"] == (pytest.approx(scores["y"]), False)
    assert found["z"] == (0.0, False) and found["missing"] == (0.0, False)
    # a query term found nowhere: nobody holds every term
    assert not keyword.evidence("alpha unknownterm", ["x"])["x"][1]
    assert keyword.evidence("the of", ["x"])["x"] == (0.0, False)
    vectors = VectorIndex(dim=4)
    vectors.add("p", [1, 0, 0, 0])
    vectors.add("q", [1, 1, 0, 0])
    cosines = vectors.cosines(vectors.unit([1, 0, 0, 0]), ["p", "q", "none"])
    assert cosines == {"p": pytest.approx(1.0), "q": pytest.approx(2 ** -0.5)}


@pytest.mark.parametrize("options", [dict(semantic_weight=1.5), dict(semantic_weight=float("nan")),
                                     dict(all_terms_boost=-0.1), dict(method="max")])
def test_bad_fusion_options_are_refused(options):
    with pytest.raises(ValueError):
        FusionParams(**options)


def test_the_node_refuses_bad_fusion_options_and_keeps_serving(node_env):
    _, caller, _ = node_env
    bad = pb.SearchRequest(query="anything", fusion=pb.FusionOptions(semantic_weight=2.0))
    assert_status(lambda: caller.Search(bad), grpc.StatusCode.INVALID_ARGUMENT, "semantic_weight")
    ingest(caller, b"# Fusion\n\nThe quarterly ledger reconciliation closes on Friday.\n", "ledger.md")
    for fusion in (pb.FusionOptions(), pb.FusionOptions(method=pb.FUSION_METHOD_RRF),
                   pb.FusionOptions(semantic_weight=0.0, all_terms_boost=0.0)):
        hits = caller.Search(pb.SearchRequest(query="quarterly ledger reconciliation", fusion=fusion)).hits
        assert hits and hits[0].uri == "file://ledger.md"
