"""The Triton Python-backend model that serves an ONNX file with onnxruntime on CPU.

The pip-installed Triton has only the Python backend, so every generated ``model.py``
imports this class. ``execute`` receives all requests the dynamic batcher gathered;
requests whose inputs share a shape (the frontend pads to a few length buckets) are
concatenated and run as one onnxruntime call, then split back per request.

Memory after bursts: onnxruntime's CPU arena keeps the largest blocks a burst asked for
(and grows by doubling), and memory patterns plan one buffer per input shape, which
OCR's every-image-a-new-shape inputs never reuse: a burst of 16 OCRs left ``ocr_det``'s
stub at 1.2 GB for good. So memory patterns are off, the arena is shrunk after every run
whose inputs pass 4 MB counted as 4-byte elements (``memory.enable_memory_arena_shrinkage``;
a uint8 1200x800 page is 2.9 MB but its activations are float), and the freed heap
then goes back to the OS (``malloc_trim``): ``ocr_det`` settled at about 0.23 GB when its
input was float (not re-measured since uint8 input and ``parallel_rows``). The
arena stays on: without it the same burst took twice as long. Each is a model parameter
(``cpu_mem_arena``, ``mem_pattern``, ``arena_shrink``, ``malloc_trim``) that
``PERCOLATE_ORT_<NAME>`` overrides; ``bench/model_memory.py`` compares the settings.

Rows in parallel (``parallel_rows``; ``ocr_rec`` on cpu, not ``ocr_det``: catalog.py):
onnxruntime's intra-op threads split one row's operators, which pays badly for OCR's many
small convolutions. When a run has two or more rows (after ``max_rows_per_run`` splitting,
across all shape groups of the gathered batch), the largest run ``parallel_rows`` at a
time from a thread pool on a second session with one intra-op thread each; what cannot
fill a round (a single row, a page's fifth line) runs on the main session with all its
threads. In the OCR bench at a load average of 2, recognition took 204 ms per page this
way against 261 ms on two intra-op threads; under heavier load the gain is lost in the
noise (README). The output came out bit for bit the same either way on the test machine
(``tests/test_ocr_triton.py``): onnxruntime's MLAS kernels split work by output, so the
thread count did not change any sum there; that is observed, not a library guarantee.
``PERCOLATE_ORT_PARALLEL_ROWS`` (a whole number; empty is unset) overrides the
parameter on the models that have it (0 turns it off to compare), capped at the CPU
count. The second session holds its own copy of the weights and its own arena, which is
shrunk after every one of its runs (its rows are small inputs with large activations),
unless the model shrinks when idle (below); the heap is trimmed as above after a batch
whose inputs and outputs pass 4 MB.

Shrinking when idle (``shrink_idle_s``; ``ocr_det`` and ``ocr_rec`` on cpu): shrinking
after every large run hands a page's activations back to the OS only for the next page
to fault them in again, 38,000 page faults per 1216x800 page for ``ocr_det`` (440 against
314 ms of CPU per page at a load average of about 2). With the parameter set (seconds),
runs keep their arena chunks and the arena is shrunk, on each session, once the model has
had no request for that long: a run on a small zero input (each ``-1`` dimension
``PROBE_SIDE``) with the shrink option, then ``malloc_trim``. While pages keep coming the
arena holds what the largest of them needed, and what mixed shapes add to it: ``ocr_det``
held 0.23 GB after 1216x800 pages, 0.6 GB after 2016x1312, 0.8 GB after 1984x1984 and
about 1 GB after a 736x5888 input (a 2000x250 banner, its short side scaled up to 736);
the peak during a run is what it was before, only now it stays while pages come less than
a second apart. After a quiet moment it is back to 0.1-0.15 GB. A page that runs longer
than the idle time (a large page on ``ocr_det``, 1.3-2.2 s) leaves the next model idle
long enough to shrink between pages, so the gain shrinks as pages grow.
``PERCOLATE_ORT_SHRINK_IDLE_S`` overrides it (0: after every large run, as before) on the
models that have it. Should the probe fail (a graph it does not fit), the model logs it
and goes back to shrinking after every large run. One waiting thread per model instance
does this (and the unload below): each request moves its deadline; no thread per request.

Weights on first request (``load_weights: on_first_request``; ``whisper_encoder``,
``whisper_decoder`` and ``whisper_decoder_with_past`` on cpu, whose Whisper loop runs its
own copies of the graphs in process, configs.py): ``initialize`` only checks that the file
is there and readable, and the first request creates the onnxruntime sessions, so the
model is READY and callable (perf_analyzer, a BLS loop, a test) without holding its weights
while nothing calls it. Should that fail (a file gone or corrupt since), each request gets
an error naming the model and the file, the other models serve on, and the next request
tries again. ``unload_idle_s`` (with ``on_first_request`` only) drops the sessions again
after that many seconds without a request. ``PERCOLATE_ORT_LOAD_WEIGHTS`` (``at_load`` or
``on_first_request``; empty is unset) overrides it on the models that have it, to compare.
Triton's metrics carry ``percolate_onnx_weights_loaded{model=...}`` for these models: 1
while the sessions are loaded (best effort, as the Whisper loop's gauge).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # only importable inside Triton's stub

from .stub_metrics import gauge

TRIM_AFTER_BYTES = 4 << 20
"""A batch whose inputs and outputs pass this hands its freed memory back afterwards."""
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_TRIM = getattr(_LIBC, "malloc_trim", None)


def _setting(params: dict, name: str, default: str) -> bool:
    """A boolean model parameter; ``PERCOLATE_ORT_<NAME>`` in the environment wins."""
    value = os.environ.get(f"PERCOLATE_ORT_{name.upper()}", params.get(name, default))
    return value.lower() in ("1", "true", "yes", "on")


PARALLEL_ROWS_ENV = "PERCOLATE_ORT_PARALLEL_ROWS"
SHRINK_IDLE_ENV = "PERCOLATE_ORT_SHRINK_IDLE_S"
LOAD_WEIGHTS_ENV = "PERCOLATE_ORT_LOAD_WEIGHTS"
LOAD_WEIGHTS = ("at_load", "on_first_request")
PROBE_SIDE = 32
"""Each variable dimension of the idle shrink's zero input: a multiple of the OCR
detector's stride (32), and small enough that the probe run takes milliseconds."""


