"""Any OpenAI-compatible streaming /v1/chat/completions (OpenAI, Groq,
Ollama, vLLM, llama.cpp server), read as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from parley.errors import ProviderError
from parley.httpclient import provider_errors
from services.llm.providers.base import Message, ToolCall


class OpenAIChatModel:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        # base_url includes /v1, as the openai SDK's base_url does.
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        self.supports_tools = True
        # Provider-specific fields (top_p, seed, Ollama options...), sent as is.
        self.extra_body = extra_body or {}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One timeout for connecting and for each wait between chunks: a model
        # that goes quiet mid-answer is as broken as one that never answers.
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s)

    async def load(self) -> None:
        pass

    async def stream(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        tools: list[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[str | ToolCall, None]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": temperature,
            **self.extra_body,
        }
        if tools:
            body["tools"] = tools
        calls = _ToolCallAssembler()
        async with provider_errors("chat model", self.base_url):
            # Leaving this block early (the caller closed us: a barge-in)
            # closes the HTTP stream, which is how the server learns to stop.
            async with self._client.stream(
                "POST", f"{self.base_url}/chat/completions", json=body
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                response.raise_for_status()
                content_type = response.headers.get("content-type", "")
                if content_type.startswith("application/json"):
                    # A server that ignored stream=True: the whole answer at once.
                    for item in _whole_answer(json.loads(await response.aread()), calls):
                        yield item
                else:
                    finished = False
                    async for line in response.aiter_lines():
                        # Comments (": keep-alive"), event names and blank
                        # separators carry no content.
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            finished = True
                            break
                        chunk = _parse_chunk(data)
                        for choice in chunk.get("choices") or []:
                            if not isinstance(choice, dict):
                                raise ValueError(f"a choice that is not an object: {choice!r}")
                            delta = choice.get("delta") or {}
                            if not isinstance(delta, dict):
                                raise ValueError(f"a delta that is not an object: {delta!r}")
                            content = delta.get("content")
                            if content:
                                yield str(content)
                            calls.add(delta.get("tool_calls") or [])
                            finished = finished or bool(choice.get("finish_reason"))
                    if not finished:
                        raise ProviderError(
                            "provider_error", "the answer stream ended before it was complete"
                        )
        for call in calls.complete():
            yield call

    async def aclose(self) -> None:
        await self._client.aclose()


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise ProviderError("provider_error", f"malformed stream chunk: {data[:120]!r}") from None
    if not isinstance(chunk, dict):
        raise ProviderError("provider_error", f"malformed stream chunk: {data[:120]!r}")
    if chunk.get("error"):
        # Some servers report a failure mid-stream as an event, not a status.
        raise ProviderError("provider_error", f"error in stream: {str(chunk['error'])[:300]}")
    return chunk


def _whole_answer(body: Any, calls: _ToolCallAssembler) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise ValueError(f"no choices in {str(body)[:200]!r}")
    if body.get("error"):
        raise ProviderError("provider_error", str(body["error"])[:300])
    message = (body["choices"][0] if body["choices"] else {}).get("message") or {}
    for index, call in enumerate(message.get("tool_calls") or []):
        calls.add([{**call, "index": index}])
    return [str(message["content"])] if message.get("content") else []


class _ToolCallAssembler:
    """Tool calls arrive in pieces keyed by index: id and name first, then the
    arguments JSON in fragments."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, parts: Any) -> None:
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise ValueError(f"malformed tool call deltas: {str(parts)[:200]!r}")
        for part in parts:
            call = self._calls.setdefault(
                int(part.get("index", 0)), {"id": "", "name": "", "arguments": ""}
            )
            call["id"] = part.get("id") or call["id"]
            function = part.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""

    def complete(self) -> list[ToolCall]:
        return [
            ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
            for i, c in sorted(self._calls.items())
        ]
