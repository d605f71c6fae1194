"""Large tensors to and from a co-located Triton through POSIX shared memory, not gRPC.

Why: an OCR page's detection input (2.9 MB of pixels) and probability map (3.9 MB) cost
about 19 ms per call when they cross as gRPC messages, even over loopback: serialising,
HTTP/2 framing, parsing and copying on both sides. Triton can read inputs from and write
outputs to a shared-memory region the client registered, which leaves only the small
request on the channel. It works only where Triton sees the frontend's ``/dev/shm``: the
same host (the embedded default) or the same pod (the chart mounts one in-memory volume
at ``/dev/shm`` in both containers). Where Triton answers that it cannot map a region the
pool turns itself off, and every call goes over gRPC as before.

Rules that keep one call's data away from another's, and Triton alive:
- Regions are reused: a call leases one per large tensor and gives it back when the call
  ends normally. A call that fails, times out or is cancelled may still be read or written
  by Triton, so its regions are never reused: unmapped here at once, unregistered in the
  background once Triton lets go (Triton 2.50+ refuses to unregister a region in use), and
  counted against the budget until then. A region is unmapped only by the call that holds
  it, never under a call in flight.
- Each region is created here with ``O_EXCL`` under a random name, mode 0600 (0660 in a
  pod's set-group-ID ``/dev/shm``, see ``_share_with_pod_group``), and its pages are
  reserved with ``posix_fallocate``: a full tmpfs is an error at creation (the tensor goes
  over gRPC), never a SIGBUS in Triton or here when a page is first touched.
- The budget is capped at a quarter of the tmpfs: the rest is for Triton's Python backend.
- Every control call (list, register, unregister) has a short deadline; a Triton that is
  down or slow makes the call go over gRPC, and does not turn the pool off.
- Each frontend's regions carry its random token, and it holds a lock file while it
  lives; a frontend that starts clears what dead ones left, in Triton and in /dev/shm.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import mmap
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

PREFIX = "percolate-fe-"
"""Every region this service registers starts with this, then its owner's token."""
SHM_DIR = Path("/dev/shm")
TOKEN = re.compile("[0-9a-f]{12}")
"""A frontend's token (``secrets.token_hex(6)``): anything else under PREFIX is not ours."""
MIN_REGION_BYTES = 1 << 20
"""Regions come in powers of two from 1 MiB, so pages of similar size share them."""
MIN_TENSOR_BYTES = 256 << 10
"""Smaller tensors go over gRPC: the region's bookkeeping would cost more than it saves."""
TMPFS_SHARE = 4
"""The budget is at most 1/TMPFS_SHARE of the tmpfs at SHM_DIR."""
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EMFILE, errno.ENFILE,
                              errno.EAGAIN, errno.EINTR})
"""Errors making a region that send one call over gRPC without turning the pool off."""
CONTROL_TIMEOUT_S = 5.0
IN_USE_POLL_S = 0.1
"""How often retired regions are tried again while Triton says they are in use..."""
IN_USE_FAST_S = 2.0
"""...for this long after they were retired; then once a second."""
LET_GO, IN_USE, UNREACHABLE = "let go", "in use", "unreachable"
"""Longest wait for one register, unregister or status call."""
CLOSE_WAIT_S = 2.0
"""How long ``close`` retries regions Triton still reports in use just after a call."""


