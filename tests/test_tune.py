"""Variant choice by measurement (percolate_models/tune.py): the build installs the fastest
variant that keeps the accuracy floor, records why, measures once per machine type, and an
explicit --variant wins. The timings are given (a measuring stand-in), so the choice is
deterministic; the real measurement runs in every fresh `percolate-models build`."""
from __future__ import annotations

import json
import os

import pytest

from percolate_models import tune
from percolate_models.build import BuildOptions, build
from percolate_models.catalog import TEXT_EMBEDDING
from percolate_models.paths import ProjectPaths
from percolate_models.sources import sha256_file

GOOD = {"cosine_mean": 1.0, "cosine_min": 1.0, "sentences": 256,
        "short_texts": {"cosine_mean": 1.0, "cosine_min": 1.0, "texts": 52}}
CLOSE = {"cosine_mean": 0.993, "cosine_min": 0.988, "sentences": 256,
         "short_texts": {"cosine_mean": 0.995, "cosine_min": 0.985, "texts": 52}}
POOR = {"cosine_mean": 0.95, "cosine_min": 0.86, "sentences": 256,
        "short_texts": {"cosine_mean": 0.94, "cosine_min": 0.85, "texts": 52}}
SHORT_POOR = {"cosine_mean": 0.997, "cosine_min": 0.995, "sentences": 256,
              "short_texts": {"cosine_mean": 0.9896, "cosine_min": 0.975, "texts": 52}}
"""Within the floor on sentences, under it on short texts (plain per-token int8 on single words)."""


ALONE = {"cosine_min": 1.0, "max_abs_diff": 3e-8, "texts": 8}
MIXED = {"cosine_min": 0.989, "max_abs_diff": 2.5e-2, "texts": 8}


def measured(int8_accuracy: dict, ms: dict[str, float], token_accuracy: dict = CLOSE,
             mixing: dict | None = None) -> dict:
    ms = {"int8_token": 120, **ms}
    return {"accuracy": {"fp32": GOOD, "optimized": GOOD, "int8": int8_accuracy, "int8_token": token_accuracy},
            "timings_ms": {v: {"1": 2 * t, "2": t} for v, t in ms.items()},
            "batch_independence": {v: ALONE for v in ms} | {"int8": MIXED} | (mixing or {}),
            "reference": "stand-in"}


def test_pick_takes_the_fastest_variant_within_the_floor():
    from dataclasses import replace

    independent = replace(TEXT_EMBEDDING, batch_dependent_variants=())  # the rule alone
    unmixed = {"int8": ALONE}
    fast_int8 = measured(CLOSE, {"fp32": 240, "optimized": 200, "int8": 100}, mixing=unmixed)
    assert tune.pick(independent, fast_int8)["variant"] == "int8"
    poor = tune.pick(independent, measured(POOR, {"fp32": 240, "optimized": 200, "int8": 100}, POOR, unmixed))
    assert poor["variant"] == "optimized" and "below the floor: int8, int8_token" in poor["reason"]
    slow = {"fp32": 150, "optimized": 200, "int8": 100, "int8_token": 160}
    assert tune.pick(independent, measured(POOR, slow, mixing=unmixed))["variant"] == "fp32"


def test_the_floor_holds_on_short_texts_too():
    """Users search with one to three words; a variant that only keeps the floor on sentences
    is not served, nor one whose record lacks the short texts' figures."""
    chosen = tune.pick(TEXT_EMBEDDING, measured(CLOSE, {"fp32": 240, "optimized": 200, "int8": 100}, SHORT_POOR))
    assert chosen["variant"] == "optimized" and "below the floor: int8_token" in chosen["reason"]
    sentences_only = {k: v for k, v in CLOSE.items() if k != "short_texts"}
    chosen = tune.pick(TEXT_EMBEDDING, measured(CLOSE, {"fp32": 240, "optimized": 200, "int8": 100}, sentences_only))
    assert chosen["variant"] == "optimized"
    assert tune.pick(TEXT_EMBEDDING, measured(CLOSE, {"fp32": 240, "optimized": 200, "int8": 100}))["variant"] \
        == "int8_token"


