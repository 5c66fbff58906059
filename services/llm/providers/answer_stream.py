"""What a local runtime does with each piece of text it generates: shape it
(the steered base model's spoken answer, or a chat model's text without
markup), hand it over to the event loop, keep the statistics, and say when to
stop. Shared by both local runtimes, whether they pull chunks from an
iterator (llama-cpp-python) or are called back with them (xllamacpp)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from services.llm.providers.gemma_steering import MARKDOWN, SpokenAnswer

HandOver = Callable[[object], None]


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Seconds from the request to the first token (mostly prompt reading).
    first_token_s: float = 0.0
    total_s: float = 0.0
    # eos (end of text or a stop sequence), length (the token cap), junk (a
    # stray word after a sentence), sentences (enough of them), cancelled, error
    stop_reason: str = ""

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed, prompt reading left out."""
        decoding = self.total_s - self.first_token_s
        return self.completion_tokens / decoding if decoding > 0 else 0.0


def finish_stop_reason(finish_reason: str) -> str:
    """The stats' stop reason for an OpenAI-style finish reason."""
    return "eos" if finish_reason == "stop" else "length"


class AnswerStream:
    """push() each piece of raw text as it comes (with the finish reason once
    there is one); it returns True when the generation should stop. end()
    once the runtime has stopped, whyever it did."""

    def __init__(
        self, hand_over: HandOver, cancelled: threading.Event, stats: GenerationStats
    ) -> None:
        self.hand_over = hand_over
        self.cancelled = cancelled
        self.stats = stats
        self.done = False
        stats.stop_reason = "length"

    def push(self, text: str, finish_reason: str | None = None) -> bool:
        if self.done:
            return True
        if self.cancelled.is_set():
            return self._finish("cancelled")
        if self._take(text):
            return True
        if finish_reason:
            self.stats.stop_reason = finish_stop_reason(finish_reason)
        return False

    def end(self) -> None:
        if self.done:
            return
        if self.cancelled.is_set():  # ended by the forced end of text
            self._finish("cancelled")
            return
        self.done = True
        self._flush()

    def _finish(self, reason: str) -> bool:
        self.stats.stop_reason = reason
        self.done = True
        return True

    def _take(self, text: str) -> bool:
        """Pass text on; True to stop here."""
        raise NotImplementedError

    def _flush(self) -> None:
        """The model stopped by itself: pass on what is still held."""


class SteeredStream(AnswerStream):
    """The base model's raw text, shaped into a short spoken answer."""

    def __init__(
        self,
        hand_over: HandOver,
        cancelled: threading.Event,
        stats: GenerationStats,
        max_sentences: int,
    ) -> None:
        super().__init__(hand_over, cancelled, stats)
        self.answer = SpokenAnswer(max_sentences)

    def _take(self, text: str) -> bool:
        out, stop = self.answer.feed(text)
        if out:
            self.hand_over(out)
        return self._finish(self.answer.stop_reason) if stop else False

    def _flush(self) -> None:
        rest = self.answer.finish()
        if rest:
            self.hand_over(rest)


class ChatStream(AnswerStream):
    """A chat model's text, without markup a speaker would read out, and
    without the whitespace some templates open the answer with."""

    def __init__(
        self, hand_over: HandOver, cancelled: threading.Event, stats: GenerationStats
    ) -> None:
        super().__init__(hand_over, cancelled, stats)
        self._said = False

    def _take(self, text: str) -> bool:
        text = MARKDOWN.sub("", text)
        if not self._said:
            text = text.lstrip()
            self._said = bool(text)
        if text:
            self.hand_over(text)
        return False
