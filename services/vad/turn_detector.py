"""When is the user done? Pluggable turn detectors, chosen per session by the
`turn_detector` setting. The VAD's silence duration is always the bound: a
detector can only end a turn sooner, at a pause the VAD has announced, from the
transcript of what was said up to it."""

from __future__ import annotations

import re
from typing import Protocol

# An utterance that stops on one of these is mid-phrase: "I'd like to go to the".
_DANGLING = frozenset(
    """a an the and or but so because if that which who whose when where while
    than then to of for from with without in on at by about into over under as
    my your his her its our their this these those is are was were am be been
    will would can could should shall may might must do does did have has had
    i we you he she they it um uh er like and's let's i'm""".split()
)
_WORD = re.compile(r"[a-z']+")


class TurnDetector(Protocol):
    name: str

    def ends_turn(self, transcript_at_pause: str) -> bool:
        """True to end the turn at the pause this transcript stops at."""
        ...


class SilenceDetector:
    """Only silence ends a turn."""

    name = "silence"

    def ends_turn(self, transcript_at_pause: str) -> bool:
        return False


class TranscriptDetector:
    """A complete sentence or question ends the turn at the pause; an utterance
    that trails off mid-phrase (or says nothing) waits for the silence."""

    name = "transcript"

    def ends_turn(self, transcript_at_pause: str) -> bool:
        text = transcript_at_pause.strip()
        if not text or text.endswith(("...", "…", ",", "-", ";", ":")):
            return False
        words = _WORD.findall(text.lower())
        if not words or words[-1] in _DANGLING:
            return False
        return text[-1] in ".?!"


DETECTORS: dict[str, TurnDetector] = {d.name: d for d in (SilenceDetector(), TranscriptDetector())}


def turn_detector(name: str) -> TurnDetector:
    return DETECTORS.get(name, DETECTORS["silence"])
