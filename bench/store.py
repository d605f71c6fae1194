"""Encrypted store vs plaintext rocksdict: put, get and scan throughput in the same run.

Both sides get the same data (random 16-byte keys, like ``name_key`` ids; values the
size of a chunk record with its embedding, 2 KB, of an index entry, 64 B, and the two
alternating, 2 KB + 48 B, as an ingest writes a chunk and its document entry), the same
RocksDB options and column families (``rocks.open_rw``), and the same synced
WriteBatches. The plaintext side writes the values as they are with rocksdict; the
encrypted side is ``EncryptedStore``, sealing each value with AES-256-GCM (random nonce,
associated data) on put and opening it on get and scan.
- put: every value once, in synced batches of BATCH values, into a fresh database per round;
- get: every key once in random order, one ``get`` at a time, after a reopen (data in SSTs);
- scan: every value in key order (what rebuilding the search indexes at start does).
Puts alternate sides batch by batch (each side into its own fresh database per round,
which side goes first alternating) and get rounds alternate sides every 1,000 keys, so
that a slow fsync or load from other processes hits both. Figures are medians over rounds; the ratio
is the median of the per-round ratios (encrypted / plaintext).

A second table splits one 64 B x 1,000 put batch into its parts (Put objects, sealing,
the change-log record, its synced write, and the values' write without the WAL, as the
store does them, less its occasional background flush), and shows the single synced write of values and record together that
the store did before (the counterfactual), so the cost of each is visible; it reaches
into the store's internals for that and nothing else.

``--engines`` instead compares the two ways the store seals, OpenSSL's GCM mode over
AES-NI (the default where the CPU has it) and EVP, in one process: 64 B x 1,000 puts and
gets against plaintext, the engines alternating over ROUNDS rounds (20,000 values each).

    python bench/store.py [--quick] [--engines [ROUNDS]]
"""
from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: E402  (puts the project root on sys.path)

from rocksdict import WriteBatch, WriteOptions

from percolate_node.store import EncryptedStore, Put
from percolate_node.store import rocks
from percolate_node.store.layout import COLUMN_FAMILIES, RESOURCES

FLOOR = 0.7
FLOORED = ("put", "get")  # the floor; scan is shown for the index rebuild at start
# 2048: a chunk record with its embedding; 64: an index entry; (2048, 48): what an ingest
# writes, a chunk record and its document -> chunk entry, alternating in one batch
VALUE_SIZES = (2048, 64, (2048, 48))
BATCHES = (1000, 50)


class Plain:
    """rocksdict as it is: the reference."""

    def __init__(self, path: Path) -> None:
        self.db = rocks.open_rw(path, COLUMN_FAMILIES)
        self.view = self.db.get_column_family(RESOURCES)
        self.handle = self.db.get_column_family_handle(RESOURCES)
        self.sync = WriteOptions()
        self.sync.sync = True

    def put(self, items: list[tuple[bytes, bytes]]) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value, self.handle)
        self.db.write(batch, self.sync)

    def get(self, key: bytes) -> bytes | None:
        return self.view.get(key)

    def scan(self) -> int:
        return sum(1 for _ in self.view.items())

    def close(self) -> None:
        del self.handle  # a live column-family handle keeps RocksDB (and its LOCK) open
        rocks.close(self.db, [self.view])


class Sealed:
    """The encrypted store, through its public API."""

    def __init__(self, path: Path, kek: bytes) -> None:
        self.store = EncryptedStore.open(path, "bench", kek)

    def put(self, items: list[tuple[bytes, bytes]]) -> None:
        self.store.write([Put(RESOURCES, key, value) for key, value in items])

    def get(self, key: bytes) -> bytes | None:
        return self.store.get(RESOURCES, key)

    def scan(self) -> int:
        return sum(1 for _ in self.store.items(RESOURCES))

    def close(self) -> None:
        self.store.close()


