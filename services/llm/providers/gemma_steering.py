"""Steering the bundled Gemma 3 270M, a base model, towards short spoken
answers; shared by the local runtimes (xllamacpp_local, llama_local).

The model is not tuned to chat, so it gets the Gemma chat template with the
system prompt folded into the first user turn, a few examples of one-sentence
answers, stop sequences, a repetition penalty, a hard token cap, and a cut
after two sentences.

The base model never learned to end its turn: where a tuned model would write
<end_of_turn>, it writes a stray rare word (" bloodstream", " prochains",
"で購入") and rambles on. So the answer ends at a sentence end whenever what
follows it does not look like the start of another English sentence."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any, Protocol

from parley.errors import ProviderError
from services.llm.providers.base import Message
from services.llm.sentences import is_abbreviation

# A spoken answer is one paragraph: after a newline the base model rambles.
STEERED_STOP = ["<end_of_turn>", "<start_of_turn>", "<eos>", "\n"]
# Whatever the caller asks for, the base model gets no more room than this:
# past two sentences it only drifts.
MAX_ANSWER_TOKENS = 96
MAX_SENTENCES = 2
# Conversation history the base model is shown, in tokens (beyond the
# examples): it makes little use of more, and every token of it is read again
# whenever the start of the history shown moves.
MAX_HISTORY_TOKENS = 256
# Questions and answers shown before the conversation, chosen by trial: a
# fact, a request, and small talk, so the model neither repeats the question
# nor answers small talk with a fact (one example alone did both).
EXAMPLES = [
    (
        "What color is the sky?",
        "The sky is blue on a clear day, because air scatters blue light the most.",
    ),
    (
        "Tell me something about dogs.",
        "Sure! Dogs can smell about ten thousand times better than people can.",
    ),
    ("How are you?", "I am doing well, thank you for asking."),
]
# Sticky history windows remembered (one per conversation in progress, see
# HistoryWindow); a forgotten one only costs its conversation one re-read.
REMEMBERED_WINDOWS = 1024
_TURN_MARKERS = re.compile(r"<(?:start|end)_of_turn>|<eos>|<bos>")
MARKDOWN = re.compile(r"[*#`]+")
_SENTENCE_END = re.compile(r"([.!?…]+)[\"')\]”’]*$")


class Tokenizer(Protocol):
    def __call__(self, text: str, *, prompt: bool) -> list[int]:
        """text's token ids. prompt: a whole prompt (the BOS token first, turn
        markers read as control tokens); else plain text, nothing added."""
        ...


def gemma_prompt(messages: list[Message], examples: list[tuple[str, str]] | None = None) -> str:
    """The Gemma chat layout, which has no system role: the system prompt
    opens the first user turn. examples: (question, answer) turns shown before
    the conversation (default EXAMPLES)."""
    examples = EXAMPLES if examples is None else examples
    system = "\n".join(plain(m.get("content")) for m in messages if m["role"] == "system").strip()
    conversation: list[tuple[str, str]] = []
    for m in messages:
        content = plain(m.get("content")).strip()
        if m["role"] not in ("user", "assistant") or not content:
            continue  # tool calls and results: a base model cannot use them
        role = "user" if m["role"] == "user" else "model"
        if role == "model":
            # Spoken answers are one line; a multi-line one teaches rambling.
            content = " ".join(content.split())
        if conversation and conversation[-1][0] == role:
            # Gemma turns alternate: merge two in a row (an answer interrupted
            # before a word was heard leaves two user turns in a row).
            conversation[-1] = (role, f"{conversation[-1][1]}\n{content}")
        else:
            conversation.append((role, content))
    turns = [t for q, a in examples for t in (("user", q), ("model", a))] + conversation
    if system:
        first = next((i for i, (role, _) in enumerate(turns) if role == "user"), None)
        if first is None:
            turns.insert(0, ("user", system))
        else:
            turns[first] = ("user", f"{system}\n\n{turns[first][1]}")
    parts = [f"<start_of_turn>{role}\n{text}<end_of_turn>\n" for role, text in turns]
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


def plain(content: Any) -> str:
    """A message's text; turn markers typed by a user must not become control tokens."""
    return _TURN_MARKERS.sub("", content) if isinstance(content, str) else ""


