"""A Parley WebSocket session outlives its connection: a client whose
connection drops takes its session back within the grace period
(`session_resume` with the resume token) and the conversation goes on with
its history; a wrong token or a session past its grace is refused."""

from __future__ import annotations

import asyncio

import pytest

from parley.cli.client import ParleyClient
from parley.wavio import silence
from tests.e2e.harness import start_scripted_stack
from tests.support.openai_chat_stub import OpenAIChatStub, count_user_messages
from tests.support.speech import synthesize_speech

pytestmark = pytest.mark.slow

GRACE_S = 4


@pytest.fixture(scope="module")
async def resume_stack(tmp_path_factory: pytest.TempPathFactory):
    stub = OpenAIChatStub(answer=count_user_messages)
    async with start_scripted_stack(
        tmp_path_factory.mktemp("resume"),
        env={"PARLEY_GATEWAY__RESUME_GRACE_S": str(GRACE_S)},
        stub=stub,
    ) as started:
        yield started


async def _ask_aloud(client: ParleyClient, question: str) -> dict[str, object]:
    mark = len(client.events)
    await client.stream(synthesize_speech(question) + silence(1200))
    return await client.wait_for("response_end", after=mark, timeout=60)


async def test_a_dropped_connection_resumes_with_its_history(resume_stack) -> None:
    stack, _ = resume_stack
    first = await ParleyClient.open(stack.gateway_url)
    started = first.session
    assert started["resume_token"]
    ended = await _ask_aloud(first, "What is the capital of France?")
    assert ended["text"] == "You have asked 1 questions."
    first.ws.transport.abort()  # no close handshake: the network went away

    second = await ParleyClient.open(stack.gateway_url)
    try:
        mark = len(second.events)
        await second.send_json(
            {
                "type": "session_resume",
                "session_id": started["session_id"],
                "resume_token": started["resume_token"],
            }
        )
        resumed = await second.wait_for("session_started", after=mark, timeout=10)
        assert resumed["session_id"] == started["session_id"] and resumed["resumed"] is True
        ended = await _ask_aloud(second, "What did I just ask?")
        assert ended["text"] == "You have asked 2 questions.", "\n".join(
            str({k: v for k, v in e.items() if k not in ("settings", "resume_token")})
            for e in second.events
        )
        await second.wait_for("tts_end", response_id=ended["response_id"], timeout=30)
        assert len(second.audio) > 16000  # the answer is spoken on the new connection
    finally:
        await second.close()


async def test_a_wrong_token_or_an_expired_session_is_refused(resume_stack) -> None:
    stack, _ = resume_stack
    first = await ParleyClient.open(stack.gateway_url)
    started = first.session
    first.ws.transport.abort()
    other = await ParleyClient.open(stack.gateway_url)
    try:
        mark = len(other.events)
        await other.send_json(
            {"type": "session_resume", "session_id": started["session_id"], "resume_token": "x"}
        )
        error = await other.wait_for("error", after=mark, timeout=10)
        assert error["code"] == "unknown_session"
        await asyncio.sleep(GRACE_S + 1)
        mark = len(other.events)
        await other.send_json(
            {
                "type": "session_resume",
                "session_id": started["session_id"],
                "resume_token": started["resume_token"],
            }
        )
        error = await other.wait_for("error", after=mark, timeout=10)
        assert error["code"] == "unknown_session"
        # The connection's own session is untouched by the refusals.
        mark = len(other.events)
        await other.send_json({"type": "text_input", "text": "Hello?"})
        ended = await other.wait_for("response_end", after=mark, timeout=30)
        assert ended["text"] == "You have asked 1 questions."
    finally:
        await other.close()


async def test_resume_at_connect_through_the_url(resume_stack) -> None:
    """`?session_id=&resume_token=` takes the session back without opening a
    fresh one (so a full gateway still lets its own sessions return)."""
    stack, _ = resume_stack
    first = await ParleyClient.open(stack.gateway_url)
    started = first.session
    mark = len(first.events)
    await first.send_json({"type": "text_input", "text": "Hello?"})
    await first.wait_for("response_end", after=mark, timeout=30)
    first.ws.transport.abort()
    url = (
        f"{stack.gateway_url}?session_id={started['session_id']}"
        f"&resume_token={started['resume_token']}"
    )
    again = await ParleyClient.open(url)
    try:
        assert again.session["session_id"] == started["session_id"]
        assert again.session["resumed"] is True
        mark = len(again.events)
        await again.send_json({"type": "text_input", "text": "And now?"})
        ended = await again.wait_for("response_end", after=mark, timeout=30)
        assert ended["text"] == "You have asked 2 questions."
    finally:
        await again.close()
    # A token that does not fit is said so, and the connection gets a fresh session.
    fresh = await ParleyClient.open(f"{stack.gateway_url}?session_id=nope&resume_token=x")
    try:
        assert fresh.session["session_id"] != started["session_id"]
        assert "resumed" not in fresh.session
        error = await fresh.wait_for("error", timeout=10)
        assert error["code"] == "unknown_session"
    finally:
        await fresh.close()
