"""A dead provider or a missing stage: the client is told which stage failed,
and the session and the server carry on."""

from __future__ import annotations

import nats
import pytest

from parley.cli.client import ParleyClient

pytestmark = pytest.mark.slow


async def test_missing_stage_and_dead_provider_are_named(degraded_stack) -> None:
    client = await ParleyClient.open(degraded_stack.gateway_url)
    try:
        # No tts instance runs in this stack.
        missing = await client.wait_for("error", code="stage_unavailable", timeout=10)
        assert missing["stage"] == "tts"
        assert "tts" in missing["message"]
        # The llm points at an OpenAI-compatible endpoint that is down.
        await client.send_json({"type": "text_input", "text": "Hello?"})
        failed = await client.wait_for("error", stage="llm", timeout=30)
        assert failed["code"] == "provider_unavailable"
        ended = await client.wait_for("response_end", timeout=10)
        assert ended["status"] == "failed"
        # The session survives and tries again.
        await client.send_json({"type": "text_input", "text": "Are you there?"})
        again = await client.wait_for("response_start", after=len(client.events), timeout=30)
        assert again["response_id"] != ended["response_id"]
    finally:
        await client.close()


async def test_undecodable_bus_message_is_reported_not_fatal(stack) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    nc = await nats.connect(stack.nats_url)
    try:
        sid = client.session["session_id"]
        await nc.publish(f"parley.v1.s.{sid}.audio.in", b"\xff\xff\xff not protobuf")
        await nc.flush()
        event = await client.wait_for("error", code="bad_bus_message", timeout=10)
        assert event["stage"] in ("vad", "asr")
        # A message for a session nobody holds goes nowhere and breaks nothing.
        await nc.publish("parley.v1.s.no-such-session.control", b"\x00\x01")
        await client.send_json({"type": "ping"})
        await client.wait_for("pong", timeout=5)
    finally:
        await nc.close()
        await client.close()
