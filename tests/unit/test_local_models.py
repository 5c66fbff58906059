"""The embedded default models, loaded for real: Whisper tiny.en, Piper joe,
Gemma 3 270M."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from services.asr.providers import make_transcriber
from services.llm.providers import make_chat_model
from services.tts.providers import make_synthesizer
from tests.support.speech import synthesize_speech, with_silence

SYSTEM = "You are a helpful voice assistant. Answer in one short sentence."


@pytest.fixture(scope="module")
async def whisper():
    asr = make_transcriber("faster_whisper")
    await asr.load()
    yield asr
    await asr.aclose()


@pytest.fixture(scope="module")
async def piper():
    tts = make_synthesizer("piper")
    await tts.load()
    yield tts
    await tts.aclose()


@pytest.fixture(scope="module")
async def gemma():
    llm = make_chat_model("llama_cpp")
    await llm.load()
    yield llm
    await llm.aclose()


async def test_whisper_transcribes_piper_speech(whisper) -> None:
    pcm = with_silence(
        synthesize_speech("What is the weather like in London today?"), 16000, 200, 200
    )
    result = await whisper.transcribe(pcm, 16000, "en")
    text = result.text.lower()
    assert "weather" in text and "london" in text, text
    assert result.audio_ms == pytest.approx(len(pcm) / 32)
    assert result.processing_ms > 0


async def test_piper_streams_sentence_by_sentence(piper, whisper) -> None:
    assert piper.sample_rate == 22050
    stream = piper.synthesize("The first sentence is short. The second one is a little longer.")
    started = time.monotonic()
    first = await anext(stream)
    first_at = time.monotonic() - started
    rest = [c async for c in stream]
    total = time.monotonic() - started
    assert rest, "two sentences should come as more than one chunk"
    assert first_at < total
    pcm = first + b"".join(rest)
    import numpy as np
    import soxr

    pcm16k = soxr.resample(np.frombuffer(pcm, dtype="<i2"), 22050, 16000).astype("<i2").tobytes()
    heard = (await whisper.transcribe(pcm16k, 16000, "en")).text.lower()
    assert "first sentence" in heard and "longer" in heard, heard


async def test_closing_piper_early_stops_it(piper) -> None:
    text = " ".join(f"This is sentence number {i}." for i in range(30))
    stream = piper.synthesize(text)
    await anext(stream)
    await asyncio.wait_for(stream.aclose(), 5)


async def test_gemma_gives_a_short_answer(gemma) -> None:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    text = "".join([d async for d in gemma.stream(messages, max_tokens=40, temperature=0.2)])
    assert text.strip()
    assert "paris" in text.lower(), text
    assert "\n" not in text and "<" not in text and "*" not in text


async def test_gemma_honours_the_token_cap_and_stops_when_closed(gemma) -> None:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Tell me a long story about a dragon."},
    ]
    pieces = [d async for d in gemma.stream(messages, max_tokens=8, temperature=0.7)]
    assert 1 <= len(pieces) <= 8
    stream = gemma.stream(messages, max_tokens=200, temperature=0.7)
    await anext(stream)
    await asyncio.wait_for(stream.aclose(), 5)
    # The model is free again at once.
    again = [d async for d in gemma.stream(messages, max_tokens=3, temperature=0.7)]
    assert again and all(re.search(r"\S", p) for p in again[:1])
