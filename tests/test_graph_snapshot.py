"""The search graph saved in the tenant's store: a clean stop saves it sealed, the next
start reuses it, a stale one (writes after it, then a crash) is patched, a damaged or
missing one means a full build, and purge drops it. Real store on disk, real node memory."""
from __future__ import annotations

import numpy as np
import pytest

from percolate_node import graph_snapshot
from percolate_node.config import NodeConfig
from percolate_node.memory import NodeMemory
from percolate_node.rem import Document, MemoryRepository, Resource, document_id
from percolate_node.search import SearchIndex
from percolate_node.store import EncryptedStore, Put, generate_kek, load_kek
from percolate_node.store.layout import INDEXES
from tests.test_store import raw_edit

DIM = 384


@pytest.fixture
def config(tmp_path) -> NodeConfig:
    generate_kek(tmp_path / "kek.bin")
    return NodeConfig(tenant_id="tenant-a", data_dir=tmp_path / "data", kek_file=tmp_path / "kek.bin")


def write_documents(config: NodeConfig, first: int, count: int, per_document: int = 20) -> None:
    """Documents written straight into the store, as a node that crashed before indexing them would leave them."""
    rng = np.random.default_rng(first)
    with EncryptedStore.open(config.data_dir, config.tenant_id, load_kek(config.kek_file)) as store:
        repository = MemoryRepository(store)
        for d in range(first, first + count):
            uri = f"file://notes/{d}.txt"
            doc_id = document_id(uri.encode())
            vectors = rng.standard_normal((per_document, DIM)).astype(np.float32)
            repository.ingest(Document(id=doc_id, uri=uri, title=f"note {d}", format="text"),
                              [Resource(document_id=doc_id, uri=uri, ordinal=i, embedding=vectors[i],
                                        text=f"note {d} part {i} about topic{(d + i) % 7}")
                               for i in range(per_document)])


def semantic_top(memory: NodeMemory, queries: np.ndarray) -> list[list[str]]:
    return [[hit.resource_id for hit in memory.index.search(q, None, "semantic", 5)] for q in queries]


def test_a_clean_stop_saves_the_graph_and_the_next_start_reuses_it(config):
    write_documents(config, 0, 30)
    queries = np.random.default_rng(99).standard_normal((20, DIM)).astype(np.float32)
    memory = NodeMemory.open(config, None)
    assert memory.rebuild_graph == "built" and memory.index_size == 600
    expected = semantic_top(memory, queries)
    memory.close()
    with EncryptedStore.open(config.data_dir, config.tenant_id, load_kek(config.kek_file)) as store:
        saved = graph_snapshot.load(store)
        assert saved is not None and len(saved.graph) > 600 * DIM * 2
        assert sorted(id for id in saved.slot_ids if id) == sorted(r.id for r in MemoryRepository(store).iter_resources())
        assert all(len(value) < graph_snapshot.PART_BYTES + 64 for _, value in store.items(INDEXES))
    reopened = NodeMemory.open(config, None)
    assert reopened.rebuild_graph == "saved graph reused: 0 vectors added and 0 dropped since"
    assert semantic_top(reopened, queries) == expected
    reopened.close()


def test_a_stale_graph_is_patched_and_a_damaged_one_rebuilt(config):
    write_documents(config, 0, 30)
    NodeMemory.open(config, None).close()  # saves the graph of 600 chunks
    write_documents(config, 30, 2)  # 40 chunks the saved graph does not know (a crash before the save)
    memory = NodeMemory.open(config, None)
    assert memory.rebuild_graph == "saved graph reused: 40 vectors added and 0 dropped since"
    assert memory.index_size == 640
    new_chunk = memory.repository.list_resources(document_id(b"file://notes/31.txt"))[3]
    assert memory.index.search(new_chunk.embedding, None, "semantic", 1)[0].resource_id == new_chunk.id
    memory.close()

    def first_part(store) -> bytes:
        return next(key for key in store.keys(INDEXES) if b"/part/" in key)

    # a different graph under the checksum's nose: refused (and rebuilt), never used
    with EncryptedStore.open(config.data_dir, config.tenant_id, load_kek(config.kek_file)) as store:
        store.write([Put(INDEXES, first_part(store), b"damaged")])
    memory = NodeMemory.open(config, None)
    assert memory.rebuild_graph == "built" and memory.index_size == 640
    memory.close()  # the fresh build was saved
    # a part that fails authentication on disk (bit rot, tampering): rebuilt, and the node starts
    with EncryptedStore.open(config.data_dir, config.tenant_id, load_kek(config.kek_file)) as store:
        part = first_part(store)

    def flip_a_bit(views):
        sealed = bytearray(views[INDEXES][part])
        sealed[-1] ^= 1
        views[INDEXES][part] = bytes(sealed)

    raw_edit(config.data_dir, flip_a_bit)
    memory = NodeMemory.open(config, None)
    assert memory.rebuild_graph == "built" and memory.index_size == 640
    memory.close()
    # a saved graph whose chunks have no vectors at all (keyword-only resources) is fine too
    with EncryptedStore.open(config.data_dir, config.tenant_id, load_kek(config.kek_file)) as store:
        graph_snapshot.save(store, SearchIndex().graph_snapshot())
    memory = NodeMemory.open(config, None)
    assert memory.index_size == 640 and memory.rebuild_graph == "built (the saved graph did not fit)"
    memory.close()


def test_purge_drops_the_saved_graph(config, monkeypatch):
    from percolate_node import cli

    write_documents(config, 0, 3)
    NodeMemory.open(config, None).close()
    for name, value in config.to_env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["admin", "purge"]) == 0
    with EncryptedStore.open(config.data_dir, config.tenant_id, load_kek(config.kek_file)) as store:
        assert graph_snapshot.load(store) is None and not list(store.keys(INDEXES))


def test_deleting_a_third_compacts_the_graph_in_the_background_and_the_compacted_graph_is_saved(config):
    write_documents(config, 0, 30)
    memory = NodeMemory.open(config, None)
    for d in range(10):  # 200 of 600 chunks: past a quarter, the graph is rebuilt on a thread
        assert memory.delete("document", document_id(f"file://notes/{d}.txt".encode()))
    assert memory._compaction is not None
    memory._compaction.join(60)
    # started at the 7th document (140 of 460 removed); removals during its build count on
    assert memory.index.stale_fraction <= 60 / 400 and memory.index_size == 400
    memory.close()
    reopened = NodeMemory.open(config, None)
    assert reopened.rebuild_graph == "saved graph reused: 0 vectors added and 0 dropped since"
    kept = reopened.repository.list_resources(document_id(b"file://notes/20.txt"))[0]
    assert reopened.index.search(kept.embedding, None, "semantic", 1)[0].resource_id == kept.id
    reopened.close()


def test_after_a_crash_only_what_came_since_the_last_save_is_patched(config):
    write_documents(config, 0, 30)
    memory = NodeMemory.open(config, None)  # built, and saved at once
    assert not memory.graph_unsaved and not memory.save_graph()
    for d in (0, 1):
        memory.delete("document", document_id(f"file://notes/{d}.txt".encode()))
    assert memory.graph_unsaved and memory.save_graph() and not memory.graph_unsaved  # the periodic save
    memory.delete("document", document_id(b"file://notes/2.txt"))
    memory.store.close()  # a crash: the last change never reaches the saved graph
    reopened = NodeMemory.open(config, None)
    assert reopened.rebuild_graph == "saved graph reused: 0 vectors added and 20 dropped since"
    assert reopened.index_size == 540 and reopened.graph_unsaved
    reopened.close()