def _parameter(params: dict, name: str, env: str) -> tuple[str, str]:
    """(where it came from, raw value) of a model parameter the config has; ``env``
    (empty: unset) overrides it, only on models whose config has the parameter, so that
    setting it to compare on and off leaves the other Python-backend models as they are."""
    override = os.environ.get(env, "").strip()
    if override:
        return env, override
    return f"model parameter {name}", params[name].strip()


def _seconds(params: dict, parameter: str, env: str | None) -> float:
    """A parameter in seconds, 0 to 3600 (0 when the config does not have it); ``env``
    overrides it."""
    if parameter not in params:
        return 0.0
    name, raw = _parameter(params, parameter, env) if env else (
        f"model parameter {parameter}", params[parameter].strip())
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:  # also refuses nan and inf, which a deadline cannot be
        raise pb_utils.TritonModelException(f"{name}={raw!r}: a number of seconds from 0 to 3600 is required")
    return value


def _shrink_idle_s(params: dict) -> float:
    """The ``shrink_idle_s`` parameter (0: shrink after every large run instead);
    ``PERCOLATE_ORT_SHRINK_IDLE_S`` overrides it."""
    return _seconds(params, "shrink_idle_s", SHRINK_IDLE_ENV)


def _on_first_request(params: dict) -> bool:
    """The ``load_weights`` parameter: False for ``at_load`` (the default), True for
    ``on_first_request``; ``PERCOLATE_ORT_LOAD_WEIGHTS`` overrides it."""
    if "load_weights" not in params:
        return False
    name, raw = _parameter(params, "load_weights", LOAD_WEIGHTS_ENV)
    if raw.lower() not in LOAD_WEIGHTS:
        raise pb_utils.TritonModelException(f"{name}={raw!r}: one of {', '.join(LOAD_WEIGHTS)} is required")
    return raw.lower() == "on_first_request"


def _parallel_rows(params: dict) -> int:
    """The ``parallel_rows`` parameter, capped at the CPU count; ``auto``: as many rows as
    the main session has intra-op threads (one thread each, the same cores).
    ``PERCOLATE_ORT_PARALLEL_ROWS`` (empty: unset) overrides it only on models whose config
    has the parameter, so that setting it to compare on and off leaves the other
    Python-backend models as they are."""
    if "parallel_rows" not in params:
        return 0
    cpus = os.cpu_count() or 1
    name, raw = _parameter(params, "parallel_rows", PARALLEL_ROWS_ENV)
    if raw.lower() == "auto":
        return min(int(params.get("intra_op_threads", "0")) or cpus, cpus)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise pb_utils.TritonModelException(
            f"{name}={raw!r}: auto or a whole number of rows, 0 or more, is required "
            "(0 or 1: off)")
    return min(value, cpus)


class OnnxRuntimeModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.model_name = args.get("model_name") or config.get("name", "model")
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.onnx_path = version_dir / params.get("onnx_file", "model.onnx")
        problem = self._file_problem()
        if problem:
            raise pb_utils.TritonModelException(problem)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = _setting(params, "cpu_mem_arena", "1")
        options.enable_mem_pattern = _setting(params, "mem_pattern", "0")
        self.trim = _setting(params, "malloc_trim", "1") and _TRIM is not None
        self.shrink = None
        if options.enable_cpu_mem_arena and _setting(params, "arena_shrink", "1"):
            self.shrink = ort.RunOptions()  # give a large run's arena chunks back after it
            self.shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # Spinning threads burn the cores the frontend and other models need when the
        # machine is shared (the embedded default); they only pay off on idle cores.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         params.get("allow_spinning", "0"))
        self.options = options
        self.parallel_rows = _parallel_rows(params)
        """Run two or more rows this many at a time, each on one thread of ``row_session``
        (0 or 1: all rows one after the other on ``session``)."""
        self.session = self.row_session = self.pool = None
        if self.parallel_rows > 1:
            self.pool = ThreadPoolExecutor(self.parallel_rows, thread_name_prefix="rows")
        self.on_first_request = _on_first_request(params)
        """Create the sessions on the first request instead of here (``load_weights``)."""
        unload_idle_s = _seconds(params, "unload_idle_s", None)  # checked either way: a typo shows at once
        self.unload_idle_s = unload_idle_s if self.on_first_request else 0.0
        """When above 0, the sessions are dropped after this many seconds without a request
        (and created again by the next one)."""
        self._loaded_metric = self._weights_gauge() if "load_weights" in params else None
        self.batched = int(config.get("max_batch_size", 0)) > 0
        """Without Triton batching (max_batch_size 0) the batch dimension is the caller's
        own and each request runs alone."""
        self.rows_per_run = int(params.get("max_rows_per_run", "0"))
        """Run a gathered batch this many rows at a time (0: all at once). The OCR models
        run faster one image or line at a time on CPU (``ocr_rec``: 5 lines of a page 1.3-1.6x
        faster row by row, bit for bit the same output; see catalog.py)."""
        self.idle_shrink_s = _shrink_idle_s(params) if self.shrink is not None else 0.0
        """When above 0, runs keep their arena chunks and ``_shrink_when_idle`` gives them
        back after this many seconds without a request."""
        self.running = threading.Lock()
        """Held by ``execute``, the sessions' loading and the idle work, so that they never overlap."""
        self.input_names = [t["name"] for t in config["input"]]
        self.probe = {t["name"]: np.zeros(
            [1] * self.batched + [int(d) if int(d) > 0 else PROBE_SIDE for d in t.get("dims", [])],
            pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]} if self.idle_shrink_s else {}
        """A small zero input, the idle shrink's run (none on models that do not shrink when idle)."""
        self.output_names = [t["name"] for t in config["output"]]
        self.output_dtypes = {
            t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}
        self.idle = threading.Condition()
        """Guards ``idle_since``, ``idle_pending``, ``requests_seen`` and ``stopping``;
        notified when they change."""
        self.idle_since: float | None = None
        """``clock()`` when the last request ended; None while one runs or none came yet."""
        self.idle_pending: list = []
        """The idle work (``_idle_work``) not yet done since ``idle_since``."""
        self.requests_seen = 0
        self.stopping = False
        self.clock = time.monotonic
        self.idle_thread: threading.Thread | None = None
        """The one thread that waits for the idle deadlines, on models with idle work."""
        if not self.on_first_request:
            self._load_sessions()
        if self._idle_work():
            self.idle_thread = threading.Thread(
                target=self._wait_for_idle, name=f"idle-{self.model_name}", daemon=True)
            self.idle_thread.start()

    def _file_problem(self) -> str | None:
        """What is wrong with the ONNX file before onnxruntime reads it (cheap), or None."""
        if not self.onnx_path.is_file():
            return f"{self.onnx_path} is missing: run `percolate-models build`"
        if not os.access(self.onnx_path, os.R_OK):
            return f"{self.onnx_path} is not readable by this process (uid {os.getuid()})"
        return None

    def _load_sessions(self) -> None:
        """Create the main session (and the row session when ``parallel_rows`` > 1); raises
        ``TritonModelException`` naming the file. Called under ``running`` after initialize."""
        problem = self._file_problem()
        if problem:
            raise pb_utils.TritonModelException(problem)
        session = self._load(self.onnx_path, self.options)
        row_session = None
        if self.parallel_rows > 1:
            self.options.intra_op_num_threads, threads = 1, self.options.intra_op_num_threads
            try:
                row_session = self._load(self.onnx_path, self.options)
            finally:
                self.options.intra_op_num_threads = threads
        self.session, self.row_session = session, row_session
        self._set_loaded(True)

    def _unload_sessions(self) -> None:
        """Drop the sessions (``unload_idle_s``); the next request creates them again."""
        if self.session is None:
            return
        self.session = self.row_session = None
        if self.trim:
            _TRIM(0)
        self._set_loaded(False)

    def _weights_gauge(self):
        """``percolate_onnx_weights_loaded{model=...}``, 0 until the sessions load (stub_metrics.gauge)."""
        return gauge("percolate_onnx_weights_loaded",
                     "1 while the model holds its onnxruntime sessions (weights); 0 while a "
                     "load_weights: on_first_request model waits for a request", {"model": self.model_name}, 0.0)

    def _set_loaded(self, loaded: bool) -> None:
        if self._loaded_metric is not None:
            self._loaded_metric[1].set(1.0 if loaded else 0.0)

    @staticmethod
    def _load(onnx_path: Path, options) -> "ort.InferenceSession":
        try:
            return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise pb_utils.TritonModelException(
                f"cannot load {onnx_path}: {err}. Run `percolate-models build` to rebuild it")

    def execute(self, requests: list) -> list:
        with self.idle:
            self.requests_seen += 1
            self.idle_since = None  # busy: no idle work until this batch is answered
        try:
            with self.running:
                if self.session is None:
                    try:
                        self._load_sessions()
                    except pb_utils.TritonModelException as err:
                        error = pb_utils.TritonError(f"model {self.model_name}: weights not loaded "
                                                     f"on this request: {err}")
                        return [pb_utils.InferenceResponse(error=error) for _ in requests]
                return self._execute(requests)
        finally:
            with self.idle:
                self.idle_since = self.clock()
                self.idle_pending = self._idle_work()
                self.idle.notify_all()

    def _idle_work(self) -> list:
        """(seconds without a request, what to do then), as the settings are now."""
        work = []
        if self.idle_shrink_s > 0:
            work.append((self.idle_shrink_s, self._shrink_when_idle))
        if self.unload_idle_s > 0:
            work.append((self.unload_idle_s, self._unload_sessions))
        return work

    def _due(self, now: float) -> list:
        """The pending idle work whose time has come at ``now`` (under ``idle``)."""
        if self.idle_since is None:
            return []
        return [item for item in self.idle_pending if self.idle_since + item[0] <= now]

    def _wait_for_idle(self) -> None:
        """The idle thread: waits for the earliest pending deadline (a request in the
        meantime moves it), then does what is due unless a request came since."""
        with self.idle:
            while not self.stopping:
                if self.idle_since is None or not self.idle_pending:
                    self.idle.wait()
                    continue
                now = self.clock()
                due = self._due(now)
                if not due:
                    self.idle.wait(min(self.idle_since + s for s, _ in self.idle_pending) - now)
                    continue
                self.idle_pending = [item for item in self.idle_pending if item not in due]
                seen = self.requests_seen
                self.idle.release()
                try:
                    with self.running:
                        with self.idle:
                            current = self.requests_seen == seen and not self.stopping
                        if current:  # else a request came meanwhile: its end sets new deadlines
                            for _, work in due:
                                try:
                                    work()
                                except Exception as err:  # keep waiting for the next idle time
                                    pb_utils.Logger.log_warn(f"idle work {work.__name__} failed: {err}")
                finally:
                    self.idle.acquire()
                    self.idle.notify_all()  # for whoever waits on the idle work (tests)

    def _shrink_when_idle(self) -> None:
        """Give the arenas back: a run of ``probe`` with the shrink option on each session
        (onnxruntime shrinks only at the end of a run), then trim the heap. Should the probe
        fail, the model goes back to shrinking after every large run. Called under ``running``."""
        try:
            for session in (self.session, self.row_session):
                if session is not None:
                    session.run(self.output_names, self.probe, self.shrink)
        except Exception as err:  # onnxruntime's own error types
            self.idle_shrink_s = 0.0
            pb_utils.Logger.log_warn(f"the idle arena shrink failed ({err}); shrinking after every "
                                     "large run instead")
        if self.trim:
            _TRIM(0)

    def _execute(self, requests: list) -> list:
        inputs = [
            [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names]
            for r in requests
        ]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, arrays in enumerate(inputs):
            key = tuple(a.shape[1:] for a in arrays) if self.batched else (index,)
            groups[key].append(index)
        responses: list = [None] * len(requests)
        moved = sum(a.nbytes for arrays in inputs for a in arrays)
        feeds = [{name: inputs[indices[0]][k] if len(indices) == 1
                  else np.concatenate([inputs[i][k] for i in indices])
                  for k, name in enumerate(self.input_names)} for indices in groups.values()]
        results = self._run(feeds)
        for indices, outputs in zip(groups.values(), results):
            if isinstance(outputs, Exception):
                error = pb_utils.TritonError(f"inference failed: {outputs}")
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(error=error)
                continue
            moved += sum(out.nbytes for out in outputs)
            start = 0
            for i in indices:
                stop = start + inputs[i][0].shape[0]
                tensors = [
                    pb_utils.Tensor(name, out[start:stop].astype(self.output_dtypes[name], copy=False))
                    for name, out in zip(self.output_names, outputs)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = stop
        del inputs, feeds, results
        if moved > TRIM_AFTER_BYTES and self.trim:
            _TRIM(0)  # what the batch freed goes back to the OS, not to this heap
        return responses

    def _run(self, feeds: list[dict]) -> list:
        """Each feed's outputs (or the exception its run raised), ``max_rows_per_run`` rows
        per onnxruntime call; two or more calls go to the row pool when there is one."""
        calls = []  # (feed index, rows of it, run options on the main session)
        for f, feed in enumerate(feeds):
            # a large group gives its arena chunks back after each of its runs; counted as
            # 4-byte elements, since a graph's activations scale with its input's size, not
            # its dtype (ocr_det's uint8 page, 2.9 MB, still fills hundreds of MB of arena)
            size = sum(max(a.nbytes, 4 * a.size) for a in feed.values())
            options = self.shrink if size > TRIM_AFTER_BYTES and not self.idle_shrink_s else None
            rows = next(iter(feed.values())).shape[0]
            step = self.rows_per_run or rows
            if step >= rows:  # also a request of zero rows: one run of the feed as it is
                calls.append((f, feed, options))
                continue
            for start in range(0, rows, step):
                calls.append((f, {n: a[start:start + step] for n, a in feed.items()}, options))

        def call(session, item):
            _, part, options = item
            if session is self.row_session and not self.idle_shrink_s:
                # always shrunk: a uint8 page (2.9 MB at 1200x800) stays under the input
                # threshold while its activations take hundreds of MB of this arena
                options = self.shrink
            try:
                return session.run(self.output_names, part, options)
            except Exception as err:  # reported on that feed's requests only
                return err

        outs: list = [None] * len(calls)
        pooled: list[int] = []
        if self.pool is not None and len(calls) > 1:
            # the largest rows in rounds of parallel_rows on the row pool; the remainder that
            # cannot fill a round (the smallest) then runs with every thread of the main session
            by_size = sorted(range(len(calls)), key=lambda c: -sum(
                a.nbytes for a in calls[c][1].values()))
            pooled = by_size[:len(calls) - len(calls) % self.parallel_rows]
            for c, out in zip(pooled, self.pool.map(
                    lambda c: call(self.row_session, calls[c]), pooled)):
                outs[c] = out
        for c in sorted(set(range(len(calls))) - set(pooled)):
            outs[c] = call(self.session, calls[c])
        per_feed: list[list] = [[] for _ in feeds]
        for (f, _, _), out in zip(calls, outs):
            per_feed[f].append(out)
        results: list = []
        for parts in per_feed:
            failed = next((p for p in parts if isinstance(p, Exception)), None)
            if failed is not None:
                results.append(failed)
            elif len(parts) == 1:
                results.append(parts[0])
            else:
                results.append([np.concatenate(column) for column in zip(*parts)])
        return results

    def finalize(self) -> None:
        with self.idle:
            self.stopping = True
            self.idle.notify_all()
        if self.idle_thread is not None:
            self.idle_thread.join(timeout=60)  # it may be finishing a probe run
        if self.pool is not None:
            self.pool.shutdown()
        self.session = self.row_session = None
