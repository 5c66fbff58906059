"""Cuts a stream of text deltas into speakable sentences as soon as each is
complete. The first is cut eagerly, at a clause boundary, so speech starts
while the model is still writing; what a speech synthesizer would read aloud
literally (markdown, emoji, links) is removed."""

from __future__ import annotations

import re

FIRST_CLAUSE_MIN_WORDS = 4
MAX_SENTENCE_CHARS = 200

# Words that end in a full stop without ending the sentence.
ABBREVIATIONS = frozenset(
    {
        "dr",
        "mr",
        "mrs",
        "ms",
        "st",
        "mt",
        "vs",
        "etc",
        "jr",
        "sr",
        "prof",
        "gen",
        "col",
        "lt",
        "sgt",
        "capt",
        "rev",
        "vol",
        "fig",
        "approx",
        "cf",
        "inc",
        "ltd",
        "corp",
        "dept",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    }
)

# Abbreviations before a number: "No. 5", "Vol. 2", "p. 12".
NUMBER_ABBREVIATIONS = frozenset(
    {"no", "nos", "nr", "vol", "fig", "p", "pp", "ch", "sec", "art", "op"}
)

# Full-width and CJK terminals end a sentence with no space after them.
_CJK_TERMINALS = "。！？｡"
_TERMINALS = ".!?…‼⁇⁈⁉؟।॥" + _CJK_TERMINALS
_CLOSERS = "\"')]}”’»」』）"
_CJK_CLAUSE = "，、；："
_CLAUSE = re.compile(r"[,;:](?=\s)|\s[-–—](?=\s)|—|[，、；：]")

_MARKDOWN_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
# A sentence's own punctuation after a link is not part of it.
_URL = re.compile(r"\b(?:https?://|www\.)\S*[^\s.,;:!?)\]]", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_MARKUP = re.compile(r"[*#_`~|>]+|^\s*-{3,}\s*$", re.MULTILINE)
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2300-\u23ff\u2b00-\u2bff"
    "\ufe0e\ufe0f\u200d\u20e3\U000e0020-\U000e007f]"
)


def clean_for_speech(text: str) -> str:
    """The words of a piece of model output, without what a synthesizer would
    spell out or choke on."""
    text = _MARKDOWN_IMAGE.sub(r"\1", text)
    text = _MARKDOWN_LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _HTML_TAG.sub(" ", text)
    text = _LIST_MARKER.sub("", text)
    text = _MARKUP.sub(" ", text)
    text = _EMOJI.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    # A first clause cut at a dash: a comma reads as the same pause.
    text = re.sub(r"\s*[-–—]+$", ",", text)
    # What removal left dangling before punctuation: "Paris ." -> "Paris."
    return re.sub(r"\s+([,;:.!?])", r"\1", text)


def is_speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def is_abbreviation(word: str) -> bool:
    """word: what precedes a full stop ("Dr", "e.g", "U.S", "J")."""
    word = word.lower()
    # "e.g", "i.e", "a.m", "U.S": a point inside the word marks an abbreviation.
    return word in ABBREVIATIONS or "." in word or (len(word) == 1 and word.isalpha())


def _units(text: str) -> int:
    """Words, counting each CJK character as one: they are written unspaced."""
    cjk = sum(1 for ch in text if "\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff")
    return len(text.split()) + cjk


class SentenceSplitter:
    """push() deltas in order, then flush() once at the end."""

    def __init__(
        self,
        first_clause_min_words: int = FIRST_CLAUSE_MIN_WORDS,
        max_chars: int = MAX_SENTENCE_CHARS,
    ) -> None:
        self.first_clause_min_words = first_clause_min_words
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        out = self._drain(final=True)
        rest, self._buffer = self._buffer, ""
        return out + self._speakable(rest)

    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        while (cut := self._next_cut(final)) is not None:
            piece, self._buffer = self._buffer[:cut], self._buffer[cut:]
            out += self._speakable(piece)
        return out

    def _speakable(self, piece: str) -> list[str]:
        cleaned = clean_for_speech(piece)
        if not is_speakable(cleaned):
            return []
        self._emitted += 1
        return [cleaned]

    def _next_cut(self, final: bool) -> int | None:
        buf = self._buffer
        end = _sentence_end(buf, final)
        if self._emitted == 0:
            # Whichever comes first, so the cut does not depend on how the
            # text happened to be split into deltas.
            for match in _CLAUSE.finditer(buf, 0, len(buf) if end is None else end):
                head = buf[: match.end()]
                if _units(head) >= self.first_clause_min_words:
                    return match.end()
        if end is not None:
            return end
        if len(buf) > self.max_chars:
            cut = buf.rfind(" ", 0, self.max_chars)
            return cut if cut > 0 else self.max_chars
        return None


def _sentence_end(buf: str, final: bool) -> int | None:
    """Where the first complete sentence of buf ends, or None when there is
    none yet (or it takes more text to tell)."""
    i = 0
    n = len(buf)
    while i < n:
        ch = buf[i]
        if ch == "\n":
            while i < n and buf[i] == "\n":
                i += 1
            return i
        if ch not in _TERMINALS:
            i += 1
            continue
        start = i
        while i < n and buf[i] in _TERMINALS:
            i += 1
        while i < n and buf[i] in _CLOSERS:
            i += 1
        run = buf[start:i]
        if any(c in _CJK_TERMINALS for c in run):
            return i
        if i == n:
            # "3." may become "3.5", "!" may become "!?": wait unless it is all.
            return i if final else None
        if not buf[i].isspace():
            continue  # "3.5", "x.com", "a.m": inside a word or number
        marks = run.rstrip(_CLOSERS)
        if "." not in marks and "…" not in marks:
            return i  # "!" and "?" end a sentence outright
        # What starts the next word decides: "Dr. Smith", "approx. five".
        j = i
        while j < n and buf[j] in " \t":
            j += 1
        if j == n and not final:
            return None
        if _is_false_end(buf, start, marks, buf[j] if j < n else ""):
            continue
        return i
    return None


def _is_false_end(buf: str, at: int, marks: str, nxt: str) -> bool:
    if nxt in ("", "\n"):
        return False
    if "..." in marks or "…" in marks:
        # An ellipsis mid-sentence trails off; one before a capital ends it.
        return not nxt.isupper()
    if marks != ".":
        return False
    if nxt.islower():
        return True
    word = re.search(r"([^\W\d_](?:[^\W\d_]|\.)*)$", buf[:at])
    if word and is_abbreviation(word.group(1)):
        return True
    if word and nxt.isdigit() and word.group(1).lower() in NUMBER_ABBREVIATIONS:
        return True
    # A list marker ("2. "): only digits since the line began.
    line = buf[:at].rsplit("\n", 1)[-1].strip()
    return line.isdigit()
