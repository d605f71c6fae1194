"""Audio made for the speech tests from jfk.flac, encoded with PyAV (FFmpeg in the wheel)."""
from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from percolate_models.tune import SPEECH_TEST_FILE, SPEECH_TEST_TRANSCRIPT

JFK_TEXT = SPEECH_TEST_TRANSCRIPT
"""Reference transcript (TOOLCHAIN.md)."""


def jfk_path() -> Path:
    """``PERCOLATE_JFK_FLAC``, default ``data/jfk.flac`` carried in the repository."""
    return Path(os.environ.get("PERCOLATE_JFK_FLAC") or SPEECH_TEST_FILE)


@lru_cache(maxsize=None)
def jfk_flac() -> bytes:
    return jfk_path().read_bytes()


@lru_cache(maxsize=None)
def jfk_at(rate: int, layout: str) -> np.ndarray:
    """jfk.flac resampled to ``rate`` and ``layout`` (mono/stereo): float32 [channels, samples]."""
    import av

    resampler = av.audio.resampler.AudioResampler(format="fltp", layout=layout, rate=rate)
    chunks = []
    with av.open(io.BytesIO(jfk_flac())) as container:
        for frame in container.decode(audio=0):
            frame.pts = None
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
    chunks += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(chunks, axis=1).astype(np.float32)


def encode(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode float32 [channels, samples] into a file of ``container`` with ``codec``."""
    import av

    samples = np.atleast_2d(samples).astype(np.float32)
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
        frame.rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def wav_pcm16(samples: np.ndarray, rate: int) -> bytes:
    return encode(samples, rate, "wav", "pcm_s16le")


@lru_cache(maxsize=None)
def jfk_times(count: int) -> bytes:
    """jfk.flac repeated ``count`` times back to back (16 kHz mono FLAC)."""
    return encode(np.tile(jfk_at(16000, "mono"), (1, count)), 16000, "flac", "flac")


@lru_cache(maxsize=None)
def jfk_with_pauses(count: int, pause_s: float = 2.0) -> bytes:
    """jfk.flac ``count`` times, each followed by ``pause_s`` of silence (16 kHz mono FLAC):
    a long recording with pauses, as speech usually has (``count`` 8: 104 s)."""
    speech = jfk_at(16000, "mono")
    gap = np.zeros((1, int(pause_s * 16000)), np.float32)
    return encode(np.concatenate([speech, gap] * count, axis=1), 16000, "flac", "flac")
