"""The model build: idempotent, repairs a damaged repository, resumes after an
interruption, and fails with one actionable line when weights are missing."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from percolate_models import configs, export
from percolate_models.build import BuildOptions, BuildReport, _install_model, build, current_key, verify
from percolate_models.catalog import MODELS, WeightsSource, model_by_name
from percolate_models.errors import BuildError, MissingPackageError
from percolate_models.paths import ProjectPaths
from percolate_models.sources import locate, sha256_file

SMALL = BuildOptions(models=("ocr_cls",))


@pytest.fixture
def scratch(tmp_path) -> ProjectPaths:
    """A repository, assets folder and cache of its own (ocr_cls builds in a second)."""
    return ProjectPaths(model_repository=tmp_path / "repo", assets=tmp_path / "assets",
                        cache=tmp_path / "cache")


def test_second_build_does_nothing_and_says_so(scratch):
    lines: list[str] = []
    first = build(scratch, SMALL, say=lines.append)
    assert first.changed and any("built ocr_cls" in a for a in first.actions)
    assert (scratch.model_repository / "ocr_cls" / "1" / "model.onnx").is_file()
    lines.clear()
    second = build(scratch, SMALL, say=lines.append)
    assert not second.changed
    assert lines == [line for line in lines if line.startswith("nothing to do")] and lines
    assert verify(scratch, SMALL.models) == []


def test_corrupt_or_missing_weights_are_repaired(scratch):
    build(scratch, SMALL, say=lambda _: None)
    weights = scratch.model_repository / "ocr_cls" / "1" / "model.onnx"
    weights.write_bytes(b"not an onnx model")
    assert any("does not match" in p for p in verify(scratch, SMALL.models))
    repaired = build(scratch, SMALL, say=lambda _: None)
    assert any("replaced ocr_cls/1/model.onnx" in a for a in repaired.actions)
    weights.unlink()
    reinstalled = build(scratch, SMALL, say=lambda _: None)
    assert any("installed ocr_cls/1/model.onnx" in a for a in reinstalled.actions)
    assert verify(scratch, SMALL.models) == []
    assert not any("built" in a for a in repaired.actions + reinstalled.actions)  # cache reused


def test_interrupted_build_leaves_nothing_and_resumes(scratch, monkeypatch):
    real = export.rename_tensors

    def interrupted(src, dst, renames):
        dst.write_bytes(b"half written")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "rename_tensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build(scratch, SMALL, say=lambda _: None)
    assert not (scratch.model_repository / "ocr_cls" / "1" / "model.onnx").exists()
    assert not list((scratch.cache / "models" / "ocr_cls").glob("*/entry.json"))
    monkeypatch.setattr(export, "rename_tensors", real)
    resumed = build(scratch, SMALL, say=lambda _: None)
    assert any("built ocr_cls" in a for a in resumed.actions)
    assert not list((scratch.cache / "models" / "ocr_cls").glob("*.partial*"))
    assert verify(scratch, SMALL.models) == []


def test_damaged_cache_entry_is_rebuilt(scratch):
    build(scratch, SMALL, say=lambda _: None)
    (entry,) = (scratch.cache / "models" / "ocr_cls").glob("*/fp32.onnx")
    entry.write_bytes(b"bit rot")
    again = build(scratch, SMALL, say=lambda _: None)
    assert any("built ocr_cls" in a for a in again.actions)


def test_unknown_variant_is_refused(scratch):
    with pytest.raises(BuildError, match="choose one of fp32, optimized, int8"):
        build(scratch, BuildOptions(models=("text_embedding",), variants={"text_embedding": "fp8"}))


def test_missing_weights_package_names_the_fix():
    with pytest.raises(MissingPackageError, match=r"percolate-absent-weights.*make setup"):
        locate(WeightsSource("percolate-absent-weights", "percolate_absent_weights", "model"))


def test_missing_weights_package_from_the_command_line(tmp_path):
    """The CLI prints one line and no traceback when a weights package is absent."""
    script = (
        "import sys, dataclasses\n"
        "from percolate_models import catalog, cli\n"
        "absent = catalog.WeightsSource('percolate-absent-weights', 'absent', 'm.onnx')\n"
        "catalog.MODELS = (dataclasses.replace(catalog.OCR_CLS, source=absent),)\n"
        "import percolate_models.build as b; b.MODELS = catalog.MODELS\n"
        "sys.exit(cli.main(['build']))\n"
    )
    env = {"PERCOLATE_MODEL_REPOSITORY": str(tmp_path / "r"), "PERCOLATE_MODEL_ASSETS": str(tmp_path / "a"),
           "PERCOLATE_CACHE_DIR": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "percolate-absent-weights" in lines[0] and "make setup" in lines[0]



INTEGER_OPS = {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeLinear", "DynamicQuantizeMatMul",
               "QLinearMatMul", "ConvInteger", "QLinearConv"}


@pytest.mark.parametrize("spec", [m for m in MODELS if m.has_weights], ids=lambda s: s.name)
def test_gpu_config_serves_the_reference_weights_whatever_the_cpu_runs(spec, paths):
    """Tuning picks int8 for the CPU where it is faster; TensorRT and the CUDA provider must
    still get full-precision weights (onnxruntime's integer kernels are CPU ones)."""
    import onnx

    gpu = configs.parse((paths.model_repository / spec.name / "configs" / "gpu.pbtxt").read_text())
    assert gpu.default_model_filename == configs.GPU_MODEL_FILE
    manifest = json.loads(paths.manifest.read_text())["models"][spec.name]
    served = paths.model_repository / spec.name / "1" / configs.GPU_MODEL_FILE
    assert manifest["gpu_artefact"]["variant"] == spec.variants[0] == "fp32"
    assert sha256_file(served) == manifest["gpu_artefact"]["sha256"]
    ops = {node.op_type for node in onnx.load(str(served), load_external_data=False).graph.node}
    assert not ops & INTEGER_OPS, f"{served} has integer ops {ops & INTEGER_OPS}"


def test_cpu_and_gpu_files_are_installed_and_verified_apart(scratch):
    """An explicit int8 choice installs int8 as model.onnx and still fp32 as model.gpu.onnx;
    verify names whichever of the two is damaged."""
    spec = next(m for m in MODELS if len(m.variants) > 1)
    entry_dir = scratch.cache / "entry"
    entry_dir.mkdir(parents=True)
    files = {}
    for variant in spec.variants:
        (entry_dir / f"{variant}.onnx").write_bytes(f"weights of {variant}".encode())
        files[variant] = sha256_file(entry_dir / f"{variant}.onnx")
    entry = {"key": current_key(spec), "source": {}, "accuracy": {}, "files": files}
    report = BuildReport()
    model = _install_model(spec, spec.variants[-1], entry_dir, entry, scratch, report)
    folder = scratch.model_repository / spec.name / "1"
    assert (folder / "model.onnx").read_bytes() == f"weights of {spec.variants[-1]}".encode()
    assert (folder / configs.GPU_MODEL_FILE).read_bytes() == b"weights of fp32"
    assert model["gpu_artefact"]["variant"] == "fp32" and model["artefact"]["variant"] == spec.variants[-1]
    scratch.manifest.parent.mkdir(parents=True, exist_ok=True)
    scratch.manifest.write_text(json.dumps({"models": {spec.name: model}, "assets": []}))
    assert verify(scratch, [spec.name]) == []
    (folder / configs.GPU_MODEL_FILE).write_bytes(b"edited")
    assert verify(scratch, [spec.name]) == [f"{folder / configs.GPU_MODEL_FILE} does not match the manifest (corrupt or edited)"]
    (folder / configs.GPU_MODEL_FILE).unlink()
    assert verify(scratch, [spec.name]) == [f"{folder / configs.GPU_MODEL_FILE} is missing"]


def test_verify_names_a_repository_built_by_other_code(scratch):
    """A repository built before a change to the export code (say, the OCR graph edits) would
    fail on its first request; verify says so instead, and the build repairs it."""
    build(scratch, SMALL, say=lambda _: None)
    manifest = json.loads(scratch.manifest.read_text())
    manifest["models"]["ocr_cls"]["cache_key"] = "0123456789abcdef"
    del manifest["models"]["ocr_cls"]["gpu_artefact"]
    scratch.manifest.write_text(json.dumps(manifest))
    problems = verify(scratch, SMALL.models)
    assert any("built by other code" in p and "0123456789abcdef" in p for p in problems), problems
    assert any("before the gpu target had its own weights file" in p for p in problems), problems
    build(scratch, SMALL, say=lambda _: None)
    assert verify(scratch, SMALL.models) == []


def test_verify_names_a_model_the_manifest_lacks(scratch):
    """A repository whose manifest misses a catalog model (say, one built before
    whisper_decoder_with_past existed) is reported, not passed because what it holds is sound."""
    build(scratch, SMALL, say=lambda _: None)
    assert verify(scratch, SMALL.models) == []
    problems = verify(scratch)
    assert "whisper_decoder_with_past is not in the manifest: run `percolate-models build --only " \
           "whisper_decoder_with_past`" in problems
    assert len(problems) == len(MODELS) - 1


def test_the_two_whisper_decoders_get_one_variant(scratch):
    """One decoding runs both decoders: naming fp32 for one only is refused with the fix."""
    for name in ("whisper_decoder", "whisper_decoder_with_past"):
        with pytest.raises(BuildError, match="--variant whisper_decoder=fp32 --variant whisper_decoder_with_past=fp32"):
            build(scratch, BuildOptions(models=(name,), variants={name: "fp32"}))
    # a --variant for a model the build does not build would be ignored: refused, saying so
    with pytest.raises(BuildError, match="--variant names whisper_decoder_with_past, which this build does not build"):
        build(scratch, BuildOptions(models=("whisper_decoder",),
                                    variants={"whisper_decoder": "fp32", "whisper_decoder_with_past": "fp32"}))
    assert not scratch.manifest.exists()


def test_building_one_decoder_checks_the_other_ones_installed_variant(scratch):
    """`build --only` of one decoder is refused when the other is installed with another
    variant, and allowed when it matches."""
    scratch.manifest.parent.mkdir(parents=True, exist_ok=True)
    installed = {"whisper_decoder": {"variant": "fp32"}, "whisper_decoder_with_past": {"variant": "fp32"}}
    scratch.manifest.write_text(json.dumps({"models": installed, "assets": []}))
    with pytest.raises(BuildError, match="--only whisper_decoder --only whisper_decoder_with_past "
                                         "--variant whisper_decoder=int8 --variant whisper_decoder_with_past=int8"):
        build(scratch, BuildOptions(models=("whisper_decoder_with_past",)))
    with pytest.raises(BuildError, match="different variants"):
        build(scratch, BuildOptions(models=("whisper_decoder",), variants={"whisper_decoder": "int8"}))
    from percolate_models import build as build_module

    # fp32 beside the installed fp32: nothing to refuse
    build_module._check_same_variant([model_by_name("whisper_decoder_with_past")],
                                     BuildOptions(models=("whisper_decoder_with_past",),
                                                  variants={"whisper_decoder_with_past": "fp32"}), scratch)
    # a build that touches neither decoder leaves a mismatch it did not cause to verify
    installed["whisper_decoder_with_past"]["variant"] = "int8"
    scratch.manifest.write_text(json.dumps({"models": installed, "assets": []}))
    build_module._check_same_variant([model_by_name("ocr_cls")], BuildOptions(models=("ocr_cls",)), scratch)


def test_verify_names_decoders_left_with_different_variants(scratch):
    """A later `build --only` of one decoder can leave the other on another variant; the
    loop runs both in one decoding, so verify reports it with the command that mends it."""
    build(scratch, SMALL, say=lambda _: None)
    manifest = json.loads(scratch.manifest.read_text())
    for name, variant in (("whisper_decoder", "fp32"), ("whisper_decoder_with_past", "int8")):
        manifest["models"][name] = {"variant": variant, "artefact": None}
    scratch.manifest.write_text(json.dumps(manifest))
    problems = verify(scratch, SMALL.models)
    assert any("hold different variants" in p and "--variant whisper_decoder=fp32 --variant "
               "whisper_decoder_with_past=fp32" in p for p in problems), problems
    manifest["models"]["whisper_decoder_with_past"]["variant"] = "fp32"
    scratch.manifest.write_text(json.dumps(manifest))
    assert not any("hold different variants" in p for p in verify(scratch, SMALL.models))


def test_verify_command_takes_the_models_a_partial_build_holds(scratch, monkeypatch, capsys):
    """`percolate-models verify` asks for every catalog model; a repository built with
    `build --only` passes `verify --only` with the same names."""
    from percolate_models import cli

    build(scratch, SMALL, say=lambda _: None)
    monkeypatch.setenv("PERCOLATE_MODEL_REPOSITORY", str(scratch.model_repository))
    monkeypatch.setenv("PERCOLATE_MODEL_ASSETS", str(scratch.assets))
    monkeypatch.setenv("PERCOLATE_CACHE_DIR", str(scratch.cache))
    assert cli.main(["verify"]) == 1
    assert "text_embedding is not in the manifest" in capsys.readouterr().err
    assert cli.main(["verify", "--only", "ocr_cls"]) == 0


def test_on_request_variants_are_built_only_when_named(scratch):
    """The OCR int8 variants cost about 8 GB and 30 s to calibrate: a plain build makes only
    fp32 and fused (in under a second), under a key that leaves out what only int8 depends on
    (the frontend's ocr.py, the calibration's packages), so editing the frontend does not
    rebuild them."""
    from percolate_models import build as build_module
    from reading_frontend import ocr

    det = model_by_name("ocr_det")
    assert det.built_variants() == ("fp32", "fused") and det.built_variants("fp32") == ("fp32", "fused")
    assert det.built_variants("int8") == ("fp32", "fused", "int8")
    assert build_module.cache_key(det, "s") == build_module.cache_key(det, "s", "fp32")
    assert build_module.cache_key(det, "s") != build_module.cache_key(det, "s", "int8")
    assert ocr not in build_module._export_code(det, ("fp32", "fused"))
    assert ocr in build_module._export_code(det, ("fp32", "fused", "int8"))
    assert "pyclipper" not in build_module._key_tools(det, ("fp32",))
    assert "pyclipper" in build_module._key_tools(det, ("fp32", "int8"))
    lines: list[str] = []
    build(scratch, BuildOptions(models=("ocr_det",)), say=lines.append)
    assert not any("quantising" in line for line in lines), lines
    manifest = json.loads(scratch.manifest.read_text())["models"]["ocr_det"]
    entry = json.loads((scratch.cache / "models" / "ocr_det" / manifest["cache_key"] / "entry.json").read_text())
    # built without ocr_rec, its tuned group's other half: the catalog's default
    assert set(entry["files"]) == {"fp32", "fused"} and manifest["variant"] == "fused"
    assert manifest["choice"]["reason"] == "the catalog's default"
    assert verify(scratch, ("ocr_det",)) == []
    # a stale repository holding int8: verify's fix keeps the variant (a plain build would not)
    whole = json.loads(scratch.manifest.read_text())
    whole["models"]["ocr_det"].update(variant="int8", cache_key="0123456789abcdef",
                                      choice={"variant": "int8", "reason": "named by --variant"})
    scratch.manifest.write_text(json.dumps(whole))
    assert any("run `percolate-models build --only ocr_det --variant ocr_det=int8`" in problem
               for problem in verify(scratch, ("ocr_det",)))
    # every other model builds every variant, as before
    assert all(spec.built_variants() == spec.variants for spec in MODELS if not spec.on_request_variants)