def test_a_batch_dependent_variant_is_never_chosen_automatically():
    """Dynamic int8 scales activations over the whole batch, and Triton batches tenants together:
    one tenant's texts would shift another's embeddings."""
    chosen = tune.pick(TEXT_EMBEDDING, measured(CLOSE, {"fp32": 240, "optimized": 200, "int8": 100}))
    assert chosen["variant"] == "int8_token"  # per-token scales: batch independent, next fastest
    assert "not chosen automatically: int8" in chosen["reason"]
    assert chosen["batch_independence"]["int8_token"] == ALONE


def test_a_variant_measured_batch_dependent_is_not_chosen_even_if_the_catalog_misses_it():
    from dataclasses import replace

    undeclared = replace(TEXT_EMBEDDING, batch_dependent_variants=())
    chosen = tune.pick(undeclared, measured(CLOSE, {"fp32": 240, "optimized": 200, "int8": 100},
                                            mixing={"int8_token": MIXED}))
    assert chosen["variant"] == "optimized"
    assert "not chosen automatically: int8, int8_token" in chosen["reason"]


@pytest.fixture
def scratch(tmp_path, paths) -> ProjectPaths:
    """A repository of its own whose cache holds the built text_embedding entry (linked)."""
    built = paths.build_entry("text_embedding")
    key = built.name
    scratch = ProjectPaths(model_repository=tmp_path / "repo", assets=tmp_path / "assets", cache=tmp_path / "cache")
    entry = scratch.cache / "models" / "text_embedding" / key
    entry.mkdir(parents=True)
    for file in built.iterdir():
        if file.is_file():
            os.link(file, entry / file.name)
    return scratch


def test_build_installs_the_measured_choice_once_per_machine_and_variant_wins(scratch, monkeypatch):
    calls = []

    def measure(spec, entry_dir):
        calls.append(entry_dir)
        return measured(CLOSE, {"fp32": 240, "optimized": 260, "int8": 100, "int8_token": 300})

    monkeypatch.setattr(tune, "measure_embedding_variants", measure)
    only = BuildOptions(models=("text_embedding",))
    build(scratch, only, say=lambda _: None)
    installed = json.loads(scratch.manifest.read_text())["models"]["text_embedding"]
    assert installed["variant"] == installed["choice"]["variant"] == "fp32"  # int8 is batch dependent
    assert installed["choice"]["batch_independence"]["int8"] == MIXED
    assert "fastest at 2 threads" in installed["choice"]["reason"]
    assert installed["choice"]["timings_ms"]["int8"] == {"1": 200, "2": 100}
    assert installed["choice"]["machine"]["cpu"]
    key = installed["cache_key"]
    served = scratch.model_repository / "text_embedding" / "1" / "model.onnx"
    assert sha256_file(served) == sha256_file(scratch.cache / "models" / "text_embedding" / key / "fp32.onnx")
    lines = []
    build(scratch, only, say=lines.append)
    assert len(calls) == 1 and lines[-1].startswith("nothing to do"), "measured once, then read from the cache"
    assert list((scratch.cache / "tune").glob(f"text_embedding-{key}-{tune.machine_key()}-{tune.rules_key()}.json"))
    monkeypatch.setattr(tune, "rules_key", lambda group=None: "other-rules")
    build(scratch, only, say=lambda _: None)
    assert len(calls) == 2, "a change to the code that measures and picks measures again"

    build(scratch, BuildOptions(models=("text_embedding",), variants={"text_embedding": "int8"}), say=lambda _: None)
    installed = json.loads(scratch.manifest.read_text())["models"]["text_embedding"]
    assert installed["variant"] == "int8" and installed["choice"]["reason"] == "named by --variant"
    assert len(calls) == 2

    build(scratch, BuildOptions(models=("text_embedding",), tune=False), say=lambda _: None)
    assert json.loads(scratch.manifest.read_text())["models"]["text_embedding"]["variant"] == "fp32"


