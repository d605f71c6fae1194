"""Generated Triton configs: both targets parse as ModelConfig, and the committed
repository files are exactly what the catalog renders (a stale config fails here)."""
from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from percolate_models import configs
from percolate_models.catalog import MODELS, TARGETS, WHISPER

ONNX_MODELS = [m for m in MODELS if m.has_weights]
from percolate_models.paths import ProjectPaths


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_rendered_config_parses_as_model_config(spec, target):
    parsed = configs.parse(configs.render(spec, target))
    assert parsed.name == spec.name
    assert [t.name for t in parsed.input] == [t.name for t in spec.inputs]
    assert [t.name for t in parsed.output] == [t.name for t in spec.outputs]
    assert parsed.max_batch_size == spec.settings(target).max_batch_size >= 0
    if parsed.max_batch_size == 0:  # the batch dimension is the caller's (Whisper decoder)
        assert not parsed.HasField("dynamic_batching")
        return
    assert list(parsed.dynamic_batching.preferred_batch_size) == list(
        spec.settings(target).preferred_batch_sizes)
    assert max(parsed.dynamic_batching.preferred_batch_size) <= parsed.max_batch_size


@pytest.mark.parametrize("spec", ONNX_MODELS, ids=lambda s: s.name)
def test_gpu_config_uses_onnxruntime_with_tensorrt_fp16(spec):
    parsed = configs.parse(configs.render(spec, "gpu"))
    assert parsed.platform == "onnxruntime_onnx" and not parsed.backend
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    accelerators = parsed.optimization.execution_accelerators.gpu_execution_accelerator
    if not spec.trt_precision:  # the Whisper decoder: CUDA provider alone
        assert not accelerators
        return
    (trt,) = accelerators
    assert trt.name == "tensorrt"
    assert trt.parameters["precision_mode"] == "FP16"


@pytest.mark.parametrize("target,mode", [("cpu", "inprocess"), ("gpu", "bls")])
def test_whisper_loop_is_a_python_model_on_both_targets(target, mode):
    parsed = configs.parse(configs.render(WHISPER, target))
    assert parsed.backend == "python" and not parsed.platform
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert parsed.parameters["mode"].string_value == mode
    assert parsed.parameters["encoder_model"].string_value == "whisper_encoder"
    assert parsed.parameters["decoder_model"].string_value == "whisper_decoder"
    model_py = configs.repository_files(WHISPER)["whisper/1/model.py"]
    assert "TritonPythonModel = WhisperLoopModel" in model_py
    assert "from percolate_models" not in model_py  # the official container has no project code


@pytest.mark.parametrize("spec", ONNX_MODELS, ids=lambda s: s.name)
def test_cpu_config_uses_python_backend_on_cpu(spec):
    parsed = configs.parse(configs.render(spec, "cpu"))
    assert parsed.backend == "python" and not parsed.platform
    assert parsed.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert parsed.parameters["onnx_file"].string_value == "model.onnx"


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_committed_repository_files_are_not_stale(spec):
    repo = ProjectPaths.from_env().model_repository
    for relative, text in configs.repository_files(spec).items():
        assert (repo / relative).read_text() == text, (
            f"{relative} differs from the catalog: run `percolate-models build` and commit it")


def test_invalid_config_text_is_rejected():
    with pytest.raises(text_format.ParseError):
        configs.parse('name: "x"\nmax_batch_size: "many"\n')


def test_check_reports_a_stale_committed_file_without_writing(tmp_path, monkeypatch):
    """`percolate-models check` (run by setup before the build) sees a stale file and leaves it."""
    import dataclasses
    import shutil

    from percolate_models.build import stale_repository_files
    from percolate_models.cli import main

    real = ProjectPaths.from_env()
    copy = tmp_path / "model_repository"
    for spec in MODELS:
        for relative in configs.repository_files(spec):
            (copy / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(real.model_repository / relative, copy / relative)
    paths = dataclasses.replace(real, model_repository=copy)
    assert stale_repository_files(paths) == []
    target = copy / f"{MODELS[0].name}/config.pbtxt"
    edited = target.read_text() + "# hand edit\n"
    target.write_text(edited)
    (copy / f"{MODELS[-1].name}/1/model.py").unlink()
    assert stale_repository_files(paths) == [f"{MODELS[0].name}/config.pbtxt", f"{MODELS[-1].name}/1/model.py"]
    assert target.read_text() == edited  # checked, not rewritten
    monkeypatch.setenv("PERCOLATE_MODEL_REPOSITORY", str(copy))
    assert main(["check"]) == 1


@pytest.mark.parametrize("target", TARGETS)
def test_only_the_in_process_whisper_graphs_load_weights_on_first_request(target):
    """On cpu the Whisper loop loads its three graphs itself, so their served models
    create their sessions when first called (python_backend.py); on gpu the loop calls
    them through BLS and they are Triton's own onnxruntime models: nothing rendered."""
    lazy = {spec.name: dict((k, v.string_value) for k, v in configs.parse(
        configs.render(spec, target)).parameters.items() if k in ("load_weights", "unload_idle_s"))
        for spec in MODELS}
    expected = {"load_weights": "on_first_request", "unload_idle_s": "600"} if target == "cpu" else {}
    graphs = {"whisper_encoder", "whisper_decoder", "whisper_decoder_with_past"}
    assert {name: params for name, params in lazy.items() if params} == {
        name: expected for name in graphs if expected}
    if target == "cpu":  # the committed files say so too
        paths = ProjectPaths.from_env()
        for name in graphs:
            committed = configs.parse((paths.model_repository / name / "config.pbtxt").read_text())
            assert committed.parameters["load_weights"].string_value == "on_first_request"
