"""Speech preprocessing and postprocessing for Whisper tiny.en, as plain functions.

- ``decode_audio``: any container/codec FFmpeg reads (WAV, FLAC, OGG, MP3, M4A, ...)
  via PyAV, resampled to 16 kHz mono exactly as faster-whisper's ``decode_audio`` does
  (signed 16-bit through libswresample), refusing audio over the configured length
  before decoding all of it (declared duration first, decoded samples as a backstop).
- ``log_mel``: faster-whisper's feature extractor in numpy (80 bins, 25 ms Hann window,
  10 ms hop, clamp 8 below the maximum over the whole recording), computed in blocks
  so long recordings do not need one huge STFT.
- ``WindowPlanner``: windows of at most 30 s. A window that does not reach the end
  ends at the quietest point of its last ``CUT_SEARCH_S`` seconds, so words are
  rarely cut in half; the next starts where the last finished segment ended (Whisper's
  seek), so nothing the model left out at a window's end is lost. Digitally silent
  windows (RMS under ``SILENCE_RMS``) are not sent to the model.
- ``segments_from_tokens``: Whisper's timestamp tokens -> segments with absolute times.
"""
from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Awaitable, Callable

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
MEL_BINS = 80
FRAMES_PER_SECOND = SAMPLE_RATE // HOP
WINDOW_FRAMES = 3000
"""Frames in one 30-second model window."""
CUT_SEARCH_S = 5.0
SILENCE_RMS = 1e-3
"""About -60 dBFS: windows quieter than this hold no speech and are not decoded."""
EOT = 50256
TIMESTAMP_BEGIN = 50363
TIME_PRECISION = 0.02
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
"""faster-whisper's defaults: a window whose no-speech probability is above 0.6 and
whose average log probability is below -1 is treated as silence."""
PAUSE_RELATIVE_RMS = 10 ** (-45 / 20)
"""A pause: nothing in 50 ms louder than -45 dB below the recording's loud frames (95th
percentile), or digital silence. Near-silence only: at -26 dB (the first try) speech
30 dB quieter than the rest counted as a pause and was never decoded. The rule does not
depend on ``PARALLEL_WINDOWS``, so batched and one-at-a-time transcripts stay equal."""
PAUSE_FRAMES = 20
"""A window cut with a pause 0.2 s either side of it counts as cut in a pause."""
PAUSE_MARGIN_FRAMES = 20
"""Allowance (0.2 s) for a segment's end timestamp falling before its last word ends."""
STFT_BLOCK_FRAMES = 30_000
"""Frames per STFT block (5 minutes of audio)."""
AUDIO_FORMATS = ("wav", "flac", "ogg", "mp3", "m4a", "webm", "aiff")
MIME_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg", "mp3": "audio/mpeg",
              "m4a": "audio/mp4", "webm": "audio/webm", "aiff": "audio/aiff"}


class AudioError(Exception):
    """A problem with the audio a caller sent; the message says what."""


class UnreadableAudioError(AudioError):
    """Not audio, corrupt, or without any sample."""


class AudioTooLongError(AudioError):
    """Longer than the configured maximum."""


def sniff_audio(data: bytes) -> str:
    """The audio container ``data`` starts like, or "" when it does not look like audio."""
    head = data[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
                              and head[1] & 0x06 != 0):
        return "mp3"
    if head[4:8] == b"ftyp" and head[8:12] in (b"M4A ", b"M4B ", b"mp42", b"isom", b"3gp4", b"dash"):
        return "m4a"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    return ""


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray
    """float32, 16 kHz, mono, in [-1, 1)."""
    source_rate: int
    source_channels: int
    container: str

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def decode_audio(data: bytes, max_seconds: float) -> DecodedAudio:
    """Decode and resample to 16 kHz mono; raises ``AudioError`` subclasses."""
    import av

    if not data:
        raise UnreadableAudioError("the audio is empty (0 bytes): send a WAV, FLAC, OGG, MP3 or M4A file")
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError) as err:
        raise UnreadableAudioError(f"not a readable audio file ({_reason(err)})") from None
    try:
        with container:
            if not container.streams.audio:
                raise UnreadableAudioError(
                    f"the file ({container.format.name}) has no audio stream")
            stream = container.streams.audio[0]
            container_name = container.format.name
            source_rate = int(stream.rate or 0)
            source_channels = int(stream.channels or 0)
            declared = _declared_seconds(container, stream)
            if declared > max_seconds + 1:
                raise AudioTooLongError(
                    f"the audio lasts {declared:.0f} s; the limit is {max_seconds:.0f} s: split it")
            resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            frames = _group_frames(_ignore_invalid_frames(container.decode(stream)), 500_000)
            for frame in _resample_frames(frames, resampler):
                array = frame.to_ndarray().reshape(-1)
                chunks.append(array)
                total += array.size
                if total > limit:
                    raise AudioTooLongError(
                        f"the audio lasts more than {max_seconds:.0f} s, the limit: split it")
            del resampler
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, IndexError) as err:
        raise UnreadableAudioError(f"the audio could not be decoded ({_reason(err)})") from None
    # No gc.collect() here: PyAV >= 18 leaves no reference cycle behind (tested), and a full
    # collection of the frontend's heap cost 15-55 ms per request.
    if total == 0:
        raise UnreadableAudioError("the file holds no audio samples (zero-length or corrupt audio)")
    samples = np.concatenate(chunks).astype(np.float32) / 32768.0
    return DecodedAudio(samples, source_rate, source_channels, container_name)


