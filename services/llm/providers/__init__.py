"""Language model providers: local llama.cpp (GGUF), remote OpenAI-compatible."""

from __future__ import annotations

from typing import Any

from services.llm.providers.base import ChatModel

PROVIDERS = ("llama_cpp", "openai")


def make_chat_model(provider: str, **options: Any) -> ChatModel:
    """options: the provider class's keyword arguments."""
    # Imported on demand: the remote provider must not need llama.cpp installed.
    if provider == "llama_cpp":
        from services.llm.providers.llama_local import LlamaCppChatModel

        return LlamaCppChatModel(**options)
    if provider == "openai":
        from services.llm.providers.openai_compat import OpenAIChatModel

        return OpenAIChatModel(**options)
    raise ValueError(f"unknown llm provider: {provider!r} (use one of {', '.join(PROVIDERS)})")
