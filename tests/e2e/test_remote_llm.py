"""The llm stage on an OpenAI-compatible endpoint (a real HTTP stand-in that
streams scripted SSE), through the whole stack: streaming, and barge-in that
closes the HTTP stream and keeps only what was heard in the history."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.harness import start_stack
from tests.support.client import ParleyClient, silence
from tests.support.openai_stub import OpenAIStub
from tests.support.speech import synthesize_speech

pytestmark = pytest.mark.slow

LONG_ANSWER = [
    f"{word} "
    for sentence in range(12)
    for word in f"This is sentence number {sentence} of a long answer.".split()
]


@pytest.fixture(scope="module")
async def remote_stack(tmp_path_factory: pytest.TempPathFactory):
    async with OpenAIStub() as stub:
        async with start_stack(
            tmp_path_factory.mktemp("remote"),
            env={
                "PARLEY_LLM__PROVIDER": "openai",
                "PARLEY_LLM__BASE_URL": stub.base_url,
                "PARLEY_LLM__MODEL": "stub-model",
                "PARLEY_LLM__API_KEY": "secret",
            },
        ) as running:
            yield running, stub


async def test_remote_model_answer_is_streamed_and_spoken(remote_stack) -> None:
    stack, stub = remote_stack
    stub.chat_script = ["The moon", " is about", " 384,000 kilometres away.", " Quite far!"]
    stub.chat_delay_s = 0.05
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.send_json({"type": "text_input", "text": "How far is the moon?"})
        ended = await client.wait_for("response_end", timeout=30)
        assert ended["status"] == "completed"
        assert ended["text"] == "The moon is about 384,000 kilometres away. Quite far!"
        sentences = [e["text"] for e in client.of_type("response_sentence")]
        assert sentences == ["The moon is about 384,000 kilometres away.", "Quite far!"]
        await client.wait_for("tts_end", response_id=ended["response_id"], timeout=30)
        assert len(client.audio) > 16000  # more than half a second at 16 kHz
        request = stub.requests[-1]
        assert request["auth"] == "Bearer secret" and request["json"]["model"] == "stub-model"
        assert request["json"]["messages"][-1] == {
            "role": "user",
            "content": "How far is the moon?",
        }
    finally:
        await client.close()


async def test_barge_in_stops_everything_and_history_keeps_what_was_heard(remote_stack) -> None:
    stack, stub = remote_stack
    stub.chat_script = LONG_ANSWER
    stub.chat_delay_s = 0.08  # ~8 s of generation: still streaming when cut
    stub.chat_disconnected.clear()
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.send_json({"type": "text_input", "text": "Tell me a long story."})
        first = await client.wait_for("tts_start", timeout=30)
        rid = first["response_id"]
        await asyncio.sleep(1.5)  # the user listens a moment, then talks over it
        speech = synthesize_speech("Wait, stop please.")
        streaming = asyncio.create_task(client.stream(silence(100) + speech + silence(1200)))
        cleared = await client.wait_for("playback_cleared", response_id=rid, timeout=15)
        ended = await client.wait_for("response_end", response_id=rid, timeout=5)
        assert ended["status"] == "cancelled"
        # The provider's HTTP stream was closed: generation stopped.
        await asyncio.wait_for(stub.chat_disconnected.wait(), 5)
        await streaming
        # No audio of the cancelled answer arrived after the flush (allow one
        # frame already on the wire).
        late = [n for at, n in client.frames if at > cleared["_at"] + 0.1]
        next_tts = [e for e in client.of_type("tts_start") if e["response_id"] != rid]
        if not next_tts:
            assert sum(late) == 0
        # The interruption is answered as a turn of its own; the history sent
        # with it holds only the part of the long answer that was heard.
        await client.wait_for("transcription", final=True, timeout=30)
        stub.chat_script = ["Sure."]
        await client.wait_for("response_start", timeout=30, after=client.events.index(ended) + 1)
        # The response starts before its HTTP request is made.
        async with asyncio.timeout(10):
            while stub.requests[-1]["json"]["messages"][-1]["content"].startswith("Tell me"):
                await asyncio.sleep(0.05)
        messages = stub.requests[-1]["json"]["messages"]
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        full = "".join(LONG_ANSWER).strip()
        assert assistant, messages
        assert full.startswith(assistant[-1]) and len(assistant[-1]) < len(full) / 2
        assert messages[-1]["role"] == "user" and "stop" in messages[-1]["content"].lower()
    finally:
        await client.close()