@dataclass(eq=False)
class Region:
    """One registered region: Triton knows it as ``name``, the kernel as ``/name``; mapped
    here with Python's ``mmap``, which refuses to unmap while a view of it is alive."""

    name: str
    size: int
    memory: mmap.mmap = field(repr=False)
    generation: int = 0
    """The pool's generation when registered: regions of an older one are unknown to Triton."""
    destroyed: bool = False

    def write(self, array: np.ndarray) -> None:
        """One copy of ``array``'s bytes to the start of the region."""
        self._check()
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if data.size > self.size:
            raise ValueError(f"{data.size} bytes do not fit region {self.name} of {self.size}")
        target = np.frombuffer(self.memory, np.uint8, count=data.size)
        try:
            target[:] = data
        finally:
            del target

    def read(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A copy of the tensor Triton wrote: the region goes back to the pool."""
        self._check()
        count = int(np.prod(shape))
        if count * np.dtype(dtype).itemsize > self.size:
            raise ValueError(f"Triton describes an output of {shape} {dtype}, larger than region {self.name}")
        source = np.frombuffer(self.memory, dtype, count=count)
        try:
            return source.reshape(shape).copy()
        finally:
            del source

    def destroy(self) -> None:
        """Unmap and unlink here; Triton keeps its own mapping until it unregisters."""
        if self.destroyed:
            return
        self.destroyed = True
        try:
            self.memory.close()
        except BufferError:  # a view is still alive: the mapping goes when it does
            log.warning("shared-memory region %s is still in use here; unmapped later", self.name)
        _unlink(SHM_DIR / self.name)

    def _check(self) -> None:
        if self.destroyed:
            raise RuntimeError(f"shared-memory region {self.name} was already removed")


def region_size(nbytes: int) -> int:
    return max(MIN_REGION_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())


def refusal(err: InferenceServerException) -> str:
    """Why Triton refused a call for one of its regions: "forgotten" (it restarted and no
    longer knows them), "refused" (e.g. an output larger than its region), or "" when the
    error is not about our regions. The Python backend's own shared memory ("Failed to
    increase the shared memory pool size") is not ours."""
    message = err.message() or ""
    if "Unable to find shared memory region" in message:
        return "forgotten"
    if "shared memory size specified with the request" in message or "Invalid offset + byte size for shared memory region" in message:
        return "refused"
    return ""


def _unreachable(err: InferenceServerException) -> bool:
    """Triton is down, restarting or slow: no verdict on shared memory."""
    return any(code in str(err.status() or "") for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"))


class SharedMemoryPool:
    """Registered regions for one frontend process, at most ``budget_bytes`` of them.

    Used only from the event loop that owns ``client`` (a ``tritonclient.grpc.aio``
    client): no locks. ``lease`` returns None whenever a tensor should go over gRPC.
    """

    def __init__(self, client, budget_bytes: int) -> None:
        self.client = client
        self.token = secrets.token_hex(6)
        self.budget_bytes = budget_bytes
        self.enabled = budget_bytes >= MIN_REGION_BYTES
        self.disabled_because = "" if self.enabled else "turned off: a budget under 1 MiB"
        if self.enabled:
            self._cap_to_tmpfs()
        self._free: dict[int, list[Region]] = {}
        self._in_use: set[Region] = set()
        self._retired: dict[str, int] = {}
        """Name -> size of regions Triton may still hold; unregistered once it lets go."""
        self._generation = 0
        self._creating = 0
        """Bytes of regions being made and registered: counted against the budget already."""
        self._lock_fd: int | None = None
        self._swept = False
        self._closing = False
        self._unregistering: asyncio.Task | None = None
        self._retired_at: dict[str, float] = {}
        """When each retired name was retired: young ones are polled fast."""
        self._in_use_at: dict[str, float] = {}
        """When Triton last answered "in use" for a retired name: a lease short of budget
        does not ask again sooner than ``IN_USE_POLL_S``."""
        self.tensors_shared = 0
        self.tensors_over_grpc = 0
        """Large tensors (inputs of ``MIN_TENSOR_BYTES`` or more, outputs of a declared
        size) sent through a region, or over gRPC; counted by ``AsyncTriton._infer``."""

    def describe(self) -> str:
        """One line for the log: is it on, with how much, or why not."""
        if self.enabled:
            return f"large tensors reach Triton through shared memory (up to {self.budget_bytes >> 20} MiB of {SHM_DIR})"
        return f"every tensor goes to Triton over gRPC ({self.disabled_because})"

    @property
    def held_bytes(self) -> int:
        """Bytes of /dev/shm this pool holds or Triton still maps for it. Also read by the
        metrics thread: each container is copied whole first (atomic under the GIL)."""
        free = [region for regions in list(self._free.values()) for region in list(regions)]
        return (self._creating + sum(list(self._retired.values()))
                + sum(region.size for region in list(self._in_use)) + sum(region.size for region in free))

    async def lease(self, nbytes: int, deadline: float | None = None) -> Region | None:
        """A region of at least ``nbytes`` for one call, or None: send it over gRPC.
        ``deadline`` (``time.monotonic()``) bounds the control calls this may make."""
        if not self.enabled or self._closing or nbytes < MIN_TENSOR_BYTES:
            return None
        if not self._swept:
            self._swept = True
            try:
                await self._start(deadline)
            except BaseException:  # cancelled: sweep at the next lease
                self._swept = False
                raise
        if not self.enabled or self._lock_fd is None or self._closing:
            return None
        if self._retired:
            self._unregister_soon()
        size = region_size(nbytes)
        free = self._free.get(size)
        if free:
            region = free.pop()
        else:
            if self.held_bytes + size > self.budget_bytes and self._retired:
                await self._unregister_retired(deadline or time.monotonic() + CONTROL_TIMEOUT_S,
                                               room_for=size)
            if self.held_bytes + size > self.budget_bytes and not self._closing:
                await self._drop_free_regions(size, deadline)
            if self._closing:
                return None
            if self.held_bytes + size > self.budget_bytes:
                return None  # all in use: this tensor goes over gRPC
            self._creating += size
            try:
                region = await self._create(size, deadline)
            finally:
                self._creating -= size
            if region is None:
                return None
        self._in_use.add(region)
        return region

    def release(self, region: Region) -> None:
        """Back to the pool after a call that ended normally."""
        if region.generation != self._generation or self._closing:
            self.retire(region)
        elif region in self._in_use:
            self._in_use.discard(region)
            self._free.setdefault(region.size, []).append(region)

    def retire(self, region: Region) -> None:
        """Never reuse ``region``: Triton may still read or write it for an abandoned call."""
        self._in_use.discard(region)
        self._retire(region)

    def forget_all(self) -> None:
        """Triton no longer knows our regions (it restarted): drop every free one; those in
        use are retired when their calls end."""
        self._generation += 1
        for regions in self._free.values():
            for region in regions:
                self._retire(region)
        self._free.clear()

    async def close(self) -> None:
        """Unregister and remove every region, waiting up to ``CLOSE_WAIT_S`` for calls in
        flight to end (a region is never unmapped under a call) and for Triton to let go.
        What is left then (a call that ends later, a region Triton still holds) stays
        registered until the next frontend's sweep clears it: our lock file is gone."""
        self._closing = True
        self.forget_all()
        if self._unregistering is not None:
            self._unregistering.cancel()
        retries_end = time.monotonic() + CLOSE_WAIT_S
        while self._retired or self._in_use or self._creating:
            await self._unregister_retired(min(retries_end, time.monotonic() + CONTROL_TIMEOUT_S))
            if not (self._retired or self._in_use or self._creating) or time.monotonic() > retries_end:
                break
            await asyncio.sleep(0.05)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            _unlink(self._lock_path(self.token))

    # ------------------------------------------------------------------ internals

    def _cap_to_tmpfs(self) -> None:
        try:
            found = os.statvfs(SHM_DIR)
        except OSError as err:
            self._disable(f"{SHM_DIR} is not usable: {err}")
            return
        cap = found.f_blocks * found.f_frsize // TMPFS_SHARE
        if cap < self.budget_bytes:
            log.info("shared memory for Triton capped at %d MiB, a quarter of the %d MiB at %s",
                     cap >> 20, (found.f_blocks * found.f_frsize) >> 20, SHM_DIR)
            self.budget_bytes = cap
        if self.budget_bytes < MIN_REGION_BYTES:
            self._disable(f"{SHM_DIR} is too small")

    def _retire(self, region: Region) -> None:
        self._hold_retired(region.name, region.size)
        region.destroy()
        self._unregister_soon()

    def _hold_retired(self, name: str, size: int) -> None:
        """Triton may still map ``name``: count it until it lets go (``_let_go``)."""
        self._retired[name] = size
        self._retired_at[name] = time.monotonic()

    def _let_go(self, name: str) -> None:
        """Triton has unregistered ``name``: it no longer counts."""
        self._retired.pop(name, None)
        self._retired_at.pop(name, None)
        self._in_use_at.pop(name, None)

    def _unregister_soon(self) -> None:
        """Run the background unregistering unless it runs already (or no loop runs: the
        next lease, or the next frontend's sweep, does it)."""
        if self._closing or (self._unregistering is not None and not self._unregistering.done()):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._unregistering = loop.create_task(self._unregister_in_background())

    async def _unregister_in_background(self) -> None:
        """Unregister retired regions until none is left. Triton lets go of a region as
        soon as its request ends, so while it answers "in use" for a region retired less
        than ``IN_USE_FAST_S`` ago this polls every ``IN_USE_POLL_S`` (one small local call
        per region); for older ones (a long request, abandoned) it backs off to once a
        second, and while Triton cannot answer at all (down, restarting: a restart forgets
        them anyway) to once every 5 s. A lease short of budget asks on its own."""
        pause = IN_USE_POLL_S
        while self._retired and not self._closing:
            outcomes = await self._unregister_retired(time.monotonic() + CONTROL_TIMEOUT_S)
            if not self._retired:
                break
            now = time.monotonic()
            young = any(now - at < IN_USE_FAST_S for at in list(self._retired_at.values()))
            if UNREACHABLE in outcomes:
                pause = min(pause * 2, 5.0)
            else:
                pause = IN_USE_POLL_S if young else min(pause * 2, 1.0)
            await asyncio.sleep(pause)

    async def _unregister_retired(self, deadline: float, room_for: int | None = None) -> set[str]:
        """One pass; a name leaves the list only once Triton has let it go. Returns the
        outcomes seen (``_unregister``'s). With ``room_for`` (a lease short of budget) it
        skips names Triton called in use less than ``IN_USE_POLL_S`` ago, and stops once
        a region of that size fits."""
        outcomes = set()
        for name in list(self._retired):
            if room_for is not None:
                if self.held_bytes + room_for <= self.budget_bytes:
                    break
                if time.monotonic() - self._in_use_at.get(name, 0.0) < IN_USE_POLL_S:
                    continue
            if name not in self._retired:
                continue  # let go by another pass meanwhile
            outcome = await self._unregister(name, deadline)
            outcomes.add(outcome)
            if outcome == LET_GO:
                self._let_go(name)
            elif outcome == IN_USE:
                self._in_use_at[name] = time.monotonic()
        return outcomes

    async def _unregister(self, name: str, deadline: float | None) -> str:
        """LET_GO (also for a name Triton never knew), IN_USE while a request holds the
        region, or UNREACHABLE when Triton cannot answer."""
        try:
            await self.client.unregister_system_shared_memory(
                name, client_timeout=_seconds_left(deadline))
        except InferenceServerException as err:
            if "in use" in (err.message() or ""):
                return IN_USE
            if _unreachable(err):
                return UNREACHABLE
        return LET_GO

    async def _start(self, deadline: float | None) -> None:
        """Hold our lock file, then clear what dead frontends left: their regions in
        Triton's table and their files here. Retried at the next lease if Triton cannot
        list its regions yet."""
        if self._lock_fd is None and not await self._take_lock():
            return
        try:
            status = await self.client.get_system_shared_memory_status(
                as_json=True, client_timeout=_seconds_left(deadline))
        except InferenceServerException as err:
            log.info("could not list Triton's shared-memory regions: %s", err.message())
            self._swept = False
            return
        sizes = {entry.get("name", ""): int(entry.get("byte_size", 0) or 0)
                 for entry in status.get("regions", {}).values()}
        registered = [name for name in sizes if name.startswith(PREFIX)]
        owners = {_owner(name) for name in registered}
        owners |= {_owner(path.name.removesuffix(".lock")) for path in SHM_DIR.glob(f"{PREFIX}*")}
        for owner in sorted(owners - {self.token}):
            held = self._lock_if_dead(owner) if TOKEN.fullmatch(owner) else None
            if held is None:
                continue
            try:  # its lock is held while we clear, so a newcomer cannot take that file
                names = [name for name in registered if _owner(name) == owner]
                for name in names:
                    if await self._unregister(name, deadline) != LET_GO:
                        # still in use (its last call just ended) or no answer: ours to
                        # unregister in the background, and counted until then
                        self._hold_retired(name, sizes[name])
                        self._unregister_soon()
                for path in SHM_DIR.glob(f"{PREFIX}{owner}-*"):
                    _unlink(path)
                _unlink(self._lock_path(owner))
            finally:
                if held >= 0:
                    os.close(held)
            log.info("cleared %d shared-memory regions of a frontend that has exited", len(names))

    async def _take_lock(self) -> bool:
        """Create and lock our lock file. Another frontend's sweep may hold it for a moment
        to test it (we retry), or may have removed it as a dead one's before we locked it
        (checked against the path afterwards)."""
        path = self._lock_path(self.token)
        problem = ""
        for _ in range(50):
            try:
                fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
            except OSError as err:
                if err.errno in TRANSIENT_ERRNOS:  # no lock, no regions: try at the next lease
                    log.info("cannot create a lock file in %s (%s); this call goes over gRPC", SHM_DIR, err)
                    self._swept = False
                else:
                    self._disable(f"cannot create a lock file in {SHM_DIR}: {err}")
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    self._lock_fd = fd
                    return True
                problem = "it was removed while we locked it"
            except BlockingIOError:
                problem = "another process holds it"
            except FileNotFoundError:
                problem = "it was removed while we locked it"
            except OSError as err:
                os.close(fd)
                self._disable(f"cannot lock {path}: {err}")
                return False
            os.close(fd)
            await asyncio.sleep(0.02)
        self._disable(f"cannot lock {path}: {problem}")
        return False

    @staticmethod
    def _lock_path(token: str) -> Path:
        return SHM_DIR / f"{PREFIX}{token}.lock"

    def _owner_alive(self, owner: str) -> bool:
        held = self._lock_if_dead(owner)
        if held is not None and held >= 0:
            os.close(held)
        return held is None

    def _lock_if_dead(self, owner: str) -> int | None:
        """The owner holds its lock file while it lives. If we can take it, it has exited:
        the locked fd (-1 when there is no lock file); None while it lives, or if unsure."""
        try:
            fd = os.open(self._lock_path(owner), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return -1
        except OSError:
            return None  # cannot tell: leave its regions alone
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    async def _create(self, size: int, deadline: float | None) -> Region | None:
        name = f"{PREFIX}{self.token}-{secrets.token_hex(8)}"
        memory = self._reserve(name, size)
        if memory is None:
            return None
        region = Region(name, size, memory, self._generation)
        registered = handled = False
        try:
            await self.client.register_system_shared_memory(
                name, f"/{name}", size, client_timeout=_seconds_left(deadline))
            if self._closing:  # closed meanwhile: nobody would unregister it later
                handled = await self._unregister(name, None) == LET_GO  # its own deadline
                if handled:
                    region.destroy()
                return None
            registered = True
        except InferenceServerException as err:
            if _unreachable(err):
                log.info("could not register a shared-memory region (%s); this call goes over gRPC",
                         err.message())
            else:
                self._disable(f"Triton cannot map the frontend's shared memory ({err.message()}); "
                              f"it needs the same {SHM_DIR} (same host or pod)")
        finally:
            if not (registered or handled):  # also when cancelled: Triton may have it
                self._retire(region)
        return region if registered else None

    def _reserve(self, name: str, size: int) -> mmap.mmap | None:
        """Make the region's file ourselves, new (never one another user made first), reserve
        its pages, so a full tmpfs is ENOSPC now rather than SIGBUS later, and map it."""
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            self._region_failed(f"cannot create a region in {SHM_DIR}", err)
            return None
        try:
            os.posix_fallocate(fd, 0, size)
            memory = mmap.mmap(fd, size)
        except OSError as err:
            _unlink(path)
            self._region_failed(f"cannot reserve a region in {SHM_DIR}", err)
            return None
        finally:
            os.close(fd)
        _share_with_pod_group(path)
        return memory

    async def _drop_free_regions(self, wanted: int, deadline: float | None) -> None:
        """Make room for a region of another size by unregistering free ones, if that can
        make enough room; one Triton still holds stays counted until it lets go."""
        free = [region for regions in self._free.values() for region in regions]
        if self.held_bytes - sum(region.size for region in free) + wanted > self.budget_bytes:
            return  # the rest is in use or retired: dropping would only lose these
        for region in sorted(free, key=lambda r: r.size):
            if self.held_bytes + wanted <= self.budget_bytes:
                break
            if region not in self._free.get(region.size, []):
                continue  # leased by another call while we awaited
            self._free[region.size].remove(region)
            self._hold_retired(region.name, region.size)  # counted even if this call is
            region.destroy()                              # cancelled while Triton answers
            try:
                let_go = await self._unregister(region.name, deadline) == LET_GO
            except BaseException:
                self._unregister_soon()  # cancelled: the background task finishes the job
                raise
            if not let_go:
                self._unregister_soon()
                return  # Triton still holds it: no room made, keep the other free ones
            self._let_go(region.name)

    def _region_failed(self, what: str, err: OSError) -> None:
        """Out of memory, space, inodes or file descriptors passes: this call goes over
        gRPC. Anything else (permissions, a file that exists already) turns the pool off."""
        if err.errno in TRANSIENT_ERRNOS:
            log.info("%s (%s); this call goes over gRPC", what, err)
        else:
            self._disable(f"{what}: {err}")

    def _disable(self, why: str) -> None:
        self.enabled = False
        self.disabled_because = why
        log.warning("tensors go to Triton over gRPC, not shared memory: %s", why)


def _seconds_left(deadline: float | None) -> float:
    if deadline is None:
        return CONTROL_TIMEOUT_S
    return max(0.001, min(CONTROL_TIMEOUT_S, deadline - time.monotonic()))


def _owner(name: str) -> str:
    """The token of the frontend that made the region ``name``."""
    return name[len(PREFIX):].split("-", 1)[0]


def _share_with_pod_group(path: Path) -> None:
    """In a pod, /dev/shm is an emptyDir whose folder is set-group-ID to the pod's fsGroup,
    and Triton runs as another user in that group: it can map the region only if the group
    may read and write it. Elsewhere (a host's /dev/shm) the region stays the owner's own,
    and Triton must run as the same user, as the embedded default does."""
    try:
        if SHM_DIR.stat().st_mode & stat.S_ISGID:
            path.chmod(0o660)
    except OSError as err:
        log.warning("could not open %s to the pod's group: %s", path, err)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("could not remove %s: %s", path, err)
