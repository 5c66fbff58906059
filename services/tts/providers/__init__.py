"""Speech synthesis providers: local Piper, remote OpenAI-compatible."""

from __future__ import annotations

from typing import Any

from services.tts.providers.base import Synthesizer


def make_synthesizer(provider: str, **options: Any) -> Synthesizer:
    if provider == "piper":
        from services.tts.providers.piper_local import PiperSynthesizer

        return PiperSynthesizer(**options)
    if provider == "openai":
        from services.tts.providers.openai_remote import OpenAISynthesizer

        return OpenAISynthesizer(**options)
    raise ValueError(f"unknown tts provider: {provider!r} (use piper or openai)")
