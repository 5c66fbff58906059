"""Turns per-window speech probabilities into speech start / stop decisions.

Hysteresis: speech starts above `threshold` and only counts as silence below
`threshold - neg_offset`, so a voice that dips briefly does not end the turn.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SegmenterConfig:
    threshold: float = 0.5
    neg_offset: float = 0.15
    min_speech_ms: float = 250
    silence_ms: float = 500
    max_utterance_ms: float = 30000
    # A pause this long (shorter than silence_ms) is announced, so the answer
    # can be prepared before the turn is known to be over; 0 turns it off.
    early_pause_ms: float = 250
    # False (push-to-talk): silence never ends the turn; only commit() or
    # max_utterance_ms does.
    end_on_silence: bool = True


@dataclass
class Started:
    start_ms: float


@dataclass
class Stopped:
    start_ms: float
    end_ms: float
    reason: str  # "silence" | "max_utterance" | "commit" | "transcript"


@dataclass
class Paused:
    """The user paused: maybe the end of the turn, maybe not."""

    start_ms: float
    end_ms: float


Decision = Started | Stopped | Paused


class Segmenter:
    def __init__(self, config: SegmenterConfig, window_ms: float) -> None:
        self.config = config
        self.window_ms = window_ms
        self.position_ms = 0.0  # stream offset of the next window
        self.speaking = False  # a turn has been announced
        self._candidate_start: float | None = None  # voice heard, not yet long enough
        self._voiced_ms = 0.0
        self._start_ms = 0.0
        self._silence_since: float | None = None
        self._pause_announced = False

    @property
    def voice_onset_ms(self) -> float | None:
        """Where a voice was heard that is not yet long enough to be speech
        (min_speech_ms), if one is: the service announces it so that an agent
        that is talking can hold its voice at once."""
        return None if self.speaking else self._candidate_start

    @property
    def neg_threshold(self) -> float:
        return max(0.01, self.config.threshold - self.config.neg_offset)

    def push(self, probability: float) -> Decision | None:
        at = self.position_ms
        self.position_ms += self.window_ms
        cfg = self.config
        if not self.speaking:
            if probability >= cfg.threshold:
                if self._candidate_start is None:
                    self._candidate_start = at
                    self._voiced_ms = 0.0
                self._voiced_ms += self.window_ms
                self._silence_since = None
                if self._voiced_ms >= cfg.min_speech_ms:
                    self.speaking = True
                    self._start_ms = self._candidate_start
                    return Started(self._start_ms)
            elif probability < self.neg_threshold and self._candidate_start is not None:
                # A click or cough shorter than min_speech: forget it after a gap
                # as long as the silence that would end a turn.
                if self._silence_since is None:
                    self._silence_since = at
                elif at + self.window_ms - self._silence_since >= min(cfg.silence_ms, 300):
                    self._candidate_start = None
                    self._silence_since = None
            return None

        if probability < self.neg_threshold:
            if self._silence_since is None:
                self._silence_since = at
                self._pause_announced = False
            silent = at + self.window_ms - self._silence_since
            if cfg.end_on_silence and silent >= cfg.silence_ms:
                return self._stop(self._silence_since, "silence")
            if (
                cfg.end_on_silence
                and cfg.early_pause_ms
                and silent >= cfg.early_pause_ms
                and not self._pause_announced
            ):
                self._pause_announced = True
                return Paused(self._start_ms, self._silence_since)
        elif probability >= cfg.threshold:
            self._silence_since = None
        if self.position_ms - self._start_ms >= cfg.max_utterance_ms:
            return self._stop(self.position_ms, "max_utterance")
        return None

    def commit(self) -> Stopped | None:
        """The client ends the turn now (push-to-talk)."""
        if not self.speaking:
            return None
        return self._stop(self._silence_since or self.position_ms, "commit")

    def end_at_pause(self, pause_ms: float) -> Stopped | None:
        """End the turn at the pause that began at pause_ms, if the user has
        been silent since (a turn detector read the transcript as complete)."""
        if not self.speaking or self._silence_since != pause_ms:
            return None
        return self._stop(pause_ms, "transcript")

    def discard(self) -> None:
        """Forget the turn in progress without announcing its end (the
        client cleared its input): the next speech opens a new turn."""
        self.speaking = False
        self._candidate_start = None
        self._silence_since = None

    def _stop(self, end_ms: float, reason: str) -> Stopped:
        self.speaking = False
        self._candidate_start = None
        self._silence_since = None
        return Stopped(self._start_ms, end_ms, reason)
