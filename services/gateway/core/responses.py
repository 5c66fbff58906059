"""The agent's answers as the gateway tracks them: their sentences, how long
each sentence's audio is, and which answers were cut."""

from __future__ import annotations

from dataclasses import dataclass, field

import soxr

from parley.text import heard_text

# Answers kept for late events (a truncate, a stale audio chunk).
KEEP = 8


@dataclass
class Response:
    response_id: str
    turn_id: int
    sentences: dict[int, str] = field(default_factory=dict)
    sentence_ms: dict[int, float] = field(default_factory=dict)
    tts_started: bool = False
    text_done: bool = False
    end_session: bool = False
    heard_to_end: bool = False  # its last audio has been played out
    resampler: soxr.ResampleStream | None = None
    in_rate: int = 0

    def heard(self, played_ms: float) -> str:
        """What that much audio of the answer held (whole sentences, then a
        share of the one in progress, at a word boundary)."""
        order = sorted(self.sentences)
        return heard_text(
            [self.sentences[i] for i in order],
            [self.sentence_ms.get(i, 0.0) for i in order],
            played_ms,
        )


class Responses:
    def __init__(self) -> None:
        self._by_id: dict[str, Response] = {}
        self.current = ""  # the latest answer's id
        self._cancelled: set[str] = set()

    def start(self, response_id: str, turn_id: int) -> Response:
        resp = self._by_id[response_id] = Response(response_id, turn_id)
        for old in list(self._by_id)[:-KEEP]:
            del self._by_id[old]
        self.current = response_id
        return resp

    def get(self, response_id: str) -> Response | None:
        return self._by_id.get(response_id)

    def cancel(self, response_id: str) -> None:
        self._cancelled.add(response_id)

    def stale(self, response_id: str) -> bool:
        return response_id in self._cancelled

    def live_current(self) -> Response | None:
        """The current answer unless it was cut."""
        if not self.current or self.current in self._cancelled:
            return None
        return self._by_id.get(self.current)
