"""Local generation with xllamacpp: llama.cpp's own server, run in this
process from a prebuilt wheel (no compiler, no 11-minute build). The default
local runtime; the bundled Gemma 3 270M is steered as gemma_steering
describes, a GGUF with a chat template of its own is used as a chat model.

The server batches continuously over `parallel` slots, so that many
sessions generate at once. Each answer has a worker thread of its own, which
blocks in handle_completions (the binding releases the GIL there) and is
called back, on that thread, with each token's chunk; the callback hands the
text to the event loop (loop.call_soon_threadsafe, in LocalChatModel) and
returns True to stop the generation, which is how a barge-in stops it within
a token.

The server also listens on a loopback port (xllamacpp has no way to turn
that off): it is locked with a random API key, and used only for /tokenize,
which the Python API lacks."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx

from parley.errors import ProviderError
from services.llm.providers.answer_stream import AnswerStream, ChatStream, SteeredStream
from services.llm.providers.gguf_metadata import gguf_string
from services.llm.providers.local_model import (
    ChatHistory,
    ContextOverflow,
    LocalChatModel,
    SystemRoleRejected,
    default_threads,
)

# The server's log: errors only (at its default it logs every request).
LOG_VERBOSITY = 1
TOKENIZE_TIMEOUT_S = 10.0
# Tokens the repetition penalty looks back on. The server counts the prompt's
# tokens too (llama-cpp-python only the answer's), so at its default of 64 the
# steered model is kept from the question's own words and drifts: 29 of 36
# sampled answers speakable (tests' assert_spoken), 20 words on average; over
# the last 8 tokens, 71 of 72, 8 words, as llama-cpp-python's 69 of 72.
PENALTY_WINDOW = 8
# Host memory for prompts of conversations whose slot went to another one,
# so the next answer to each need not read it again: at 18 KB a token
# (Gemma 3 270M, full-size SWA cache) a steered prompt of 500 tokens takes
# 9 MB; the server's default of 8 GiB would be most of a small machine.
PROMPT_CACHE_MIB = 256
Handler = Callable[[dict[str, Any], Callable[[Any], bool]], None]


class XLlamaCppChatModel(LocalChatModel):
    runtime = "xllamacpp"

    def __init__(self, *, parallel: int = 4, **kwargs: Any) -> None:
        """parallel: answers generated at once (the server's slots); more wait
        for a free slot. Other arguments: LocalChatModel's."""
        super().__init__(parallel=parallel, **kwargs)
        self._server: Any = None
        self._http: httpx.Client | None = None

    def _load_model(self, path: str) -> None:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = path
        params.n_parallel = self.parallel
        # The server divides its context between the slots; n_ctx is one answer's.
        params.n_ctx = self.n_ctx * self.parallel
        threads = default_threads(self.n_threads)
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = LOG_VERBOSITY
        # Keep the sliding-window layers' cache whole, so the prompt's start
        # that every answer shares (system prompt, examples, the history
        # shown) is read once: without it nothing of a new prompt is reused
        # (118-token prompt, first token 0.37 s) and with it 106 tokens are
        # (0.06 s), for 64 MB more at 4 slots of 2048 tokens (424 to 488 MB).
        params.swa_full = True
        params.cache_ram_mib = PROMPT_CACHE_MIB
        key = secrets.token_urlsafe(24)
        params.api_keys = [key]
        server = xllamacpp.Server(params)  # RuntimeError when it cannot load
        self._http = httpx.Client(
            base_url=server.listening_address,
            headers={"Authorization": f"Bearer {key}"},
            timeout=TOKENIZE_TIMEOUT_S,
        )
        self._server = server
        if self.model_path is not None:
            self.steered = gguf_string(path, "tokenizer.chat_template") is None

    def _require(self) -> tuple[Any, httpx.Client]:
        server, http = self._server, self._http
        if server is None or http is None:
            raise ProviderError("provider_unavailable", "the model is closed")
        return server, http

    def _tokenize(self, text: str, *, prompt: bool) -> list[int]:
        _, http = self._require()
        reply = http.post(
            "/tokenize", json={"content": text, "add_special": prompt, "parse_special": prompt}
        )
        reply.raise_for_status()
        return [int(t) for t in reply.json()["tokens"]]

    def _run_steered(
        self,
        tokens: list[int],
        banned: set[int],
        cap: int,
        temperature: float,
        answer: SteeredStream,
        started: float,
    ) -> None:
        server, _ = self._require()
        stats = answer.stats
        sampling = {
            "temperature": temperature,
            "top_p": 0.9,
            "repeat_penalty": self.repeat_penalty,
            "repeat_last_n": PENALTY_WINDOW,
            "stop": self.stop,
        }
        # The server has no logits processor to keep a token from opening the
        # answer, only a bias for every token of it: so the first token comes
        # alone, from a request that bans those, and the answer goes on from
        # it in a second request, whose prompt the slot already holds.
        first = server.handle_completions(
            {
                "prompt": tokens,
                "max_tokens": 1,
                "logprobs": 1,
                "logit_bias": [[t, False] for t in sorted(banned)],
                **sampling,
            }
        )
        choice = _first_choice(first)
        stats.first_token_s = time.monotonic() - started
        sampled = (choice.get("logprobs") or {}).get("content") or []
        stats.completion_tokens = 1
        text, finish = choice.get("text") or "", choice.get("finish_reason")
        if not sampled or finish == "stop" or cap == 1:
            answer.push(text, finish or "stop")
            return
        if answer.push(text):
            return
        body = {
            "prompt": [*tokens, int(sampled[0]["id"])],
            "max_tokens": cap - 1,
            "stream": True,
            **sampling,
        }
        self._stream(server.handle_completions, body, answer, started, chat=False)

    def _run_chat(
        self,
        history: ChatHistory,
        max_tokens: int,
        temperature: float,
        answer: ChatStream,
        started: float,
    ) -> None:
        server, _ = self._require()
        body = {
            "messages": history,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "repeat_penalty": self.repeat_penalty,
            "stop": self.stop,
            "stream": True,
        }
        self._stream(server.handle_chat_completions, body, answer, started, chat=True)

    def _stream(
        self,
        handle: Handler,
        body: dict[str, Any],
        answer: AnswerStream,
        started: float,
        *,
        chat: bool,
    ) -> None:
        """One streamed request, its chunks pushed into answer as they come."""
        stats = answer.stats
        before = stats.completion_tokens
        pieces = 0
        error: dict[str, Any] | None = None
        failure: BaseException | None = None

        def on_chunk(chunk: Any) -> bool:
            nonlocal pieces, error, failure
            # What this raises the binding swallows, and stops: keep it.
            try:
                if not isinstance(chunk, dict) or "error" in chunk:
                    error = chunk.get("error") if isinstance(chunk, dict) else None
                    error = error if isinstance(error, dict) else {"message": str(chunk)}
                    return True
                choices = chunk.get("choices") or [{}]
                choice = choices[0]
                if chat:
                    text = (choice.get("delta") or {}).get("content") or ""
                else:
                    text = choice.get("text") or ""
                if text:
                    # One chunk a token, but for text held back (a partial
                    # stop sequence): the final usage, when there is one, counts.
                    pieces += 1
                    stats.completion_tokens = before + pieces
                    if not stats.first_token_s:
                        stats.first_token_s = time.monotonic() - started
                usage = chunk.get("usage")
                if isinstance(usage, dict) and "completion_tokens" in usage:
                    stats.completion_tokens = before + int(usage["completion_tokens"])
                return answer.push(text, choice.get("finish_reason"))
            except BaseException as exc:
                failure = exc
                return True

        handle(body, on_chunk)
        if failure is not None:
            raise failure
        if error is not None:
            raise _error(error)

    def _unload(self) -> None:
        http, self._http = self._http, None
        server, self._server = self._server, None
        if http is not None:
            http.close()
        # Dropping the last reference stops the server's loop and joins it;
        # a generation still running holds one until it has stopped.
        del server


def _first_choice(result: Any) -> dict[str, Any]:
    if isinstance(result, dict) and "error" in result:
        error = result["error"]
        raise _error(error if isinstance(error, dict) else {"message": str(error)})
    try:
        choice = result["choices"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise ProviderError("provider_error", f"xllamacpp answered {result!r:.200}") from exc
    if not isinstance(choice, dict):
        raise ProviderError("provider_error", f"xllamacpp answered {result!r:.200}")
    return choice


def _error(error: dict[str, Any]) -> Exception:
    message = str(error.get("message") or error)
    if error.get("type") == "exceed_context_size_error":
        return ContextOverflow(message)
    if "system" in message.lower():
        return SystemRoleRejected(message)
    return ProviderError("provider_error", f"xllamacpp: {message}")
