"""The tenant node's search indexes: ANN against exact search, removal, filters, BM25,
reciprocal rank fusion, rebuild against incremental adds, and determinism."""
from __future__ import annotations

import math
import random
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from percolate_node.search import (FusionParams, Hit, HnswParams, KeywordIndex, RebuildProgress,
                                   ResourceMeta, SearchFilters, SearchIndex, VectorIndex,
                                   reciprocal_rank_fusion, tokenize)

DIM = 384
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def clustered(count: int, seed: int, clusters: int = 50, spread: float = 0.8) -> np.ndarray:
    """Unit vectors scattered around fixed random centres (the same for every seed, so
    queries fall among the data), like embeddings of related chunks."""
    centres = np.random.default_rng(clusters).standard_normal((clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    vectors = centres[rng.integers(0, clusters, count)] + spread * rng.standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def corpus(count: int, seed: int = 0) -> list[tuple[str, np.ndarray, str, ResourceMeta]]:
    """Resources over 40 documents in two folders, with entity types and hourly times."""
    vectors = clustered(count, seed)
    resources = []
    for i in range(count):
        doc = i % 40
        folder = "a" if doc < 20 else "b"
        types = frozenset({"person"} if i % 7 == 0 else set()) | ({"project"} if i % 11 == 0 else set())
        meta = ResourceMeta(uri=f"file:///{folder}/doc{doc}.pdf", document_id=f"doc{doc}",
                            created=T0 + timedelta(hours=i), entity_types=types)
        text = f"chunk {i} of document {doc} about topic{i % 13} and theme{i % 17}"
        resources.append((f"res{i:05d}", vectors[i], text, meta))
    return resources


def filled(resources, **options) -> SearchIndex:
    index = SearchIndex(**options)
    for resource in resources:
        index.add(*resource)
    return index


def ids(hits) -> list[str]:
    return [hit.resource_id if isinstance(hit, Hit) else hit[0] for hit in hits]


# -- semantic -----------------------------------------------------------------------

def test_ann_agrees_with_exact_search():
    vectors = clustered(20_000, seed=1)
    index = VectorIndex(DIM)
    index.build([f"v{i}" for i in range(len(vectors))], vectors)
    queries = clustered(200, seed=2)
    found = [len(set(ids(index.search(q, 10))) & set(ids(index.exact_search(q, 10)))) for q in queries]
    assert sum(found) / (10 * len(queries)) >= 0.95


def test_ann_scores_are_exact_cosine_similarities():
    vectors = clustered(2_000, seed=3)
    index = VectorIndex(DIM)
    index.build([f"v{i}" for i in range(len(vectors))], vectors * 3.0)  # scale must not matter
    query = clustered(1, seed=4)[0]
    for id, score in index.search(query, 10):
        assert score == pytest.approx(float(vectors[int(id[1:])] @ query), abs=1e-5)


def test_removed_resources_disappear_from_results():
    resources = corpus(3_000)
    index = filled(resources)
    gone = {resources[i][0] for i in range(0, 3_000, 3)}
    for resource_id in gone:
        assert index.remove(resource_id)
    assert len(index) == 2_000 and not index.remove("res00000") and not index.remove("never-added")
    for resource_id, vector, text, _ in resources[:60]:
        for mode in ("semantic", "keyword", "hybrid"):
            hits = index.search(vector, text, mode, k=20)
            assert len(hits) == 20 and not gone & set(ids(hits))
    index.add(*resources[0])  # added again after removal
    assert index.search(resources[0][1], None, "semantic", k=1)[0].resource_id == "res00000"


def test_compaction_after_churn_keeps_results():
    resources = corpus(4_000)
    index = filled(resources)
    for resource in resources[:2_000]:  # replace half: every one counts as a removal
        index.add(*resource)
    assert index.stale_fraction == pytest.approx(0.5)
    before = [ids(index.search(v, None, "semantic", k=10)) for _, v, _, _ in resources[::200]]
    index.compact()
    assert index.stale_fraction == 0.0 and len(index) == 4_000
    after = [ids(index.search(v, None, "semantic", k=10)) for _, v, _, _ in resources[::200]]
    overlap = sum(len(set(a) & set(b)) for a, b in zip(before, after)) / (10 * len(before))
    assert overlap >= 0.95


def test_changes_during_a_compaction_are_kept_and_searches_go_on():
    resources = corpus(3_000, seed=21)
    fresh = corpus(200, seed=22)
    index = filled(resources)
    for resource in resources[:1_000]:
        index.remove(resource[0])
    vector_index = index._vector
    job = vector_index.start_compaction()  # what SearchIndex.compact does, step by step
    with pytest.raises(RuntimeError, match="already running"):
        vector_index.start_compaction()
    assert not index.compact(), "a second compaction is refused, not queued"
    # while the new graph is built (no lock held): removals, additions into freed slots, replacements
    for resource in resources[1_000:1_100]:
        index.remove(resource[0])
    for i, (_, vector, text, meta) in enumerate(fresh):
        index.add(f"fresh{i:03d}", vector, text, meta)
    for id, vector, text, meta in resources[1_100:1_150]:
        index.add(id, -vector, text, meta)
    assert ids(index.search(fresh[5][1], None, "semantic", 1)) == ["fresh005"]  # answered from the old graph
    assert vector_index.finish_compaction(job, job.build())
    assert index.stale_fraction == pytest.approx(150 / 2_100)  # removals made during the build
    final = {f"fresh{i:03d}": vector for i, (_, vector, _, _) in enumerate(fresh)}
    final.update({id: vector for id, vector, _, _ in resources[1_150:]})
    final.update({id: -vector for id, vector, _, _ in resources[1_100:1_150]})
    assert len(index) == len(final) == 2_100
    found = 0
    for id, vector in list(final.items())[::30]:
        hits = index.search(vector, None, "semantic", 10)
        unit = vector / np.linalg.norm(vector)
        for hit in hits:
            assert hit.resource_id in final
            assert hit.score == pytest.approx(float(final[hit.resource_id] @ unit / np.linalg.norm(final[hit.resource_id])), abs=1e-5)
        found += len(set(ids(hits)) & set(ids(index.exact_search(vector, 10))))
    assert found / (10 * len(list(final)[::30])) >= 0.95
    standalone = VectorIndex(DIM)  # a build during a compaction: the compaction is dropped
    standalone.build(["a", "b"], np.stack([resources[0][1], resources[1][1]]))
    job = standalone.start_compaction()
    standalone.build(["c"], resources[2][1][None, :])
    assert not standalone.finish_compaction(job, job.build())
    assert ids(standalone.search(resources[0][1], 3)) == ["c"]
    assert index.compact() and index.stale_fraction == 0.0


def test_a_failed_compaction_does_not_block_the_next(monkeypatch):
    from percolate_node.search.vector import Compaction

    index = filled(corpus(300))
    for resource in corpus(300)[:100]:
        index.remove(resource[0])
    real_build = Compaction.build

    def out_of_memory(self, threads=0):
        raise MemoryError("no room for a new graph")

    monkeypatch.setattr(Compaction, "build", out_of_memory)
    with pytest.raises(MemoryError):
        index.compact()
    monkeypatch.setattr(Compaction, "build", real_build)
    assert index.compact() and index.stale_fraction == 0.0


def test_resource_without_embedding_is_found_by_keyword_only():
    index = filled(corpus(100))
    index.add("plain", None, "zebra crossing", ResourceMeta("file:///z", "z", T0))
    assert ids(index.search(None, "zebra", "keyword", k=5)) == ["plain"]
    assert "plain" not in ids(index.search(np.ones(DIM), None, "semantic", k=101))
    assert ids(index.search(np.ones(DIM), "zebra", "hybrid", k=1)) == ["plain"]


@pytest.mark.parametrize("vector", [np.zeros(DIM), np.ones(DIM - 1), np.full(DIM, np.nan)])
def test_malformed_vectors_are_refused_without_changing_the_index(vector):
    index = filled(corpus(50))
    with pytest.raises(ValueError):
        index.add("bad", vector, "text", ResourceMeta("file:///bad", "bad", T0))
    assert len(index) == 50 and "bad" not in index
    with pytest.raises(ValueError):
        index.search(vector, None, "semantic")


def test_missing_query_parts_are_refused():
    index = filled(corpus(10))
    with pytest.raises(ValueError):
        index.search(None, "text", "semantic")
    with pytest.raises(ValueError):
        index.search(np.ones(DIM), None, "hybrid")
    with pytest.raises(ValueError):
        index.search(np.ones(DIM), "text", "fuzzy")


# -- filters ------------------------------------------------------------------------

FILTERS = {
    "uri prefix": (SearchFilters(uri_prefix="file:///a/"), lambda m, i: m.uri.startswith("file:///a/")),
    "uris": (SearchFilters(uris={"file:///b/doc25.pdf", "file:///a/doc3.pdf"}),
             lambda m, i: m.uri in {"file:///b/doc25.pdf", "file:///a/doc3.pdf"}),
    "documents": (SearchFilters(document_ids={"doc7"}), lambda m, i: m.document_id == "doc7"),
    "entity type": (SearchFilters(entity_types={"project"}), lambda m, i: "project" in m.entity_types),
    "any of two types": (SearchFilters(entity_types={"project", "person"}),
                         lambda m, i: bool(m.entity_types & {"project", "person"})),
    "time range": (SearchFilters(created_after=T0 + timedelta(hours=1000), created_before=T0 + timedelta(hours=5000)),
                   lambda m, i: 1000 <= i < 5000),
    "combined": (SearchFilters(uri_prefix="file:///b/", entity_types={"person"},
                               created_after=T0 + timedelta(hours=3000)),
                 lambda m, i: m.uri.startswith("file:///b/") and "person" in m.entity_types and i >= 3000),
}


@pytest.fixture(scope="module")
def filtered_corpus():
    resources = corpus(12_000, seed=5)
    # exact_below small, so the larger filters take the over-fetching graph path
    return resources, filled(resources, hnsw=HnswParams(exact_below=500))


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("mode", ["semantic", "keyword", "hybrid"])
def test_filters_return_only_allowed_resources_and_still_k(filtered_corpus, name, mode):
    resources, index = filtered_corpus
    filters, allows = FILTERS[name]
    allowed = {r[0] for i, r in enumerate(resources) if allows(r[3], i)}
    assert len(allowed) >= 20
    for resource_id, vector, _, _ in resources[::1500]:
        hits = index.search(vector, "topic3 theme5", mode, k=20, filters=filters)
        assert set(ids(hits)) <= allowed
        if mode != "keyword":  # keyword search returns only documents holding a query term
            assert len(hits) == 20


def test_filtered_semantic_search_equals_exact_search_over_the_allowed(filtered_corpus):
    resources, index = filtered_corpus
    exact = VectorIndex(DIM)
    for name, (filters, allows) in FILTERS.items():
        allowed = [r for i, r in enumerate(resources) if allows(r[3], i)]
        exact.build([r[0] for r in allowed], np.stack([r[1] for r in allowed]))
        queries = clustered(20, seed=6)
        agree = sum(len(set(ids(index.search(q, None, "semantic", 10, filters))) & set(ids(exact.exact_search(q, 10))))
                    for q in queries)
        assert agree / (10 * len(queries)) >= 0.95, name


def test_a_filter_far_from_the_query_still_returns_k():
    """The allowed resources all lie in one cluster; the query in another, so few of
    the graph's candidates pass and the search must fall back to exact."""
    near, far = clustered(6_000, seed=7, clusters=1), -clustered(6_000, seed=7, clusters=1)
    index = VectorIndex(DIM, HnswParams(exact_below=100))
    index.build([f"near{i}" for i in range(6_000)] + [f"far{i}" for i in range(6_000)], np.vstack([near, far]))
    allowed = {f"far{i}" for i in range(6_000)}
    hits = index.search(near[0], 10, allowed)
    assert len(hits) == 10 and set(ids(hits)) <= allowed
    assert ids(hits) == ids(index.exact_search(near[0], 10, allowed))


def test_a_filter_with_fewer_matches_than_k_returns_all_of_them():
    resources = corpus(2_000)
    index = filled(resources)
    filters = SearchFilters(uris={"file:///a/doc3.pdf"}, entity_types={"person"})
    expected = {r[0] for r in resources if r[3].uri == "file:///a/doc3.pdf" and "person" in r[3].entity_types}
    assert 0 < len(expected) < 50
    assert set(ids(index.search(resources[0][1], None, "semantic", 50, filters))) == expected
    assert index.search(resources[0][1], None, "semantic", 10, SearchFilters(uri_prefix="s3://")) == []


def test_metadata_updates_change_what_filters_allow():
    resources = corpus(200)
    index = filled(resources)
    only_robots = SearchFilters(entity_types={"robot"})
    assert index.search(resources[5][1], None, "semantic", 10, only_robots) == []
    resource_id, vector, _, meta = resources[5]
    assert index.update_meta(resource_id, ResourceMeta(meta.uri, meta.document_id, meta.created, frozenset({"robot"})))
    assert ids(index.search(vector, None, "semantic", 10, only_robots)) == [resource_id]
    assert not index.update_meta("unknown", meta)


# -- keyword ------------------------------------------------------------------------

def test_tokenizer_lowercases_unicode_words_and_drops_stop_words():
    assert tokenize("The Café in Zürich, naïve 東京 TEST_case 42!") == ["café", "zürich", "naïve", "東京", "test_case", "42"]
    assert tokenize("The cat and the hat", stop_words=()) == ["the", "cat", "and", "the", "hat"]
    assert tokenize("  ... !!! ") == []


def test_ascii_fast_path_splits_exactly_as_the_unicode_rule():
    every_ascii = "".join(map(chr, range(128)))
    rng = random.Random(3)
    samples = [every_ascii, "a-b_c d\te\x1cf\x0bg,h.i'j\"k(l)m", "end_"] + [
        "".join(rng.choice(every_ascii) for _ in range(200)) for _ in range(300)]
    for text in samples:
        assert text.isascii()
        assert tokenize(text, stop_words=()) == re.findall(r"\w+", text.lower()), repr(text)


def test_bm25_ranks_the_document_with_the_rare_term_first():
    index = KeywordIndex()
    for i in range(50):
        index.add(f"common{i}", "quarterly report revenue growth report")
    index.add("rare", "quarterly report mentions the zeppelin once")
    hits = index.search("report zeppelin", 5)
    assert hits[0][0] == "rare" and len(hits) == 5


def test_bm25_scores_match_the_formula():
    index = KeywordIndex()
    docs = {"a": "apple banana apple", "b": "banana cherry", "c": "cherry cherry cherry date elder"}
    for id, text in docs.items():
        index.add(id, text)
    n, average = 3, (3 + 2 + 5) / 3

    def bm25(tf: int, df: int, length: int) -> float:
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / average))

    scores = dict(index.search("apple cherry", 3))
    assert scores["a"] == pytest.approx(bm25(2, 1, 3), rel=1e-5)
    assert scores["b"] == pytest.approx(bm25(1, 2, 2), rel=1e-5)
    assert scores["c"] == pytest.approx(bm25(3, 2, 5), rel=1e-5)


