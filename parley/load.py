"""What a stage instance knows of its own load: the sessions it holds, the
model work waiting, how long recent steps took, and the share of its
capacity in use. Published in every Heartbeat (placement picks the least
loaded instance with room) and as gauges an autoscaler reads:

- `parley_stage_sessions{stage}`: sessions placed on this instance.
- `parley_stage_queue_depth{stage}`: model steps (a VAD chunk, a
  transcription, an answer, a sentence) submitted and not yet running: in
  flight beyond the stage's model workers.
- `parley_stage_step_seconds{stage}`: the p95 of the last steps' durations
  (submit to done, the wait for a worker included).
- `parley_stage_load_ratio{stage}`: the busy fraction, the larger of the
  session share (sessions / capacity; 0 when capacity is unlimited) and the
  work share (model steps in flight, averaged over the last heartbeat
  interval, per model worker). 1 is full; over 1 the model work queues.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from parley.metrics import STAGE_LOAD_RATIO, STAGE_QUEUE_DEPTH, STAGE_SESSIONS, STAGE_STEP_SECONDS

# Steps remembered for the recent latency: enough for a stable p95, recent
# enough to follow a load change within a few seconds of turns.
RECENT_STEPS = 64


@dataclass(frozen=True)
class Load:
    """One instance's load as it publishes it."""

    sessions: int
    capacity: int  # 0: unlimited
    queue_depth: int
    step_latency_ms: float
    load_ratio: float

    @property
    def has_room(self) -> bool:
        return self.capacity == 0 or self.sessions < self.capacity


class LoadMeter:
    """Counts one stage instance's sessions and model steps. Used on the
    event loop only (steps are entered and left there, around the await of
    the model), so no lock."""

    def __init__(self, stage: str, capacity: int, workers: int = 1) -> None:
        self.stage = stage
        self.capacity = capacity
        self.workers = max(1, workers)
        self.sessions = 0
        self.in_flight = 0
        self._latencies: deque[float] = deque(maxlen=RECENT_STEPS)
        # The integral of in_flight over time since the last sample: its
        # average over the interval, so a VAD chunk of 1 ms every 60 ms counts
        # as the ~2% it is, whatever moment the heartbeat samples.
        self._area = 0.0
        self._since = time.monotonic()
        self._sampled_at = self._since

    def _advance(self) -> None:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._since)
        self._since = now

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around one unit of model work, from its submission to its end."""
        self._advance()
        self.in_flight += 1
        started = time.monotonic()
        try:
            yield
        finally:
            self._advance()
            self.in_flight -= 1
            self._latencies.append(time.monotonic() - started)

    def set_sessions(self, count: int) -> None:
        self.sessions = count
        STAGE_SESSIONS.labels(self.stage).set(count)

    @property
    def full(self) -> bool:
        return self.capacity > 0 and self.sessions >= self.capacity

    @property
    def queue_depth(self) -> int:
        return max(0, self.in_flight - self.workers)

    def step_latency_s(self) -> float:
        if not self._latencies:
            return 0.0
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def sample(self) -> Load:
        """The load now (the work share over the time since the last
        sample), with the gauges set to it."""
        self._advance()
        now = time.monotonic()
        elapsed = now - self._sampled_at
        busy = self._area / elapsed if elapsed > 0 else float(self.in_flight)
        self._area = 0.0
        self._sampled_at = now
        session_share = self.sessions / self.capacity if self.capacity else 0.0
        ratio = max(session_share, busy / self.workers)
        load = Load(
            sessions=self.sessions,
            capacity=self.capacity,
            queue_depth=self.queue_depth,
            step_latency_ms=self.step_latency_s() * 1000,
            load_ratio=ratio,
        )
        STAGE_SESSIONS.labels(self.stage).set(load.sessions)
        STAGE_QUEUE_DEPTH.labels(self.stage).set(load.queue_depth)
        STAGE_STEP_SECONDS.labels(self.stage).set(load.step_latency_ms / 1000)
        STAGE_LOAD_RATIO.labels(self.stage).set(load.load_ratio)
        return load
