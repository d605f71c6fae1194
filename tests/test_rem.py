"""The REM model over the encrypted store, on real RocksDB in temporary directories."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from percolate_node.rem import (EMBEDDING_DIM, Document, Edge, Entity, InvalidRecordError, MemoryRepository, Moment,
                                NotFoundError, Resource, document_id, entity_id)
from percolate_node.rem.codec import decode, encode
from percolate_node.rem.errors import RemError
from percolate_node.store import EncryptedStore
from percolate_node.store.layout import DOCUMENT_RESOURCES, EDGES, MOMENT_TIMES, NAMES, URIS

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def repo(store) -> MemoryRepository:
    return MemoryRepository(store)


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(EMBEDDING_DIM).astype(np.float32)


def document(content: bytes, uri: str = "file:///notes/a.txt", **fields) -> Document:
    return Document(id=document_id(content), uri=uri, title="Notes", format="txt", mime="text/plain", **fields)


def chunks(doc: Document, texts: list[str]) -> list[Resource]:
    return [Resource(document_id=doc.id, uri=doc.uri, ordinal=i, text=text, embedding=vector(i),
                     page_span=(i + 1, i + 1), heading_path=["Notes", f"part {i}"], metadata={"n": i})
            for i, text in enumerate(texts)]


def test_ingest_round_trip_and_idempotence(repo):
    doc = document(b"alpha beta gamma")
    resources = chunks(doc, ["alpha", "beta", "gamma"])
    first = repo.ingest(doc, resources, moment=Moment(start=T0, end=T0, type="ingest", references=[doc.id]))
    assert first.new and first.resource_ids == [r.id for r in resources] and first.replaced_document_id is None
    again = repo.ingest(document(b"alpha beta gamma"), chunks(doc, ["alpha", "beta", "gamma"]))
    assert not again.new and again.resource_ids == first.resource_ids
    assert repo.stats()["live"] == {"document": 1, "resource": 3, "entity": 0, "moment": 1}
    stored = repo.get_resource(resources[1].id)
    assert stored == resources[1] and np.array_equal(stored.embedding, resources[1].embedding)
    assert stored.embedding.dtype == np.float32 and stored.page_span == (2, 2)
    assert repo.get_document(doc.id) == doc
    assert [r.text for r in repo.list_resources(doc.id)] == ["alpha", "beta", "gamma"]
    assert {r.id for r in repo.iter_resources()} == set(first.resource_ids)


def test_new_content_at_the_same_uri_replaces_the_old_document(repo):
    old = document(b"version one")
    repo.ingest(old, chunks(old, ["one", "two", "three"]))
    new = document(b"version two")
    result = repo.ingest(new, chunks(new, ["uno", "dos"]))
    assert result.new and result.replaced_document_id == old.id
    assert repo.get_document(old.id) is None and repo.list_resources(old.id) == []
    assert [r.text for r in repo.list_resources(new.id)] == ["uno", "dos"]
    assert sorted(r.text for r in repo.iter_resources()) == ["dos", "uno"]
    assert repo.stats()["deleted"] == {"document": 1, "resource": 1, "entity": 0, "moment": 0}
    assert repo.purge() == {"document": 1, "resource": 1, "entity": 0, "moment": 0}
    assert [r.text for r in repo.list_resources(new.id)] == ["uno", "dos"]


def test_ingest_is_one_batch(repo, store):
    doc = document(b"content")
    with pytest.raises(NotFoundError):
        repo.ingest(doc, chunks(doc, ["a", "b"]), entities=[Entity(type="person", name="Ada")],
                    edges=[Edge(from_id=entity_id("person", "Ada"), to_id="no-such-record", relation="wrote")])
    assert repo.get_document(doc.id) is None and list(store.keys(URIS)) == []
    assert repo.stats()["live"] == {"document": 0, "resource": 0, "entity": 0, "moment": 0}
    ada = Entity(type="person", name="Ada")
    repo.ingest(doc, chunks(doc, ["a", "b"]), entities=[ada],
                edges=[Edge(from_id=ada.id, to_id=doc.id, relation="wrote")])
    assert [n.id for n in repo.traverse(ada.id, 1).nodes] == [ada.id, doc.id]


def test_ingest_validates(repo):
    doc = document(b"x")
    other = document(b"y")
    with pytest.raises(InvalidRecordError, match="belongs to document"):
        repo.ingest(doc, chunks(other, ["a"]))
    with pytest.raises(InvalidRecordError, match="ordinal 0"):
        repo.ingest(doc, chunks(doc, ["a"]) + chunks(doc, ["b"]))
    with pytest.raises(InvalidRecordError, match="chunk ids"):
        repo.ingest(doc, [Resource(id="mine", document_id=doc.id, uri=doc.uri, ordinal=0, text="a")])
    with pytest.raises(InvalidRecordError, match="shape"):
        Resource(document_id=doc.id, uri=doc.uri, ordinal=0, text="a", embedding=np.zeros(3))
    with pytest.raises(InvalidRecordError, match="JSON-serialisable"):
        repo.ingest(doc, [], entities=[Entity(type="t", name="n", properties={"when": T0})])
    assert repo.get_document(doc.id) is None


def test_entities_and_the_alias_index(repo, store):
    ada = repo.put_entity(Entity(type="person", name="Ada Lovelace", aliases=["Countess of Lovelace", "A.L."]))
    assert ada.id == entity_id("person", "ada  LOVELACE")
    assert repo.get_entity(ada.id) == ada
    assert [e.id for e in repo.find_entities("  countess OF lovelace ")] == [ada.id]
    repo.put_entity(Entity(type="person", name="Ada Lovelace", aliases=["Ada King"], properties={"born": 1815}))
    assert repo.find_entities("Countess of Lovelace") == [] and repo.find_entities("A.L.") == []
    assert [e.properties for e in repo.find_entities("ada king")] == [{"born": 1815}]
    assert len(list(store.keys(NAMES))) == 2
    twin = repo.put_entity(Entity(id="ada-2", type="ship", name="Ada King"))
    assert {e.id for e in repo.find_entities("Ada King")} == {ada.id, twin.id}


def test_link_and_traverse(repo):
    doc = document(b"graph")
    resources = chunks(doc, ["c0", "c1"])
    repo.ingest(doc, resources)
    a, b, c, d = (repo.put_entity(Entity(type="person", name=n)) for n in "ABCD")
    repo.link(a.id, b.id, "knows", {"since": 2020})
    repo.link(b.id, c.id, "knows")
    repo.link(c.id, d.id, "knows")
    repo.link(d.id, resources[0].id, "mentioned_in")
    repo.link(a.id, resources[1].id, "mentioned_in")
    one = repo.traverse(a.id, 1)
    assert one.nodes[0].id == a.id and {n.id for n in one.nodes} == {a.id, b.id, resources[1].id}
    assert {(e.from_id, e.to_id) for e in one.edges} == {(a.id, b.id), (a.id, resources[1].id)}
    assert next(e for e in one.edges if e.to_id == b.id).properties == {"since": 2020}
    two = repo.traverse(a.id, 2, relation="knows")
    assert {n.id for n in two.nodes} == {a.id, b.id, c.id}
    backwards = repo.traverse(resources[0].id, 2)
    assert {n.id for n in backwards.nodes} == {resources[0].id, d.id, c.id}
    assert next(e for e in backwards.edges if e.from_id == d.id).to_kind == "resource"
    assert repo.traverse(a.id, 3, limit=2).truncated
    assert [n.id for n in repo.traverse(a.id, 0).nodes] == [a.id]
    with pytest.raises(NotFoundError):
        repo.link(a.id, "nobody", "knows")
    with pytest.raises(InvalidRecordError):
        repo.traverse(a.id, 99)
    repo.delete("entity", b.id)
    assert {n.id for n in repo.traverse(a.id, 3, relation="knows").nodes} == {a.id}


def test_moments_by_time_range(repo):
    hours = [repo.add_moment(Moment(start=T0 + timedelta(hours=h), end=T0 + timedelta(hours=h, minutes=30),
                                    type="meeting" if h % 2 else "ingest", summary=f"hour {h}"))
             for h in range(6)]
    ancient = repo.add_moment(Moment(start=datetime(1950, 1, 1, tzinfo=timezone.utc),
                                     end=datetime(1950, 1, 2, tzinfo=timezone.utc), type="history"))
    found = repo.list_moments(T0 + timedelta(hours=1), T0 + timedelta(hours=4))
    assert [m.summary for m in found] == ["hour 1", "hour 2", "hour 3"]
    assert [m.summary for m in repo.list_moments(T0, T0 + timedelta(days=1), type="meeting")] == [
        "hour 1", "hour 3", "hour 5"]
    assert [m.id for m in repo.list_moments(datetime(1900, 1, 1, tzinfo=timezone.utc), T0)] == [ancient.id]
    assert len(repo.list_moments(T0, T0 + timedelta(days=1), limit=2)) == 2
    moved = Moment(id=hours[0].id, start=T0 + timedelta(days=3), end=T0 + timedelta(days=3), type="ingest")
    repo.add_moment(moved)
    assert [m.summary for m in repo.list_moments(T0, T0 + timedelta(hours=2))] == ["hour 1"]
    assert [m.id for m in repo.list_moments(T0 + timedelta(days=2), T0 + timedelta(days=4))] == [moved.id]
    local = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=3)))
    assert repo.add_moment(Moment(start=local, end=local, type="x")).start == T0
    with pytest.raises(InvalidRecordError, match="timezone-aware"):
        Moment(start=datetime(2024, 1, 1), end=datetime(2024, 1, 1), type="x")
    with pytest.raises(InvalidRecordError, match="before it starts"):
        Moment(start=T0, end=T0 - timedelta(seconds=1), type="x")


def test_soft_delete_hides_and_purge_removes(repo, store):
    doc = document(b"to be deleted")
    resources = chunks(doc, ["x", "y"])
    ada = Entity(type="person", name="Ada", aliases=["Countess"])
    moment = Moment(start=T0, end=T0, type="ingest", references=[doc.id])
    repo.ingest(doc, resources, entities=[ada], moment=moment,
                edges=[Edge(from_id=ada.id, to_id=resources[0].id, relation="mentioned_in")])
    keeper = repo.put_entity(Entity(type="person", name="Bob"))
    repo.link(keeper.id, ada.id, "knows")

    assert repo.delete("document", doc.id) and not repo.delete("document", doc.id)
    assert repo.get_document(doc.id) is None and repo.get_resource(resources[0].id) is None
    assert list(repo.iter_resources()) == [] and repo.list_resources(doc.id) == []
    assert repo.delete("entity", ada.id) and repo.delete("moment", moment.id)
    assert repo.find_entities("countess") == [] and repo.list_moments(T0, T0 + timedelta(hours=1)) == []
    assert [n.id for n in repo.traverse(keeper.id, 2).nodes] == [keeper.id]
    with pytest.raises(NotFoundError):
        repo.delete("entity", "nobody")
    with pytest.raises(InvalidRecordError):
        repo.delete("edge", ada.id)
    assert repo.stats()["deleted"] == {"document": 1, "resource": 2, "entity": 1, "moment": 1}

    assert repo.purge() == {"document": 1, "resource": 2, "entity": 1, "moment": 1}
    stats = repo.stats()
    assert stats["live"] == {"document": 0, "resource": 0, "entity": 1, "moment": 0}
    assert stats["deleted"] == {"document": 0, "resource": 0, "entity": 0, "moment": 0}
    for cf in (EDGES, NAMES, MOMENT_TIMES, DOCUMENT_RESOURCES, URIS):
        remaining = list(store.keys(cf))
        assert len(remaining) == (1 if cf == NAMES else 0), cf  # only Bob's name is left
    assert repo.purge() == {"document": 0, "resource": 0, "entity": 0, "moment": 0}
    again = repo.ingest(document(b"to be deleted"), chunks(doc, ["x", "y"]))
    assert again.new and len(repo.list_resources(doc.id)) == 2


def test_reingest_after_soft_delete_revives(repo):
    doc = document(b"phoenix")
    repo.ingest(doc, chunks(doc, ["a", "b", "c"]))
    repo.delete("document", doc.id)
    result = repo.ingest(document(b"phoenix"), chunks(doc, ["a", "b"]))
    assert result.new and [r.text for r in repo.list_resources(doc.id)] == ["a", "b"]
    assert repo.stats()["deleted"] == {"document": 0, "resource": 1, "entity": 0, "moment": 0}
    assert repo.purge()["resource"] == 1
    assert [r.text for r in repo.list_resources(doc.id)] == ["a", "b"]


def test_nothing_readable_on_disk_after_an_ingest(tmp_path, kek):
    marker = "ZEBRA-QUOKKA-4471"
    path = tmp_path / "db"
    with EncryptedStore.open(path, "tenant-a", kek) as store:
        repo = MemoryRepository(store)
        for n in range(20):
            doc = document(f"{marker} document {n}".encode(), uri=f"file:///{marker}/{n}.pdf",
                           metadata={"author": marker})
            resources = [Resource(document_id=doc.id, uri=doc.uri, ordinal=i, text=f"{marker} chunk {i} " * 40,
                                  embedding=vector(i), heading_path=[marker]) for i in range(10)]
            person = Entity(type="person", name=f"{marker} {n}", aliases=[marker.lower()])
            repo.ingest(doc, resources, entities=[person],
                        moment=Moment(start=T0, end=T0, type="ingest", summary=f"ingested {marker}"),
                        edges=[Edge(from_id=person.id, to_id=resources[0].id, relation=marker)])
        repo.link(entity_id("person", f"{marker} 0"), entity_id("person", f"{marker} 1"), f"{marker}-knows")
        assert len(repo.find_entities(marker)) == 20
    needles = [marker.encode(), marker.lower().encode(), marker.encode("utf-16-le"), marker.encode("utf-16-be")]
    hits = [f"{p.name}" for p in path.rglob("*") if p.is_file() for n in needles if n in p.read_bytes()]
    assert hits == []
    with EncryptedStore.open(path, "tenant-a", kek) as store:  # and it is all still there
        assert len(list(MemoryRepository(store).iter_resources())) == 200


def test_codec_is_versioned():
    doc = document(b"v")
    data = encode(doc)
    assert decode(Document, data) == doc
    with pytest.raises(RemError, match="record format 2 is not supported"):
        decode(Document, b"\x02" + data[1:])