# --------------------------------------------------------------------------- the Whisper loop


def linked_scratch(paths: ProjectPaths, tmp_path, names) -> ProjectPaths:
    """A repository of its own whose cache links the suite's built entries of ``names``, so
    nothing is exported again."""
    scratch = ProjectPaths(model_repository=tmp_path / "repo", assets=tmp_path / "assets", cache=tmp_path / "cache")
    for name in names:
        (scratch.cache / "models" / name).mkdir(parents=True)
        (scratch.cache / "models" / name / paths.build_entry(name).name).symlink_to(paths.build_entry(name))
    return scratch


WHISPER = tune.TUNED_GROUPS["whisper"]


def heard(int8_wer: float, int8_seconds: float) -> dict:
    """A stand-in measurement of the Whisper group: fp32 reads one file perfectly, the other
    with 2% word errors, in 1.4 s."""
    return {"wer": {"fp32": {"one window": 0.0, "two windows": 0.02},
                    "int8": {"one window": 0.0, "two windows": int8_wer}},
            "seconds": {"fp32": 1.4, "int8": int8_seconds}, "reference": "stand-in"}


def test_the_whisper_group_takes_the_fastest_variant_with_no_more_word_errors():
    assert tune.shared_variants("whisper") == ["fp32", "int8"]
    assert tune.pick_by_words("whisper", heard(0.02, 0.7))["variant"] == "int8"
    assert tune.pick_by_words("whisper", heard(0.0, 0.7))["variant"] == "int8", "fewer errors also pass"
    worse = tune.pick_by_words("whisper", heard(0.03, 0.7))
    assert worse["variant"] == "fp32" and "more word errors than fp32: int8" in worse["reason"]
    assert tune.pick_by_words("whisper", heard(0.02, 1.5))["variant"] == "fp32", "int8 slower on this CPU"


def test_build_installs_one_measured_variant_for_the_whisper_loop(paths, tmp_path, monkeypatch):
    """The three graphs get the group's choice (here fp32: the stand-in's int8 makes more word
    errors), recorded per model; measured once per machine type; a --variant naming one of
    them, or a build of only some of them, leaves the group to the catalog's defaults. The
    scratch cache links the suite's built entries, so nothing is exported again."""
    scratch = linked_scratch(paths, tmp_path, WHISPER)
    calls = []

    def measure(entries):
        calls.append(sorted(entries))
        return heard(0.03, 0.7)

    monkeypatch.setattr(tune, "measure_whisper_variants", measure)
    whole = BuildOptions(models=WHISPER)
    build(scratch, whole, say=lambda _: None)
    installed = json.loads(scratch.manifest.read_text())["models"]
    assert calls == [sorted(WHISPER)]
    for name in WHISPER:
        assert installed[name]["variant"] == installed[name]["choice"]["variant"] == "fp32"
        assert "more word errors than fp32: int8" in installed[name]["choice"]["reason"]
        assert installed[name]["choice"]["group"] == list(WHISPER)
        served = scratch.model_repository / name / "1" / "model.onnx"
        assert sha256_file(served) == sha256_file(paths.build_entry(name) / "fp32.onnx")
    lines = []
    build(scratch, whole, say=lines.append)
    assert len(calls) == 1 and lines[-1].startswith("nothing to do"), "measured once, then read from the cache"

    def variants() -> dict:
        return {name: m["variant"] for name, m in json.loads(scratch.manifest.read_text())["models"].items()
                if name in WHISPER}

    build(scratch, BuildOptions(models=("whisper_encoder",)), say=lambda _: None)
    encoder = json.loads(scratch.manifest.read_text())["models"]["whisper_encoder"]
    assert encoder["variant"] == "fp32" and "the rest of its group holds" in encoder["choice"]["reason"], \
        "a build of part of the group keeps the measured choice"
    assert len(calls) == 1

    build(scratch, BuildOptions(models=WHISPER, variants={"whisper_encoder": "int8"}), say=lambda _: None)
    installed = json.loads(scratch.manifest.read_text())["models"]
    assert installed["whisper_encoder"]["choice"]["reason"] == "named by --variant"
    assert variants() == dict.fromkeys(WHISPER, "int8")
    assert all(installed[name]["choice"]["reason"] == "the catalog's default" for name in WHISPER[1:])
    build(scratch, BuildOptions(models=WHISPER, tune=False), say=lambda _: None)
    assert len(calls) == 1 and variants() == dict.fromkeys(WHISPER, "int8")

    for cached in scratch.cache.glob("tune/whisper-*.json"):  # valid JSON of the wrong shape: measured again
        cached.write_text('{"variant": "fp16"}')
    build(scratch, whole, say=lambda _: None)
    assert len(calls) == 2 and variants() == dict.fromkeys(WHISPER, "fp32")

    # an install without the repository's data/ (the reading image): not measured, the default
    monkeypatch.setattr(tune, "SPEECH_TEST_FILE", tmp_path / "no-such" / "jfk.flac")
    for cached in scratch.cache.glob("tune/whisper-*.json"):
        cached.unlink()
    lines = []
    build(scratch, whole, say=lines.append)
    assert len(calls) == 2 and variants() == dict.fromkeys(WHISPER, "int8")
    assert any("is missing, so the whisper group is not measured" in line for line in lines)


