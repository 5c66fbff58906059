"""Speech recognition providers: local faster-whisper, remote OpenAI-compatible."""

from __future__ import annotations

from typing import Any

from services.asr.providers.base import Transcriber


def make_transcriber(provider: str, **options: Any) -> Transcriber:
    if provider == "faster_whisper":
        from services.asr.providers.faster_whisper_local import FasterWhisperTranscriber

        return FasterWhisperTranscriber(**options)
    if provider == "openai":
        from services.asr.providers.openai_remote import OpenAITranscriber

        return OpenAITranscriber(**options)
    raise ValueError(f"unknown asr provider: {provider!r} (use faster_whisper or openai)")
