"""Whisper's seek over whole recordings with the served CPU models (run by onnxruntime
here, as the ``whisper`` model's loop runs them; the served path is test_speech_service):
the tail after the model stops early and quiet speech are transcribed, and planning a
long recording needs no float64 copy of it."""
from __future__ import annotations

import numpy as np
import pytest

from tests.audio_fixtures import JFK_TEXT, jfk_at, jfk_with_pauses
from percolate_models.whisper_decode import OrtRunner
from reading_frontend import speech


@pytest.fixture(scope="module")
def transcribe_samples(paths):
    served = paths.model_repository
    runner = OrtRunner(*(served / name / "1" / "model.onnx" for name in
                         ("whisper_encoder", "whisper_decoder", "whisper_decoder_with_past")), threads=2,
                       fallback_with_past=served / "whisper_decoder_with_past" / "1" / "model.gpu.onnx")
    tokenizer = speech.WhisperTokenizer(paths.assets / "whisper" / "tokenizer.json")

    def run(samples: np.ndarray) -> str:
        return " ".join(s.text for s in speech.transcribe_in_process(runner, samples, tokenizer))

    return run


def test_the_last_window_is_decoded_again_where_the_model_stopped(transcribe_samples):
    """jfk x10 with 3 s pauses: in the last window the model stops after the first phrase;
    the rest was dropped (WER 0.036, faster-whisper 0) until the last window seeks too."""
    samples = speech.decode_audio(jfk_with_pauses(10, 3.0), 7200).samples
    text = transcribe_samples(samples)
    assert speech.word_error_rate(" ".join([JFK_TEXT] * 10), text) < 0.01


def test_a_last_window_the_model_closed_is_not_decoded_again(transcribe_samples):
    """jfk.flac: the tokens end with one timestamp, so the model is done with the window
    (as Whisper's loop reads it); decoding its last 0.4 s again gave "Okay."."""
    from tests.audio_fixtures import jfk_flac

    text = transcribe_samples(speech.decode_audio(jfk_flac(), 7200).samples)
    assert speech.word_error_rate(JFK_TEXT, text) == 0


def test_speech_30_db_quieter_is_not_taken_for_a_pause(transcribe_samples):
    """jfk, jfk, jfk at -30 dB, jfk: a pause threshold relative to the loud speech
    (-26 dB) skipped the quiet phrase's start ("And so my fellow Americans")."""
    jfk = jfk_at(16000, "mono")[0]
    samples = np.concatenate([jfk, jfk, jfk * 10 ** (-30 / 20), jfk]).astype(np.float32)
    text = transcribe_samples(samples)
    assert text.count("my fellow American") == 4
    assert speech.word_error_rate(" ".join([JFK_TEXT] * 4), text) < 0.05


def test_planning_a_long_recording_needs_no_float64_copy():
    """10 minutes (38 MB of float32 samples): the planner's loudness is computed in float32
    blocks (a float64 copy squared whole took 155 MB; 2 hours, 1.8 GB)."""
    import tracemalloc

    samples = (np.random.default_rng(0).standard_normal(16000 * 600) * 0.1).astype(np.float32)
    features = speech.log_mel(samples)
    tracemalloc.start()
    try:
        planner = speech.WindowPlanner(features, samples)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < samples.nbytes / 2
    reference = np.sqrt(np.mean(np.square(samples.reshape(-1, speech.HOP).astype(np.float64)), axis=1))
    loudest_in_50_ms = np.lib.stride_tricks.sliding_window_view(np.pad(reference, (2, 2), mode="edge"), 5).max(axis=1)
    assert np.allclose(planner.loudness, loudest_in_50_ms, rtol=1e-5)
