"""Large tensors through shared memory to the session's real Triton (``triton_shm.py``).

Every test compares what comes back through the regions with the same call over gRPC, and
checks what Triton has registered (its own status API) and what is left in /dev/shm: the
failure paths first (Triton forgetting the regions, abandoned calls, no shared /dev/shm,
a frontend that died), then reuse and the budget.
"""
from __future__ import annotations

import asyncio
import errno
import mmap
import os
import signal
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from reading_frontend import ocr, triton_shm
from reading_frontend.config import FrontendConfig
from reading_frontend.errors import DeadlineError, ReadingError
from reading_frontend.triton_client import AsyncTriton, is_loopback
from reading_frontend.triton_models import image_model_output_bytes, image_model_request
from tests.ocr_pages import printed_pages

MIB = 1 << 20


@pytest.fixture(scope="module")
def page() -> np.ndarray:
    """A generated page as the detection model takes it: uint8 [1, H, W, 3]."""
    image = ocr.decode_image(printed_pages(1, seed=5)[0][0])
    return ocr.det_preprocess(ocr.prepare_image(image).image)


@pytest.fixture(scope="module")
def lines() -> np.ndarray:
    """A recognition batch: float32 [6, 3, 48, 640], 2.2 MiB."""
    return np.random.default_rng(7).uniform(-1, 1, (6, 3, 48, 640)).astype(np.float32)


def registered(triton_client, token: str) -> set[str]:
    """Names of the regions Triton holds for the pool with ``token``."""
    status = triton_client.get_system_shared_memory_status(as_json=True)
    return {r["name"] for r in status.get("regions", {}).values()
            if r["name"].startswith(f"{triton_shm.PREFIX}{token}")}


def unregister_behind_its_back(triton_client, name: str) -> None:
    """What a Triton restart does to one region; Triton may hold it a moment after a call."""
    deadline = time.monotonic() + 60
    while True:
        try:
            triton_client.unregister_system_shared_memory(name)
            return
        except InferenceServerException as err:
            assert "in use" in err.message() and time.monotonic() < deadline, err.message()
            time.sleep(0.05)


def files(token: str) -> set[str]:
    """The pool's files in /dev/shm: its regions and, while it lives, its lock file."""
    return {p.name for p in triton_shm.SHM_DIR.glob(f"{triton_shm.PREFIX}{token}*")}


def region_files(token: str) -> set[str]:
    return {name for name in files(token) if not name.endswith(".lock")}


async def detect(client: AsyncTriton, page: np.ndarray, timeout_s: float = 60) -> np.ndarray:
    inputs, names = image_model_request("ocr_det", page)
    out = await client.infer("ocr_det", inputs, names, timeout_s,
                             image_model_output_bytes("ocr_det", page))
    return out["probability_map"]


async def wait_until(condition, failure: str, seconds: float = 120) -> None:
    """Wait on ``condition`` with a generous deadline (a loaded machine is slow)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, failure
        await asyncio.sleep(0.002)


async def calls_in_flight(client: AsyncTriton, page: np.ndarray, count: int) -> list[asyncio.Task]:
    """``count`` detection calls, returned once one holds a region."""
    calls = [asyncio.create_task(detect(client, page)) for _ in range(count)]
    await wait_until(lambda: client.shared_memory._in_use, "no call leased a region")
    return calls


def end_process(client: AsyncTriton) -> None:
    """What a frontend's process ending leaves: its lock goes, its regions stay registered."""
    os.close(client.shared_memory._lock_fd)
    client.shared_memory._lock_fd = None


def hold_control_call(client: AsyncTriton, method: str, hold) -> tuple[asyncio.Event, object]:
    """Make the client's control call ``method`` (register, unregister, status) say it was
    entered, then await ``hold()`` before it runs: a slow or stalled Triton. Returns the
    event it sets and the real call."""
    real = getattr(client._client, method)
    entered = asyncio.Event()

    async def held(*args, **kwargs):
        entered.set()
        await hold()
        return await real(*args, **kwargs)

    setattr(client._client, method, held)
    return entered, real


