"""Parsing in worker processes that can be stopped: bounded, fair CPU for documents.

Why processes: a parser is pure Python and C libraries (bs4/lxml, pypdf, openpyxl,
python-docx, the tokenizer) that cannot be interrupted from outside. In a thread it holds
the GIL, starves the event loop (every other tenant's Embed waits), and runs on after its
caller has gone. A worker process can be killed the moment the caller's deadline passes
or it cancels, the kernel enforces its CPU budget (``RLIMIT_CPU``: SIGXCPU when the job has
used ``parse_cpu_budget_s``, no polling), and it runs at a lower priority (nice) so the
frontend's loop and Triton keep the cores they need. A killed worker is replaced at once.

Fairness: ``parse_workers`` processes, one job each; a request holds at most one, and
waiting jobs are served round robin across tenants (the same ``FairAdmission``). While a
Parse waits for or runs in the pool it parks its admission slot, so a tenant with slow
documents does not hold the slots other tenants' small requests need.

OCR of scanned pages stays with the frontend (it calls Triton): the worker sends each
page's PNG back over its pipe with a token, and reads the lines back by token
(``_PipeOcr``). It sends up to ``ParseLimits.ocr_pages_in_flight`` (2) pages ahead
(``parsing/ocrpass.py``), so Triton works on two pages of a scan at once. The frontend
runs at most that many OCR calls per job whatever the worker sends, and answers every one
of them before the job ends, so the next job on the worker never reads a stale answer.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import math
import multiprocessing
import os
import pickle
import resource
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .admission import FairAdmission
from .errors import CpuBudgetError, DeadlineError
from .parsing import Chunk, CorruptDocumentError, ParsedDocument, ParseLimits
from .parsing.ocrpass import PipelinedOcr

log = logging.getLogger("percolate.reading")
BUDGET_SETTING = "PERCOLATE_READING_PARSE_CPU_BUDGET_S"


@dataclass(frozen=True)
class ParseJob:
    content: bytes
    filename: str
    mime_type: str
    ocr_mode: str
    chunk_tokens: int
    overlap_tokens: int


MAX_OCR_PAGES_IN_FLIGHT = 8
"""More would only queue in Triton while the frontend holds every page's image."""

OcrHandler = Callable[[bytes], list]
"""PNG bytes -> OCR lines; runs in a frontend thread (up to ``ocr_pages_in_flight`` at once
per job) while the worker goes on."""


class _Worker:
    def __init__(self, context, tokenizer: Path, limits: ParseLimits, budget_s: float,
                 nice: int) -> None:
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, name="percolate-parse",
                                       args=(child, str(tokenizer), limits, budget_s, nice),
                                       daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.stopped_because = ""
        self.send_lock = threading.Lock()  # the job's thread and its OCR threads all answer on conn

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def kill(self, because: str) -> None:
        if not self.stopped_because:
            self.stopped_because = because
        try:
            self.process.kill()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """An idle worker's end: kill it and close its pipe. A busy one is only killed: the
        job's thread closes the pipe it is reading (``_drive``)."""
        self.kill("closed")
        self.conn.close()


