"""Cuts a stream of text deltas into speakable sentences as soon as each is
complete. The first is cut eagerly, at a clause boundary, so speech starts
while the model is still writing."""

from __future__ import annotations

import re

FIRST_CLAUSE_MIN_WORDS = 4
MAX_SENTENCE_CHARS = 200
_ABBREVIATIONS = {
    "dr",
    "mr",
    "mrs",
    "ms",
    "st",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "jr",
    "sr",
    "prof",
    "no",
    "approx",
}
_SENTENCE_END = re.compile(r"([.!?。！？]+[\"')\]]*)(\s+|$)|\n+")
_CLAUSE_END = re.compile(r"([,;:]|\s[-–—])\s+")
_SPOKEN = re.compile(r"[A-Za-z0-9\u00C0-\uFFFF]")
# What a speech synthesizer would read aloud or choke on.
_UNSPEAKABLE = re.compile(r"[*#_`~>|]+|\[(.*?)\]\(.*?\)|[\U0001F000-\U0001FAFF\u2600-\u27BF\uFE0F]")


def clean_for_speech(text: str) -> str:
    text = _UNSPEAKABLE.sub(lambda m: m.group(1) or " ", text)
    return re.sub(r"\s+", " ", text).strip()


class SentenceSplitter:
    def __init__(self) -> None:
        self._buffer = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        out: list[str] = []
        while True:
            piece = self._next_piece()
            if piece is None:
                break
            cleaned = clean_for_speech(piece)
            if _SPOKEN.search(cleaned):
                out.append(cleaned)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer, ""
        cleaned = clean_for_speech(rest)
        if _SPOKEN.search(cleaned):
            self._emitted += 1
            return [cleaned]
        return []

    def _next_piece(self) -> str | None:
        buf = self._buffer
        for match in _SENTENCE_END.finditer(buf):
            end = match.end()
            # Only cut where what follows has begun: "3." may become "3.5".
            if end >= len(buf) and not match.group(0).endswith(("\n", " ")):
                return None
            if self._is_false_end(buf, match.start()):
                continue
            self._buffer = buf[end:]
            return buf[:end]
        if self._emitted == 0:
            for match in _CLAUSE_END.finditer(buf):
                head = buf[: match.start() + 1]
                if len(head.split()) >= FIRST_CLAUSE_MIN_WORDS:
                    self._buffer = buf[match.end() :]
                    return head
        if len(buf) > MAX_SENTENCE_CHARS:
            cut = buf.rfind(" ", 0, MAX_SENTENCE_CHARS)
            cut = cut if cut > 0 else MAX_SENTENCE_CHARS
            self._buffer = buf[cut:]
            return buf[:cut]
        return None

    @staticmethod
    def _is_false_end(buf: str, at: int) -> bool:
        if buf[at] != ".":
            return False
        word = re.search(r"([A-Za-z.]+)$", buf[:at])
        if word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS:
            return True
        # A decimal number: a digit on both sides of the point.
        return at > 0 and buf[at - 1].isdigit() and at + 1 < len(buf) and buf[at + 1].isdigit()
