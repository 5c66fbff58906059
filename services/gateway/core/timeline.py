"""Per-turn timings: from the end of the user's speech to each milestone."""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field

from parley.metrics import TURN_HOP_SECONDS

HOPS = ("final_transcript", "first_token", "first_sentence", "first_tts_audio", "first_audio_sent")


class ArrivalClock:
    """Maps input-stream offsets (ms) to the monotonic time that audio arrived,
    so 'end of speech' means when the speech ended at the device, not when VAD
    noticed it."""

    def __init__(self, keep: int = 4000) -> None:
        self._ends: deque[float] = deque(maxlen=keep)
        self._times: deque[float] = deque(maxlen=keep)

    def record(self, end_offset_ms: float, at: float | None = None) -> None:
        self._ends.append(end_offset_ms)
        self._times.append(time.monotonic() if at is None else at)

    def time_of(self, offset_ms: float) -> float | None:
        if not self._ends:
            return None
        ends = list(self._ends)
        i = bisect.bisect_left(ends, offset_ms)
        if i >= len(ends):
            return self._times[-1]
        return self._times[i]


@dataclass
class TurnTimeline:
    turn_id: int
    end_of_speech: float | None = None  # monotonic
    end_of_speech_ms: float = 0.0  # input stream offset
    marks: dict[str, float] = field(default_factory=dict)
    reported: bool = False

    def mark(self, hop: str, at: float | None = None) -> None:
        self.marks.setdefault(hop, time.monotonic() if at is None else at)

    def hops_ms(self) -> dict[str, float]:
        if self.end_of_speech is None:
            return {}
        return {
            hop: round((self.marks[hop] - self.end_of_speech) * 1000, 1)
            for hop in HOPS
            if hop in self.marks
        }

    def observe(self) -> dict[str, float]:
        hops = self.hops_ms()
        for hop, ms in hops.items():
            TURN_HOP_SECONDS.labels(hop).observe(max(0.0, ms / 1000))
        return hops