def test_the_whisper_measurement_reads_the_test_speech_with_every_variant(paths):
    """The real measurement on the built graphs: every variant transcribes the test speech,
    the word error rates are real (int8 and fp32 read it alike on this machine's build), and
    each variant is timed."""
    entries = {name: (paths.build_entry(name), {"key": paths.build_entry(name).name}) for name in WHISPER}
    measured = tune.measure_whisper_variants(entries)
    assert set(measured["wer"]) == set(measured["seconds"]) == {"fp32", "int8"}
    for variant, files in measured["wer"].items():
        assert len(files) == 2 and all(0.0 <= wer <= 0.1 for wer in files.values()), (variant, files)
        assert measured["seconds"][variant] > 0
    assert measured["wer"]["int8"] == measured["wer"]["fp32"]


# --------------------------------------------------------------------------- OCR

OCR = tune.TUNED_GROUPS["ocr"]


def read(fused_errors: float, fused_seconds: float) -> dict:
    """A stand-in measurement of the OCR group: fp32 misreads 1% of the harder pages' characters
    and none of the clean ones, in 4 s."""
    return {"character_errors": {"fp32": {"clean pages": 0.0, "harder pages": 0.01},
                                 "fused": {"clean pages": 0.0, "harder pages": fused_errors}},
            "lines_unlike_fp32": {"fp32": 0, "fused": 0}, "seconds": {"fp32": 4.0, "fused": fused_seconds},
            "reference": "stand-in"}


def test_the_ocr_group_takes_the_fastest_variant_with_no_more_character_errors():
    assert tune.shared_variants("ocr") == ["fp32", "fused"], "int8 is built on request only, never tuned"
    assert tune.pick_by_reading("ocr", read(0.01, 3.0))["variant"] == "fused"
    assert tune.pick_by_reading("ocr", read(0.005, 3.0))["variant"] == "fused", "fewer errors also pass"
    worse = tune.pick_by_reading("ocr", read(0.011, 3.0))
    assert worse["variant"] == "fp32" and "more character errors than fp32: fused" in worse["reason"]
    assert tune.pick_by_reading("ocr", read(0.01, 4.5))["variant"] == "fp32", "fused slower on this CPU"