async def recognize(client: AsyncTriton, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = await client.infer("ocr_rec", {"image": batch}, ["best_class", "best_probability"], 60)
    return out["best_class"], out["best_probability"]


@pytest.fixture(scope="module")
def expected(triton, page, lines):
    """The same calls over gRPC only."""
    async def run():
        client = AsyncTriton(triton.grpc_url, shared_memory_bytes=0)
        try:
            assert not client.shared_memory.enabled
            return await detect(client, page), await recognize(client, lines)
        finally:
            await client.close()
    return asyncio.run(run())


def test_regions_triton_forgot_are_replaced_and_the_call_still_answers(
        triton, triton_client, page, lines, expected):
    """What a Triton restart does: our regions are gone from its table. The call that finds
    out is sent again over gRPC, the old regions are dropped and new ones registered."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        token = client.shared_memory.token
        try:
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            first = registered(triton_client, token)
            assert len(first) == 2, first  # the page in, the map out
            for name in first:
                unregister_behind_its_back(triton_client, name)
            over_grpc = client.shared_memory.tensors_over_grpc
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            assert client.shared_memory.tensors_over_grpc == over_grpc + 2, "the retry is counted as gRPC"
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            second = registered(triton_client, token)
            assert len(second) == 2 and not second & first, (first, second)
            assert not files(token) & first, "the forgotten regions are unlinked here"
            rec = await recognize(client, lines)
            np.testing.assert_array_equal(rec[0], expected[1][0])
            np.testing.assert_array_equal(rec[1], expected[1][1])
        finally:
            await client.close()
        assert not registered(triton_client, token) and not files(token)
    asyncio.run(run())


def test_a_region_in_use_when_triton_forgot_them_is_not_reused(triton, triton_client):
    """A call that was using a region when another found Triton had forgotten them all
    must not put it back in the pool: Triton would refuse it again."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        try:
            busy = await pool.lease(2 * MIB)
            idle = await pool.lease(2 * MIB)
            pool.release(idle)
            pool.forget_all()
            pool.release(busy)
            assert not any(pool._free.values())
            assert {busy.name, idle.name} <= set(pool._retired)
            fresh = await pool.lease(2 * MIB)
            assert fresh.name not in (busy.name, idle.name)
            assert fresh.name in registered(triton_client, pool.token)
            pool.release(fresh)
        finally:
            await client.close()
        assert not registered(triton_client, pool.token) and not files(pool.token)
    asyncio.run(run())


def test_an_abandoned_call_never_lends_its_regions_to_another(triton, triton_client, page, expected):
    """A call past its deadline may still be read and written by Triton: its regions are
    never leased again, and they leave Triton's table once Triton lets go of them."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        token = pool.token
        try:
            with pytest.raises(DeadlineError):
                await detect(client, page, timeout_s=0.005)
            abandoned = set(pool._retired)
            assert len(abandoned) == 2, abandoned
            assert not pool._in_use and not any(pool._free.values())
            assert not files(token) & abandoned, "unlinked here at once"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            while registered(triton_client, token) & abandoned:
                assert loop.time() < deadline, "Triton never let go of the abandoned regions"
                np.testing.assert_array_equal(await detect(client, page), expected[0])
                held = {r.name for regions in pool._free.values() for r in regions}
                assert not held & abandoned
        finally:
            await client.close()
        assert not registered(triton_client, token) and not files(token)
    asyncio.run(run())


def test_a_triton_that_cannot_map_the_regions_turns_them_off(
        triton, triton_client, page, expected, monkeypatch):
    """Triton elsewhere (another pod, another /dev/shm) cannot open our key: the pool says
    why, turns itself off, and every call goes over gRPC."""
    real_reserve = triton_shm.SharedMemoryPool._reserve

    def reserve_then_hide(pool, name, size):
        memory = real_reserve(pool, name, size)
        os.unlink(triton_shm.SHM_DIR / name)  # as if Triton had another /dev/shm
        return memory

    monkeypatch.setattr(triton_shm.SharedMemoryPool, "_reserve", reserve_then_hide)

    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        try:
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            assert not client.shared_memory.enabled
            assert "same /dev/shm" in client.shared_memory.disabled_because
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            assert not registered(triton_client, client.shared_memory.token)
        finally:
            await client.close()
    asyncio.run(run())


def test_a_dead_frontends_regions_are_unregistered_and_a_live_ones_kept(triton, triton_client, page):
    async def run():
        dead, live = AsyncTriton(triton.grpc_url, 64 * MIB), AsyncTriton(triton.grpc_url, 64 * MIB)
        await detect(dead, page)
        await detect(live, page)
        dead_names = registered(triton_client, dead.shared_memory.token)
        assert len(dead_names) == 2
        end_process(dead)
        orphan = sorted(dead_names)[0]  # a region Triton forgot (restarted) but whose file stays
        unregister_behind_its_back(triton_client, orphan)
        assert orphan in files(dead.shared_memory.token)
        newcomer = AsyncTriton(triton.grpc_url, 64 * MIB)
        try:
            await detect(newcomer, page)
            await wait_until(lambda: not registered(triton_client, dead.shared_memory.token),
                             "the dead frontend's regions stayed registered")
            assert not files(dead.shared_memory.token)
            assert len(registered(triton_client, live.shared_memory.token)) == 2
            await detect(live, page)  # its regions still work
        finally:
            await newcomer.close()
            await live.close()
            await dead._client.close()
    asyncio.run(run())


def test_a_lock_file_removed_or_held_by_a_sweeper_is_taken_again(monkeypatch):
    """Another frontend's sweep tests a lock file by holding it for a moment, and may find
    our new one before we lock it and remove it as a dead one's: we retry, and must end
    holding a lock on the file at the path, or the next sweep would take us for dead."""
    real_flock = triton_shm.fcntl.flock
    events = []

    def flock_held_then_swept(fd, operation):
        if not events:
            events.append("held by a sweeper")
            raise BlockingIOError(11, "Resource temporarily unavailable")
        real_flock(fd, operation)
        if len(events) == 1:
            events.append(os.fstat(fd).st_ino)
            os.unlink(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(triton_shm.fcntl, "flock", flock_held_then_swept)

    async def run():
        client = AsyncTriton("127.0.0.1:1", 64 * MIB)
        pool = client.shared_memory
        try:
            assert await pool._take_lock() and pool.enabled
            held = os.fstat(pool._lock_fd).st_ino
            assert len(events) == 2 and held != events[1]
            assert held == os.stat(pool._lock_path(pool.token)).st_ino
            assert pool._owner_alive(pool.token)
        finally:
            await client.close()
        assert not pool._lock_path(pool.token).exists()
    asyncio.run(run())


def test_regions_are_reused_and_the_budget_is_kept(triton, triton_client, page, lines, expected):
    """Sequential calls reuse the same regions; concurrent calls beyond the budget send
    their tensors over gRPC, and every answer is the same."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 8 * MIB)  # one page and its map: 4 + 4 MiB
        pool = client.shared_memory
        try:
            for _ in range(3):
                np.testing.assert_array_equal(await detect(client, page), expected[0])
            names = registered(triton_client, pool.token)
            assert len(names) == 2
            results = await asyncio.gather(*(detect(client, page) for _ in range(4)),
                                           *(recognize(client, lines) for _ in range(2)))
            for found in results[:4]:
                np.testing.assert_array_equal(found, expected[0])
            for best_class, best_probability in results[4:]:
                np.testing.assert_array_equal(best_class, expected[1][0])
                np.testing.assert_array_equal(best_probability, expected[1][1])
            assert pool.held_bytes <= 8 * MIB
            assert len(registered(triton_client, pool.token)) <= 3
        finally:
            await client.close()
        assert not registered(triton_client, pool.token) and not files(pool.token)
    asyncio.run(run())


def test_only_a_loopback_triton_is_offered_shared_memory():
    assert is_loopback("127.0.0.1:8001") and is_loopback("localhost:8001")
    assert is_loopback("[::1]:8001") and is_loopback("127.0.0.2:1")
    assert not is_loopback("10.0.0.7:8001") and not is_loopback("triton.svc:8001")
    assert not is_loopback("[2001:db8::1]:8001")

    async def remote_pool_enabled() -> bool:
        client = AsyncTriton("10.0.0.7:8001", 64 * MIB)
        await client._client.close()
        return client.shared_memory.enabled
    assert not asyncio.run(remote_pool_enabled())


def test_regions_open_to_the_pods_group_only_in_a_set_group_id_dev_shm(tmp_path, monkeypatch):
    """In a pod, /dev/shm is the fsGroup's set-group-ID emptyDir and Triton runs as another
    user of that group; on a host's plain /dev/shm a region stays its owner's alone."""
    monkeypatch.setattr(triton_shm, "SHM_DIR", tmp_path)
    region = tmp_path / "region"
    region.touch(mode=0o600)
    triton_shm._share_with_pod_group(region)
    assert region.stat().st_mode & 0o777 == 0o600
    tmp_path.chmod(0o2770)
    triton_shm._share_with_pod_group(region)
    assert region.stat().st_mode & 0o777 == 0o660


def test_small_tensors_and_region_sizes():
    assert triton_shm.region_size(1) == MIB
    assert triton_shm.region_size(MIB) == MIB
    assert triton_shm.region_size(MIB + 1) == 2 * MIB
    assert triton_shm.region_size(2_918_400) == 4 * MIB


def test_closing_with_calls_in_flight_never_unmaps_a_region_under_them(triton, triton_client, page, expected):
    """The frontend's stop closes the client while OCR calls may still run: their regions
    stay mapped until each call ends (an unmapped region under a call was a segfault).
    Unregistering is slowed so that the calls' answers arrive while close is busy."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        np.testing.assert_array_equal(await detect(client, page), expected[0])  # warm regions
        hold_control_call(client, "unregister_system_shared_memory", lambda: asyncio.sleep(1.0))
        calls = await calls_in_flight(client, page, 3)
        await pool.close()
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, ReadingError), outcome
            else:
                np.testing.assert_array_equal(outcome, expected[0])
        assert not pool._in_use and not files(pool.token)
        await client.close()
        newcomer = AsyncTriton(triton.grpc_url, 64 * MIB)  # clears what Triton still held
        try:
            await detect(newcomer, page)
            assert not registered(triton_client, pool.token)
        finally:
            await newcomer.close()
    asyncio.run(run())


def test_the_budget_is_capped_at_a_quarter_of_the_tmpfs(monkeypatch):
    real_statvfs = os.statvfs

    def small(path):
        found = real_statvfs(path)
        return os.statvfs_result((found.f_bsize, 4096, (16 * MIB) // 4096, *found[3:]))

    monkeypatch.setattr(triton_shm.os, "statvfs", small)
    assert triton_shm.SharedMemoryPool(None, 64 * MIB).budget_bytes == 4 * MIB
    monkeypatch.setattr(triton_shm.os, "statvfs", lambda path: os.statvfs_result(
        (4096, 4096, 256, *real_statvfs(path)[3:])))
    tiny = triton_shm.SharedMemoryPool(None, 64 * MIB)
    assert not tiny.enabled and "too small" in tiny.disabled_because


def test_a_region_file_someone_else_made_first_is_never_used():
    """Another local user who guessed a name and made the file first (mode 0666) must not
    get tenants' pages: the file is created with O_EXCL or not at all."""
    pool = triton_shm.SharedMemoryPool(None, 64 * MIB)
    name = f"{triton_shm.PREFIX}{pool.token}-planted"
    planted = triton_shm.SHM_DIR / name
    planted.write_bytes(b"planted")
    try:
        assert not pool._reserve(name, MIB)
        assert planted.read_bytes() == b"planted" and not pool.enabled
    finally:
        planted.unlink()


def test_a_triton_that_is_down_or_stopped_costs_the_call_not_the_pool(triton, page, expected):
    """UNAVAILABLE or a deadline while registering says nothing about shared memory: the
    call fails as it would over gRPC, within its deadline, and the pool stays on."""
    async def run():
        down = AsyncTriton("127.0.0.1:1", 64 * MIB)
        try:
            with pytest.raises(ReadingError):
                await asyncio.wait_for(detect(down, page, timeout_s=5), 60)
            assert down.shared_memory.enabled and not down.shared_memory._in_use
            assert not region_files(down.shared_memory.token)
        finally:
            await down.close()
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        try:
            assert await client.ready()  # connected, no region yet: the listing and
            os.kill(triton.process.pid, signal.SIGSTOP)  # registering meet a stopped Triton
            try:
                with pytest.raises(DeadlineError):
                    await asyncio.wait_for(detect(client, page, timeout_s=2), 60)
            finally:
                os.kill(triton.process.pid, signal.SIGCONT)
            assert client.shared_memory.enabled
            np.testing.assert_array_equal(await detect(client, page), expected[0])
        finally:
            await client.close()
    asyncio.run(run())


def test_a_call_cancelled_while_registering_leaves_no_file_and_no_region(triton, triton_client, page):
    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        started, _ = hold_control_call(client, "register_system_shared_memory",
                                       lambda: asyncio.sleep(0.2))
        call = asyncio.create_task(detect(client, page))
        await asyncio.wait_for(started.wait(), 60)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await client.close()
        assert not files(pool.token) and not registered(triton_client, pool.token)
    asyncio.run(run())


def test_an_output_larger_than_its_region_is_sent_again_over_grpc_without_dropping_the_pool(
        triton, page, expected, caplog):
    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        try:
            inputs, names = image_model_request("ocr_det", page)
            out = await client.infer("ocr_det", inputs, names, 60, {"probability_map": MIB})
            np.testing.assert_array_equal(out["probability_map"], expected[0])
            assert pool._generation == 0 and pool.enabled
        finally:
            await client.close()
    asyncio.run(run())
    assert "refused a shared-memory region for ocr_det" in caplog.text


def test_settings_are_checked_and_the_pools_state_is_said():
    with pytest.raises(ValueError, match="TRITON_SHARED_MEMORY_MB=-5"):
        FrontendConfig.from_env({"PERCOLATE_READING_TRITON_SHARED_MEMORY_MB": "-5"})
    assert FrontendConfig.from_env({}).triton_shared_memory_mb == 64

    async def described(url: str, budget: int) -> str:
        client = AsyncTriton(url, budget)
        await client._client.close()
        return client.shared_memory.describe()
    assert "not on this host" in asyncio.run(described("10.0.0.7:8001", 64 * MIB))
    assert "turned off" in asyncio.run(described("127.0.0.1:8001", 0))
    assert "up to 64 MiB" in asyncio.run(described("127.0.0.1:8001", 64 * MIB))


def test_regions_retired_while_triton_was_unreachable_come_back_when_it_answers(
        triton, triton_client, page, expected):
    """A call abandoned while Triton cannot answer leaves regions only Triton can let go:
    they fill the budget (tensors over gRPC, counted), and are unregistered once Triton
    answers again, however long that takes, so shared memory comes back."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 8 * MIB)
        pool = client.shared_memory
        real_unregister = client._client.unregister_system_shared_memory
        reachable = asyncio.Event()

        async def unreachable_until_set(*args, **kwargs):
            if not reachable.is_set():
                raise InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")
            return await real_unregister(*args, **kwargs)

        client._client.unregister_system_shared_memory = unreachable_until_set
        try:
            with pytest.raises(DeadlineError):
                await detect(client, page, timeout_s=0.005)
            assert pool.held_bytes == 8 * MIB and len(pool._retired) == 2
            # the abandoned call may have counted one, as its deadline passed while registering
            before = pool.tensors_over_grpc
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            assert pool.tensors_over_grpc == before + 2, "the budget is held: page and map over gRPC"
            reachable.set()
            await wait_until(lambda: not pool._retired, "the retired regions were never unregistered")
            shared = pool.tensors_shared
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            assert pool.tensors_shared == shared + 2
        finally:
            await client.close()
        assert not registered(triton_client, pool.token) and not files(pool.token)
    asyncio.run(run())


@pytest.mark.parametrize("call, code", [("posix_fallocate", errno.ENOSPC), ("open", errno.EMFILE)])
def test_a_passing_error_making_a_region_costs_one_tensor_not_the_pool(
        triton, page, expected, monkeypatch, call, code):
    """A full tmpfs (pages are reserved when a region is made, so ENOSPC comes there, not as
    a SIGBUS in Triton when it first touches a page) or no file descriptor left: that
    tensor goes over gRPC, and the pool stays on."""
    real = getattr(triton_shm.os, call)
    failures = []

    def fails_once(*args):
        if not failures and (call != "open" or args[1] & os.O_EXCL):
            failures.append(args[0])
            raise OSError(code, os.strerror(code))
        return real(*args)

    monkeypatch.setattr(triton_shm.os, call, fails_once)

    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        try:
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            assert failures and pool.enabled
            assert (pool.tensors_over_grpc, pool.tensors_shared) == (1, 1)  # the page, the map
            assert len(region_files(pool.token)) == 1
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            assert (pool.tensors_over_grpc, pool.tensors_shared) == (1, 3)
        finally:
            await client.close()
    asyncio.run(run())


def test_free_regions_make_room_for_another_size_only_when_that_suffices(
        triton, triton_client, page, lines, expected):
    """A full budget of free regions gives one up (unregistered at once) for a tensor of
    another size; regions in use are never counted as room."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 8 * MIB)  # the page and its map: 4 + 4 MiB
        pool = client.shared_memory
        try:
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            first = registered(triton_client, pool.token)
            small = lines[:, :, :, :320]  # 1.1 MiB: a 2 MiB region
            reference = AsyncTriton(triton.grpc_url, 0)
            try:
                wanted = (await recognize(reference, small))[0]
            finally:
                await reference.close()
            # Triton may hold a region a moment after answering: the drop then makes no room
            # yet, that tensor goes over gRPC, and the region is unregistered when let go
            for _ in range(200):
                shared = pool.tensors_shared
                np.testing.assert_array_equal((await recognize(client, small))[0], wanted)
                if pool.tensors_shared > shared:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the small batch never got a region")
            now = registered(triton_client, pool.token)
            assert len(now) == 2 and len(now & first) == 1 and pool.held_bytes == 6 * MIB
            busy = await pool.lease(3 * MIB)  # holds the other 4 MiB
            assert await pool.lease(8 * MIB) is None  # 2 MiB free cannot make room for 8
            assert len(registered(triton_client, pool.token)) == 2
            pool.release(busy)
        finally:
            await client.close()
    asyncio.run(run())


def test_a_sweep_holds_a_dead_frontends_lock_until_its_files_are_gone(
        triton, triton_client, page, monkeypatch):
    """Else a newcomer that drew the same lock file could lock it between the sweep's test
    and its removal, and live on without a lock file: the next sweep would clear it."""
    async def run():
        dead = AsyncTriton(triton.grpc_url, 64 * MIB)
        await detect(dead, page)
        token = dead.shared_memory.token
        end_process(dead)
        lock_path = dead.shared_memory._lock_path(token)
        seen = []
        real_unlink = triton_shm._unlink

        def unlink_noting_the_lock(path):
            if path == lock_path:
                probe = os.open(path, os.O_RDONLY)
                try:
                    triton_shm.fcntl.flock(probe, triton_shm.fcntl.LOCK_EX | triton_shm.fcntl.LOCK_NB)
                    seen.append("free")
                except BlockingIOError:
                    seen.append("held")
                finally:
                    os.close(probe)
            real_unlink(path)

        monkeypatch.setattr(triton_shm, "_unlink", unlink_noting_the_lock)
        sweeper = AsyncTriton(triton.grpc_url, 64 * MIB)
        try:
            await detect(sweeper, page)
            assert seen == ["held"] and not files(token)
            await wait_until(lambda: not registered(triton_client, token),
                             "the dead frontend's regions stayed registered")
        finally:
            await sweeper.close()
            await dead._client.close()
    asyncio.run(run())


def test_closing_waits_for_calls_in_flight_and_unregisters_their_regions(
        triton, triton_client, page, expected, monkeypatch):
    monkeypatch.setattr(triton_shm, "CLOSE_WAIT_S", 120.0)  # generous: a loaded machine is slow

    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        calls = await calls_in_flight(client, page, 2)
        await pool.close()
        for found in await asyncio.gather(*calls):
            np.testing.assert_array_equal(found, expected[0])
        assert not registered(triton_client, pool.token) and not files(pool.token)
        await client.close()
    asyncio.run(run())


def test_retiring_outside_an_event_loop_records_the_region():
    """A call's coroutine closed with no loop running still gives its regions up."""
    pool = triton_shm.SharedMemoryPool(None, 64 * MIB)
    region = triton_shm.Region(f"{triton_shm.PREFIX}{pool.token}-none", MIB, mmap.mmap(-1, MIB))
    pool._in_use.add(region)
    pool.retire(region)
    assert region.destroyed and pool._retired == {region.name: MIB} and not pool._in_use


def tracked(pool) -> set[str]:
    """Every region the pool accounts for: free, in use, or retired."""
    return ({r.name for regions in pool._free.values() for r in regions}
            | {r.name for r in pool._in_use} | set(pool._retired))


def test_a_call_cancelled_while_a_free_region_is_dropped_leaves_it_counted(
        triton, triton_client, page):
    """Dropping a free region for room awaits Triton's unregister; a tenant's call
    cancelled there must not leave the region mapped in Triton but counted nowhere."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 8 * MIB)
        pool = client.shared_memory
        await detect(client, page)  # two free 4 MiB regions fill the budget
        answered = asyncio.Event()
        waiting, _ = hold_control_call(client, "unregister_system_shared_memory", answered.wait)
        try:
            dropping = asyncio.create_task(pool.lease(6 * MIB))  # an 8 MiB region: drops both
            await asyncio.wait_for(waiting.wait(), 60)
            dropping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await dropping
            assert registered(triton_client, pool.token) <= tracked(pool)
            assert pool.held_bytes <= 8 * MIB
            answered.set()
            await wait_until(lambda: not pool._retired, "the dropped region was never unregistered")
            assert registered(triton_client, pool.token) <= tracked(pool)
        finally:
            answered.set()
            await client.close()
        assert not registered(triton_client, pool.token) and not files(pool.token)
    asyncio.run(run())


def test_a_free_region_triton_will_not_let_go_stops_the_dropping(triton, triton_client, page, lines):
    """If unregistering a dropped region fails, no room was made: the other free regions
    are kept, the budget holds, and that tensor goes over gRPC."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 16 * MIB)
        pool = client.shared_memory
        first, second = await asyncio.gather(detect(client, page), detect(client, page))
        assert pool.held_bytes == 16 * MIB and len(tracked(pool)) == 4
        real_unregister = client._client.unregister_system_shared_memory

        async def too_slow(*args, **kwargs):
            raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")

        client._client.unregister_system_shared_memory = too_slow
        try:
            assert await pool.lease(6 * MIB) is None
            assert pool.held_bytes == 16 * MIB and len(pool._retired) == 1
            assert sum(len(regions) for regions in pool._free.values()) == 3
            assert registered(triton_client, pool.token) <= tracked(pool)
        finally:
            client._client.unregister_system_shared_memory = real_unregister
            await client.close()
        assert not registered(triton_client, pool.token)
    asyncio.run(run())


def test_a_lock_file_that_cannot_be_made_for_a_moment_costs_one_call(triton, page, expected, monkeypatch):
    real_open = triton_shm.os.open
    failures = []

    def no_descriptor_once(path, flags, *args):
        if not failures and str(path).endswith(".lock"):
            failures.append(path)
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, flags, *args)

    monkeypatch.setattr(triton_shm.os, "open", no_descriptor_once)

    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        try:
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            # the page went over gRPC; the map's lease found the lock file makeable again
            assert failures and pool.enabled and pool.tensors_shared == 1
            np.testing.assert_array_equal(await detect(client, page), expected[0])
            assert pool.tensors_shared == 3 and pool._lock_fd is not None
        finally:
            await client.close()
    asyncio.run(run())


