"""Any OpenAI-compatible /v1/audio/speech, streamed as raw 24 kHz PCM."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import httpx

from parley.httpclient import provider_errors


class OpenAISynthesizer:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str = "tts-1",
        voice: str = "alloy",
        timeout_s: float = 30.0,
        sample_rate: int = 24000,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.voice = voice
        self.name = f"openai:{model}"
        self.sample_rate = sample_rate
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s)

    async def load(self) -> None:
        pass

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncGenerator[bytes, None]:
        body = {
            "model": self.model,
            "input": text,
            "voice": voice or self.voice,
            "response_format": "pcm",
        }
        carry = b""
        async with provider_errors("speech service", self.base_url):
            async with self._client.stream(
                "POST", f"{self.base_url}/audio/speech", json=body
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                response.raise_for_status()
                async for data in response.aiter_bytes():
                    data = carry + data
                    # Keep every chunk whole samples: an odd byte waits for the next.
                    cut = len(data) - len(data) % 2
                    carry = data[cut:]
                    if cut:
                        yield data[:cut]

    async def aclose(self) -> None:
        await self._client.aclose()
