"""The llm stage on an OpenAI-compatible endpoint (a real HTTP stand-in that
streams scripted SSE), through the whole stack: streaming, and barge-in that
closes the HTTP stream and keeps only what was heard in the history."""

from __future__ import annotations

import asyncio

import pytest

from parley.cli.client import ParleyClient
from tests.e2e.harness import start_scripted_stack
from tests.support.openai_chat_stub import ChatReply, tool_call_deltas
from tests.support.speech import silence, synthesize_speech

pytestmark = pytest.mark.slow

LONG_ANSWER = [
    f"{word} "
    for sentence in range(12)
    for word in f"This is sentence number {sentence} of a long answer.".split()
]


@pytest.fixture(scope="module")
async def remote_stack(tmp_path_factory: pytest.TempPathFactory):
    async with start_scripted_stack(
        tmp_path_factory.mktemp("remote"),
        env={"PARLEY_LLM__MODEL": "stub-model", "PARLEY_LLM__API_KEY": "secret"},
    ) as started:
        yield started


async def test_remote_model_answer_is_streamed_and_spoken(remote_stack) -> None:
    stack, stub = remote_stack
    stub.script = ["The moon", " is about", " 384,000 kilometres away.", " Quite far!"]
    stub.delay_s = 0.05
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
        assert (
            request.headers.get("Authorization") == "Bearer secret"
            and request.json["model"] == "stub-model"
        )
        assert request.json["messages"][-1] == {
            "role": "user",
            "content": "How far is the moon?",
        }
    finally:
        await client.close()


async def test_barge_in_stops_everything_and_history_keeps_what_was_heard(remote_stack) -> None:
    stack, stub = remote_stack
    stub.script = LONG_ANSWER
    stub.delay_s = 0.08  # ~8 s of generation: still streaming when cut
    stub.disconnected.clear()
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
        await asyncio.wait_for(stub.disconnected.wait(), 5)
        await streaming
        # No audio of the cancelled answer arrived after the flush (allow one
        # frame already on the wire).
        late = [n for at, n in client.frames if at > client.arrived_at(cleared) + 0.1]
        next_tts = [e for e in client.of_type("tts_start") if e["response_id"] != rid]
        if not next_tts:
            assert sum(late) == 0
        # The interruption is answered as a turn of its own; the history sent
        # with it holds only the part of the long answer that was heard.
        await client.wait_for("transcription", final=True, timeout=30)
        stub.script = ["Sure."]
        await client.wait_for("response_start", timeout=30, after=client.events.index(ended) + 1)
        # The response starts before its HTTP request is made.
        async with asyncio.timeout(10):
            while stub.requests[-1].json["messages"][-1]["content"].startswith("Tell me"):
                await asyncio.sleep(0.05)
        messages = stub.requests[-1].json["messages"]
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        full = "".join(LONG_ANSWER).strip()
        assert assistant, messages
        assert full.startswith(assistant[-1]) and len(assistant[-1]) < len(full) / 2
        assert messages[-1]["role"] == "user" and "stop" in messages[-1]["content"].lower()
    finally:
        await client.close()


async def ask_typed(client: ParleyClient, text: str) -> dict:
    mark = len(client.events)
    await client.send_json({"type": "text_input", "text": text})
    ended = await client.wait_for("response_end", after=mark, timeout=40)
    return ended


async def test_a_tool_call_runs_and_the_answer_uses_its_result(remote_stack) -> None:
    stack, stub = remote_stack
    stub.delay_s = 0.0
    stub.replies = [
        ChatReply(tool_call_deltas([("call_1", "get_current_time", '{"timezone": "Asia/Tokyo"}')])),
        ChatReply(["In Tokyo it is", " late evening."]),
    ]
    client = await ParleyClient.open(stack.gateway_url)
    try:
        asked = len(stub.requests)
        ended = await ask_typed(client, "What time is it in Tokyo?")
        assert ended["status"] == "completed"
        assert ended["text"] == "In Tokyo it is late evening."
        processing = [e for e in client.of_type("processing") if e["stage"] == "llm"]
        assert processing and "get_current_time" in processing[0]["detail"]
        first, second = stub.requests[asked : asked + 2]
        names = [t["function"]["name"] for t in first.json["tools"]]
        assert "get_current_time" in names
        messages = second.json["messages"]
        call_msg, result_msg = messages[-2], messages[-1]
        assert call_msg["tool_calls"][0]["function"]["name"] == "get_current_time"
        assert result_msg["role"] == "tool" and result_msg["tool_call_id"] == "call_1"
        assert '"timezone": "Asia/Tokyo"' in result_msg["content"]
    finally:
        await client.close()