def _reason(err: BaseException) -> str:
    """FFmpeg's own words for what was wrong, on one line (no file names: there are none)."""
    lines = str(getattr(err, "strerror", "") or err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def _declared_seconds(container, stream) -> float:
    if container.duration:
        return container.duration / 1_000_000
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return 0.0


def _ignore_invalid_frames(frames):
    import av

    iterator = iter(frames)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def _group_frames(frames, num_samples: int):
    import av

    fifo = av.audio.fifo.AudioFifo()
    for frame in frames:
        frame.pts = None  # ignore timestamp gaps, as faster-whisper does
        fifo.write(frame)
        if fifo.samples >= num_samples:
            yield fifo.read()
    if fifo.samples > 0:
        yield fifo.read()


def _resample_frames(frames, resampler):
    for frame in frames:
        yield from resampler.resample(frame)
    yield from resampler.resample(None)  # flush


def mel_filters(n_mels: int = MEL_BINS, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-style mel filter bank [n_mels, n_fft // 2 + 1] (librosa's default), float32."""
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mels = np.linspace(0.0, 45.245640471924965, n_mels + 2)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    fdiff = np.diff(freqs)
    ramps = freqs.reshape(-1, 1) - fftfreqs.reshape(1, -1)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2:n_mels + 2] - freqs[:n_mels]))[:, None]
    return weights.astype(np.float32)


_FILTERS = mel_filters()
_WINDOW = np.hanning(N_FFT + 1)[:-1].astype(np.float32)