def test_bm25_handles_unknown_terms_and_empty_queries():
    index = KeywordIndex()
    index.add("a", "alpha beta")
    assert index.search("gamma delta", 5) == []
    assert index.search("", 5) == []
    assert index.search("the and of", 5) == []  # stop words only
    assert ids(index.search("gamma alpha", 5)) == ["a"]
    assert KeywordIndex().search("alpha", 5) == []


def test_bm25_bulk_build_equals_adding_one_by_one_and_stays_editable():
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)] + ["the", "and", "Café", "ZÜRICH", "東京", "x_y"]
    docs = {f"d{i:04d}": " ".join(rng.choice(words) for _ in range(rng.randrange(0, 60))) + " !?"
            for i in range(1500)}
    docs["only-stop-words"], docs["empty"] = "the and of", ""
    one_by_one, bulk = KeywordIndex(), KeywordIndex()
    for id, text in docs.items():
        one_by_one.add(id, text)
    bulk.build(docs.items())
    queries = [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 4))) for _ in range(200)] + ["café zürich"]

    def same_everywhere():
        assert len(bulk) == len(one_by_one)
        for query in queries:
            assert bulk.search(query, 20) == one_by_one.search(query, 20), query

    same_everywhere()
    for id in rng.sample(sorted(docs), 300):  # removals and replacements after the build
        assert bulk.remove(id) and one_by_one.remove(id)
    for i in range(200):
        text = " ".join(rng.choice(words) for _ in range(30))
        bulk.add(f"d{i:04d}", text)
        one_by_one.add(f"d{i:04d}", text)
    same_everywhere()
    with pytest.raises(ValueError, match="empty index"):
        bulk.build([("new", "text")])
    with pytest.raises(ValueError, match="each id once"):
        KeywordIndex().build([("a", "one"), ("a", "two")])


