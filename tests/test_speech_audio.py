"""Speech preprocessing in the frontend, without Triton: audio decoding in every format,
log-mel features equal to faster-whisper's, 30-second windows cut at quiet points,
segments from timestamp tokens, and bad input refused with the right error."""
from __future__ import annotations


import numpy as np
import pytest

from reading_frontend import speech
from tests.audio_fixtures import encode, jfk_at, jfk_flac, jfk_path, jfk_times, wav_pcm16

fw_audio = pytest.importorskip("faster_whisper.audio")
fw_features = pytest.importorskip("faster_whisper.feature_extractor")


def test_decoding_equals_faster_whisper(tmp_path):
    ours = speech.decode_audio(jfk_flac(), 7200)
    assert (ours.source_rate, ours.source_channels, ours.container) == (44100, 2, "flac")
    assert ours.duration == pytest.approx(11.0, abs=0.01)
    np.testing.assert_array_equal(ours.samples, fw_audio.decode_audio(str(jfk_path())))


@pytest.mark.parametrize("name", ["jfk", "jfk-8k-wav", "jfk-48k-stereo-ogg", "jfk-x6", "noise"])
def test_log_mel_equals_faster_whisper_within_1e_4(name):
    rng = np.random.default_rng(0)
    audio = {
        "jfk": lambda: jfk_flac(),
        "jfk-8k-wav": lambda: wav_pcm16(jfk_at(8000, "mono"), 8000),
        "jfk-48k-stereo-ogg": lambda: encode(jfk_at(48000, "stereo"), 48000, "ogg", "libopus"),
        "jfk-x6": lambda: jfk_times(6),
        "noise": lambda: wav_pcm16(rng.normal(0, 0.1, (1, 16000 * 3)).astype(np.float32), 16000),
    }[name]()
    samples = speech.decode_audio(audio, 7200).samples
    ours = speech.log_mel(samples)
    reference = fw_features.FeatureExtractor(feature_size=80)(samples)
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-4


def test_log_mel_in_blocks_equals_one_pass(monkeypatch):
    samples = speech.decode_audio(jfk_times(2), 7200).samples
    whole = speech.log_mel(samples)
    monkeypatch.setattr(speech, "STFT_BLOCK_FRAMES", 777)
    np.testing.assert_allclose(speech.log_mel(samples), whole, atol=1e-6)


@pytest.mark.parametrize("fmt,make", [
    ("wav", lambda: wav_pcm16(jfk_at(8000, "mono"), 8000)),
    ("ogg", lambda: encode(jfk_at(48000, "stereo"), 48000, "ogg", "libopus")),
    ("mp3", lambda: encode(jfk_at(44100, "stereo"), 44100, "mp3", "libmp3lame")),
    ("m4a", lambda: encode(jfk_at(22050, "mono"), 22050, "ipod", "aac")),
    ("flac", jfk_flac),
])
def test_every_container_decodes_to_16k_mono(fmt, make):
    data = make()
    assert speech.sniff_audio(data) == fmt
    decoded = speech.decode_audio(data, 7200)
    assert decoded.samples.dtype == np.float32 and decoded.samples.ndim == 1
    assert decoded.duration == pytest.approx(11.0, abs=0.1)
    assert 0.05 < np.abs(decoded.samples).max() <= 1.0


def test_66_second_clip_gives_three_windows_cut_in_quiet_places():
    decoded = speech.decode_audio(jfk_times(6), 7200)
    features = speech.log_mel(decoded.samples)
    windows = speech.plan_windows(features, decoded.samples)
    assert len(windows) == 3
    assert windows[0].start_frame == 0 and windows[-1].end_frame == features.shape[1] - 1
    for before, after in zip(windows, windows[1:]):
        assert before.end_frame == after.start_frame
    assert all(0 < w.end_frame - w.start_frame <= speech.WINDOW_FRAMES for w in windows)
    assert not any(w.silent for w in windows)
    energy = features.mean(axis=0)
    for window in windows[:-1]:  # each cut is among the quietest tenth of its search range
        cut = window.end_frame
        search = energy[cut - 500:cut + 1]
        assert energy[cut - 5:cut + 5].mean() <= np.quantile(search, 0.1) + 0.05


def test_silent_windows_are_marked_and_padded_features_have_window_shape():
    silence = np.zeros(16000 * 40, np.float32)
    features = speech.log_mel(silence)
    windows = speech.plan_windows(features, silence)
    assert len(windows) == 2 and all(w.silent for w in windows)
    assert speech.window_features(features, windows[1]).shape == (80, 3000)