def banned_openings(messages: list[Message], tokenize: Tokenizer) -> set[int]:
    """Tokens the answer may not open with. The base model likes to open by
    repeating the question, or its own last answer, word for word."""
    banned: set[int] = set()
    for role in ("user", "assistant"):
        latest = next((m for m in reversed(messages) if m["role"] == role), None)
        text = plain(latest.get("content")).strip() if latest is not None else ""
        tokens = tokenize(text, prompt=False) if text else []
        if tokens:
            banned.add(int(tokens[0]))
    return banned


class HistoryWindow:
    """Chooses how much of a conversation the base model is shown.

    llama.cpp reuses what it computed for the prompt before up to the first
    token that differs, so the start of the history shown is kept from answer
    to answer (a conversation only grows at its end). Only when the history
    outgrows the budget is it cut, to half the budget, so the next few
    answers again only read their new turns.

    The start is remembered by the two messages it begins with, one entry per
    conversation, so sessions answered on the same model (one after another,
    or at once on several slots) each keep their own window."""

    def __init__(self, max_history_tokens: int = MAX_HISTORY_TOKENS) -> None:
        self.max_history_tokens = max_history_tokens
        self._starts: OrderedDict[tuple[tuple[str, str], ...], None] = OrderedDict()
        # Workers of a model with several slots fit prompts at the same time.
        self._lock = threading.Lock()

    def fit(self, messages: list[Message], cap: int, n_ctx: int, tokenize: Tokenizer) -> list[int]:
        """The prompt's tokens: the examples, the system prompt and as much of
        the latest history as fits the history budget and the context of n_ctx
        tokens, with room for an answer of cap tokens."""
        system = [m for m in messages if m["role"] == "system"]
        turns = [
            m
            for m in messages
            if m["role"] in ("user", "assistant") and plain(m.get("content")).strip()
        ]
        if not turns:
            turns = [{"role": "user", "content": ""}]

        def tokens_from(start: int) -> list[int]:
            return tokenize(gemma_prompt(system + turns[start:]), prompt=True)

        last = len(turns) - 1
        base = len(tokens_from(last))
        limit = min(base + self.max_history_tokens, n_ctx - cap)

        def key(start: int) -> tuple[tuple[str, str], ...]:
            # Two messages: one alone ("Yes.") may well come up again.
            return tuple((m["role"], m["content"]) for m in turns[start : start + 2])

        with self._lock:
            # Never the question being answered: that is no history.
            start = next((i for i in range(last) if key(i) in self._starts), 0)
        remembered = key(start) if start < last else None
        tokens = tokens_from(start)
        if len(tokens) > limit:
            target = min(base + self.max_history_tokens // 2, limit)
            while len(tokens) > target and start < last:
                start += 1
                # The history shown starts with a question, as Gemma's does.
                while start < last and turns[start]["role"] != "user":
                    start += 1
                tokens = tokens_from(start)
        if len(tokens) > n_ctx - cap:
            raise ProviderError(
                "provider_error",
                f"the prompt ({len(tokens)} tokens) does not fit the context ({n_ctx})",
            )
        with self._lock:
            if remembered is not None:
                self._starts.pop(remembered, None)
            if start < last:
                self._starts[key(start)] = None
                while len(self._starts) > REMEMBERED_WINDOWS:
                    self._starts.popitem(last=False)
        return tokens


class SpokenAnswer:
    """Shapes the base model's raw text into a short spoken answer, token by
    token. feed() returns the text to pass on now and whether to stop.

    The first sentence is passed on as it comes (speech should start early);
    later ones are held until they end, so an answer cut off by the token cap
    does not end mid-sentence. After a sentence end the next token decides:
    the start of another sentence goes on, anything else (a stray rare word,
    another script, markup) ends the answer."""

    def __init__(self, max_sentences: int = MAX_SENTENCES) -> None:
        self.max_sentences = max_sentences
        self.sentences = 0
        self.stop_reason = ""
        self._released = ""
        self._held = ""
        self._after_end = False
        # Why the last end might not be one: "number" ("3." of "3.5"),
        # "abbreviation" ("Dr.", "a.m.") or "ellipsis"; "" when it surely is.
        # Such an end is counted only once a new sentence starts after it.
        self._uncertain = ""

    @property
    def text(self) -> str:
        return self._released

    def feed(self, piece: str) -> tuple[str, bool]:
        piece = MARKDOWN.sub("", piece)
        if not self._released and not self._held:
            piece = piece.lstrip()
        if not piece:
            return "", False
        out = ""
        if self._after_end:
            # Whitespace held back counts as the space before a new word.
            spaced = piece[0].isspace() or self._held[-1:].isspace()
            verdict = _continues(piece, self._uncertain, spaced)
            if verdict is None:  # whitespace or closing quotes: not yet
                self._held += piece
                return "", False
            if verdict is False:
                return self._stop("junk")
            # "Dr. Smith": after an abbreviation even a capital goes on.
            starts_sentence = (
                spaced and not piece.lstrip()[0].islower() and self._uncertain != "abbreviation"
            )
            if starts_sentence and self._uncertain:
                # A new sentence starts: the one before really ended.
                if self._stray():
                    return self._stop("junk", drop=True)
                self.sentences += 1
                out = self._release()
                if self.sentences >= self.max_sentences:
                    text, stop = self._stop("sentences")
                    return out + text, stop
            self._after_end, self._uncertain = False, ""
        if self.sentences == 0:
            out += self._release() + piece
            self._released += piece
        else:
            self._held += piece
        end = _SENTENCE_END.search(self._released + self._held)
        if end is not None:
            self._after_end = True
            self._uncertain = _uncertain_end(self._released + self._held, end)
            if not self._uncertain:
                if self._stray():
                    text, stop = self._stop("junk", drop=True)
                    return out + text, stop
                self.sentences += 1
                out += self._release()
                if self.sentences >= self.max_sentences:
                    text, stop = self._stop("sentences")
                    return out + text, stop
        return out, False

    def finish(self) -> str:
        """The model stopped on its own: what is still worth saying. A
        sentence cut off after the first one is dropped."""
        if self.sentences == 0 or (self._after_end and not self._stray()):
            return self._release().rstrip()
        self._held = ""
        return ""

    def _release(self) -> str:
        text, self._held = self._held, ""
        self._released += text
        return text

    def _stray(self) -> bool:
        """A one-word sentence after the first ("SUBSCRIBE!") is another
        way the base model ends its turn."""
        return self.sentences > 0 and len(self._held.split()) < 2

    def _stop(self, reason: str, drop: bool = False) -> tuple[str, bool]:
        self.stop_reason = reason
        if drop:
            self._held = ""
        # Held text here is a finished sentence (and maybe a trailing space).
        return self._release().rstrip(), True


def _uncertain_end(text: str, end: re.Match[str]) -> str:
    """Why a sentence end might not be one, or "" when it surely is."""
    marks = end.group(1)
    if marks.endswith(("...", "…")):
        return "ellipsis"  # trailing off, or going on
    if marks != ".":
        return ""  # "!", "?", "?!"
    before = text[: end.start(1)]
    if before and before[-1].isdigit():
        return "number"  # "3." of "3.5"
    word = re.search(r"([^\W\d_](?:[^\W\d_]|\.)*)$", before)
    return "abbreviation" if word and is_abbreviation(word[1]) else ""


def _continues(piece: str, uncertain: str, spaced: bool) -> bool | None:
    """After a sentence end: does piece go on with the answer (True), end it
    (False), or is it too early to tell (None)?"""
    stripped = piece.lstrip()
    if not stripped or all(ch in "\"')]”’" for ch in stripped):
        return None
    c = stripped[0]
    if spaced or piece[0].isspace():
        # A new word: English sentences start with a capital, a digit or a quote.
        if c.isupper() or c.isdigit() or c in "\"'(“‘":
            return True
        # After "Dr." or "well..." a lowercase word goes on the same sentence.
        return uncertain in ("abbreviation", "ellipsis") and c.isascii() and c.islower()
    # Glued on: "3." + "5", "a." + "m.", "." + "..".
    return c.isascii() and (c.isalnum() or c in ".!?,;:%)")