def test_bm25_removal_updates_document_frequencies():
    index = KeywordIndex()
    index.add("x", "zeta")
    index.add("y", "zeta omega")
    index.add("z", "omega")
    index.remove("x")
    fresh = KeywordIndex()
    fresh.add("y", "zeta omega")
    fresh.add("z", "omega")
    assert index.search("zeta omega", 5) == fresh.search("zeta omega", 5)


# -- fusion -------------------------------------------------------------------------

def test_rrf_prefers_a_resource_ranked_well_by_both():
    fused = reciprocal_rank_fusion([["only-semantic", "both", "x"], ["only-keyword", "both", "y"]])
    assert fused[0] == ("both", pytest.approx(2 / 62))
    assert [id for id, _ in fused[1:3]] == ["only-keyword", "only-semantic"]  # tie: by id


def test_hybrid_search_with_rrf_fuses_the_two_rankings():
    rng = np.random.default_rng(8)
    query = rng.standard_normal(DIM)
    index = SearchIndex()
    meta = ResourceMeta("file:///x", "x", T0)
    index.add("semantic-best", query, "unrelated words", meta)
    index.add("both-good", query + 0.3 * rng.standard_normal(DIM), "the launch checklist", meta)
    index.add("keyword-best", -query, "launch checklist launch checklist", meta)
    for i in range(30):
        index.add(f"noise{i}", rng.standard_normal(DIM), f"filler text {i}", meta)
    hits = index.search(query, "launch checklist", "hybrid", k=3, fusion=FusionParams(method="rrf"))
    assert hits[0].resource_id == "both-good"
    assert (hits[0].semantic_rank, hits[0].keyword_rank) == (2, 2)
    assert {h.resource_id for h in hits[1:]} == {"semantic-best", "keyword-best"}
    assert hits[0].score == pytest.approx(2 / 62)
    by_id = {h.resource_id: h for h in hits}
    assert by_id["semantic-best"].keyword_rank == 0 and by_id["keyword-best"].semantic_rank == 33


