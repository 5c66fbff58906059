"""Speech synthesis providers: the bundled Piper voice for real (its audio
checked by ear, that is by the bundled Whisper), and the OpenAI-compatible
client against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soxr

from parley.errors import ProviderError
from services.asr.providers import make_transcriber
from services.asr.providers.base import Transcriber
from services.tts.providers import make_synthesizer
from services.tts.providers.base import Synthesizer
from services.tts.providers.openai_remote import OpenAISynthesizer
from services.tts.providers.piper_local import PiperSynthesizer
from tests.support.openai_audio_stub import OpenAIAudioStub

TWO_SENTENCES = (
    "The first sentence is short. The second one is a little longer, with more words in it."
)
MANY_SENTENCES = " ".join(f"This is sentence number {i}." for i in range(40))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens once the socket is closed: connecting is refused.
    return f"http://127.0.0.1:{port}/v1"


def to_16k(pcm: bytes, rate: int) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2")
    return np.asarray(soxr.resample(samples, rate, 16000), dtype="<i2").tobytes()


# A test that loads Piper or Whisper (these fixtures) is marked slow: `make
# test-fast` leaves the models out.
@pytest.fixture(scope="module")
async def piper() -> AsyncIterator[Synthesizer]:
    tts = make_synthesizer("piper")
    await tts.load()
    yield tts
    await tts.aclose()


@pytest.fixture(scope="module")
async def whisper() -> AsyncIterator[Transcriber]:
    asr = make_transcriber("faster_whisper")
    await asr.load()
    yield asr
    await asr.aclose()


# --- local Piper --------------------------------------------------------------------


@pytest.mark.slow
async def test_piper_reports_the_voice_rate(piper: Synthesizer) -> None:
    assert piper.sample_rate == 22050
    assert piper.name == "piper:en_US-joe-medium"


@pytest.mark.slow
async def test_piper_streams_sentence_by_sentence(piper: Synthesizer) -> None:
    started = time.monotonic()
    arrivals: list[float] = []
    chunks: list[bytes] = []
    async for chunk in piper.synthesize(TWO_SENTENCES):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert len(chunks) == 2, [len(c) for c in chunks]
    assert all(c and len(c) % 2 == 0 for c in chunks)
    # The short first sentence is heard while the long second one is still
    # being synthesized, not after the whole text is done.
    assert arrivals[0] < 0.75 * arrivals[-1], arrivals


@pytest.mark.slow
async def test_piper_speech_round_trips_through_whisper(
    piper: Synthesizer, whisper: Transcriber
) -> None:
    pcm = b"".join([c async for c in piper.synthesize(TWO_SENTENCES)])
    assert len(pcm) / 2 / piper.sample_rate > 2.5  # seconds: real speech, not a blip
    heard = (await whisper.transcribe(to_16k(pcm, piper.sample_rate), 16000, "en")).text.lower()
    assert "first sentence" in heard and "longer" in heard, heard


@pytest.mark.slow
async def test_closing_piper_early_stops_the_worker(piper: Synthesizer) -> None:
    started = time.monotonic()
    stream = piper.synthesize(MANY_SENTENCES)
    await anext(stream)
    one_sentence_s = time.monotonic() - started
    closing = time.monotonic()
    await asyncio.wait_for(stream.aclose(), 10)
    # The one worker thread is free again: a new synthesis does not wait behind
    # the 39 sentences that were left.
    after = [c async for c in piper.synthesize("Hello.")]
    elapsed = time.monotonic() - closing
    assert after
    assert elapsed < max(2.0, 8 * one_sentence_s), (elapsed, one_sentence_s)


@pytest.mark.slow
async def test_cancelling_the_consumer_stops_piper(piper: Synthesizer) -> None:
    got = asyncio.Event()

    async def consume() -> None:
        async for _ in piper.synthesize(MANY_SENTENCES):
            got.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got.wait(), 30)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = [c async for c in piper.synthesize("Hello.")]
    assert after and time.monotonic() - started < 5


@pytest.mark.slow
async def test_piper_runs_off_the_event_loop(piper: Synthesizer) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    chunks = [c async for c in piper.synthesize(TWO_SENTENCES)]
    took = time.monotonic() - started
    done.set()
    await tick
    assert chunks
    assert max(gaps) < min(0.5, took / 2), (max(gaps), took)


@pytest.mark.slow
async def test_piper_with_nothing_to_say_yields_nothing(piper: Synthesizer) -> None:
    assert [c async for c in piper.synthesize("")] == []


@pytest.mark.slow
async def test_piper_length_scale_slows_speech(piper: Synthesizer) -> None:
    # Piper draws phoneme durations with noise on every call: a long sentence and
    # a doubled length scale keep the ratio well clear of it (1.68 to 1.75 seen).
    text = "Good morning to you, I hope you slept well and are ready for the day."
    slow = PiperSynthesizer(length_scale=2.0)
    await slow.load()
    normal = b"".join([c async for c in piper.synthesize(text)])
    slower = b"".join([c async for c in slow.synthesize(text)])
    await slow.aclose()
    assert len(slower) > 1.4 * len(normal)


async def test_missing_piper_voice_is_unavailable(tmp_path: Path) -> None:
    tts = PiperSynthesizer(model_path=str(tmp_path / "nope.onnx"))
    with pytest.raises(ProviderError) as err:
        await tts.load()
    assert err.value.code == "provider_unavailable"
    await tts.aclose()


def test_unknown_provider_is_named() -> None:
    with pytest.raises(ValueError, match="espeak"):
        make_synthesizer("espeak")


# --- remote OpenAI-compatible -------------------------------------------------------


async def test_remote_streams_pcm_as_it_arrives_in_whole_samples() -> None:
    pcm = np.arange(-6000, 6000, dtype="<i2").tobytes()  # 24000 bytes, every sample distinct
    async with OpenAIAudioStub(speech_pcm=pcm, speech_chunk_delay_s=0.01) as stub:
        tts = make_synthesizer(
            "openai", base_url=stub.base_url, api_key="sk-test", model="tts-1-hd"
        )
        assert isinstance(tts, OpenAISynthesizer)
        await tts.load()
        assert tts.sample_rate == 24000
        chunks: list[bytes] = []
        finished_at_first: bool | None = None
        async for chunk in tts.synthesize("Hello there.", voice="nova"):
            if finished_at_first is None:
                finished_at_first = stub.speech_finished.is_set()
            chunks.append(chunk)
        await tts.aclose()
    assert finished_at_first is False  # the first audio came while the server still sent
    assert len(chunks) > 1
    assert all(len(c) % 2 == 0 for c in chunks), [len(c) for c in chunks]
    assert b"".join(chunks) == pcm
    [sent] = stub.requests
    assert sent.path == "/v1/audio/speech"
    assert sent.headers["Authorization"] == "Bearer sk-test"
    assert sent.json == {
        "model": "tts-1-hd",
        "input": "Hello there.",
        "voice": "nova",
        "response_format": "pcm",
    }


async def test_remote_uses_the_configured_voice_by_default() -> None:
    async with OpenAIAudioStub(speech_pcm=bytes(480)) as stub:
        tts = make_synthesizer("openai", base_url=stub.base_url + "/")
        out = b"".join([c async for c in tts.synthesize("Hi.")])
        await tts.aclose()
    assert out == bytes(480)
    assert stub.requests[0].json is not None
    assert stub.requests[0].json["voice"] == "alloy" and stub.requests[0].json["model"] == "tts-1"
    assert "Authorization" not in stub.requests[0].headers


async def test_closing_the_remote_stream_closes_the_http_stream() -> None:
    pcm = bytes(2000) * 100
    async with OpenAIAudioStub(
        speech_pcm=pcm, speech_chunk_bytes=2000, speech_chunk_delay_s=0.02
    ) as stub:
        tts = make_synthesizer("openai", base_url=stub.base_url)
        stream = tts.synthesize("A long answer.")
        await anext(stream)
        await stream.aclose()
        await asyncio.wait_for(stub.speech_disconnected.wait(), 5)
        assert not stub.speech_finished.is_set()
        await tts.aclose()


async def test_remote_unreachable_is_provider_unavailable() -> None:
    tts = make_synthesizer("openai", base_url=closed_port_url(), api_key="k")
    with pytest.raises(ProviderError) as err:
        async for _ in tts.synthesize("Hi."):
            pass
    await tts.aclose()
    assert err.value.code == "provider_unavailable"


async def test_remote_http_500_is_provider_error_with_status_and_body() -> None:
    async with OpenAIAudioStub(fail_status=500) as stub:
        tts = make_synthesizer("openai", base_url=stub.base_url)
        with pytest.raises(ProviderError) as err:
            async for _ in tts.synthesize("Hi."):
                pass
        await tts.aclose()
    assert err.value.code == "provider_error"
    assert "500" in err.value.message and "scripted failure" in err.value.message


async def test_remote_hang_is_a_timeout() -> None:
    async with OpenAIAudioStub(hang=True) as stub:
        tts = make_synthesizer("openai", base_url=stub.base_url, timeout_s=0.3)
        with pytest.raises(ProviderError) as err:
            async for _ in tts.synthesize("Hi."):
                pass
        await tts.aclose()
    assert err.value.code == "timeout"
