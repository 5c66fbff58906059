"""Any OpenAI-compatible /v1/audio/transcriptions (OpenAI, Groq, a local server)."""

from __future__ import annotations

import time

import httpx

from parley.httpclient import provider_errors
from parley.wavio import wav_bytes
from services.asr.providers.base import ProviderError, TranscriptionResult


class OpenAITranscriber:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str = "whisper-1",
        timeout_s: float = 30.0,
    ) -> None:
        # base_url includes /v1, as the openai SDK's base_url does.
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{model}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s)

    async def load(self) -> None:
        pass

    async def transcribe(
        self, pcm16: bytes, sample_rate: int, language: str | None = None
    ) -> TranscriptionResult:
        if sample_rate <= 0:
            raise ProviderError("bad_audio", f"invalid sample rate {sample_rate}")
        if len(pcm16) % 2:
            raise ProviderError("bad_audio", "PCM16 audio must have an even number of bytes")
        data = {"model": self.model, "response_format": "json"}
        if language:
            data["language"] = language
        started = time.monotonic()
        # WAV: the one container every transcription server accepts.
        async with provider_errors("transcription service", self.base_url):
            response = await self._client.post(
                f"{self.base_url}/audio/transcriptions",
                data=data,
                files={"file": ("audio.wav", wav_bytes(pcm16, sample_rate), "audio/wav")},
            )
            response.raise_for_status()
            body = response.json()
            if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                raise ValueError(f"no text in {str(body)[:200]!r}")
            text = body["text"].strip()
        return TranscriptionResult(
            text,
            language,
            len(pcm16) / (sample_rate * 2) * 1000,
            (time.monotonic() - started) * 1000,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