async def test_parallel_calls_and_failing_tools_become_results(remote_stack) -> None:
    stack, stub = remote_stack
    stub.delay_s = 0.0
    stub.replies = [
        ChatReply(
            tool_call_deltas(
                [
                    ("call_a", "get_current_time", '{"timezone": "Europe/Paris"}'),
                    ("call_b", "get_current_time", '{"timezone": "America/New_York"}'),
                    ("call_c", "launch_rocket", "{}"),
                ]
            )
        ),
        ChatReply(["Paris and New York are six hours apart, and I cannot launch rockets."]),
    ]
    client = await ParleyClient.open(stack.gateway_url)
    try:
        asked = len(stub.requests)
        ended = await ask_typed(client, "Compare the time in Paris and New York, then launch.")
        assert ended["status"] == "completed"
        results = {
            m["tool_call_id"]: m["content"]
            for m in stub.requests[asked + 1].json["messages"]
            if m["role"] == "tool"
        }
        assert "Europe/Paris" in results["call_a"]
        assert "America/New_York" in results["call_b"]
        assert results["call_c"].startswith("Error:") and "launch_rocket" in results["call_c"]
        # The next turn works.
        stub.script = ["Yes."]
        assert (await ask_typed(client, "Still there?"))["status"] == "completed"
    finally:
        await client.close()


async def test_short_sounds_do_not_interrupt_with_a_minimum_interrupt_duration(
    remote_stack,
) -> None:
    stack, stub = remote_stack
    stub.script = LONG_ANSWER
    stub.delay_s = 0.02
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.send_json({"type": "settings_update", "settings": {"min_interrupt_ms": 1200}})
        await client.wait_for("settings_updated", timeout=5)
        await client.send_json({"type": "text_input", "text": "Tell me a long story."})
        first = await client.wait_for("tts_start", timeout=30)
        rid = first["response_id"]
        await asyncio.sleep(1.0)
        # A short acknowledgement while the agent speaks: "okay".
        await client.stream(synthesize_speech("Okay.") + silence(1500))
        assert not client.of_type("playback_cleared")
        # The answer resumed and played to its end.
        ended = await client.wait_for("tts_end", response_id=rid, timeout=60)
        assert ended["status"] == "completed"
        assert [e["status"] for e in client.of_type("response_end")] == ["completed"]
    finally:
        await client.close()


async def test_with_barge_in_off_the_agent_hears_itself_and_goes_on(remote_stack) -> None:
    stack, stub = remote_stack
    stub.script = LONG_ANSWER[:18]
    stub.delay_s = 0.02
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.send_json({"type": "settings_update", "settings": {"barge_in": False}})
        await client.wait_for("settings_updated", timeout=5)
        await client.send_json({"type": "text_input", "text": "Talk to me."})
        first = await client.wait_for("tts_start", timeout=30)
        await asyncio.sleep(1.0)
        # No echo cancellation: the device's microphone hears the agent.
        echo = bytes(client.audio)
        await client.stream(echo + silence(800))
        assert not client.of_type("playback_cleared")
        ended = await client.wait_for("tts_end", response_id=first["response_id"], timeout=60)
        assert ended["status"] == "completed"
    finally:
        await client.close()


async def test_the_agent_ends_the_conversation_after_its_goodbye(remote_stack) -> None:
    stack, stub = remote_stack
    stub.delay_s = 0.0
    stub.replies = [
        ChatReply(tool_call_deltas([("call_e", "end_conversation", '{"goodbye": "Bye now"}')])),
        ChatReply(["Goodbye, talk to you soon!"]),
    ]
    client = await ParleyClient.open(stack.gateway_url)
    try:
        ended = await ask_typed(client, "That is all, goodbye.")
        assert ended["text"] == "Goodbye, talk to you soon!"
        await client.wait_for("tts_end", response_id=ended["response_id"], timeout=30)
        closing = await client.wait_for("session_end", timeout=10)
        assert "goodbye" in closing["reason"]
        await asyncio.wait_for(client.ws.wait_closed(), 10)
        assert client.ws.close_code == 1000
        assert client.audio  # the goodbye was spoken before the close
    finally:
        await client.close()
