"""Greedy Whisper decoding with timestamp tokens, batched, over any encoder/decoder runner.

This is the loop that runs inside Triton (``whisper_loop.py``): one call per 30-second
window, windows from any number of requests decoded together. The logit rules are the
ones CTranslate2 (and so faster-whisper) applies for greedy decoding with timestamps,
so the token sequences can be compared one for one:

- ``suppress_ids`` (the model's ``config.json``) are never sampled; at the first step
  ``suppress_ids_begin`` (blank and end of text) are not either;
- the first token is a timestamp no later than ``max_initial_timestamp_index`` (1.0 s);
- timestamps come in pairs (except directly before end of text) and never decrease;
- when the total probability of the timestamp tokens is above that of any text token,
  a timestamp is sampled;
- at most ``max_new_tokens`` (224, half the context) are generated per window.

The no-speech probability (of ``<|nocaptions|>`` right after the start token, before any
rule) and the average log probability of the chosen tokens are returned too, so the
caller can drop windows that hold no speech the way faster-whisper does.

A runner provides ``encode(features) -> state`` and ``step(state, input_ids, first) ->
logits`` plus ``select(state, rows)``; ``OrtRunner`` runs the ONNX files with
onnxruntime in process. Finished rows are dropped from the batch as they end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

SOT = 50257
EOT = 50256
NO_CAPTIONS = 50361
NO_TIMESTAMPS = 50362
TIMESTAMP_BEGIN = 50363
VOCAB = 51864
LAYERS = 4
HEADS = 6
HEAD_DIM = 64
KV_NAMES = [f"{layer}.{part}.{kind}" for layer in range(LAYERS)
            for part in ("decoder", "encoder") for kind in ("key", "value")]
"""The key/value cache, as the decoders name it (``past_key_values.<name>`` in,
``present.<name>`` out): the first step returns all of it, later steps the self-attention part."""
SELF_NAMES = [n for n in KV_NAMES if ".decoder." in n]
TIME_PRECISION = 0.02
"""Seconds per timestamp token."""
SUPPRESS_IDS = (
    1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 357,
    366, 438, 532, 685, 705, 796, 930, 1058, 1220, 1267, 1279, 1303, 1343, 1377, 1391, 1635,
    1782, 1875, 2162, 2361, 2488, 3467, 4008, 4211, 4600, 4808, 5299, 5855, 6329, 7203, 9609,
    9959, 10563, 10786, 11420, 11709, 11907, 13163, 13697, 13700, 14808, 15306, 16410, 16791,
    17992, 19203, 19510, 20724, 22305, 22935, 27007, 30109, 30420, 33409, 34949, 40283, 40493,
    40549, 47282, 49146, 50257, 50357, 50358, 50359, 50360, 50361)
"""``suppress_ids`` of the packaged tiny.en ``config.json`` (the build checks they agree)."""
SUPPRESS_IDS_BEGIN = (220, 50256)


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 224
    max_initial_timestamp_index: int = 50
    timestamps: bool = True
    suppress_ids: tuple[int, ...] = SUPPRESS_IDS
    suppress_ids_begin: tuple[int, ...] = SUPPRESS_IDS_BEGIN

    @property
    def prompt(self) -> list[int]:
        return [SOT] if self.timestamps else [SOT, NO_TIMESTAMPS]


@dataclass
class WindowResult:
    tokens: list[int] = field(default_factory=list)
    """Generated tokens, timestamps included, end of text excluded."""
    sum_logprob: float = 0.0
    no_speech_prob: float = 0.0

    @property
    def avg_logprob(self) -> float:
        """As faster-whisper computes it: summed log probability over (tokens + 1)."""
        return self.sum_logprob / (len(self.tokens) + 1)


class Runner(Protocol):
    def encode(self, features: np.ndarray) -> object: ...
    def step(self, state: object, input_ids: np.ndarray, first: bool) -> np.ndarray: ...
    def select(self, state: object, rows: np.ndarray) -> object: ...


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logsumexp(values: np.ndarray) -> np.ndarray:
    top = values.max(axis=-1)
    safe = np.where(np.isfinite(top), top, 0.0)
    return safe + np.log(np.exp(values - safe[:, None]).sum(axis=-1))


def chosen_logprobs(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """log softmax(``logits``)[row, chosen[row]] for each row, computed as log_softmax does it
    ((logit - top) - log sum exp(logits - top)): the same float32 figure as the full
    log-softmax, without writing the normalised [rows, vocab] array."""
    top = logits.max(axis=-1)
    total = np.exp(logits - top[:, None]).sum(axis=-1)
    return (logits[np.arange(len(chosen)), chosen] - top) - np.log(total)


def apply_rules(logits: np.ndarray, generated: list[list[int]], step: int,
                settings: DecodeSettings) -> np.ndarray:
    """Mask ``logits`` [rows, vocab] (float32, in place) for the next token of each row."""
    logits[:, list(settings.suppress_ids)] = -np.inf
    if step == 0:
        logits[:, list(settings.suppress_ids_begin)] = -np.inf
    if not settings.timestamps:
        return logits
    logits[:, NO_TIMESTAMPS] = -np.inf
    if step == 0:
        logits[:, :TIMESTAMP_BEGIN] = -np.inf
        logits[:, TIMESTAMP_BEGIN + settings.max_initial_timestamp_index + 1:] = -np.inf
        return logits
    check = []
    for row, tokens in enumerate(generated):
        last = tokens[-1]
        if last >= TIMESTAMP_BEGIN:
            penultimate = tokens[-2] if len(tokens) >= 2 else last
            if penultimate >= TIMESTAMP_BEGIN:
                logits[row, TIMESTAMP_BEGIN:] = -np.inf  # a pair just closed: text next
            else:
                logits[row, :EOT] = -np.inf  # an opened pair: timestamp or end next
                check.append(row)
        else:
            check.append(row)
        for token in reversed(tokens):  # timestamps never decrease
            if token >= TIMESTAMP_BEGIN:
                logits[row, TIMESTAMP_BEGIN:token] = -np.inf
                break
    if check:
        # log-probabilities compared without normalising the rows: both sides would lose
        # the same log-partition, and skipping it saves a pass of exp over the vocabulary.
        # Not bit for bit the old rule (log-softmax first): a row whose timestamp mass and
        # best text score lie within ~1e-6 of each other may decide the other way (float32
        # rounding of either form; test_whisper_rules measures it)
        rows = logits[check]
        timestamp_mass = _logsumexp(rows[:, TIMESTAMP_BEGIN:])
        best_text = rows[:, :TIMESTAMP_BEGIN].max(axis=-1)
        for row, take_timestamp in zip(check, timestamp_mass > best_text):
            if take_timestamp:
                logits[row, :TIMESTAMP_BEGIN] = -np.inf
    return logits


def greedy_decode(runner: Runner, features: np.ndarray,
                  settings: DecodeSettings = DecodeSettings()) -> list[WindowResult]:
    """Decode a batch of log-mel windows ``features`` [batch, 80, 3000]."""
    batch = features.shape[0]
    results = [WindowResult() for _ in range(batch)]
    if batch == 0:
        return results
    state = runner.encode(np.ascontiguousarray(features, dtype=np.float32))
    prompt = settings.prompt
    alive = np.arange(batch)
    input_ids = np.tile(np.array(prompt, np.int64), (batch, 1))
    for step in range(settings.max_new_tokens):
        logits = runner.step(state, input_ids, first=step == 0)
        if step == 0:
            first = _log_softmax(logits[:, 0, :].astype(np.float32))  # raw, before any rule
            for row in range(batch):
                results[row].no_speech_prob = float(np.exp(first[row, NO_CAPTIONS]))
        last = np.array(logits[:, -1, :], dtype=np.float32)
        apply_rules(last, [results[i].tokens for i in alive], step, settings)
        chosen = last.argmax(axis=-1)
        logprobs = chosen_logprobs(last, chosen)
        finished = []
        for row, index in enumerate(alive):
            token = int(chosen[row])
            results[index].sum_logprob += float(logprobs[row])
            if token == EOT:
                finished.append(row)
            else:
                results[index].tokens.append(token)
        if finished:
            keep = np.setdiff1d(np.arange(len(alive)), finished)
            if keep.size == 0:
                break
            alive, chosen = alive[keep], chosen[keep]
            state = runner.select(state, keep)
        input_ids = chosen.astype(np.int64)[:, None]
    return results


def select_cache(state: dict, rows: np.ndarray) -> dict:
    """The loop state of the still-running ``rows``: only the key/value cache (called after
    a step, when the encoder's hidden states have been turned into the cross cache)."""
    return {"past": {k: np.ascontiguousarray(v[rows]) for k, v in state["past"].items()}}


class CacheSteps:
    """``step`` and ``select`` of a runner whose ``decode(first, feed, outputs)`` runs the
    first-step decoder (``first``) or the step decoder: the key/value cache kept between
    steps is the same whether the graphs run in process or as Triton models."""

    def decode(self, first: bool, feed: dict, outputs: list[str]) -> list[np.ndarray]:
        raise NotImplementedError

    def step(self, state: dict, input_ids: np.ndarray, first: bool) -> np.ndarray:
        if first:  # the whole cache, cross-attention keys and values included
            outputs = self.decode(True, {"input_ids": input_ids, "encoder_hidden_states": state.pop("hidden")},
                                  ["logits"] + [f"present.{n}" for n in KV_NAMES])
            state["past"] = dict(zip(KV_NAMES, outputs[1:]))
            return outputs[0]
        feed = {f"past_key_values.{name}": state["past"][name] for name in KV_NAMES}
        feed["input_ids"] = input_ids
        outputs = self.decode(False, feed, ["logits"] + [f"present.{n}" for n in SELF_NAMES])
        state["past"].update(zip(SELF_NAMES, outputs[1:]))
        return outputs[0]

    def select(self, state: dict, rows: np.ndarray) -> dict:
        return select_cache(state, rows)


def row_independence_problems(session, rows: int = 9, length: int = 3) -> list[str]:
    """Rows of ``session``'s outputs (a step decoder) that change with the number of rows
    run beside them: each of ``rows`` random rows is run alone and in batches of 2..``rows``
    and must come out bit for bit the same. Empty where the graph is batch independent.

    Why: a window's tokens must not depend on the windows of other requests Triton batched
    with it. The int8 step graph pads each MatMulNBits to paired rows
    (``whisper_convert._paired_rows``) because onnxruntime's kernel rounds a lone last row
    differently on this CPU; another CPU or onnxruntime version may tile rows otherwise,
    so the runner checks at load (tiny caches of ``length`` positions: a few ms). Nine rows:
    the cpu ``whisper`` model batches up to 8 windows, which the pairing makes 9."""
    rng = np.random.default_rng(0)
    feed = {}
    for spec in session.get_inputs():
        shape = [rows if axis == 0 else (dim if isinstance(dim, int) else length)
                 for axis, dim in enumerate(spec.shape)]
        if "int64" in spec.type:
            feed[spec.name] = rng.integers(0, 1000, shape).astype(np.int64)
        else:
            feed[spec.name] = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    first = session.get_outputs()[0].name

    def run(index) -> np.ndarray:
        return session.run([first], {k: np.ascontiguousarray(v[index]) for k, v in feed.items()})[0]

    alone = [run([row])[0] for row in range(rows)]
    problems = []
    for count in range(2, rows + 1):
        together = run(slice(0, count))
        problems += [f"row {row} of {count} differs from the row alone by "
                     f"{np.abs(together[row] - alone[row]).max():.3g}"
                     for row in range(count) if not np.array_equal(together[row], alone[row])]
    return problems


class OrtRunner(CacheSteps):
    """Encoder and the two decoder graphs (first step; later steps with the key/value
    cache) run with onnxruntime in this process."""

    def __init__(self, encoder: Path | str, decoder: Path | str, decoder_with_past: Path | str,
                 threads: int = 0, spinning: bool = False, providers: list[str] | None = None,
                 fallback_with_past: Path | str | None = None) -> None:
        """``fallback_with_past``: a step decoder (the fp32 file) loaded instead of
        ``decoder_with_past`` when that one fails ``row_independence_problems`` here; with
        none, or if it fails too, loading fails (RuntimeError) rather than serve batches
        whose windows change each other's tokens."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder), options, providers=providers)
        self.decoder = ort.InferenceSession(str(decoder), options, providers=providers)
        self.decoder_with_past = ort.InferenceSession(str(decoder_with_past), options, providers=providers)
        self.with_past_file = Path(decoder_with_past)
        self.row_problems = row_independence_problems(self.decoder_with_past)
        if self.row_problems and fallback_with_past is not None:
            # the served variant would mix windows: the fp32 step graph instead (~1.5x the
            # time per step), said in the log
            print(f"whisper: {decoder_with_past} is not batch independent on this CPU "
                  f"({self.row_problems[0]}); using {fallback_with_past}", flush=True)
            self.with_past_file = Path(fallback_with_past)
            self.decoder_with_past = ort.InferenceSession(str(fallback_with_past), options,
                                                          providers=providers)
            self.row_problems = row_independence_problems(self.decoder_with_past)
        if self.row_problems:
            problem = (f"the Whisper step decoder {self.with_past_file} is not batch independent on this "
                       f"CPU ({'; '.join(self.row_problems[:3])}): a window's tokens would depend on the "
                       f"other requests batched with it")
            if fallback_with_past is None:
                raise RuntimeError(f"{problem}. Install the fp32 decoders: `percolate-models build "
                                   f"--variant whisper_decoder=fp32 --variant whisper_decoder_with_past=fp32`")
            raise RuntimeError(f"{problem}, and so is the fp32 fallback: onnxruntime on this CPU does not "
                               f"run rows independently; report the CPU model and the onnxruntime version")

    def encode(self, features: np.ndarray) -> dict:
        # One window per call: the int8 encoder scales its activations per call, so a
        # window's result must not depend on the others in the batch (a batch gains
        # nothing on CPU anyway: one window is already 1500 rows).
        hidden = np.concatenate([self.encoder.run(["last_hidden_state"], {"input_features": row})[0]
                                 for row in np.split(features, features.shape[0])])
        return {"hidden": hidden, "past": {}}

    def decode(self, first: bool, feed: dict, outputs: list[str]) -> list[np.ndarray]:
        return (self.decoder if first else self.decoder_with_past).run(outputs, feed)