class ParsePool:
    def __init__(self, workers: int, tokenizer: Path, limits: ParseLimits, cpu_budget_s: float,
                 nice: int = 10, max_queue: int = 256, max_queue_per_tenant: int = 128) -> None:
        if workers < 1:
            raise ValueError("parse_workers must be at least 1")
        if not 1 <= limits.ocr_pages_in_flight <= MAX_OCR_PAGES_IN_FLIGHT:
            raise ValueError(f"ocr_pages_in_flight must be between 1 and {MAX_OCR_PAGES_IN_FLIGHT}, "
                             f"not {limits.ocr_pages_in_flight}")
        self._in_flight = limits.ocr_pages_in_flight
        self._context = multiprocessing.get_context("spawn")  # never fork a gRPC process
        self._args = (tokenizer, limits, max(1.0, cpu_budget_s), nice)
        self.cpu_budget_s = max(1.0, cpu_budget_s)
        self._slots = FairAdmission(workers, max_queue, max_queue_per_tenant)
        self._idle: deque[_Worker] = deque(self._spawn() for _ in range(workers))
        self._busy: set[_Worker] = set()
        self._threads = ThreadPoolExecutor(2 * workers, thread_name_prefix="parse-pool")
        # as many as the jobs' threads can have running: a cancelled job's calls run on (they
        # cannot be stopped in Triton) beside the next job's, which must not queue behind them
        self._ocr_threads = ThreadPoolExecutor(2 * workers * self._in_flight, thread_name_prefix="parse-ocr")
        self.replaced = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Workers running a job now (0 when the pool is idle)."""
        return len(self._busy)

    @property
    def waiting(self) -> int:
        return self._slots.depth

    def worker_pids(self) -> list[int]:
        return [w.pid for w in (*self._idle, *self._busy) if w.pid is not None]

    def _spawn(self) -> _Worker:
        return _Worker(self._context, *self._args)

    async def run(self, tenant: str, job: ParseJob, deadline: float | None,
                  ocr: OcrHandler) -> tuple[ParsedDocument, list[Chunk]]:
        """Parse and chunk ``job`` in a worker, within the caller's deadline and the CPU
        budget; cancelling the caller stops the worker."""
        async with self._slots.slot(tenant):
            worker = self._idle.popleft()
            self._busy.add(worker)
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._threads, _drive, worker, job, deadline, ocr,
                                          self.cpu_budget_s, self._ocr_threads, self._in_flight)
            try:
                return await future
            except asyncio.CancelledError:
                worker.kill("cancelled")
                raise
            finally:
                future = None  # an error's traceback holds this frame: no cycle through it
                self._busy.discard(worker)
                if worker.stopped_because:
                    # its pipe is closed by the job's thread when it is done with it: closed
                    # here, under a thread still polling it, the descriptor could be reused by
                    # the replacement's pipe and that thread would read (or hang on) the other's
                    self.replaced += 1
                    if not self._closed:
                        self._idle.append(self._spawn())
                    self._threads.submit(worker.process.join)  # reap it off the loop
                else:
                    self._idle.append(worker)

    def close(self) -> None:
        self._closed = True
        for worker in self._idle:
            worker.close()
        for worker in self._busy:
            worker.kill("closed")  # its job's thread closes the pipe (``_drive``)
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._ocr_threads.shutdown(wait=False, cancel_futures=True)


def _drive(worker: _Worker, job: ParseJob, deadline: float | None, ocr: OcrHandler,
           budget_s: float, ocr_threads: ThreadPoolExecutor, in_flight: int
           ) -> tuple[ParsedDocument, list[Chunk]]:
    """The frontend's side of one job (a pool thread): send it, run its OCR requests (in
    ``ocr_threads``, at most ``in_flight`` at once), wait for the result within the
    deadline, and say why the worker died if it did. A worker that goes on to another job
    has had every OCR call of this one answered before this returns; a stopped one (replaced)
    has its calls not yet started cancelled, and its pipe closed here, by the only thread
    that reads it."""
    conn = worker.conn
    running: list = []

    def answer(token: int, png: bytes) -> None:
        if worker.stopped_because:  # the job is over (cancelled, deadline, died): no OCR for it
            return
        try:
            reply = ("ocr_lines", (token, ocr(png)))
        except Exception as error:  # Triton down, a bad page image: the worker decides
            reply = ("ocr_error", (token, _portable(error)))
        with worker.send_lock:
            try:
                conn.send(reply)
            except (OSError, ValueError):  # the worker died or was stopped: its job says why
                pass
            except Exception as error:  # lines that do not pickle: the worker must not wait forever
                try:
                    conn.send(("ocr_error", (token, RuntimeError(f"the OCR answer could not be sent to the "
                                                                 f"parser: {type(error).__name__}: {error}"))))
                except Exception:
                    pass

    try:
        if not worker.ready:
            _receive(worker, deadline)  # ("ready", pid): imports take a moment after a respawn
            worker.ready = True
        with worker.send_lock:
            conn.send(("parse", job))
        while True:
            kind, payload = _receive(worker, deadline)
            if kind == "done":
                return payload
            if kind == "error":
                failure, payload = payload, None
                break  # raised below: inside this try an OSError of the job's (ConnectionError
                # from OCR) would read as the worker dying
            running = [call for call in running if not call.done()]
            while len(running) >= in_flight:  # a worker sending more waits for its answers
                concurrent.futures.wait(running, _left(worker, deadline), concurrent.futures.FIRST_COMPLETED)
                running = [call for call in running if not call.done()]
            token, png = payload
            payload = None
            running.append(ocr_threads.submit(answer, token, png))
    except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as error:
        raise _death(worker, budget_s) from error
    finally:
        if worker.stopped_because:  # killed or dead: replaced, so nothing of this job reaches another
            for call in running:
                call.cancel()  # those not started; the running ones' answers go nowhere
            with worker.send_lock:  # only this thread reads the pipe, and the OCR threads send under the lock
                conn.close()
        else:  # the worker's next job must not read this one's answers (each has the job's deadline)
            concurrent.futures.wait(running)
    try:
        raise failure
    finally:
        failure = None  # no cycle through this frame: the job's bytes go at once


def _receive(worker: _Worker, deadline: float | None):
    while True:
        if worker.conn.poll(_left(worker, deadline)):
            return worker.conn.recv()


def _left(worker: _Worker, deadline: float | None) -> float | None:
    """Seconds to the deadline (None: none); past it, the worker is stopped and the job fails."""
    left = None if deadline is None else deadline - time.monotonic()
    if left is not None and left <= 0:
        worker.kill("deadline")
        raise DeadlineError("the deadline passed while the document was being parsed; "
                            "its parser was stopped")
    return left


def _death(worker: _Worker, budget_s: float) -> Exception:
    """Why a worker's pipe closed, as the error the caller should see."""
    worker.process.join(5)
    code = worker.process.exitcode
    because = worker.stopped_because
    worker.stopped_because = because or f"exit {code}"
    if because == "deadline":
        return DeadlineError("the deadline passed while the document was being parsed; "
                             "its parser was stopped")
    if because in ("cancelled", "closed"):
        return CorruptDocumentError("the parse was cancelled")
    if code == -signal.SIGXCPU and not because:  # the kernel, at the soft RLIMIT_CPU
        return CpuBudgetError(
            f"the document used its CPU budget of {budget_s:g} s and its parser was stopped "
            f"({BUDGET_SETTING}); send a smaller document or split it")
    if code == -signal.SIGKILL:
        return CorruptDocumentError("the parser was killed on this document (out of memory?)")
    return CorruptDocumentError(f"the parser stopped on this document (exit code {code})")