def test_a_first_call_cancelled_while_sweeping_sweeps_again_next_time(triton, triton_client, page):
    async def run():
        dead = AsyncTriton(triton.grpc_url, 64 * MIB)
        await detect(dead, page)
        end_process(dead)
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        listing, real_status = hold_control_call(client, "get_system_shared_memory_status",
                                                 lambda: asyncio.sleep(30))
        try:
            first = asyncio.create_task(detect(client, page))
            await asyncio.wait_for(listing.wait(), 60)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            client._client.get_system_shared_memory_status = real_status
            await detect(client, page)
            await wait_until(lambda: not registered(triton_client, dead.shared_memory.token),
                             "the dead frontend's regions stayed registered")
        finally:
            await client.close()
            await dead._client.close()
    asyncio.run(run())


def test_retired_regions_are_polled_quickly_while_in_use_and_backed_off_while_unreachable(
        triton, monkeypatch):
    """Triton lets go of a region as soon as its request ends: while it answers "in use",
    retired regions are tried every IN_USE_POLL_S, so abandoned calls cannot hold the
    budget for long; only a Triton that cannot answer is backed off from."""
    real_sleep = asyncio.sleep
    pauses = []

    async def noting_sleep(seconds, *args):
        if seconds in (triton_shm.IN_USE_POLL_S,) or seconds > triton_shm.IN_USE_POLL_S:
            pauses.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(triton_shm.asyncio, "sleep", noting_sleep)

    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        answers = ["in use"] * 4 + ["unreachable"] * 4

        async def unregister(name, **kwargs):
            answer = answers.pop(0) if answers else "ok"
            if answer == "in use":
                raise InferenceServerException(
                    f"Cannot unregister shared memory region '{name}', it is currently in use.",
                    status="StatusCode.INTERNAL")
            if answer == "unreachable":
                raise InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")

        client._client.unregister_system_shared_memory = unregister
        try:
            pool._retired["percolate-fe-000000000000-gone"] = MIB  # as _retire records it
            pool._retired_at["percolate-fe-000000000000-gone"] = time.monotonic()
            pool._unregister_soon()
            await wait_until(lambda: not pool._retired, "never unregistered")
            assert pauses[:4] == [triton_shm.IN_USE_POLL_S] * 4
            assert pauses[4:] == sorted(pauses[4:]) and pauses[-1] > 4 * triton_shm.IN_USE_POLL_S
        finally:
            await client.close()
    asyncio.run(run())


