"""kill -9 of a real node process at random moments during a bulk ingest, 20 times: on
restart every acknowledged ingest is complete and decryptable, nothing partial is
visible, and the indexes agree with the store."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import replace

import grpc

from percolate.node.v1 import node_pb2 as pb
from percolate_node.rem import MemoryRepository
from percolate_node.store import EncryptedStore, load_kek
from tests.test_node import TENANT, Caller, node_config

ROUNDS = 20
TOPICS = ["harbour", "glacier", "orchard", "lantern", "compass", "meadow", "quarry", "beacon"]


def documents(count: int) -> list[bytes]:
    return [(f"# Note {i}\n\nThe {TOPICS[i % len(TOPICS)]} report number {i} says the {TOPICS[(i * 3) % 8]} "
             f"was inspected on day {i}. Everything about item {i} is recorded here.\n").encode()
            for i in range(count)]


class NodeProcess:
    def __init__(self, config) -> None:
        env = {**os.environ, **replace(config, metrics_port=-1).to_env()}
        self.process = subprocess.Popen([sys.executable, "-m", "percolate_node.cli", "serve"], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        assert line.startswith("node for tenant"), line
        self.address = line.split(" on ")[1].split(",")[0]
        self.indexed = int(line.split(", ")[-1].split()[0])


def test_kill_9_during_bulk_ingest(reading, pki, tmp_path):
    config = node_config(tmp_path, reading, pki)
    token = config.token_file.read_text()
    contents = documents(400)
    acknowledged: dict[str, int] = {}  # document id -> resources
    rng = random.Random(20261126)
    next_doc = 0
    for _ in range(ROUNDS):
        node = NodeProcess(config)
        channel = grpc.insecure_channel(node.address)
        caller = Caller(channel, token)
        stop = threading.Event()

        def load() -> None:
            nonlocal next_doc
            while not stop.is_set() and next_doc < len(contents):
                try:
                    response = caller.Ingest(pb.IngestRequest(content=contents[next_doc],
                                                              filename=f"note-{next_doc}.md"), timeout=30)
                except grpc.RpcError:
                    return  # the node died under us: this one was not acknowledged
                acknowledged[response.document_id] = response.resources
                next_doc += 1

        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(rng.uniform(0.05, 1.5))
        node.process.kill()  # SIGKILL: no shutdown code runs
        node.process.wait()
        stop.set()
        worker.join()
        channel.close()
    assert len(acknowledged) > ROUNDS  # the drill really ingested between kills

    node = NodeProcess(config)
    try:
        with grpc.insecure_channel(node.address) as channel:
            caller = Caller(channel, token)
            for document_id, resources in acknowledged.items():
                document = caller.GetDocument(pb.GetRequest(id=document_id))
                assert len(document.resource_ids) == resources
                for resource_id in document.resource_ids:
                    assert caller.GetResource(pb.GetRequest(id=resource_id)).text
            stats = caller.Stats(pb.StatsRequest())
            assert stats.index_entries == stats.resources == node.indexed
    finally:
        node.process.terminate()
        node.process.wait(timeout=30)
    store = EncryptedStore.open(config.data_dir, TENANT, load_kek(config.kek_file), create=False)
    try:  # nothing partial: every stored document has all its resources, every resource its document
        repository = MemoryRepository(store)
        stored = list(repository.iter_documents())
        assert {d.id for d in stored} >= set(acknowledged)
        for document in stored:
            chunks = repository.list_resources(document.id)
            assert len(chunks) == int(document.metadata["chunks"]) and all(c.text for c in chunks)
        for resource in repository.iter_resources():
            assert repository.get_document(resource.document_id) is not None
    finally:
        store.close()
