"""Any OpenAI-compatible streaming /v1/chat/completions (OpenAI, Groq,
Ollama, vLLM, llama.cpp server), read as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        self.supports_tools = True
        self.extra_body = extra_body or {}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
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
    ) -> AsyncIterator[str | ToolCall]:
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
        # Tool calls arrive in pieces keyed by index: id and name first, then
        # the arguments JSON in fragments.
        calls: dict[int, dict[str, str]] = {}
        async with provider_errors("chat model", self.base_url):
            # Leaving this block (the caller closed us: an interrupt) closes
            # the HTTP stream, which is how the server learns to stop.
            async with self._client.stream(
                "POST", f"{self.base_url}/chat/completions", json=body
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError as exc:
                        raise ProviderError(
                            "provider_error", f"malformed stream chunk: {data[:120]!r}"
                        ) from exc
                    if "error" in chunk:
                        raise ProviderError("provider_error", str(chunk["error"])[:300])
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            yield delta["content"]
                        for part in delta.get("tool_calls") or []:
                            call = calls.setdefault(
                                int(part.get("index", 0)), {"id": "", "name": "", "arguments": ""}
                            )
                            call["id"] = part.get("id") or call["id"]
                            function = part.get("function") or {}
                            call["name"] += function.get("name") or ""
                            call["arguments"] += function.get("arguments") or ""
        for index in sorted(calls):
            call = calls[index]
            yield ToolCall(call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}")

    async def aclose(self) -> None:
        await self._client.aclose()