class FakeTokenizer:
    def decode(self, tokens):
        return " ".join(f"w{t}" for t in tokens)


def test_segments_from_timestamp_tokens():
    ts = lambda seconds: speech.TIMESTAMP_BEGIN + round(seconds / speech.TIME_PRECISION)  # noqa: E731
    window = speech.Window(1, 2500, 5500, False)  # 25 s .. 55 s
    tokens = [ts(0.0), 1, 2, ts(3.0), ts(3.0), 3, ts(7.5), ts(8.0), 4, 5]
    segments = speech.segments_from_tokens(tokens, window, 60.0, FakeTokenizer())
    assert [(s.start, s.end, s.text) for s in segments] == [
        (25.0, 28.0, "w1 w2"), (28.0, 32.5, "w3"), (33.0, 55.0, "w4 w5")]
    assert all(s.window == 1 for s in segments)
    clipped = speech.segments_from_tokens([ts(1.0), 7, ts(29.0)], window, 40.0, FakeTokenizer())
    assert clipped[0].end == 40.0  # never past the end of the audio


def test_next_window_starts_where_the_last_finished_segment_ended():
    samples = speech.decode_audio(jfk_times(6), 7200).samples
    planner = speech.WindowPlanner(speech.log_mel(samples), samples)
    window = planner.window(0, 0)
    assert 2500 <= window.end_frame <= 3000
    seg = lambda a, b: speech.Segment(a, b, "x", 0)  # noqa: E731
    # the model stopped early: the next window starts at the end of its transcript
    kept, seek = planner.advance(window, [seg(0, 8), seg(8, 11), seg(11, 22)])
    assert len(kept) == 3 and seek == 2200
    # an unfinished last segment (running to the window's end) is decoded again
    kept, seek = planner.advance(window, [seg(0, 8), seg(8, window.end)])
    assert len(kept) == 1 and seek == 800
    # no finished segment, or less than a second consumed: move on to the window's end
    assert planner.advance(window, [seg(0, window.end)])[1] == window.end_frame
    assert planner.advance(window, [seg(0, 0.5), seg(0.5, window.end)])[1] == window.end_frame
    assert planner.advance(window, [])[1] == window.end_frame
    last = planner.window(5, planner.content - 500)
    assert last.end_frame == planner.content and planner.advance(last, [seg(60, 61)])[1] == planner.content


def test_word_error_rate_ignores_case_and_punctuation():
    assert speech.word_error_rate("And so, my fellow Americans.", "and so my fellow americans") == 0
    assert speech.word_error_rate("a b c d", "a x c") == 0.5


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("data,fragment", [
    (b"", "empty"),
    (b"just some text, not a recording at all\n" * 20, "not a readable audio file"),
    (b"fLaC" + bytes(range(256)) * 40, "audio"),
    (jfk_flac()[:1500], "audio"),
])
def test_unreadable_audio_is_refused(data, fragment):
    with pytest.raises(speech.UnreadableAudioError, match=fragment):
        speech.decode_audio(data, 7200)


def test_an_image_is_not_audio():
    from PIL import Image
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buffer, format="PNG")
    with pytest.raises(speech.UnreadableAudioError, match="no audio stream|not a readable"):
        speech.decode_audio(buffer.getvalue(), 7200)


def empty_wav() -> bytes:
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
    return buffer.getvalue()


def test_zero_sample_wav_is_refused():
    with pytest.raises(speech.UnreadableAudioError, match="no audio samples"):
        speech.decode_audio(empty_wav(), 7200)


@pytest.fixture
def decoded_samples(monkeypatch):
    """Counts the 16 kHz samples decode_audio produced before it returned or raised."""
    count = [0]
    real = speech._resample_frames

    def counting(frames, resampler):
        for frame in real(frames, resampler):
            count[0] += frame.samples
            yield frame
    monkeypatch.setattr(speech, "_resample_frames", counting)
    return count


def test_too_long_is_refused_from_the_header_before_decoding(decoded_samples):
    long_wav = wav_pcm16(np.full((1, 16000 * 600), 0.01, np.float32), 16000)  # 10 minutes
    with pytest.raises(speech.AudioTooLongError, match="lasts 600 s; the limit is 60 s"):
        speech.decode_audio(long_wav, 60)
    assert decoded_samples[0] == 0


