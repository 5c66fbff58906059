"""Language model providers: local GGUF models (xllamacpp, the default, or
llama-cpp-python where it is installed), remote OpenAI-compatible."""

from __future__ import annotations

from typing import Any

from services.llm.providers.base import ChatModel

PROVIDERS = ("xllamacpp", "llama_cpp", "openai")


def make_chat_model(provider: str, **options: Any) -> ChatModel:
    """options: the provider class's keyword arguments."""
    # Imported on demand: the remote provider must not need a local runtime.
    if provider == "xllamacpp":
        from services.llm.providers.xllamacpp_local import XLlamaCppChatModel

        return XLlamaCppChatModel(**options)
    if provider == "llama_cpp":
        from services.llm.providers.llama_local import LlamaCppChatModel

        return LlamaCppChatModel(**options)
    if provider == "openai":
        from services.llm.providers.openai_compat import OpenAIChatModel

        return OpenAIChatModel(**options)
    raise ValueError(f"unknown llm provider: {provider!r} (use one of {', '.join(PROVIDERS)})")
