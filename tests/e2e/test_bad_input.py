"""Bad input gets a clear error event; the session and the server survive."""

from __future__ import annotations

import pytest

from parley.cli.client import ParleyClient

pytestmark = pytest.mark.slow


async def expect_error(client: ParleyClient, code: str, stage: str = "gateway") -> dict:
    event = await client.wait_for("error", after=0, code=code, timeout=10)
    assert event["stage"] == stage
    assert event["message"]
    return event


async def test_bad_frames_and_messages_get_errors_and_the_session_lives_on(stack) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.ws.send(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # a WAV file, not raw PCM
        await expect_error(client, "bad_audio")
        await client.ws.send(b"\x01\x02\x03")  # odd length: not PCM16
        await client.ws.send(bytes(200_000))  # 6 s in one frame
        await expect_error(client, "frame_too_large")
        await client.ws.send("{not json")
        await expect_error(client, "bad_json")
        await client.send_json({"type": "dance"})
        await expect_error(client, "unknown_type")
        await client.send_json({"type": "settings_update", "input_sample_rate": 12345})
        event = await expect_error(client, "unsupported_sample_rate")
        assert "12345" in event["message"]
        await client.send_json({"type": "settings_update", "settings": {"silence_ms": 10}})
        event = await expect_error(client, "bad_field")
        assert "silence_ms" in event["message"]
        await client.send_json({"type": "session_resume", "session_id": "no-such-session"})
        await expect_error(client, "unknown_session")

        # Still alive: it answers, and valid settings apply.
        await client.send_json({"type": "ping"})
        await client.wait_for("pong", timeout=5)
        await client.send_json({"type": "settings_update", "settings": {"silence_ms": 700}})
        updated = await client.wait_for("settings_updated", timeout=5)
        assert updated["settings"]["silence_ms"] == 700
    finally:
        await client.close()
    # And the server takes new sessions.
    again = await ParleyClient.open(stack.gateway_url)
    await again.close()


async def test_unknown_path_and_wrong_port_are_refused(stack) -> None:
    import websockets

    with pytest.raises(websockets.exceptions.InvalidStatus) as err:
        await ParleyClient.open(stack.gateway_url.replace("/v1/ws", "/nope"))
    assert err.value.response.status_code == 404


async def test_json_nested_past_any_bound_is_bad_json_and_the_session_lives(stack) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        await client.ws.send("[" * 100_000)
        event = await expect_error(client, "bad_json")
        assert "nested" in event["message"]
        await client.send_json({"type": "ping"})
        await client.wait_for("pong", timeout=5)
    finally:
        await client.close()
