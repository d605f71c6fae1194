"""Build the model repository: export, cache by content hash, install, write the manifest.

Every model's outputs are cached under ``.cache/models/<name>/<key>``, where the key
hashes the packaged weights, the model description, the tool versions and the export
code. An entry is built in a ``.partial`` folder and renamed when complete, so an
interrupted build leaves nothing half-done and the next run starts that model again.
Installing compares checksums, so a second run changes nothing and says so, and a
corrupt or deleted weight file in the repository is put back.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import configs, export, graph_fusion, ocr_graphs, quantize, tune, whisper_convert
from .accuracy import ACCURACY_SENTENCES, agreement, sample_sentences
from .catalog import ASSETS, MODELS, AssetSpec, ModelSpec, model_by_name
from .errors import BuildError, MissingPackageError, RepositoryError
from .paths import ProjectPaths
from .sources import distribution_version, locate, sha256_file, sha256_tree

Say = Callable[[str], None]
SAME_VARIANT = (("whisper_decoder", "whisper_decoder_with_past"),)
"""Models one decoding runs together: ``--variant`` must give them the same weights (naming
one fp32 and leaving the other int8 would not be the fp32 decoding asked for)."""
ENTRY_FILE = "entry.json"


@dataclass(frozen=True)
class BuildOptions:
    models: tuple[str, ...] = ()
    """Names to build; empty means all."""
    variants: dict[str, str] = field(default_factory=dict)
    """Model name -> weight variant to install (default: the model's ``default``)."""
    tune: bool = True
    """Pick the variants of ``tune.TUNED`` models and ``tune.TUNED_GROUPS`` groups by measuring
    them on this machine (cached)."""


@dataclass
class BuildReport:
    actions: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def build(paths: ProjectPaths, options: BuildOptions = BuildOptions(), say: Say = print) -> BuildReport:
    specs = [model_by_name(n) for n in options.models] if options.models else list(MODELS)
    for name, variant in options.variants.items():
        if variant not in model_by_name(name).variants:
            raise BuildError(f"{name} has no variant {variant!r}",
                             f"choose one of {', '.join(model_by_name(name).variants)}")
    unbuilt = sorted(set(options.variants) - {spec.name for spec in specs})
    if unbuilt:  # it would be ignored, and could leave the two decoders apart
        raise BuildError(f"--variant names {', '.join(unbuilt)}, which this build does not build",
                         "add " + " ".join(f"--only {name}" for name in unbuilt) + " or drop that --variant")
    installed = (_read_json(paths.manifest) or {}).get("models", {})  # what a partial group build keeps
    _check_same_variant(specs, options, paths, installed)
    report = BuildReport()
    with _build_lock(paths.cache):
        models_manifest, entries = {}, {}
        prefixes = {spec.name: f"[{number}/{len(specs)}] {spec.name}" for number, spec in enumerate(specs, 1)}
        for spec in specs:  # every entry first: a group's tune needs all of its models' files
            if spec.has_weights:
                entries[spec.name] = _cached_or_built(spec, paths, prefixes[spec.name], say, report,
                                                      options.variants.get(spec.name))
        group_choices = _tuned_groups(entries, options, paths, prefixes, say)
        for spec in specs:
            prefix = prefixes[spec.name]
            if not spec.has_weights:
                models_manifest[spec.name] = _install_python_model(spec, paths, report)
                continue
            entry_dir, entry = entries[spec.name]
            if spec.name in options.variants:
                variant = options.variants[spec.name]
                choice = {"variant": variant, "reason": "named by --variant"}
            elif spec.name in group_choices:
                choice = group_choices[spec.name]
                variant = choice["variant"]
            elif kept := _group_installed(spec.name, entries, options, installed):
                variant = kept
                choice = {"variant": variant, "reason": "the variant the rest of its group holds (a build of "
                          "part of the group keeps it; build the whole group to measure again)"}
            elif spec.name in tune.TUNED and options.tune:
                choice = tune.choose(spec, entry_dir, entry, paths.cache, lambda msg: say(f"{prefix}: {msg}"))
                variant = choice["variant"]
            else:
                variant = spec.default
                choice = {"variant": variant, "reason": "the catalog's default"}
            models_manifest[spec.name] = _install_model(spec, variant, entry_dir, entry, paths, report)
            models_manifest[spec.name]["choice"] = choice
        assets_manifest = [_install_asset(asset, paths, report) for asset in ASSETS]
        previous = _read_json(paths.manifest) or {}
        manifest = {
            "generated_by": "percolate-models build",
            "model_repository": str(paths.model_repository),
            "models": {**previous.get("models", {}), **models_manifest},
            "assets": assets_manifest,
        }
        if _write_if_changed(paths.manifest, json.dumps(manifest, indent=2, sort_keys=True) + "\n"):
            report.actions.append(f"wrote {paths.manifest}")
    report.manifest = manifest
    if report.changed:
        say(f"model repository ready: {paths.model_repository} ({len(report.actions)} changes)")
    else:
        say(f"nothing to do: {len(specs)} models and {len(ASSETS)} assets are up to date "
            f"in {paths.model_repository} (manifest {paths.manifest})")
    return report


def _tuned_groups(entries: dict[str, tuple[Path, dict]], options: BuildOptions, paths: ProjectPaths,
                  prefixes: dict[str, str], say: Say) -> dict[str, dict]:
    """model -> the measured choice of its ``tune.TUNED_GROUPS`` group, for each group this
    build builds whole with no ``--variant`` naming any of its models (others get their
    catalog default, as ``_check_same_variant`` expects)."""
    choices = {}
    for group, names in tune.TUNED_GROUPS.items():
        if not options.tune or not all(name in entries for name in names) or set(names) & set(options.variants):
            continue
        why_not = tune.unmeasurable(group)  # e.g. a package installed without the repository's data/
        if why_not:
            say(f"{prefixes[names[0]]}: {why_not}, so the {group} group is not measured: its models get "
                "the catalog's default")
            continue
        prefix = prefixes[names[0]]
        choice = tune.choose_group(group, {name: entries[name] for name in names}, paths.cache,
                                   lambda msg: say(f"{prefix}: {msg}"))
        choices.update(dict.fromkeys(names, choice))
    return choices


def _group_installed(name: str, building: Iterable[str], options: BuildOptions, installed: dict) -> str | None:
    """For a model of a ``tune.TUNED_GROUPS`` group built without the rest of its group and
    not named by ``--variant``: the one variant the manifest (``installed``: its models) holds
    for all the others (so a partial build keeps a measured choice instead of putting the
    catalog's default beside it), unless that variant is one built only on request; else None."""
    group = tune.TUNED_GROUPS.get(tune.group_of(name))
    if group is None or name in options.variants or all(n in building for n in group):
        return None
    others = {installed.get(n, {}).get("variant") for n in group if n not in building}
    if len(others) != 1 or None in others:
        return None
    kept = next(iter(others))
    # an on-request variant (OCR's int8: about 8 GB to calibrate) is built only when named
    return None if kept in model_by_name(name).on_request_variants else kept


def _check_same_variant(specs: list[ModelSpec], options: BuildOptions, paths: ProjectPaths,
                        installed: dict | None = None) -> None:
    """Refuse, before anything is built, a build after which the models of a ``SAME_VARIANT``
    group (one decoding runs them all) would hold different variants: a model this build
    builds ends with the variant named for it, else the one its tuned group keeps
    (``_group_installed``), else its default; any other keeps what the manifest says is
    installed, else gets its default later. A build that builds none of a group leaves it
    to ``verify``. ``installed``: the manifest's models, when the caller has read it already."""
    building = {spec.name for spec in specs}
    if installed is None:
        installed = (_read_json(paths.manifest) or {}).get("models", {})
    catalog = {spec.name: spec for spec in MODELS}
    for group in SAME_VARIANT:
        if not all(name in catalog for name in group) or not set(group) & building:
            continue
        after = {}
        for name in group:
            if name in building:
                after[name] = (options.variants.get(name) or _group_installed(name, building, options, installed)
                               or catalog[name].default)
            else:
                after[name] = installed.get(name, {}).get("variant") or catalog[name].default
        if len(set(after.values())) > 1:
            named = [options.variants[n] for n in group if n in options.variants]
            wanted = named[0] if named else next(after[n] for n in group if n in building)
            raise BuildError(f"{' and '.join(group)} would end up with different variants ({after}): one decoding "
                             "runs both", "build them together with one variant: percolate-models build "
                             + " ".join(f"--only {name}" for name in group) + " "
                             + " ".join(f"--variant {name}={wanted}" for name in group))


def cache_key(spec: ModelSpec, source_sha256: str, installed: str | None = None) -> str:
    """Content hash of everything that determines a model's built weights: those of
    ``spec.built_variants(installed)``, so an on-request variant has entries of its own and
    what only it depends on stays out of the other entries' keys."""
    built = spec.built_variants(installed)
    description = dataclasses.asdict(spec)
    for target_only in ("cpu", "gpu", "trt_precision", "description", "default_variant", "on_request_variants"):
        description.pop(target_only)
    if spec.on_request_variants:
        description["variants"] = list(built)
    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in _export_code(spec, built))).hexdigest()
    payload = json.dumps({"spec": description, "source": source_sha256, "code": code,
                          "tools": _key_tools(spec, built)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def current_key(spec: ModelSpec, source_hashes: dict[Path, str] | None = None,
                installed: str | None = None) -> str | None:
    """The cache key this code and the installed weights give ``spec`` with ``installed`` as
    its installed variant; None where its weights package is not installed (a runtime image
    holds the built repository, not the sources). ``source_hashes`` memoises the weights'
    hashes across models that share a source (Whisper's encoder and decoder)."""
    try:
        source = locate(spec.source)
    except MissingPackageError:
        return None
    hashes = {} if source_hashes is None else source_hashes
    if source not in hashes:
        hashes[source] = sha256_tree(source)
    return cache_key(spec, hashes[source], installed)


def _export_code(spec: ModelSpec, built: tuple[str, ...]) -> list:
    """The modules whose code determines ``spec``'s built weights (the ``built`` variants)."""
    if spec.name in ocr_graphs.EDITS:
        fused = [graph_fusion] if "fused" in built else []
        if "int8" in built:  # calibrated on pages the frontend's own code prepares
            from reading_frontend import ocr
            return [export, ocr_graphs, *fused, ocr]
        return [export, ocr_graphs, *fused]
    if spec.kind == "sentence_transformer":
        # int8_token's smoothing is measured on texts that reading_frontend.text tokenises,
        # and the entry's accuracy record comes from accuracy.py
        from reading_frontend import text

        from . import accuracy
        return [export, quantize, text, accuracy]
    return [export, whisper_convert] if spec.kind.startswith("whisper_") else [export]


def _key_tools(spec: ModelSpec, built: tuple[str, ...]) -> dict[str, str]:
    """``export.tool_versions`` and, for sentence_transformer models, the ``tokenizers``
    package that tokenises int8_token's calibration texts (added here, not in export.py,
    whose bytes are part of every model's key)."""
    tools = export.tool_versions(spec.kind)
    if spec.kind == "sentence_transformer":
        tools["tokenizers"] = distribution_version("tokenizers")
    if spec.kind == "onnx" and "int8" in built:  # OCR int8: calibration renders, resizes, runs, unclips
        import cv2

        tools.update({name: distribution_version(name) for name in ("onnxruntime", "pillow", "numpy", "pyclipper")},
                     opencv=cv2.__version__)
        if spec.name == "ocr_rec":  # its calibration lines are found by the packaged detection graph
            from .catalog import OCR_DET

            tools["calibration_det_sha256"] = sha256_tree(locate(OCR_DET.source))
    return tools


def _cached_or_built(spec: ModelSpec, paths: ProjectPaths, prefix: str, say: Say,
                     report: BuildReport, installed: str | None = None) -> tuple[Path, dict]:
    source_path = locate(spec.source)
    source_sha = sha256_tree(source_path)
    key = cache_key(spec, source_sha, installed)
    built = spec.built_variants(installed)
    model_cache = paths.cache / "models" / spec.name
    entry_dir = model_cache / key
    entry = _read_json(entry_dir / ENTRY_FILE)
    if entry and _entry_intact(entry_dir, entry):
        return entry_dir, entry
    say(f"{prefix}: building (cache key {key})")
    for stale in model_cache.glob("*.partial*"):
        shutil.rmtree(stale)  # left by an interrupted build
    shutil.rmtree(entry_dir, ignore_errors=True)
    partial = model_cache / f"{key}.partial-{os.getpid()}"
    partial.mkdir(parents=True)
    started = time.monotonic()
    accuracy = _produce(spec, source_path, partial, lambda msg: say(f"{prefix}: {msg}"), paths.cache, built)
    entry = {
        "key": key,
        "source": {"distribution": spec.source.distribution,
                   "version": distribution_version(spec.source.distribution),
                   "path": spec.source.path, "sha256": source_sha},
        "files": {v: sha256_file(partial / f"{v}.onnx") for v in built},
        "accuracy": accuracy,
    }
    (partial / ENTRY_FILE).write_text(json.dumps(entry, indent=2, sort_keys=True))
    os.replace(partial, entry_dir)
    say(f"{prefix}: built in {time.monotonic() - started:.1f} s")
    report.actions.append(f"built {spec.name} ({key})")
    return entry_dir, entry


def _produce(spec: ModelSpec, source: Path, out: Path, say: Say, cache: Path, built: tuple[str, ...]) -> dict:
    """Write ``<variant>.onnx`` for each ``built`` variant of ``spec`` into ``out``."""
    if spec.kind in ("whisper_encoder", "whisper_decoder"):
        exported = _whisper_export(source, cache, say)
        shutil.copyfile(exported / whisper_convert.ONNX_FILES[spec.name], out / "fp32.onnx")
        if "int8" in spec.variants:
            say("quantising the weight MatMuls to 8 bits in blocks of 128 (MatMulNBits; each row paired in the "
                "graph, so no window depends on its batch)" if spec.name == "whisper_decoder_with_past" else
                "quantising the weight MatMuls to int8 (per channel, batch independent)")
            with export.quiet(out / "export.log"):
                whisper_convert.quantize_int8(spec.name, out / "fp32.onnx", out / "int8.onnx")
        return {}
    if spec.kind == "onnx":
        say("copying the packaged ONNX graph with the repository's tensor names")
        ocr_graphs.served_onnx(spec, source, out / "fp32.onnx")  # + uint8 det input, argmax rec output
        if "fused" in built:
            counts = graph_fusion.write_fused(out / "fp32.onnx", out / "fused.onnx")
            say(f"fused variant: {counts['hardswish']} hardswish as one op, {counts['conv_then_affine']} + "
                f"{counts['affine_then_conv']} scalar scale/shift steps folded into convolutions, "
                f"{counts['affine_as_batchnorm']} as one BatchNormalization")
        if "int8" in built:
            say("quantising to int8 (static QDQ, per channel, calibrated on generated pages; about 30 s)")
            from .catalog import OCR_DET

            with export.quiet(out / "export.log"):
                ocr_graphs.quantize_int8(spec.name, out / "fp32.onnx", out / "int8.onnx",
                                         det_source=locate(OCR_DET.source))
        return {}
    if spec.kind != "sentence_transformer":
        raise BuildError(f"{spec.name} has unknown kind {spec.kind!r}", "fix the catalog")
    say("exporting to ONNX with optimum (about 10 s)")
    exported = export.export_sentence_transformer(source, out / "export", out / "export.log")
    os.replace(exported, out / "fp32.onnx")
    shutil.rmtree(out / "export")
    say("optimising (onnxruntime transformer fusions) and quantising to int8 (per channel; "
        "activations per batch and per token)")
    with export.quiet(out / "export.log"):
        export.optimize_bert(out / "fp32.onnx", out / "optimized.onnx", source)
        export.quantize_int8(out / "fp32.onnx", out / "int8.onnx")
        if "int8_token" in spec.variants:
            export.quantize_int8_per_token(out / "fp32.onnx", out / "int8_token.onnx", source / "tokenizer.json")
    say(f"measuring each variant against fp32 on {ACCURACY_SENTENCES} sentences")
    return _measure_variants(spec, out, source / "tokenizer.json")


WHISPER_EXPORT = "_whisper_export"
"""Cache folder of the one conversion + optimum export both Whisper models copy from."""


def _whisper_export(source: Path, cache: Path, say: Say) -> Path:
    """CTranslate2 tiny.en -> Hugging Face -> ONNX, once per content hash; returns the
    folder holding the files of ``whisper_convert.ONNX_FILES``."""
    from .whisper_decode import SUPPRESS_IDS, SUPPRESS_IDS_BEGIN

    ct2_config = json.loads((source / "config.json").read_text())
    if (tuple(ct2_config.get("suppress_ids", ())) != SUPPRESS_IDS
            or tuple(ct2_config.get("suppress_ids_begin", ())) != SUPPRESS_IDS_BEGIN):
        raise BuildError(f"{source / 'config.json'} suppresses other tokens than the decoding "
                         "loop expects", "update SUPPRESS_IDS in percolate_models/whisper_decode.py")
    payload = json.dumps({"source": sha256_tree(source), "tools": export.tool_versions("whisper_encoder"),
                          "code": sha256_file(Path(whisper_convert.__file__))}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    root = cache / "models" / WHISPER_EXPORT
    done = root / key
    files = tuple(whisper_convert.ONNX_FILES.values())
    if all((done / f).is_file() for f in files) and (done / ENTRY_FILE).is_file():
        return done
    for stale in root.glob("*.partial*"):
        shutil.rmtree(stale)
    shutil.rmtree(done, ignore_errors=True)
    partial = root / f"{key}.partial-{os.getpid()}"
    partial.mkdir(parents=True)
    say("converting the CTranslate2 weights to a Hugging Face Whisper model")
    with export.quiet(partial / "export.log"):
        whisper_convert.convert(source, partial / "hf")
    say("exporting encoder and decoders with optimum, fusing the decoders (about 60 s)")
    whisper_convert.export_onnx(partial / "hf", partial / "onnx", partial / "export.log")
    for name in files:
        os.replace(partial / "onnx" / name, partial / name)
    shutil.rmtree(partial / "hf")
    shutil.rmtree(partial / "onnx")
    (partial / ENTRY_FILE).write_text(json.dumps(
        {"key": key, "files": {f: sha256_file(partial / f) for f in files}}, indent=2))
    os.replace(partial, done)
    for old in root.iterdir():  # keep only the current export
        if old.is_dir() and old.name != key:
            shutil.rmtree(old, ignore_errors=True)
    return done


def _install_python_model(spec: ModelSpec, paths: ProjectPaths, report: BuildReport) -> dict:
    """A model with no weights of its own (the Whisper loop): its config and model.py."""
    repo = paths.model_repository
    for relative, text in configs.repository_files(spec).items():
        if _write_if_changed(repo / relative, text):
            report.actions.append(f"wrote {relative}")
    model_py = repo / spec.name / "1" / "model.py"
    return {"kind": spec.kind, "variant": "", "cache_key": "", "source": {},
            "artefact": {"path": str(model_py.relative_to(repo)), "sha256": sha256_file(model_py),
                         "bytes": model_py.stat().st_size},
            "uses": [value for key, value in spec.parameters if key.endswith("_model")],
            "accuracy_vs_fp32": {}, "variants_available": []}


def _measure_variants(spec: ModelSpec, out: Path, tokenizer_json: Path) -> dict:
    from reading_frontend.text import TextTokenizer, embed_texts, onnx_embed_fn

    tokenizer = TextTokenizer(tokenizer_json)
    sentences = sample_sentences(ACCURACY_SENTENCES, seed=7)
    vectors = {v: embed_texts(sentences, tokenizer, onnx_embed_fn(out / f"{v}.onnx"))
               for v in spec.variants}
    return {v: agreement(vectors["fp32"], vectors[v]) for v in spec.variants if v != "fp32"}


def _entry_intact(entry_dir: Path, entry: dict) -> bool:
    return all((entry_dir / f"{v}.onnx").is_file() and sha256_file(entry_dir / f"{v}.onnx") == sha
               for v, sha in entry.get("files", {}).items())


def _install_model(spec: ModelSpec, variant: str, entry_dir: Path, entry: dict,
                   paths: ProjectPaths, report: BuildReport) -> dict:
    repo = paths.model_repository
    for relative, text in configs.repository_files(spec).items():
        if _write_if_changed(repo / relative, text):
            report.actions.append(f"wrote {relative}")
    artefacts = {}
    for file_name, installed in (("model.onnx", variant), (configs.GPU_MODEL_FILE, spec.gpu_variant)):
        target = repo / spec.name / "1" / file_name
        wanted = entry["files"][installed]
        if not (target.is_file() and sha256_file(target) == wanted):
            action = (f"installed {spec.name}/1/{file_name} ({installed})" if not target.exists() else
                      f"replaced {spec.name}/1/{file_name} ({installed}): it differed from the build "
                      "(another variant was installed, or the file was edited)")
            _atomic_copy(entry_dir / f"{installed}.onnx", target)
            report.actions.append(action)
        artefacts[file_name] = {"path": str(target.relative_to(repo)), "sha256": wanted,
                                "bytes": target.stat().st_size, "variant": installed}
    return {
        "variant": variant, "cache_key": entry["key"], "source": entry["source"],
        "artefact": artefacts["model.onnx"],
        "gpu_artefact": artefacts[configs.GPU_MODEL_FILE],
        "accuracy_vs_fp32": entry["accuracy"],
        "variants_available": list(spec.variants),
    }


def _install_asset(asset: AssetSpec, paths: ProjectPaths, report: BuildReport) -> dict:
    source = locate(asset.source)
    target = paths.assets / asset.name
    if asset.how == "copy":
        data = source.read_bytes()
    elif asset.how.startswith("onnx_metadata:"):
        data = (export.onnx_metadata(source, asset.how.split(":", 1)[1]).strip("\n") + "\n").encode()
    else:
        raise BuildError(f"asset {asset.name} has unknown method {asset.how!r}", "fix the catalog")
    if not (target.is_file() and target.read_bytes() == data):
        _atomic_write(target, data)
        report.actions.append(f"wrote asset {asset.name}")
    return {"path": asset.name, "description": asset.description,
            "source_distribution": asset.source.distribution,
            "source_version": distribution_version(asset.source.distribution),
            "source_path": asset.source.path, "how": asset.how,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def stale_repository_files(paths: ProjectPaths) -> list[str]:
    """Committed repository files (configs, ``model.py``) that differ from what the catalog
    renders, without writing anything: CI runs this before the build, which would rewrite them."""
    stale = []
    for spec in MODELS:
        for relative, text in configs.repository_files(spec).items():
            path = paths.model_repository / relative
            if not path.is_file() or path.read_text() != text:
                stale.append(relative)
    return stale


def verify(paths: ProjectPaths, models: Iterable[str] | None = None) -> list[str]:
    """Problems with the built repository (missing or altered files, models the manifest
    lacks); empty when sound. ``models``: the ones it must hold (default every catalog
    model; a repository built with ``--only`` names its own)."""
    manifest = _read_json(paths.manifest)
    if manifest is None:
        return [f"{paths.manifest} is missing: run `percolate-models build`"]
    problems = [f"{name} is not in the manifest: run `percolate-models build --only {name}`"
                for name in (models if models is not None else [m.name for m in MODELS])
                if name not in manifest["models"]]
    source_hashes: dict[Path, str] = {}
    for name, model in manifest["models"].items():
        try:
            spec = model_by_name(name)
        except KeyError:
            problems.append(f"{name} is in the manifest but not in the catalog: run `percolate-models build`")
            continue
        if spec.has_weights:
            if "gpu_artefact" not in model:
                problems.append(f"{name} was built before the gpu target had its own weights file "
                                f"(1/{configs.GPU_MODEL_FILE}): run `percolate-models build`")
            key = current_key(spec, source_hashes, model.get("variant"))
            if key is not None and model.get("cache_key") != key:
                # a plain build would install the default: keep a variant named by --variant
                # (a tuned group's is measured again when the whole group is built)
                group = tune.TUNED_GROUPS.get(tune.group_of(name))
                if group and model.get("choice", {}).get("reason") != "named by --variant":
                    keep = "".join(f" --only {n}" for n in group)
                else:
                    keep = (f" --only {name} --variant {name}={model['variant']}"
                            if model.get("variant", spec.default) != spec.default else "")
                problems.append(f"{name} was built by other code or from other weights (cache key "
                                f"{model.get('cache_key')}, the current one is {key}): run `percolate-models build{keep}`")
        for artefact in (model["artefact"], model.get("gpu_artefact")):
            if artefact is None:  # a python-backend model
                continue
            path = paths.model_repository / artefact["path"]
            if not path.is_file():
                problems.append(f"{path} is missing")
            elif sha256_file(path) != artefact["sha256"]:
                problems.append(f"{path} does not match the manifest (corrupt or edited)")
    for group in SAME_VARIANT:  # e.g. a later `build --only` gave one decoder another variant
        installed = {name: manifest["models"][name].get("variant") for name in group if name in manifest["models"]}
        if len(set(installed.values())) > 1:
            variant = installed[group[0]]
            problems.append(f"{' and '.join(installed)} hold different variants ({installed}); one decoding runs "
                            "both: run `percolate-models build " + " ".join(f"--variant {n}={variant}" for n in group) + "`")
    for asset in manifest["assets"]:
        path = paths.assets / asset["path"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != asset["sha256"]:
            problems.append(f"{path} is missing or altered")
    return problems


@contextmanager
def _build_lock(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepositoryError("another `percolate-models build` is running on this cache",
                                  "wait for it to finish, then run again") from None
        yield


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    _atomic_write(path, text.encode())
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