def test_a_region_registered_after_close_is_unregistered_at_once(
        triton, triton_client, page, expected, monkeypatch):
    """A call whose region was still being registered when the frontend closed must not
    leave it registered: nobody would unregister it later."""
    monkeypatch.setattr(triton_shm, "CLOSE_WAIT_S", 0.05)

    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        pool = client.shared_memory
        go_on = asyncio.Event()
        registering, _ = hold_control_call(client, "register_system_shared_memory", go_on.wait)
        call = asyncio.create_task(detect(client, page))
        await asyncio.wait_for(registering.wait(), 60)
        await pool.close()
        go_on.set()
        np.testing.assert_array_equal(await call, expected[0])  # over gRPC
        assert not registered(triton_client, pool.token) and not files(pool.token)
        assert not pool._retired and pool.held_bytes == 0  # nothing counted that is gone
        await client.close()
    asyncio.run(run())


def test_a_large_bytes_tensor_goes_over_grpc(triton):
    """Only fixed-width numbers go through regions: an object (BYTES) array is sent as it
    always was, and a wrong model name is still the answer."""
    async def run():
        client = AsyncTriton(triton.grpc_url, 64 * MIB)
        try:
            texts = np.array([b"word"] * 40_000, dtype=object)  # numpy counts 320 kB (pointers)
            assert texts.nbytes >= triton_shm.MIN_TENSOR_BYTES
            with pytest.raises(ReadingError, match="no_such_model"):
                await client.infer("no_such_model", {"text": texts}, ["out"], 30)
            assert client.shared_memory.tensors_shared == 0
        finally:
            await client.close()
    asyncio.run(run())


