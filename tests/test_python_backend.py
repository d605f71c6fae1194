"""The Python-backend runner (percolate_models/python_backend.py) in this process.

It runs under the stand-in ``triton_python_backend_utils`` (tests/pb_utils_standin) on a
tiny real ONNX file (``out = 2 * image``, any width), so the scheduling of a gathered
batch (shape groups, rows one at a time, ``parallel_rows`` on the row session, the
remainder on the main session) is checked without Triton; the OCR models themselves are
checked on a real Triton in tests/test_ocr_triton.py.
"""
from __future__ import annotations

import importlib
import json
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

STANDIN = Path(__file__).resolve().parent / "pb_utils_standin"


@pytest.fixture(scope="module")
def backend():
    sys.path.insert(0, str(STANDIN))
    try:
        pb_utils = importlib.import_module("triton_python_backend_utils")
        module = importlib.import_module("percolate_models.python_backend")
    finally:
        sys.path.remove(str(STANDIN))
    return module, pb_utils


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    """The developer's shell does not choose the settings these tests check."""
    monkeypatch.delenv("PERCOLATE_ORT_PARALLEL_ROWS", raising=False)
    monkeypatch.delenv("PERCOLATE_ORT_SHRINK_IDLE_S", raising=False)
    monkeypatch.delenv("PERCOLATE_ORT_LOAD_WEIGHTS", raising=False)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """A version folder holding ``out = 2 * image`` for images of shape [N, 3, W]."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "two"], ["out"])], "double",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "W"])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    root = tmp_path_factory.mktemp("repo")
    (root / "1").mkdir()
    onnx.save(model, root / "1" / "model.onnx")
    return root


def load(backend, repository: Path, **parameters: str):
    module, _ = backend
    config = {
        "max_batch_size": 8,
        "parameters": {"intra_op_threads": {"string_value": "2"},
                       **{k: {"string_value": v} for k, v in parameters.items()}},
        "input": [{"name": "image", "data_type": "TYPE_FP32"}],
        "output": [{"name": "out", "data_type": "TYPE_FP32"}],
    }
    model = module.OnnxRuntimeModel()
    model.initialize({"model_config": json.dumps(config), "model_name": "double",
                      "model_repository": str(repository), "model_version": "1"})
    return model


def request(backend, rows: int, width: int, seed: int):
    _, pb_utils = backend
    image = np.random.default_rng(seed).random((rows, 3, width), dtype=np.float32)
    return image, pb_utils.ModelRequest([pb_utils.Tensor("image", image)])


class Recorder:
    """A session that records each run (its width, rows, run options) and fails on one width."""

    def __init__(self, session, fail_width: int | None = None) -> None:
        self.session, self.fail_width = session, fail_width
        self.runs: list[tuple[int, int, object]] = []
        self.lock = threading.Lock()

    def run(self, names, feed, options=None):
        image = feed["image"]
        with self.lock:
            self.runs.append((image.shape[2], image.shape[0], options))
        if image.shape[2] == self.fail_width:
            raise RuntimeError(f"no kernel for width {self.fail_width}")
        return self.session.run(names, feed, options)


@pytest.mark.parametrize("rows_per_run", ["0", "1"])
def test_a_request_of_zero_rows_does_not_fail_the_batch(backend, repository, rows_per_run):
    """Before: with ``max_rows_per_run`` 0 the empty request's step was 0 and ``range``
    raised, failing every request of the gathered batch; with 1 it got no outputs."""
    model = load(backend, repository, max_rows_per_run=rows_per_run)
    empty, empty_request = request(backend, 0, 5, seed=1)
    image, image_request = request(backend, 2, 7, seed=2)
    responses = model.execute([empty_request, image_request])
    assert not any(r.has_error() for r in responses)
    (out_empty,), (out_image,) = (r.output_tensors() for r in responses)
    assert out_empty.as_numpy().shape == (0, 3, 5)
    np.testing.assert_array_equal(out_image.as_numpy(), 2 * image)
    model.finalize()


@pytest.mark.parametrize("value, expected", [
    ("", 2), ("   ", 2), (" 0 ", 0), ("1", 1), ("3", 3), ("1000", 4), ("auto", 2)])
def test_parallel_rows_override(backend, repository, monkeypatch, value, expected):
    """Empty is unset (the parameter's 2); a number is capped at the CPU count (4 here);
    auto is the main session's intra-op threads (2)."""
    module, _ = backend
    monkeypatch.setattr(module.os, "cpu_count", lambda: 4)
    monkeypatch.setenv("PERCOLATE_ORT_PARALLEL_ROWS", value)
    model = load(backend, repository, max_rows_per_run="1", parallel_rows="2")
    assert model.parallel_rows == expected
    assert (model.row_session is not None) == (expected > 1)
    model.finalize()


@pytest.mark.parametrize("value", ["on", "true", "-1", "1.5", "two"])
def test_a_bad_parallel_rows_override_names_the_variable(backend, repository, monkeypatch, value):
    """Before: a bare ``int()`` raised an unnamed ValueError (or, for -1, turned it off)."""
    _, pb_utils = backend
    monkeypatch.setenv("PERCOLATE_ORT_PARALLEL_ROWS", value)
    with pytest.raises(pb_utils.TritonModelException, match="PERCOLATE_ORT_PARALLEL_ROWS"):
        load(backend, repository, max_rows_per_run="1", parallel_rows="2")


def test_the_override_leaves_models_without_the_parameter_alone(backend, repository, monkeypatch):
    """Whisper's decoders and text_embedding have no ``parallel_rows``: no second session."""
    monkeypatch.setenv("PERCOLATE_ORT_PARALLEL_ROWS", "2")
    model = load(backend, repository, max_rows_per_run="1")
    assert model.parallel_rows == 0 and model.row_session is None and model.pool is None


def test_gathered_batch_rows_by_size_with_one_failing_group(backend, repository, monkeypatch):
    """Seven rows of three widths from five requests (arriving small and large mixed):
    the six largest go two at a time to the row session, every run of it with the arena
    shrink option (a small input never passed the size threshold before); the smallest
    row runs on the main session. One width fails in the session: only its requests get
    an error, every other request gets its own rows back."""
    module, _ = backend
    monkeypatch.setattr(module.os, "cpu_count", lambda: 4)
    model = load(backend, repository, max_rows_per_run="1", parallel_rows="2")
    model.session = main = Recorder(model.session, fail_width=7)
    model.row_session = rows = Recorder(model.row_session, fail_width=7)
    shapes = [(2, 5), (1, 9), (1, 7), (1, 5), (1, 9), (1, 7)]  # (rows, width) per request
    made = [request(backend, n, w, seed=i) for i, (n, w) in enumerate(shapes)]
    responses = model.execute([r for _, r in made])
    assert [w for w, _, _ in main.runs] == [5]
    assert sorted((w for w, _, _ in rows.runs), reverse=True) == [9, 9, 7, 7, 5, 5]
    assert all(n == 1 for _, n, _ in main.runs + rows.runs)
    assert all(options is model.shrink and options is not None for _, _, options in rows.runs)
    for (image, _), (n, width), response in zip(made, shapes, responses):
        if width == 7:
            assert response.has_error()
            assert "no kernel for width 7" in response.error().message()
        else:
            assert not response.has_error()
            (out,) = response.output_tensors()
            np.testing.assert_array_equal(out.as_numpy(), 2 * image)
    model.finalize()


def test_a_uint8_page_shrinks_the_arena(backend, tmp_path):
    """A uint8 1100x1000 page is 3.3 MB, under the 4 MB threshold as bytes, while the
    graph's float activations are four times that: its run must give the arena back
    (before, ``ocr_det``'s pages after the move to uint8 input never did)."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["image"], ["out"], to=TensorProto.FLOAT)], "cast",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", "H", "W", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "1").mkdir()
    onnx.save(model, tmp_path / "1" / "model.onnx")
    module, pb_utils = backend
    config = {"max_batch_size": 4,
              "parameters": {"intra_op_threads": {"string_value": "2"},
                             "max_rows_per_run": {"string_value": "1"}},
              "input": [{"name": "image", "data_type": "TYPE_UINT8"}],
              "output": [{"name": "out", "data_type": "TYPE_FP32"}]}
    runner = module.OnnxRuntimeModel()
    runner.initialize({"model_config": json.dumps(config),
                       "model_repository": str(tmp_path), "model_version": "1"})
    runner.session = main = Recorder(runner.session)
    page = np.full((1, 1100, 1000, 3), 7, np.uint8)
    (response,) = runner.execute([pb_utils.ModelRequest([pb_utils.Tensor("image", page)])])
    assert not response.has_error()
    assert response.output_tensors()[0].as_numpy().shape == page.shape
    assert [options for _, _, options in main.runs] == [runner.shrink] and runner.shrink is not None


class Clock:
    """A monotonic clock the test moves by hand (the idle thread's deadlines read it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def idle_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("idle-")]


def test_shrink_when_idle(backend, repository, monkeypatch):
    """With ``shrink_idle_s`` (ocr_det, ocr_rec) no run of a request carries the shrink
    option, on either session: the arena keeps a page's chunks for the next page instead
    of faulting them in again. Once the model has been idle that long, one small zero
    input (``PROBE_SIDE`` for each variable dimension) runs on each session with the
    option; a new request before then moves the deadline. ``PERCOLATE_ORT_SHRINK_IDLE_S=0``
    brings back the shrink after every large run (and no idle thread)."""
    module, pb_utils = backend
    monkeypatch.setattr(module.os, "cpu_count", lambda: 4)
    monkeypatch.setenv("PERCOLATE_ORT_SHRINK_IDLE_S", "0")
    model = load(backend, repository, max_rows_per_run="1", parallel_rows="2", shrink_idle_s="60")
    assert model.idle_shrink_s == 0 and model.idle_thread is None and not model._idle_work()
    model.finalize()
    monkeypatch.delenv("PERCOLATE_ORT_SHRINK_IDLE_S")
    for wrong in ("soon", "-1", "nan", "inf", "1e12"):  # inf and 1e12: no deadline that far
        with pytest.raises(pb_utils.TritonModelException, match="shrink_idle_s"):
            load(backend, repository, shrink_idle_s=wrong)

    model = load(backend, repository, max_rows_per_run="1", parallel_rows="2", shrink_idle_s="60")
    model.clock = clock = Clock()
    model.probe = {"image": np.zeros((1, 3, module.PROBE_SIDE), np.float32)}  # load() has no dims
    model.session = main = Recorder(model.session)
    model.row_session = rows = Recorder(model.row_session)
    big = [request(backend, 1, 400_000, seed=i) for i in range(3)]  # 4.8 MB each: "large"
    first = model.execute([r for _, r in big])
    with model.idle:
        assert [w for _, w in model._due(clock.now + 59.9)] == []
        assert [w for _, w in model._due(clock.now + 60)] == [model._shrink_when_idle]
    clock.now += 30
    second = model.execute([r for _, r in big])  # moves the deadline 30 s on
    with model.idle:
        assert model._due(clock.now + 30) == []  # the first request's deadline is gone
        assert [w for _, w in model._due(clock.now + 60)] == [model._shrink_when_idle]
    for (image, _), response in zip(big + big, first + second):
        np.testing.assert_array_equal(response.output_tensors()[0].as_numpy(), 2 * image)
    assert len(main.runs) == 2 and len(rows.runs) == 4
    assert all(options is None for _, _, options in main.runs + rows.runs)
    model._shrink_when_idle()  # what the idle thread does once the model is idle
    assert main.runs[-1] == (module.PROBE_SIDE, 1, model.shrink) and model.shrink is not None
    assert rows.runs[-1] == (module.PROBE_SIDE, 1, model.shrink)
    assert model.idle_shrink_s == 60
    model.finalize()
    assert not model.idle_thread.is_alive()  # finalize ends the waiting thread


def test_one_idle_thread_per_model_not_one_per_request(backend, repository):
    """Before: every ``execute`` started a ``threading.Timer`` (a thread per request)."""
    before = len(idle_threads())
    model = load(backend, repository, max_rows_per_run="1", shrink_idle_s="60")
    for seed in range(20):
        image, made = request(backend, 1, 5, seed=seed)
        (response,) = model.execute([made])
        np.testing.assert_array_equal(response.output_tensors()[0].as_numpy(), 2 * image)
    assert len(idle_threads()) == before + 1 and model.idle_thread.is_alive()
    model.finalize()
    assert len(idle_threads()) == before


def test_a_failing_idle_shrink_falls_back_to_shrinking_after_each_large_run_and_says_so(backend, repository):
    module, pb_utils = backend
    model = load(backend, repository, max_rows_per_run="1", shrink_idle_s="60")
    model.probe = {"image": np.zeros((1, 3), np.float32)}  # the wrong rank: onnxruntime refuses it
    pb_utils.Logger.logged.clear()
    model._shrink_when_idle()
    assert model.idle_shrink_s == 0
    assert [level for level, _ in pb_utils.Logger.logged] == ["warn"]
    assert "idle arena shrink failed" in pb_utils.Logger.logged[0][1]
    model.session = main = Recorder(model.session)
    page, made = request(backend, 1, 400_000, seed=1)  # 4.8 MB: "large"
    model.execute([made])
    assert [options for _, _, options in main.runs] == [model.shrink]
    with model.idle:
        assert model.idle_pending == []  # nothing left for the idle thread to do
    model.finalize()


class Signalling(Recorder):
    """A recorder that says when a run with ``options`` happened."""

    def __init__(self, session, options) -> None:
        super().__init__(session)
        self.options, self.seen = options, threading.Event()

    def run(self, names, feed, options=None):
        out = super().run(names, feed, options)
        if options is self.options:
            self.seen.set()
        return out


def test_the_idle_shrink_runs_on_its_own(backend, repository):
    """The idle thread itself shrinks after the idle time (waited on, not slept), once
    per idle period, and again after the next request."""
    model = load(backend, repository, max_rows_per_run="1", shrink_idle_s="0.01")
    model.probe = {"image": np.zeros((1, 3, 8), np.float32)}
    model.session = main = Signalling(model.session, model.shrink)
    for seed in range(2):
        main.seen.clear()
        (image, made), = [request(backend, 1, 5, seed=seed)]
        model.execute([made])
        assert main.seen.wait(timeout=60)
    assert main.runs == [(5, 1, None), (8, 1, model.shrink)] * 2
    model.finalize()


def test_the_probe_follows_the_configured_dims(backend, repository):
    """Each variable dimension is ``PROBE_SIDE``, the fixed ones as configured, after the
    batch dimension; dims come as strings or numbers depending on who rendered the JSON."""
    module, _ = backend
    config = {"max_batch_size": 4, "parameters": {"shrink_idle_s": {"string_value": "1"}},
              "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": ["3", -1]}],
              "output": [{"name": "out", "data_type": "TYPE_FP32"}]}
    model = module.OnnxRuntimeModel()
    model.initialize({"model_config": json.dumps(config),
                      "model_repository": str(repository), "model_version": "1"})
    assert model.probe["image"].shape == (1, 3, module.PROBE_SIDE)
    assert model.probe["image"].dtype == np.float32
    model._shrink_when_idle()
    assert model.idle_shrink_s == 1  # the probe ran
    model.finalize()


