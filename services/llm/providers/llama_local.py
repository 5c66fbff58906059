"""Local generation with llama-cpp-python (the optional `llama-cpp` extra,
which compiles llama.cpp at install: about 11 minutes on 2 cores).

One llama.cpp context, owned by one worker thread: answers take turns on it.
The default local runtime is xllamacpp_local, which needs no compiler and
answers several sessions at once; this one stays for machines that have
llama-cpp-python built already, and as the yardstick of
`python -m tests.bench.llm_bench`.

The bundled Gemma 3 270M is steered as gemma_steering describes; a GGUF of
your own with a chat template in its metadata is used as a chat model
instead: its own template, stop sequences and penalty, no steering."""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Any

import numpy as np

from services.llm.providers.answer_stream import AnswerStream, ChatStream, SteeredStream
from services.llm.providers.local_model import (
    ChatHistory,
    ContextOverflow,
    LocalChatModel,
    SystemRoleRejected,
    default_threads,
)


class LlamaCppChatModel(LocalChatModel):
    runtime = "llama.cpp"

    def __init__(self, **kwargs: Any) -> None:
        """Arguments: LocalChatModel's; parallel is always 1."""
        # llama.cpp contexts are not shared between threads: one worker owns
        # this one, and answers take turns on it.
        kwargs["parallel"] = 1
        super().__init__(**kwargs)
        self._llm: Any = None

    def _load_model(self, path: str) -> None:
        from llama_cpp import Llama

        threads = default_threads(self.n_threads)
        llm = Llama(
            model_path=path,
            n_ctx=self.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        if self.model_path is not None:
            self.steered = not llm.metadata.get("tokenizer.chat_template")
        self._llm = llm

    def _tokenize(self, text: str, *, prompt: bool) -> list[int]:
        tokens = self._llm.tokenize(text.encode(), add_bos=prompt, special=prompt)
        return [int(t) for t in tokens]

    def _processor(
        self, answer: AnswerStream, started: float, banned_first: set[int] | None = None
    ) -> Any:
        """A logits processor, called once per token sampled: it counts them,
        can keep one token from opening the answer, and ends the answer at
        once when it is cancelled, even while no text comes out (a partial
        stop sequence or character is held back)."""
        from llama_cpp import LogitsProcessorList

        eos = self._llm.token_eos()
        stats, cancelled = answer.stats, answer.cancelled

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

    def _run_steered(
        self,
        tokens: list[int],
        banned: set[int],
        cap: int,
        temperature: float,
        answer: SteeredStream,
        started: float,
    ) -> None:
        chunks = self._llm.create_completion(
            tokens,
            max_tokens=cap,
            temperature=temperature,
            top_p=0.9,
            repeat_penalty=self.repeat_penalty,
            stop=self.stop,
            stream=True,
            logits_processor=self._processor(answer, started, banned),
        )
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                if answer.push(choice.get("text") or "", choice.get("finish_reason")):
                    return
        finally:
            chunks.close()

    def _run_chat(
        self,
        history: ChatHistory,
        max_tokens: int,
        temperature: float,
        answer: ChatStream,
        started: float,
    ) -> None:
        chunks = self._llm.create_chat_completion(
            history,
            max_tokens=max_tokens,
            temperature=temperature,
            repeat_penalty=self.repeat_penalty,
            stop=self.stop,
            stream=True,
            logits_processor=self._processor(answer, started),
        )
        try:
            # The template is applied and the prompt checked at the first step.
            first = next(chunks, None)
        except ValueError as exc:
            if "context window" in str(exc):
                raise ContextOverflow(str(exc)) from exc
            raise
        except Exception as exc:
            if "system" in str(exc).lower():
                raise SystemRoleRejected(str(exc)) from exc
            raise
        try:
            for chunk in itertools.chain([first] if first is not None else [], chunks):
                choice = chunk["choices"][0]
                text = (choice.get("delta") or {}).get("content") or ""
                if answer.push(text, choice.get("finish_reason")):
                    return
        finally:
            chunks.close()

    def _unload(self) -> None:
        # After any answer in flight has stopped: the worker owns the model.
        if self._llm is not None:
            with contextlib.suppress(Exception):
                self._llm.close()
            self._llm = None