def test_a_lease_short_of_budget_asks_triton_only_what_can_help(triton, monkeypatch):
    """Leases short of budget try retired regions themselves, but not one Triton called in
    use a moment ago, and no more once one fits: concurrent calls must not queue behind a
    stream of unregister calls that cannot succeed (a long request holds the region)."""
    monkeypatch.setattr(triton_shm, "IN_USE_POLL_S", 60.0)  # "a moment ago", on any machine

    async def run():
        client = AsyncTriton(triton.grpc_url, 8 * MIB)
        pool = client.shared_memory
        asked = []

        async def held_by_a_long_request(name, **kwargs):
            asked.append(name)
            if name.endswith("held"):
                raise InferenceServerException(
                    f"Cannot unregister shared memory region '{name}', it is currently in use.",
                    status="StatusCode.INTERNAL")

        client._client.unregister_system_shared_memory = held_by_a_long_request
        try:
            pool._closing = True  # no background task: only the leases ask
            pool._retired.update({"percolate-fe-000000000000-held": 4 * MIB,
                                  "percolate-fe-000000000000-done": 4 * MIB})
            await pool._unregister_retired(time.monotonic() + 30, room_for=4 * MIB)
            assert asked == ["percolate-fe-000000000000-held", "percolate-fe-000000000000-done"]
            asked.clear()
            pool._retired["percolate-fe-000000000000-late"] = 4 * MIB  # the budget is short again
            await pool._unregister_retired(time.monotonic() + 30, room_for=4 * MIB)
            assert asked == ["percolate-fe-000000000000-late"], "the held one was asked again"
            assert set(pool._retired) == {"percolate-fe-000000000000-held"}
        finally:
            pool._retired.clear()
            await client.close()
    asyncio.run(run())