def test_build_installs_one_measured_variant_for_ocr(paths, tmp_path, monkeypatch):
    """Detection and recognition get the group's choice, recorded per model and measured once;
    the stand-in's fused variant misreads more than fp32, so fp32 is served."""
    scratch = linked_scratch(paths, tmp_path, OCR)
    calls = []

    def measure(entries):
        calls.append(sorted(entries))
        return read(0.02, 3.0)

    monkeypatch.setattr(tune, "measure_ocr_variants", measure)
    build(scratch, BuildOptions(models=OCR), say=lambda _: None)
    installed = json.loads(scratch.manifest.read_text())["models"]
    assert calls == [sorted(OCR)]
    for name in OCR:
        assert installed[name]["variant"] == installed[name]["choice"]["variant"] == "fp32"
        assert "more character errors than fp32: fused" in installed[name]["choice"]["reason"]
        assert installed[name]["choice"]["character_errors"]["fused"]["harder pages"] == 0.02
        served = scratch.model_repository / name / "1" / "model.onnx"
        assert sha256_file(served) == sha256_file(paths.build_entry(name) / "fp32.onnx")
    build(scratch, BuildOptions(models=OCR), say=lambda _: None)
    assert len(calls) == 1, "measured once, then read from the cache"
    build(scratch, BuildOptions(models=OCR, tune=False), say=lambda _: None)
    assert {json.loads(scratch.manifest.read_text())["models"][n]["variant"] for n in OCR} == {"fused"}


def test_a_partial_ocr_build_does_not_take_an_int8_it_was_not_asked_for(paths, tmp_path):
    """ocr_rec installed as int8 (named by --variant), then `build --only ocr_det`: detection
    gets the catalog's default, not int8 (built only on request: about 8 GB to calibrate; a
    KeyError once, since the int8 file was never built)."""
    scratch = linked_scratch(paths, tmp_path, OCR)
    build(scratch, BuildOptions(models=OCR, tune=False), say=lambda _: None)
    manifest = json.loads(scratch.manifest.read_text())
    manifest["models"]["ocr_rec"].update(variant="int8", choice={"variant": "int8", "reason": "named by --variant"})
    scratch.manifest.write_text(json.dumps(manifest))
    lines = []
    build(scratch, BuildOptions(models=("ocr_det",)), say=lines.append)
    det = json.loads(scratch.manifest.read_text())["models"]["ocr_det"]
    assert det["variant"] == "fused" and det["choice"]["reason"] == "the catalog's default"
    assert not any("quantising" in line for line in lines)


def test_the_ocr_measurement_reads_the_test_pages_with_every_variant(paths):
    """The real measurement on the built graphs: both variants read the generated pages nearly
    perfectly and alike (fused is fp32's network, folded: the same lines on the machines
    measured; another CPU's kernels may round one line apart, which the pick then weighs),
    and each is timed."""
    entries = {name: (paths.build_entry(name), {"key": paths.build_entry(name).name}) for name in OCR}
    measured = tune.measure_ocr_variants(entries)
    assert set(measured["character_errors"]) == set(measured["seconds"]) == {"fp32", "fused"}
    for variant, sets in measured["character_errors"].items():
        assert set(sets) == {"clean pages", "harder pages"}
        assert all(0.0 <= errors <= 0.02 for errors in sets.values()), (variant, sets)
        assert measured["seconds"][variant] > 0
    for name, errors in measured["character_errors"]["fused"].items():
        assert abs(errors - measured["character_errors"]["fp32"][name]) <= 0.005, name
    assert measured["lines_unlike_fp32"]["fp32"] == 0 and measured["lines_unlike_fp32"]["fused"] <= 2
    assert tune._lines_unlike([["a", "b"], ["c"]], [["a", "x", "y"], ["c"]]) == 2, "one differs, one missing"