@pytest.fixture
def own_repository(repository, tmp_path) -> Path:
    """A copy of ``repository`` that a test may break."""
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes((repository / "1" / "model.onnx").read_bytes())
    return tmp_path


def test_weights_on_first_request(backend, own_repository, monkeypatch):
    """``load_weights: on_first_request`` (the cpu target's Whisper encoder and decoders):
    no session until a request comes, then the right answer; ``at_load`` (and no
    parameter) loads in ``initialize``; ``PERCOLATE_ORT_LOAD_WEIGHTS`` overrides it."""
    module, pb_utils = backend
    model = load(backend, own_repository, load_weights="on_first_request")
    assert model.session is None and model.row_session is None and model.idle_thread is None
    image, made = request(backend, 2, 7, seed=3)
    (response,) = model.execute([made])
    assert not response.has_error()
    np.testing.assert_array_equal(response.output_tensors()[0].as_numpy(), 2 * image)
    assert model.session is not None
    model.finalize()
    for params in ({"load_weights": "at_load"}, {}):
        model = load(backend, own_repository, **params)
        assert model.session is not None
        model.finalize()
    monkeypatch.setenv("PERCOLATE_ORT_LOAD_WEIGHTS", "at_load")
    assert load(backend, own_repository, load_weights="on_first_request").session is not None
    monkeypatch.setenv("PERCOLATE_ORT_LOAD_WEIGHTS", "on_first_request")
    assert load(backend, own_repository).session is not None  # only models with the parameter
    monkeypatch.setenv("PERCOLATE_ORT_LOAD_WEIGHTS", "lazily")
    with pytest.raises(pb_utils.TritonModelException, match="PERCOLATE_ORT_LOAD_WEIGHTS='lazily'"):
        load(backend, own_repository, load_weights="at_load")
    monkeypatch.delenv("PERCOLATE_ORT_LOAD_WEIGHTS")
    with pytest.raises(pb_utils.TritonModelException, match="load_weights='later'"):
        load(backend, own_repository, load_weights="later")
    # a bad unload_idle_s is refused also while the weights load at start (it would show only later)
    with pytest.raises(pb_utils.TritonModelException, match="unload_idle_s='soon'"):
        load(backend, own_repository, load_weights="at_load", unload_idle_s="soon")
    monkeypatch.setenv("PERCOLATE_ORT_LOAD_WEIGHTS", "AT_LOAD")  # any case
    assert load(backend, own_repository, load_weights="on_first_request").session is not None


