"""Early answer: the llm starts at a short pause, before the silence that ends
the turn; if the user goes on speaking, that work leaves no trace."""

from __future__ import annotations

import asyncio

import pytest

from parley.cli.client import ParleyClient
from tests.e2e.harness import start_scripted_stack
from tests.support.openai_chat_stub import OpenAIChatStub
from tests.support.speech import silence, synthesize_speech

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def early_stack(tmp_path_factory: pytest.TempPathFactory):
    stub = OpenAIChatStub(script=["It is nine in the evening in Tokyo."])
    async with start_scripted_stack(tmp_path_factory.mktemp("early"), stub=stub) as started:
        yield started


def user_turns(request: dict) -> list[str]:
    return [m["content"] for m in request.json["messages"] if m["role"] == "user"]


async def test_a_pause_mid_sentence_prepares_nothing_that_is_heard(early_stack) -> None:
    stack, stub = early_stack
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.send_json({"type": "settings_update", "settings": {"silence_ms": 1500}})
        await client.wait_for("settings_updated", timeout=5)
        asked = len(stub.requests)
        first = synthesize_speech("I would like to know")
        rest = synthesize_speech("the time in Tokyo.")
        await client.stream(silence(300) + first + silence(800) + rest + silence(1800))
        final = await client.wait_for("transcription", final=True, timeout=30)
        assert "tokyo" in final["text"].lower()
        ended = await client.wait_for("response_end", timeout=30)
        assert ended["status"] == "completed"
        # The model was asked early, at the mid-sentence pause...
        asked_with = [user_turns(r)[-1] for r in stub.requests[asked:]]
        assert any("tokyo" not in t.lower() and "know" in t.lower() for t in asked_with), asked_with
        # ...but only the answer to the whole sentence reached the user.
        starts = client.of_type("response_start")
        assert len(starts) == 1
        assert {e["response_id"] for e in client.events if "response_id" in e} == {
            starts[0]["response_id"]
        }
        # The dropped guess left no trace in the history either.
        await client.wait_for("tts_end", timeout=30)
        await client.send_json({"type": "text_input", "text": "Thanks."})
        await client.wait_for("response_start", after=client.events.index(ended) + 1, timeout=30)
        async with asyncio.timeout(10):  # the response starts before its request
            while user_turns(stub.requests[-1])[-1] != "Thanks.":
                await asyncio.sleep(0.05)
        history = user_turns(stub.requests[-1])
        assert len(history) == 2 and "tokyo" in history[0].lower()
        assert history[1] == "Thanks."
    finally:
        await client.close()


async def test_early_answer_can_be_turned_off(early_stack) -> None:
    stack, stub = early_stack
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.send_json({"type": "settings_update", "settings": {"early_answer": False}})
        updated = await client.wait_for("settings_updated", timeout=5)
        assert updated["settings"]["early_answer"] is False
        asked = len(stub.requests)
        speech = synthesize_speech("What time is it in Tokyo?")
        await client.stream(silence(300) + speech + silence(1200))
        await client.wait_for("response_end", timeout=30)
        # One generation, on the final transcript (partials still come while
        # the user speaks; none of them is answered).
        assert len(stub.requests) - asked == 1
        final = await client.wait_for("transcription", final=True, timeout=5)
        assert user_turns(stub.requests[-1])[-1] == final["text"]
    finally:
        await client.close()