def log_mel(samples: np.ndarray, padding: int = HOP) -> np.ndarray:
    """Log-mel spectrogram [80, len(samples) // 160 + 1], as faster-whisper computes it."""
    waveform = np.asarray(samples, np.float32)
    if padding:
        waveform = np.pad(waveform, (0, padding))
    padded = np.pad(waveform, (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = 1 + (len(padded) - N_FFT) // HOP - 1  # the last STFT frame is dropped
    out = np.empty((MEL_BINS, frames), np.float32)
    stride = padded.strides[0]
    for first in range(0, frames, STFT_BLOCK_FRAMES):
        count = min(STFT_BLOCK_FRAMES, frames - first)
        block = np.lib.stride_tricks.as_strided(padded[first * HOP:], (count, N_FFT), (HOP * stride, stride))
        spectrum = np.fft.rfft(block * _WINDOW, n=N_FFT, axis=-1).astype(np.complex64)
        magnitudes = np.abs(spectrum) ** 2
        mel = _FILTERS @ magnitudes.T
        out[:, first:first + count] = np.log10(np.clip(mel, 1e-10, None))
    np.maximum(out, out.max() - 8.0, out=out)
    out += 4.0
    out /= 4.0
    return out


@dataclass(frozen=True)
class Window:
    index: int
    start_frame: int
    end_frame: int
    silent: bool

    @property
    def start(self) -> float:
        return self.start_frame / FRAMES_PER_SECOND

    @property
    def end(self) -> float:
        return self.end_frame / FRAMES_PER_SECOND


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def _frame_rms(samples: np.ndarray) -> np.ndarray:
    """RMS of each 10 ms frame, in float32 blocks of ``STFT_BLOCK_FRAMES`` so that a long
    recording needs no float64 copy of itself (2 hours: 1.8 GB)."""
    count = len(samples) // HOP
    if count == 0:
        return np.zeros(1, np.float32)
    rms = np.empty(count, np.float32)
    for first in range(0, count, STFT_BLOCK_FRAMES):
        last = min(count, first + STFT_BLOCK_FRAMES)
        block = np.asarray(samples[first * HOP:last * HOP], np.float32).reshape(-1, HOP)
        np.sqrt(np.einsum("ij,ij->i", block, block) / HOP, out=rms[first:last])
    return rms


class WindowPlanner:
    """Chooses each window of one recording (at most 30 s, from ``seek``).

    A window that does not reach the end of the recording ends at the quietest point of
    its last ``CUT_SEARCH_S`` seconds (lowest mean log-mel energy, smoothed over 0.1 s).
    """

    def __init__(self, features: np.ndarray, samples: np.ndarray) -> None:
        self.samples = samples
        self.content = features.shape[-1] - 1  # as faster-whisper counts content frames
        energy = features.mean(axis=0)
        self.energy = np.convolve(energy, np.ones(10, np.float32) / 10, mode="same")
        # loudness per 10 ms frame, its maximum over 50 ms, and what counts as quiet
        rms = _frame_rms(samples)
        self.loudness = np.lib.stride_tricks.sliding_window_view(
            np.pad(rms, (2, 2), mode="edge"), 5).max(axis=1)
        self.quiet_level = max(SILENCE_RMS, PAUSE_RELATIVE_RMS * float(np.percentile(rms, 95)))

    def window(self, index: int, seek: int) -> Window:
        end = seek + WINDOW_FRAMES
        if end >= self.content:
            end = self.content
        else:
            low = end - int(CUT_SEARCH_S * FRAMES_PER_SECOND)
            end = low + int(np.argmin(self.energy[low:end + 1]))
        silent = _rms(self.samples[seek * HOP:end * HOP]) < SILENCE_RMS
        return Window(index, seek, end, silent)

    def quiet(self, start_frame: int, end_frame: int) -> bool:
        """Whether nothing louder than a pause lies between the two frames."""
        span = self.loudness[max(0, start_frame):max(0, end_frame)]
        return span.size == 0 or float(span.max()) < self.quiet_level

    def ends_in_pause(self, window: Window) -> bool:
        """Whether ``window`` is cut inside a pause (known before decoding): then the next
        window most likely starts at its end (``advance``), and both can be decoded at once."""
        return window.end_frame < self.content and self.quiet(
            window.end_frame - PAUSE_FRAMES, window.end_frame + PAUSE_FRAMES)

    def advance(self, window: Window, segments: list["Segment"]) -> tuple[list["Segment"], int]:
        """The segments to keep from ``window`` and where the next window starts.

        As Whisper's own loop does, the next window starts where the last finished
        segment ended, so words the model left out at the end of a window (it often
        closes its transcript early) or an unfinished last segment are decoded again,
        with what follows as context. At least one second is always consumed. When
        only a pause lies between the last finished segment (plus ``PAUSE_MARGIN_S`` for
        its timestamp's imprecision) and the window's end, nothing was left out: the next
        window starts at the end, which ``transcribe_windows`` can know in advance.
        The last window is no exception: the model often stops before the recording ends,
        and what it left out is decoded again from its last segment's end, unless the
        model closed its transcript with one timestamp (``closes_window``), which is when
        Whisper's loop, too, takes the window as done (decoding the last second of
        jfk.flac again gave "Okay.").
        """
        if not segments:
            return segments, window.end_frame
        if window.end_frame >= self.content and segments[-1].closes_window:
            return segments, window.end_frame
        keep = segments
        if (window.end_frame < self.content and len(segments) > 1
                and segments[-1].end >= window.end - 0.005):
            keep = segments[:-1]  # unfinished at the window's end: decode it again
        seek = int(round(keep[-1].end * FRAMES_PER_SECOND))
        if keep is segments and self.quiet(seek + PAUSE_MARGIN_FRAMES, window.end_frame):
            return segments, window.end_frame
        if seek - window.start_frame < FRAMES_PER_SECOND:
            return segments, window.end_frame
        return keep, min(seek, window.end_frame)


PARALLEL_WINDOWS = 1
"""Windows of one recording sent in one Triton request at most. 1 by measurement: the
guess ahead rarely holds (Whisper usually leaves the last phrase before a cut for the
next window, so the next window starts before the cut), and a failed guess costs the
windows decoded for nothing; on jfk x8 with 2 s pauses, 4 was no faster than 1 here
(README, Speech). Larger values give the same transcript (tests/test_speech_audio.py)."""


async def transcribe_windows(planner: WindowPlanner,
                             decode: Callable[[list[Window]], Awaitable[list[list["Segment"]]]],
                             parallel: int = PARALLEL_WINDOWS) -> tuple[list["Segment"], int]:
    """Every window of one recording; returns the segments kept and the number of windows
    decoded in order (``Transcribe``'s ``windows``). ``decode`` gets up to ``parallel``
    consecutive windows and returns each one's segments (one model call for all of them).

    Whisper's seek makes each window start where the previous transcript ended, which is
    known only after decoding it. But a window cut inside a pause (``ends_in_pause``,
    known from the audio alone) is almost always followed by one that starts at its end
    (``advance``), so such windows are planned ahead and decoded together; then ``advance``
    is applied in order, and at the first window whose next start differs the rest of the
    guess is dropped and planning resumes from the real seek. The result is exactly the
    sequential one (``parallel=1``) as long as a window's tokens do not depend on what it
    is batched with (the served int8 models scale activations per window and per row for
    that reason). Continuous speech, with no pause at a cut, is decoded one window at a time.
    """
    segments: list[Segment] = []
    windows, seek = 0, 0
    while seek < planner.content:
        plan = [planner.window(windows, seek)]
        while len(plan) < parallel and planner.ends_in_pause(plan[-1]):
            plan.append(planner.window(windows + len(plan), plan[-1].end_frame))
        found = await decode(plan)
        for window, window_segments in zip(plan, found, strict=True):
            kept, seek = planner.advance(window, window_segments)
            segments += kept
            windows += 1
            if seek != window.end_frame:
                break  # the transcript stopped short: the next windows start elsewhere
    return segments, windows


def plan_windows(features: np.ndarray, samples: np.ndarray) -> list[Window]:
    """Consecutive windows covering the recording when each is transcribed to its end
    (the windows ``Transcribe`` uses when the model never stops early)."""
    planner, windows, seek = WindowPlanner(features, samples), [], 0
    while seek < planner.content:
        windows.append(planner.window(len(windows), seek))
        seek = windows[-1].end_frame
    return windows


def window_features(features: np.ndarray, window: Window) -> np.ndarray:
    """The model input of ``window``: [80, 3000], zero-padded like faster-whisper's pad_or_trim."""
    segment = features[:, window.start_frame:window.end_frame]
    out = np.zeros((MEL_BINS, WINDOW_FRAMES), np.float32)
    out[:, :segment.shape[1]] = segment
    return out


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    window: int
    closes_window: bool = False
    """The last segment of a window whose tokens end with one timestamp (Whisper's
    ``single_timestamp_ending``): the model says nothing follows it in the window."""


class WhisperTokenizer:
    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))

    def decode(self, tokens: list[int]) -> str:
        return self._tokenizer.decode([t for t in tokens if t < EOT], skip_special_tokens=False)


