"""A spoken conversation through all six services on a real nats-server with
the real models: speech in, spoken answer out."""

from __future__ import annotations

import asyncio
import re

import pytest

from parley.cli.client import ParleyClient
from tests.support.speech import silence, synthesize_speech

pytestmark = pytest.mark.slow

STOPWORDS = {"the", "a", "an", "is", "of", "and", "to", "in", "it", "i", "you", "that", "what"}


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in STOPWORDS}


async def ask(client: ParleyClient, question: str) -> dict:
    """Speak a question like a device (mic keeps streaming) and collect the turn."""
    start = len(client.events)
    speech = synthesize_speech(question)
    await client.stream(silence(300) + speech + silence(1200))
    final = await client.wait_for("transcription", after=start, final=True, timeout=60)
    started = await client.wait_for("response_start", after=start, timeout=60)
    rid = started["response_id"]
    ended = await client.wait_for("response_end", after=start, response_id=rid, timeout=90)
    await client.wait_for("tts_end", after=start, response_id=rid, timeout=90)
    text = "".join(e["delta"] for e in client.events[start:] if e["type"] == "response_text")
    return {"transcript": final["text"], "response_id": rid, "text": text, "ended": ended}


async def test_spoken_question_gets_a_spoken_answer(stack, transcribe) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        turn = await ask(client, "What is the capital of France?")
        kinds = [e["type"] for e in client.events]
        assert "user_speech_start" in kinds and "user_speech_end" in kinds
        assert kinds.index("user_speech_start") < kinds.index("user_speech_end")
        assert {"capital", "france"} <= words(turn["transcript"])
        assert turn["ended"]["status"] == "completed"
        assert turn["text"].strip(), "the answer streamed no text"
        assert len(client.of_type("response_text")) >= 2, "the answer text was not streamed"

        metrics = await client.wait_for("turn_metrics", timeout=10)
        hops = metrics["hops"]
        for hop in (
            "final_transcript",
            "first_token",
            "first_sentence",
            "first_tts_audio",
            "first_audio_sent",
        ):
            assert hop in hops, hops
        assert 0 < hops["final_transcript"] <= hops["first_token"] <= hops["first_audio_sent"]

        rate = client.session["output_sample_rate"]
        audio_s = len(client.audio) / (rate * 2)
        assert audio_s > 0.5, f"only {audio_s:.2f} s of answer audio"
        # The answer audio is real speech: transcribed back, it says the answer.
        heard = await transcribe(bytes(client.audio), rate)
        spoken = words(" ".join(e["text"] for e in client.of_type("response_sentence")))
        assert words(heard) & spoken, f"heard {heard!r}, answer was {turn['text']!r}"
    finally:
        await client.close()


async def test_two_conversations_at_once_do_not_mix(stack) -> None:
    a, b = await asyncio.gather(
        ParleyClient.open(stack.gateway_url), ParleyClient.open(stack.gateway_url)
    )
    try:
        assert a.session["session_id"] != b.session["session_id"]
        ta, tb = await asyncio.gather(
            ask(a, "What is the capital of France?"),
            ask(b, "How many legs does a spider have?"),
        )
        assert "france" in words(ta["transcript"]) and "spider" not in words(ta["transcript"])
        assert "spider" in words(tb["transcript"]) and "france" not in words(tb["transcript"])
        assert ta["response_id"] != tb["response_id"]
        # Neither client saw the other's response.
        assert all(
            e.get("response_id") in (None, ta["response_id"])
            for e in a.events
            if e["type"].startswith("response")
        )
        assert all(
            e.get("response_id") in (None, tb["response_id"])
            for e in b.events
            if e["type"].startswith("response")
        )
        assert a.audio and b.audio
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_typed_input_is_answered_aloud(stack) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.send_json({"type": "text_input", "text": "Say hello to me."})
        started = await client.wait_for("response_start", timeout=60)
        await client.wait_for("tts_end", response_id=started["response_id"], timeout=90)
        assert client.audio
    finally:
        await client.close()


async def test_vad_stats_for_a_meter_only_when_asked(stack) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        speech = synthesize_speech("One two three four five.")
        await client.stream(silence(200) + speech[: 16000 * 2])
        assert not client.of_type("vad_stats")
        await client.send_json({"type": "settings_update", "settings": {"vad_stats": True}})
        await client.wait_for("settings_updated", timeout=5)
        await client.stream(speech + silence(600))
        await client.wait_for("vad_stats", speaking=True, timeout=10)
        stats = client.of_type("vad_stats")
        assert 5 <= len(stats) <= 40  # about ten a second, not one per window
        assert all(0.0 <= s["probability"] <= 1.0 and s["energy_db"] <= 0 for s in stats)
        assert any(s["probability"] > 0.5 for s in stats)
    finally:
        await client.close()


async def test_partial_transcripts_while_speaking_then_the_final(stack) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        speech = synthesize_speech(
            "I would like to know how long it takes to travel from Paris to Berlin by train."
        )
        await client.stream(silence(200) + speech + silence(900))
        final = await client.wait_for("transcription", final=True, timeout=60)
        got = client.events[: client.events.index(final)]
        partials = [e for e in got if e["type"] == "transcription" and not e["final"]]
        assert partials, "no partial transcript while the user spoke"
        assert all(p["turn_id"] == final["turn_id"] for p in partials)
        # Partials grow with the utterance; the final has it all.
        assert {"paris", "berlin"} <= words(final["text"])
        assert len(partials[-1]["text"]) <= len(final["text"]) + 10
        started = await client.wait_for("response_start", timeout=60)
        await client.wait_for("tts_end", response_id=started["response_id"], timeout=90)
    finally:
        await client.close()
