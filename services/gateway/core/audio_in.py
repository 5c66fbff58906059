"""The client's audio onto the bus: resampled to the bus format (PCM16 LE
mono 16 kHz), cut into pieces of at most 60 ms, each with its stream offset,
and the arrival time of each offset remembered for the turn timings."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import numpy as np
import soxr

from parley.metrics import FRAMES
from parley.v1 import audio_pb2
from services.gateway.core.timeline import ArrivalClock

BUS_RATE = 16000
MAX_BUS_CHUNK_MS = 60
_STEP = int(BUS_RATE * 2 * MAX_BUS_CHUNK_MS / 1000)


class AudioIn:
    def __init__(self, publish: Callable[[audio_pb2.AudioChunk], Awaitable[None]]) -> None:
        self._publish = publish
        self.rate = BUS_RATE
        self._resampler: soxr.ResampleStream | None = None
        self.offset_ms = 0.0  # how far the input stream has reached
        self.arrivals = ArrivalClock()

    def set_rate(self, rate: int) -> None:
        if rate != self.rate:
            self.rate = rate
            self._resampler = None

    async def push(self, pcm: bytes) -> None:
        """PCM16 mono at the session's input rate, already validated for shape."""
        FRAMES.labels("gateway", "audio.in").inc()
        if self.rate != BUS_RATE:
            if self._resampler is None:
                self._resampler = soxr.ResampleStream(self.rate, BUS_RATE, 1, dtype="int16")
            samples = np.frombuffer(pcm, dtype="<i2")
            pcm = self._resampler.resample_chunk(samples).astype("<i2").tobytes()
        now = time.monotonic()
        for i in range(0, len(pcm), _STEP):
            piece = pcm[i : i + _STEP]
            if not piece:
                continue
            chunk = audio_pb2.AudioChunk(pcm=piece, sample_rate=BUS_RATE, offset_ms=self.offset_ms)
            self.offset_ms += len(piece) / (BUS_RATE * 2) * 1000
            self.arrivals.record(self.offset_ms, now)
            await self._publish(chunk)