def test_weights_on_first_request_checks_the_file_at_load(backend, own_repository):
    _, pb_utils = backend
    (own_repository / "1" / "model.onnx").unlink()
    with pytest.raises(pb_utils.TritonModelException, match="model.onnx is missing"):
        load(backend, own_repository, load_weights="on_first_request")


def test_a_file_broken_before_the_first_request_fails_each_request_until_repaired(backend, own_repository):
    """Corrupt, then missing: every request gets an error naming the model and the file
    (the model keeps serving, no session is kept); once the file is back the next request
    loads it and is answered."""
    onnx_file = own_repository / "1" / "model.onnx"
    good = onnx_file.read_bytes()
    model = load(backend, own_repository, load_weights="on_first_request")
    onnx_file.write_bytes(b"\x08\x07garbage, not a protobuf")
    for attempt in range(2):
        responses = model.execute([request(backend, 1, 5, seed=s)[1] for s in range(2)])
        for response in responses:
            assert response.has_error()
            message = response.error().message()
            assert "model double" in message and "cannot load" in message
            assert str(onnx_file) in message and "percolate-models build" in message
        assert model.session is None
    onnx_file.unlink()
    (response,) = model.execute([request(backend, 1, 5, seed=0)[1]])
    assert "model double" in response.error().message()
    assert f"{onnx_file} is missing" in response.error().message()
    onnx_file.write_bytes(good)
    image, made = request(backend, 1, 5, seed=4)
    (response,) = model.execute([made])
    assert not response.has_error()
    np.testing.assert_array_equal(response.output_tensors()[0].as_numpy(), 2 * image)
    model.finalize()


def test_unload_when_idle(backend, own_repository, monkeypatch):
    """``unload_idle_s``: the idle thread drops both sessions after that long without a
    request (waited on, not slept); the next request loads them again. Without
    ``on_first_request`` the parameter does nothing."""
    module, _ = backend
    monkeypatch.setattr(module.os, "cpu_count", lambda: 4)
    assert load(backend, own_repository, unload_idle_s="0.01").idle_thread is None
    model = load(backend, own_repository, load_weights="on_first_request", unload_idle_s="0.01",
                 max_rows_per_run="1", parallel_rows="2")
    for seed in range(2):
        image, made = request(backend, 3, 5, seed=seed)
        (response,) = model.execute([made])
        np.testing.assert_array_equal(response.output_tensors()[0].as_numpy(), 2 * image)
        with model.idle:
            assert model.idle.wait_for(lambda: model.session is None and model.row_session is None, timeout=60)
    model.finalize()