def measure(count: int, size: int | tuple[int, ...], batch: int, rounds: int,
            reads: bool) -> dict[str, dict[str, float]]:
    """Median rates per side and operation, plus the median of the per-round ratios."""
    sizes = size if isinstance(size, tuple) else (size,)
    rng = random.Random(sum(sizes) * 7 + batch)
    items = [(rng.randbytes(16), rng.randbytes(sizes[i % len(sizes)])) for i in range(count)]
    lookups = [key for key, _ in items]
    rng.shuffle(lookups)
    kek = os.urandom(32)
    rates: dict[str, dict[str, list[float]]] = {"plain": {}, "sealed": {}}

    def record(side: str, op: str, rate: float) -> None:
        rates[side].setdefault(op, []).append(rate)

    def open_side(side: str, path: Path) -> Plain | Sealed:
        return Plain(path) if side == "plain" else Sealed(path, kek)

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for round_ in range(rounds):
            # both sides' databases open at once, batch for batch in turn (which side goes first
            # alternating), so a slow fsync or a burst of load from other work falls on both
            dbs = {side: open_side(side, Path(tmp) / f"{side}-{round_}") for side in ("plain", "sealed")}
            elapsed = {"plain": 0.0, "sealed": 0.0}
            for number, first in enumerate(range(0, count, batch)):
                chunk = items[first:first + batch]
                for side in ("plain", "sealed") if (number + round_) % 2 == 0 else ("sealed", "plain"):
                    started = time.perf_counter()
                    dbs[side].put(chunk)
                    elapsed[side] += time.perf_counter() - started
            for side, db in dbs.items():
                record(side, "put", count / elapsed[side])
                db.close()
        if reads:  # the last round's databases, reopened so the data is read from SST files
            dbs = {side: open_side(side, Path(tmp) / f"{side}-{rounds - 1}") for side in ("plain", "sealed")}
            chunk = 1000
            for round_ in range(rounds + 1):  # round 0 warms the caches and is dropped
                elapsed = {"plain": 0.0, "sealed": 0.0}
                for first in range(0, count, chunk):  # alternate sides every chunk: noise hits both
                    for side, db in dbs.items():
                        started = time.perf_counter()
                        for key in lookups[first:first + chunk]:
                            db.get(key)
                        elapsed[side] += time.perf_counter() - started
                for side, db in dbs.items():
                    started = time.perf_counter()
                    assert db.scan() == count
                    if round_:
                        record(side, "scan", count / (time.perf_counter() - started))
                        record(side, "get", count / elapsed[side])
            for db in dbs.values():
                db.close()
    result = {side: {op: statistics.median(r) for op, r in ops.items()} for side, ops in rates.items()}
    result["ratio"] = {op: statistics.median(s / p for s, p in zip(rates["sealed"][op], rates["plain"][op]))
                       for op in rates["plain"]}
    return result


def breakdown(batches: int, size: int = 64, batch: int = 1000) -> list[list]:
    """Median milliseconds per ``batch``-value put, part by part (plaintext first)."""
    from percolate_node.durability import changelog
    from percolate_node.store.layout import LOG
    from percolate_node.store.store import Delete

    rng = random.Random(size + batch)
    parts: dict[str, list[float]] = {}

    def timed(name: str, work):
        started = time.perf_counter()
        result = work()
        parts.setdefault(name, []).append((time.perf_counter() - started) * 1e3)
        return result

    kek = os.urandom(32)
    with tempfile.TemporaryDirectory(prefix="bench-store-parts-") as tmp:
        plain = Plain(Path(tmp) / "plain")
        sealed = EncryptedStore.open(Path(tmp) / "sealed", "bench", kek)
        single = EncryptedStore.open(Path(tmp) / "single", "bench", kek)
        for store in (sealed, single):
            store._reserve(batches * (batch + 2))
        lsn = 1
        for _ in range(batches):
            items = [(rng.randbytes(16), rng.randbytes(size)) for _ in range(batch)]
            timed("plaintext: WriteBatch.put loop + synced write", lambda: plain.put(items))
            ops = timed("encrypted: Put objects", lambda: [Put(RESOURCES, k, v) for k, v in items])
            keys = sealed._sealer.keys
            wb = WriteBatch(raw_mode=True)
            framed = timed("encrypted: seal_batch (seal, WriteBatch.put, log framing)",
                           lambda: keys.seal_batch(ops, sealed._batch_targets, Put, Delete, wb.put, wb.delete))

            def log_record(store: EncryptedStore, into: WriteBatch) -> None:
                key = changelog.lsn_key(lsn)
                record = changelog.encode_framed(lsn, 1, time.time_ns(), *framed)
                into.put(key, store._sealer.keys.seal(store._log_context, key, record), store._handles[LOG])

            record_batch = WriteBatch(raw_mode=True)
            timed("encrypted: change-log record (encode, seal)", lambda: log_record(sealed, record_batch))
            lsn += 1
            timed("encrypted: synced write of the record", lambda: sealed._db.write(record_batch, sealed._sync))
            timed("encrypted: the values, written without the WAL",
                  lambda: sealed._db.write(wb, sealed._unlogged_wal))
            other = WriteBatch(raw_mode=True)
            single._sealer.keys.seal_batch(ops, single._batch_targets, Put, Delete, other.put, other.delete)
            log_record(single, other)
            timed("counterfactual: one synced write of values and record", lambda: single._db.write(other, single._sync))
        plain.close()
        sealed.close()
        single.close()
    medians = {name: statistics.median(values) for name, values in parts.items()}
    total = sum(v for name, v in medians.items() if name.startswith("encrypted"))
    rows = [[name, f"{ms:.3f}"] for name, ms in medians.items()]
    rows.append(["encrypted: sum of its parts", f"{total:.3f}"])
    return rows


