"""The steps that turn packaged weights into ONNX files. Each writes only to ``dst``.

torch, transformers and optimum are needed only here (the ``export`` extra), and the
optimum export runs in a child process so their memory is gone when it ends.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import onnx

from .errors import BuildError
from .sources import distribution_version

EXPORT_TOOLS = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime")
MS_DOMAIN = "com.microsoft"
"""onnxruntime's contrib operators (fused attention, quantised MatMuls)."""


def use_contrib_ops(model: onnx.ModelProto) -> None:
    """Declare the com.microsoft domain that fused and quantised nodes come from (once)."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))


def tool_versions(kind: str) -> dict[str, str]:
    """Versions of the tools a build of ``kind`` depends on (part of the cache key)."""
    exported = ("sentence_transformer", "whisper_encoder", "whisper_decoder")
    names = EXPORT_TOOLS if kind in exported else ("onnx",)
    return {name: distribution_version(name) for name in names}


def export_sentence_transformer(model_dir: Path, out_dir: Path, log_file: Path) -> Path:
    """Export a sentence-transformers folder with optimum; returns the ``model.onnx``."""
    for name in ("torch", "optimum", "optimum-onnx", "transformers"):
        distribution_version(name)  # raises MissingPackageError with the set-up hint
    command = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx",
               "--model", str(model_dir), "--task", "feature-extraction", str(out_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_file, "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    onnx_path = out_dir / "model.onnx"
    if done.returncode != 0 or not onnx_path.is_file():
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"optimum export failed ({tail[0]})", f"see the full log in {log_file}")
    return onnx_path


@contextlib.contextmanager
def quiet(log_file: Path) -> Iterator[None]:
    """Send onnxruntime's chatter (prints and warnings about shape inference) to a log."""
    root = logging.getLogger()
    level = root.level
    with open(log_file, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        handler = logging.StreamHandler(log)
        root.handlers, saved = [handler], root.handlers
        root.setLevel(logging.WARNING)
        try:
            yield
        finally:
            root.handlers, root.level = saved, level


def optimize_bert(src: Path, dst: Path, model_dir: Path) -> None:
    """onnxruntime's transformer fusions (attention, layer norm, GELU), fp32."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((model_dir / "config.json").read_text())
    model = optimize_model(str(src), model_type="bert", opt_level=1,
                           num_heads=config["num_attention_heads"],
                           hidden_size=config["hidden_size"])
    model.save_model_to_file(str(dst))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights, one scale per output channel.

    Its activations get one scale per tensor, i.e. per Triton batch: batch dependent, so it
    is served only when named (``quantize_int8_per_token`` is the batch-independent one).

    Quantising only MatMuls per channel keeps cosine agreement with fp32 near 0.99;
    the naive default (all ops, per tensor) drops it to about 0.94 on this model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"])


def quantize_int8_per_token(src: Path, dst: Path, tokenizer_json: Path) -> None:
    """int8 MatMuls with one activation scale per token, so a text's embedding does not
    depend on the rest of its batch, smoothed on texts the tokenizer encodes (``quantize.py``
    says how and why)."""
    from .quantize import calibration_feeds, quantize_per_token

    quantize_per_token(src, dst, calibration_feeds(tokenizer_json))


def rename_tensors(src: Path, dst: Path, renames: dict[str, str]) -> None:
    """Copy an ONNX model, renaming graph inputs/outputs and every reference to them."""
    model = onnx.load(str(src))
    graph = model.graph
    names = {v.name for v in list(graph.input) + list(graph.output)}
    missing = set(renames) - names
    if missing:
        raise BuildError(f"{src.name} has no tensor named {', '.join(sorted(missing))}",
                         "the packaged model changed; update percolate_models/catalog.py")
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def onnx_metadata(path: Path, key: str) -> str:
    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == key:
            return prop.value
    raise BuildError(f"{path.name} has no metadata entry {key!r}",
                     "the packaged model changed; update percolate_models/catalog.py")

