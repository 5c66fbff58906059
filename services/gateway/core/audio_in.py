"""The client's audio onto the bus: held to real time (a token bucket: audio
arriving faster than `gateway.max_audio_speed` times real time, beyond a
burst of `gateway.audio_burst_ms`, is dropped and counted), resampled to the
bus format (PCM16 LE mono 16 kHz), cut into pieces of at most 60 ms, each
with its stream offset, and the arrival time of each offset remembered for
the turn timings."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import numpy as np
import soxr

from parley.metrics import AUDIO_THROTTLED, DROPPED_FRAMES, FRAMES
from parley.v1 import audio_pb2
from services.gateway.core.timeline import ArrivalClock

BUS_RATE = 16000
MAX_BUS_CHUNK_MS = 60
_STEP = int(BUS_RATE * 2 * MAX_BUS_CHUNK_MS / 1000)


class AudioBudget:
    """A token bucket counted in milliseconds of audio: it fills at `speed`
    ms per ms of wall time up to `burst_ms`, and a frame passes whole if the
    bucket holds its length. A client streaming in real time never touches
    the bottom (it takes 1 ms a ms, the bucket gives `speed`); one sending
    faster gets `burst_ms` through at once, then `speed` times real time.
    Speed 0 turns it off."""

    def __init__(
        self, speed: float, burst_ms: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.speed = speed
        self.burst_ms = burst_ms
        self._clock = clock
        self._tokens = burst_ms
        self._at = clock()

    def take(self, audio_ms: float) -> bool:
        if self.speed <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst_ms, self._tokens + (now - self._at) * 1000 * self.speed)
        self._at = now
        if audio_ms > self._tokens:
            return False
        self._tokens -= audio_ms
        return True


class AudioIn:
    def __init__(
        self,
        publish: Callable[[audio_pb2.AudioChunk], Awaitable[None]],
        budget: AudioBudget | None = None,
    ) -> None:
        self._publish = publish
        self.budget = budget or AudioBudget(0, 0)
        self.dropped_ms = 0.0  # audio refused for arriving too fast
        self.rate = BUS_RATE
        self._resampler: soxr.ResampleStream | None = None
        self.offset_ms = 0.0  # how far the input stream has reached
        self.arrivals = ArrivalClock()

    def set_rate(self, rate: int) -> None:
        if rate != self.rate:
            self.rate = rate
            self._resampler = None

    async def push(self, pcm: bytes, throttle: bool = True) -> bool:
        """PCM16 mono at the session's input rate, already validated for shape;
        False if it was dropped for coming faster than real time. `throttle`
        False for audio the gateway itself adds (a Realtime item's tail)."""
        FRAMES.labels("gateway", "audio.in").inc()
        audio_ms = len(pcm) / (self.rate * 2) * 1000
        if throttle and not self.budget.take(audio_ms):
            self.dropped_ms += audio_ms
            DROPPED_FRAMES.labels("gateway", "too_fast").inc()
            AUDIO_THROTTLED.labels("gateway").inc(audio_ms / 1000)
            return False
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
        return True