# -- rebuild and determinism --------------------------------------------------------

def test_rebuild_equals_incremental_adds():
    resources = corpus(3_000, seed=9)
    incremental = filled(resources)
    rebuilt = SearchIndex()
    events: list[RebuildProgress] = []
    report = rebuilt.rebuild(iter(resources), progress=events.append, threads=1, progress_every=1_000)
    assert report.resources == len(rebuilt) == len(incremental) == 3_000
    assert report.seconds >= report.read_seconds > 0
    assert [e.done for e in events if e.phase == "read"] == [1_000, 2_000, 3_000]
    assert events[-1] == RebuildProgress("graph", 3_000, 3_000)
    for filters in (None, FILTERS["uri prefix"][0], FILTERS["time range"][0], FILTERS["entity type"][0]):
        for resource_id, vector, text, _ in resources[::250]:
            for mode in ("semantic", "keyword", "hybrid"):
                assert rebuilt.search(vector, text, mode, 10, filters) == incremental.search(vector, text, mode, 10, filters)


def test_rebuild_keeps_the_last_entry_of_a_repeated_id():
    resources = corpus(20)
    replaced = (resources[3][0], resources[10][1], "replacement text", resources[10][3])
    index = SearchIndex()
    index.rebuild(resources + [replaced, (resources[4][0], None, "no vector now", resources[4][3])])
    assert len(index) == 20
    assert ids(index.search(resources[10][1], None, "semantic", 2)) == sorted([resources[3][0], resources[10][0]])
    assert ids(index.search(None, "replacement", "keyword", 5)) == [resources[3][0]]
    assert resources[4][0] not in ids(index.search(resources[4][1], None, "semantic", 19))