def test_a_dead_frontends_region_still_in_use_is_unregistered_later(triton, triton_client, page):
    """Triton may hold a dead frontend's region a moment after its last call: the sweep
    keeps such a region to unregister in the background, counted until then."""
    async def run():
        dead = AsyncTriton(triton.grpc_url, 64 * MIB)
        await detect(dead, page)
        token = dead.shared_memory.token
        end_process(dead)
        sweeper = AsyncTriton(triton.grpc_url, 64 * MIB)
        real_unregister = sweeper._client.unregister_system_shared_memory
        refused = set()

        async def in_use_once(name, **kwargs):
            if name.startswith(f"{triton_shm.PREFIX}{token}") and name not in refused:
                refused.add(name)
                raise InferenceServerException(
                    f"Cannot unregister shared memory region '{name}', it is currently in use.",
                    status="StatusCode.INTERNAL")
            return await real_unregister(name, **kwargs)

        sweeper._client.unregister_system_shared_memory = in_use_once
        try:
            await detect(sweeper, page)
            assert len(refused) == 2 and not files(token)
            await wait_until(lambda: not registered(triton_client, token),
                             "the dead frontend's regions stayed registered")
            assert not sweeper.shared_memory._retired
        finally:
            await sweeper.close()
            await dead._client.close()
    asyncio.run(run())