def test_too_long_without_a_declared_duration_stops_while_decoding(decoded_samples):
    """A FLAC whose STREAMINFO says "length unknown" (0 samples) declares nothing; the
    count of decoded samples is the backstop."""
    import struct

    flac = bytearray(encode(np.full((1, 16000 * 120), 0.01, np.float32), 16000, "flac", "flac"))
    (packed,) = struct.unpack(">Q", flac[18:26])  # rate, channels, bits, 36-bit total samples
    flac[18:26] = struct.pack(">Q", packed & ~((1 << 36) - 1))
    with pytest.raises(speech.AudioTooLongError, match="lasts more than 30 s"):
        speech.decode_audio(bytes(flac), 30)
    assert 16000 * 30 < decoded_samples[0] < 16000 * 60  # stopped near the limit, not at 120 s


def _scripted_decoder(planner: speech.WindowPlanner, speech_spans: list[tuple[float, float]]):
    """A stand-in for the model that 'hears' the given spans (seconds) of each window and
    returns one finished segment per span inside it; records the windows of each call."""
    state = {"calls": []}

    async def decode(windows: list[speech.Window]) -> list[list[speech.Segment]]:
        state["calls"].append([w.start_frame for w in windows])
        return [[speech.Segment(max(a, w.start), min(b, w.end), f"{a:.0f}", w.index)
                 for a, b in speech_spans if a < w.end and b > w.start and b <= w.end]
                for w in windows]

    return decode, state


def _long_recording(pause_s: float) -> tuple[speech.WindowPlanner, list[tuple[float, float]]]:
    from tests.audio_fixtures import jfk_with_pauses

    decoded = speech.decode_audio(jfk_with_pauses(8, pause_s), 7200)
    features = speech.log_mel(decoded.samples)
    spans = [(i * (11 + pause_s) + 0.3, i * (11 + pause_s) + 10.8) for i in range(8)]
    return speech.WindowPlanner(features, decoded.samples), spans


def test_windows_cut_in_pauses_are_decoded_together_with_the_sequential_result():
    """104 s of speech with 2 s pauses: windows cut inside a pause go to the model in one
    call, and the segments and window count equal the one-at-a-time loop's."""
    import asyncio

    planner, spans = _long_recording(2.0)
    decode, state = _scripted_decoder(planner, spans)
    sequential = asyncio.run(speech.transcribe_windows(planner, decode, parallel=1))
    assert max(len(c) for c in state["calls"]) == 1
    decode, state = _scripted_decoder(planner, spans)
    parallel = asyncio.run(speech.transcribe_windows(planner, decode, parallel=4))
    assert parallel == sequential
    assert max(len(c) for c in state["calls"]) > 1
    assert sequential[1] >= 4 and len(sequential[0]) == 8


def test_continuous_speech_is_not_guessed_ahead():
    """Without a pause at the cut, the next window's start depends on the transcript:
    one window at a time, no window decoded for nothing."""
    import asyncio

    decoded = speech.decode_audio(jfk_times(6), 7200)
    features = speech.log_mel(decoded.samples)
    planner = speech.WindowPlanner(features, decoded.samples)
    spans = [(i * 11.0 + 0.3, i * 11.0 + 10.8) for i in range(6)]
    decode, state = _scripted_decoder(planner, spans)
    segments, windows = asyncio.run(speech.transcribe_windows(planner, decode, parallel=4))
    assert all(len(c) == 1 for c in state["calls"]) and len(state["calls"]) == windows


def test_a_pause_only_counts_when_it_is_quiet():
    planner, _ = _long_recording(2.0)
    assert planner.quiet(int(11.5 * 100), int(12.5 * 100))  # inside the first pause
    assert not planner.quiet(int(3 * 100), int(4 * 100))  # speech


def test_decoding_leaves_nothing_for_the_cycle_collector(monkeypatch):
    """decode_audio frees everything by reference counting (PyAV's resampler included), so
    it needs no full collection per request (one took 15-55 ms with the frontend's heap)."""
    import gc

    def refuse(*args):
        raise AssertionError("decode_audio ran a full garbage collection")

    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(gc, "collect", refuse)
            for data in (jfk_flac(), wav_pcm16(jfk_at(8000, "mono"), 8000),
                         encode(jfk_at(48000, "stereo"), 48000, "ogg", "libopus")):
                speech.decode_audio(data, 7200)
            with pytest.raises(speech.UnreadableAudioError):
                speech.decode_audio(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(64), 7200)
        gc.collect()
        assert gc.garbage == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