def test_rebuild_replaces_previous_content():
    index = filled(corpus(100))
    index.rebuild(corpus(10, seed=1))
    assert len(index) == 10 and "res00050" not in index


def test_a_saved_graph_is_reused_and_patched_to_what_the_store_holds():
    resources = corpus(3_000, seed=13)
    rng = np.random.default_rng(13)
    running = SearchIndex()
    running.rebuild(resources)
    for resource in resources[:50]:  # the node's life before it saved its graph
        running.remove(resource[0])
    snapshot = running.graph_snapshot()
    assert snapshot.slot_ids[:50] == [None] * 50 and len(snapshot.graph) > 3_000 * DIM * 2
    # then, before a kill -9: 40 removed, 30 added (the first into freed slots), 20 re-embedded
    store = {r[0]: r for r in resources[90:]}
    for id, vector, text, meta in resources[90:110]:
        store[id] = (id, vector + rng.normal(0, 0.5, DIM), text, meta)
    for i, vector in enumerate(clustered(30, seed=14)):
        store[f"new{i}"] = (f"new{i}", vector, f"new chunk {i}", resources[0][3])
    current = list(store.values())
    restored, reference = SearchIndex(), SearchIndex()
    report = restored.rebuild(iter(current), saved=snapshot)
    assert reference.rebuild(iter(current)).graph_patched is None
    assert report.graph_patched == 50, "30 new vectors and 20 changed ones patched in; the rest reused"
    assert report.graph_dropped == 60, "40 removed and 20 changed since the snapshot"
    assert restored.stale_fraction >= 60 / 2_940, "removed nodes stay in the graph until a compaction"
    assert len(restored) == len(current) == 2_940
    units = {id: vector / np.linalg.norm(vector) for id, vector, _, _ in current}
    found = 0
    for id, vector, text, _ in current[::40]:
        query = vector / np.linalg.norm(vector)
        hits = restored.search(vector, None, "semantic", 10)
        for hit in hits:  # every score comes from the vector the store holds now
            assert hit.score == pytest.approx(float(units[hit.resource_id] @ query), abs=1e-5)
        exact = ids(reference.exact_search(vector, 10))
        assert ids(restored.exact_search(vector, 10)) == exact
        found += len(set(ids(hits)) & set(exact))
        assert restored.search(None, text, "keyword", 10) == reference.search(None, text, "keyword", 10)
    assert found / (10 * len(current[::40])) >= 0.95
    assert "res00000" not in restored and "res00095" in restored and "new3" in restored
    # a graph that does not fit is not used: other settings, a damaged buffer, too much changed
    for index, saved in [(SearchIndex(hnsw=HnswParams(connectivity=8)), snapshot),
                         (SearchIndex(), type(snapshot)(snapshot.slot_ids, b"not a graph")),
                         (SearchIndex(), snapshot)]:
        store_now = current if saved.graph != snapshot.graph or index.hnsw.connectivity != 16 else current[:1_500]
        assert index.rebuild(iter(store_now), saved=saved).graph_patched is None
        assert ids(index.search(store_now[7][1], None, "semantic", 1)) == [store_now[7][0]]