def _portable(error: BaseException) -> BaseException:
    """The error itself if it survives pickling, else a plain one with its message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


# --------------------------------------------------------------------------- worker side


class _PipeOcr(PipelinedOcr):
    """The worker's OCR: pages go to the frontend with a token, answers come back by token,
    in whatever order the frontend's threads finish them."""

    _tokens = itertools.count(1)  # never reused in this process, across jobs

    def __init__(self, conn) -> None:
        self.conn = conn
        self.answers: dict[int, tuple[str, object]] = {}

    def submit(self, png: bytes) -> int:
        token = next(self._tokens)
        self.conn.send(("ocr", (token, png)))
        return token

    def collect(self, token: int) -> list:
        while token not in self.answers:
            kind, (answered, payload) = self.conn.recv()
            self.answers[answered] = (kind, payload)
        kind, payload = self.answers.pop(token)
        if kind == "ocr_error":
            raise payload
        return payload


def _worker_main(conn, tokenizer: str, limits: ParseLimits, budget_s: float, nice: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the frontend decides when we stop
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a budget kill writes no core file
    try:
        os.nice(nice)
    except OSError:
        pass
    from .parsing import chunk_document, parse_document
    from .text import TextTokenizer

    counter = TextTokenizer(Path(tokenizer))
    conn.send(("ready", os.getpid()))
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            kind, job = conn.recv()
        except (EOFError, OSError):
            return  # the frontend has gone
        if kind != "parse":
            continue

        _limit_cpu(budget_s, hard)
        try:
            document = parse_document(job.content, filename=job.filename, mime_type=job.mime_type,
                                      ocr=_PipeOcr(conn), ocr_mode=job.ocr_mode, limits=limits)
            reply = ("done", (document, chunk_document(document, counter.count_tokens,
                                                       job.chunk_tokens, job.overlap_tokens)))
        except Exception as error:
            reply = ("error", _portable(error))
        _limit_cpu(None, hard)
        del job
        conn.send(reply)
        del reply


def _limit_cpu(budget_s: float | None, hard: int) -> None:
    """Soft CPU limit at what this process has used plus ``budget_s`` (None lifts it): the
    kernel sends SIGXCPU there, whose default action ends the process."""
    if budget_s is None:
        resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + budget_s)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
