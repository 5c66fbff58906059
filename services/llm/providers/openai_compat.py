"""Any OpenAI-compatible streaming /v1/chat/completions (OpenAI, Groq,
Ollama, vLLM, llama.cpp server), read as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from parley.errors import ProviderError
from parley.httpclient import provider_errors


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
        self.extra_body = extra_body or {}
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s)

    async def load(self) -> None:
        pass

    async def stream(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        body = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": temperature,
            **self.extra_body,
        }
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
                        return
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError as exc:
                        raise ProviderError(
                            "provider_error", f"malformed stream chunk: {data[:120]!r}"
                        ) from exc
                    if "error" in chunk:
                        raise ProviderError("provider_error", str(chunk["error"])[:300])
                    for choice in chunk.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            yield content

    async def aclose(self) -> None:
        await self._client.aclose()