def test_searches_are_deterministic_and_ties_break_by_id():
    resources = corpus(2_000, seed=10)
    first, second = SearchIndex(), SearchIndex()
    first.rebuild(resources, threads=1)
    second.rebuild(resources, threads=1)
    for resource_id, vector, text, _ in resources[::100]:
        for mode in ("semantic", "keyword", "hybrid"):
            once = first.search(vector, text, mode, 15)
            assert once == first.search(vector, text, mode, 15) == second.search(vector, text, mode, 15)
    twins = SearchIndex()
    for name in ("c", "a", "d", "b"):  # identical content, added out of order
        twins.add(name, np.ones(DIM), "same words", ResourceMeta("file:///t", "t", T0))
    for mode in ("semantic", "keyword", "hybrid"):
        assert ids(twins.search(np.ones(DIM), "same words", mode, 4)) == ["a", "b", "c", "d"]


def test_memory_estimate_grows_with_content():
    small, large = filled(corpus(100)), filled(corpus(2_000))
    assert 0 < small.memory_bytes() < large.memory_bytes()
    assert large.memory_bytes() > 2_000 * DIM * 4  # at least the float32 vectors


def test_standalone_indexes_take_a_plain_set_of_allowed_ids():
    keyword = KeywordIndex()
    for i in range(20):
        keyword.add(f"k{i:02d}", "shared words" + " extra" * i)
    assert ids(keyword.search("shared", 3, {"k05", "k17", "unknown"})) == ["k05", "k17"]
    vectors = clustered(500, seed=11)
    vector = VectorIndex(DIM)
    vector.build([f"v{i:03d}" for i in range(500)], vectors)
    assert ids(vector.search(vectors[7], 2, {"v007", "v300"}))[0] == "v007"
    assert vector.search(vectors[7], 2, set()) == []


def test_concurrent_changes_and_searches_are_safe():
    import threading

    resources = corpus(2_000, seed=12)
    index = filled(resources[:1_000])
    failures: list[BaseException] = []

    def write():
        try:
            for i, resource in enumerate(resources[1_000:]):
                index.add(*resource)
                index.remove(resources[i][0])
        except BaseException as error:  # reported below, on the test's thread
            failures.append(error)

    def read():
        try:
            for _, vector, text, _ in resources[::20] * 3:
                hits = index.search(vector, text, "hybrid", 10, SearchFilters(uri_prefix="file:///"))
                assert len(hits) == 10
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(index) == 1_000