def segments_from_tokens(tokens: list[int], window: Window, duration: float,
                         tokenizer: WhisperTokenizer) -> list[Segment]:
    """Segments of one window: text between timestamp tokens, with absolute times.

    A pair of timestamps closes one segment and opens the next; text after the last
    timestamp (cut by the end of the window) ends at the window's end.
    """
    offset, limit = window.start, min(window.end, duration)
    segments: list[Segment] = []
    start_ts: float | None = None
    text: list[int] = []

    def close(end: float) -> None:
        nonlocal text
        words = tokenizer.decode(text).strip()
        if words:
            begin = min(max(offset + (start_ts if start_ts is not None else 0.0), offset), limit)
            segments.append(Segment(round(begin, 3), round(min(max(end, begin), limit), 3),
                                    words, window.index))
        text = []

    for token in tokens:
        if token >= TIMESTAMP_BEGIN:
            seconds = (token - TIMESTAMP_BEGIN) * TIME_PRECISION
            if text:
                close(offset + seconds)
            start_ts = seconds
        elif token < EOT:
            text.append(token)
    if text:
        close(limit)
    spoken = [t for t in tokens if t < EOT or t >= TIMESTAMP_BEGIN]
    if segments and len(spoken) >= 2 and spoken[-1] >= TIMESTAMP_BEGIN and spoken[-2] < EOT:
        segments[-1] = replace(segments[-1], closes_window=True)
    return segments


def is_no_speech(no_speech_prob: float, avg_logprob: float) -> bool:
    return no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD


def normalise_words(text: str) -> list[str]:
    """Lower-cased words without punctuation (for word error rates)."""
    import re

    return re.sub(r"[^\w\s']", " ", text.lower()).replace("'", "").split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    from percolate_common.edit_distance import edit_distance

    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    if not ref:
        return float(bool(hyp))
    return edit_distance(ref, hyp) / len(ref)


def transcribe_in_process(runner, samples: np.ndarray, tokenizer: WhisperTokenizer) -> list[Segment]:
    """The service's window loop on ``samples`` with an in-process ``whisper_decode.OrtRunner``
    (no Triton): what bench/speech.py's in-process row and the window tests run."""
    from percolate_models.whisper_decode import greedy_decode

    features = log_mel(samples)
    duration = len(samples) / SAMPLE_RATE

    async def decode(windows: list[Window]) -> list[list[Segment]]:
        (window,) = windows
        if window.silent:
            return [[]]
        (result,) = greedy_decode(runner, window_features(features, window)[None])
        if is_no_speech(result.no_speech_prob, result.avg_logprob):
            return [[]]
        return [segments_from_tokens(result.tokens, window, duration, tokenizer)]

    segments, _ = asyncio.run(transcribe_windows(WindowPlanner(features, samples), decode, parallel=1))
    return segments