def compare_engines(rounds: int) -> None:
    """64 B x 1,000 put and get ratios with each engine, alternating which goes first."""
    from percolate_node.store import _gcm, crypto

    ratios: dict[str, list[tuple[float, float]]] = {"aes-ni": [], "evp": []}
    try:
        for round_ in range(rounds):
            for engine in ("aes-ni", "evp") if round_ % 2 == 0 else ("evp", "aes-ni"):
                if not _gcm._use_aes_ni(engine == "aes-ni") and engine == "aes-ni":
                    raise SystemExit("this CPU has no AES-NI (or _gcm was built without it): nothing to compare")
                result = measure(20_000, 64, 1000, 1, reads=True)
                ratios[engine].append((result["ratio"]["put"], result["ratio"]["get"]))
                print(f"round {round_ + 1}/{rounds} {engine}: put {ratios[engine][-1][0]:.2f}x "
                      f"get {ratios[engine][-1][1]:.2f}x", flush=True)
    finally:
        crypto._choose_cipher()  # back to what PERCOLATE_STORE_CIPHER says
    rows = [[engine, f"{statistics.median(p for p, _ in values):.2f}x", f"{min(p for p, _ in values):.2f}-"
             f"{max(p for p, _ in values):.2f}x", f"{statistics.median(g for _, g in values):.2f}x"]
            for engine, values in ratios.items()]
    common.print_table(f"64 B x 1,000: encrypted / plaintext by sealing engine ({rounds} alternating rounds of "
                       f"20,000 values; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)",
                       ["engine", "put (median)", "put (range)", "get (median)"], rows)


def main() -> None:
    args = common.arguments(__doc__.splitlines()[0], engines={
        "type": int, "nargs": "?", "const": 20, "metavar": "ROUNDS",
        "help": "compare the AES-NI and EVP sealing engines instead (default 20 rounds)"})
    if args.engines is not None:
        if args.engines < 1:
            raise SystemExit("--engines takes a number of rounds, 1 or more")
        compare_engines(args.engines)
        return
    count, rounds = (20_000, 3) if args.quick else (100_000, 5)
    columns = ["operation", "value bytes", "batch", "plaintext ops/s", "encrypted ops/s", "ratio", "floor", "ok"]
    rows = []
    for size in VALUE_SIZES:
        for batch in BATCHES:
            result = measure(count, size, batch, rounds, reads=batch == BATCHES[0])
            for op in ("put", "get", "scan"):
                if op not in result["ratio"]:
                    continue
                ratio = result["ratio"][op]
                floor = FLOOR if op in FLOORED else None
                label = "+".join(map(str, size)) if isinstance(size, tuple) else size
                rows.append([op, label, batch if op == "put" else "-", round(result["plain"][op]),
                             round(result["sealed"][op]), f"{ratio:.2f}x", f"{floor}x" if floor else "-",
                             ("yes" if ratio >= floor else "NO") if floor else "-"])
    common.print_table(f"Encrypted store vs plaintext rocksdict ({count:,} values, median of {rounds} rounds, "
                       f"synced batches; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)",
                       columns, rows)
    parts = breakdown(20 if args.quick else 60)
    common.print_table("Where one 64 B x 1,000 put batch goes (median ms per batch)", ["part", "ms"], parts)
    common.write_results("store", {
        "quick": args.quick, "rounds": rounds, "values": count, "floor": FLOOR,
        "rows": [dict(zip(columns, row)) for row in rows],
        "breakdown_64B_x1000_ms": {name: float(ms) for name, ms in parts},
    })


if __name__ == "__main__":
    main()
