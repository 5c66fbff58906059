"""Turn-taking on real audio timelines: pauses inside a sentence, a detector
that reads the transcript, acknowledgements and coughs over the agent's voice,
and how fast a real interruption silences it."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import numpy as np
import pytest

from parley.cli.client import FRAME_MS, ParleyClient
from tests.e2e.harness import REPO, start_scripted_stack
from tests.support.speech import silence, synthesize_speech

pytestmark = pytest.mark.slow

LONG_ANSWER = [
    f"{word} "
    for sentence in range(12)
    for word in f"This is sentence number {sentence} of a long answer.".split()
]
BACKCHANNELS = "mm-hmm, mm-hm, mhm, hmm, mmm, mm, uh-huh, yeah, yes, okay, ok, right, sure, i see"


def onset_ms(pcm: bytes, rate: int = 16000) -> float:
    """Where the voice starts in synthesized speech (Piper leads with a little silence)."""
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 800)[0]
    return float(loud[0]) / rate * 1000 if len(loud) else 0.0


async def configure(client: ParleyClient, **settings: object) -> None:
    mark = len(client.events)
    await client.send_json({"type": "settings_update", "settings": settings})
    await client.wait_for("settings_updated", after=mark, timeout=5)


@pytest.mark.parametrize(("silence_ms", "turns"), [(800, 1), (200, 2)])
async def test_a_300_ms_pause_mid_sentence(stack, silence_ms: int, turns: int) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await configure(client, silence_ms=silence_ms, early_answer=False)
        first = synthesize_speech("I would like to book a table", steady=True)
        second = synthesize_speech("for two people tonight.", steady=True)
        await client.stream(silence(200) + first + silence(300) + second + silence(1500))
        await client.wait_for("transcription", final=True, timeout=60)
        await asyncio.sleep(3.0)  # any second turn has ended by now
        ends = client.of_type("user_speech_end")
        assert len(ends) == turns, ends
    finally:
        await client.close()


async def test_the_transcript_detector_ends_complete_questions_sooner(stack) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        # The slowest silence: the detector ends complete questions long before.
        await configure(client, silence_ms=3000, turn_detector="transcript")
        mark = len(client.events)
        await client.stream(
            silence(200) + synthesize_speech("What is the capital of France?") + silence(3500)
        )
        ended = await client.wait_for("user_speech_end", after=mark, timeout=30)
        assert ended["reason"] == "transcript", ended
        assert (await client.wait_for("transcription", after=mark, final=True))["text"]
        await client.wait_for("tts_end", after=mark, timeout=90)

        # Trailing off mid-phrase: the full silence duration.
        mark = len(client.events)
        await client.stream(
            silence(200) + synthesize_speech("I would like to go to the") + silence(3500)
        )
        ended = await client.wait_for("user_speech_end", after=mark, timeout=30)
        assert ended["reason"] == "silence", ended
        assert ended["end_ms"] - ended["start_ms"] > 0
    finally:
        await client.close()


@pytest.fixture(scope="module")
async def remote_stack(tmp_path_factory: pytest.TempPathFactory):
    async with start_scripted_stack(tmp_path_factory.mktemp("turns")) as (running, stub):
        yield running, stub


def cough(ms: int = 150, rate: int = 16000) -> bytes:
    """A short burst of broadband noise with a fast attack and decay."""
    n = int(rate * ms / 1000)
    rng = np.random.default_rng(7)
    envelope = np.exp(-np.linspace(0, 6, n)) * np.minimum(1, np.linspace(0, 8, n))
    return (rng.normal(0, 9000, n) * envelope).clip(-32000, 32000).astype("<i2").tobytes()


async def test_acknowledgements_and_coughs_do_not_stop_the_answer(remote_stack) -> None:
    stack, stub = remote_stack
    stub.script = LONG_ANSWER
    stub.delay_s = 0.05  # still generating while the user acknowledges
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await configure(client, backchannels=BACKCHANNELS)
        await client.send_json({"type": "text_input", "text": "Tell me a long story."})
        first = await client.wait_for("tts_start", timeout=30)
        rid = first["response_id"]
        await asyncio.sleep(1.0)
        # Acknowledgements Whisper tiny hears reliably in Piper's voice (its
        # "mm-hmm" is a hum Whisper tiny hears as anything).
        await client.stream(silence(200) + synthesize_speech("Right.", steady=True) + silence(1500))
        await client.stream(cough() + silence(1000))
        await client.stream(synthesize_speech("Yeah, okay.", steady=True) + silence(1500))
        assert not client.of_type("playback_cleared"), client.of_type("playback_cleared")
        # A real question does interrupt it.
        stub.script = ["It is noon."]
        stub.delay_s = 0.0
        await client.stream(synthesize_speech("What time is it in Tokyo?") + silence(1200))
        await client.wait_for("playback_cleared", response_id=rid, timeout=15)
        cut = await client.wait_for("response_end", response_id=rid, status="cancelled", timeout=5)
        answer = await client.wait_for(
            "response_end", after=client.events.index(cut), status="completed", timeout=60
        )
        assert answer["text"] == "It is noon."
    finally:
        await client.close()


async def test_interrupt_latency_over_ten_runs(remote_stack) -> None:
    """Speech onset in the input stream -> the last audio frame sent, per run."""
    stack, stub = remote_stack
    stub.script = LONG_ANSWER
    stub.delay_s = 0.03
    speech = synthesize_speech("Wait, stop please.", steady=True)
    # The client sends each 20 ms frame as it begins: the frame holding the
    # onset enters the input stream at its start, which is where we measure.
    onset = onset_ms(speech) // FRAME_MS * FRAME_MS / 1000
    latencies = []
    for run in range(10):
        # A session per run: nothing of the last run's answers is still playing.
        client = await ParleyClient.open(stack.gateway_url)
        try:
            await client.send_json({"type": "text_input", "text": f"Story number {run}."})
            started = await client.wait_for("tts_start", timeout=30)
            rid = started["response_id"]
            await asyncio.sleep(0.8)
            began = time.monotonic()
            await client.stream(speech + silence(900))
            cleared = await client.wait_for("playback_cleared", response_id=rid, timeout=15)
            spoken_at = began + onset
            last = max(at for at, _ in client.frames if at <= client.arrived_at(cleared) + 0.05)
            latencies.append((last - spoken_at) * 1000)
        finally:
            await client.close()
    report = {
        "interrupt_latency_ms": [round(x) for x in latencies],
        "median_ms": round(statistics.median(latencies)),
        "worst_ms": round(max(latencies)),
    }
    out = REPO / "var" / "barge-in-latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nbarge-in onset -> last audio out: {report}")
    assert max(latencies) < 2000, report
