"""The greedy loop's arithmetic against the plain definitions it shortcuts: the timestamp
rule on unnormalised scores against the rule on log-softmax (the pre-4860657 code), and
the chosen token's log probability against a full log-softmax. No model needed."""
from __future__ import annotations

import numpy as np

from percolate_models.whisper_decode import (TIMESTAMP_BEGIN, VOCAB, DecodeSettings, _log_softmax,
                                             _logsumexp, apply_rules, chosen_logprobs)

SETTINGS = DecodeSettings()
HISTORY = [440]  # a text token last: the rule is checked for the row


def old_rule(logits: np.ndarray) -> np.ndarray:
    """Whether each row takes a timestamp, as the loop decided before 4860657: the total
    timestamp probability against the best text token, both after a log-softmax."""
    logprobs = _log_softmax(logits)
    return _logsumexp(logprobs[:, TIMESTAMP_BEGIN:]) > logprobs[:, :TIMESTAMP_BEGIN].max(axis=-1)


def new_rule(logits: np.ndarray) -> np.ndarray:
    masked = apply_rules(logits.copy(), [HISTORY] * len(logits), 5, SETTINGS)
    return np.isneginf(masked[:, :TIMESTAMP_BEGIN]).all(axis=-1)


def random_logits(rng, rows: int) -> np.ndarray:
    logits = (rng.standard_normal((rows, VOCAB)) * 3 + rng.uniform(-5, 20, (rows, 1))).astype(np.float32)
    logits[:, TIMESTAMP_BEGIN:] += rng.uniform(-6, 6, (rows, 1)).astype(np.float32)  # either side wins
    return logits


def test_timestamp_rule_decides_as_the_log_softmax_rule():
    """Random rows: the same decisions. Rows built as near ties (best text score within
    ~1e-6 of the timestamp mass): decisions may differ only where the old rule's own
    margin is below 1e-5, i.e. within float32 rounding of either form."""
    rng = np.random.default_rng(0)
    logits = random_logits(rng, 400)
    SETTINGS_IDS = list(SETTINGS.suppress_ids) + [50362]
    reference = logits.copy()
    reference[:, SETTINGS_IDS] = -np.inf
    old, new = old_rule(reference), new_rule(logits)
    assert 0 < old.sum() < len(old)  # both outcomes exercised
    assert (old == new).all()

    ties = random_logits(rng, 400)
    tied = ties.copy()
    tied[:, SETTINGS_IDS] = -np.inf
    best = tied[:, :TIMESTAMP_BEGIN].argmax(axis=-1)
    mass = _logsumexp(tied[:, TIMESTAMP_BEGIN:])
    offset = (rng.standard_normal(len(ties)) * 1e-6).astype(np.float32)
    ties[np.arange(len(ties)), best] = mass + offset
    tied[np.arange(len(ties)), best] = mass + offset
    old, new = old_rule(tied), new_rule(ties)
    logprobs = _log_softmax(tied)
    margin = np.abs(_logsumexp(logprobs[:, TIMESTAMP_BEGIN:]) - logprobs[:, :TIMESTAMP_BEGIN].max(axis=-1))
    assert (margin[old != new] < 1e-5).all()
    assert (old == new).mean() > 0.5


def test_chosen_logprob_is_the_log_softmax_entry():
    """Bit for bit the log-softmax's entry (large logits included, where subtracting a
    log-partition computed as top + log(sum) lost the low bits)."""
    rng = np.random.default_rng(1)
    logits = random_logits(rng, 64) + np.float32(30)
    logits[:, :100] = -np.inf
    chosen = logits.argmax(axis=-1)
    expected = _log_softmax(logits)[np.arange(len(chosen)), chosen]
    assert np.array_equal(chosen_logprobs(logits, chosen), expected)
    other = rng.integers(100, VOCAB, len(chosen))
    assert np.array_equal(chosen_logprobs(logits, other), _log_softmax(logits)[np.arange(len(other)), other])
