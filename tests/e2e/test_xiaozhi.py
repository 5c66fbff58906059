"""Xiaozhi boards, tried as the firmware behaves: OTA, the WebSocket upgrade
with its four headers, hello, Opus in every binary framing, manual and auto
listening, abort, typed wake words, the board's own MCP tools, and bad input."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from services.gateway.protocols.endpoint import device_token
from tests.e2e.harness import REPO, Stack, start_scripted_stack
from tests.support.openai_chat_stub import ChatReply, tool_call_deltas
from tests.support.speech import synthesize_speech, with_silence
from tests.support.xiaozhi_device import XiaozhiDevice, ota_check

pytestmark = pytest.mark.slow

TOKEN = "board-secret"  # shared, as set on a board by hand
DEVICE_SECRET = "device-secret"
ALLOWED = "aa:bb:cc:00:00:01"


def ws_url(stack: Stack) -> str:
    return f"ws://127.0.0.1:{stack.gateway_port}/xiaozhi/v1/"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


async def device_for(stack: Stack, device_id: str = "aa:bb:cc:00:00:09", **kw) -> XiaozhiDevice:
    device = await XiaozhiDevice.connect(ws_url(stack), device_id, **kw)
    await device.wait_hello()
    return device


async def turn(device: XiaozhiDevice, question: str, mode: str) -> tuple[int, float]:
    """One spoken turn; (index of its first message, time speech ended)."""
    mark = len(device.messages)
    await device.send_json({"type": "listen", "state": "start", "mode": mode})
    speech = synthesize_speech(question)
    tail = 200 if mode == "manual" else 1200
    pcm = with_silence(speech, 16000, 200, 0)
    speech_end = await device.stream(pcm)
    await device.stream(with_silence(b"", 16000, 0, tail))
    if mode == "manual":
        await device.send_json({"type": "listen", "state": "stop"})
    await device.wait_json("tts", after=mark, state="stop", timeout=90)
    return mark, speech_end


def kinds(device: XiaozhiDevice, after: int) -> list[str]:
    out = []
    for msg in device.messages[after:]:
        kind = msg["type"]
        if kind == "tts":
            kind = f"tts.{msg['state']}"
        out.append(kind)
    return out


async def test_ota_then_manual_turn_with_the_four_headers(stack: Stack, transcribe) -> None:
    ota = await ota_check(stack.http_port, "aa:bb:cc:00:00:02")
    assert abs(ota["server_time"]["timestamp"] / 1000 - time.time()) < 5
    assert ota["firmware"] == {"version": "1.6.0", "url": ""}
    assert ota["websocket"]["url"] == ws_url(stack)
    assert ota["websocket"]["version"] == 1

    device = await XiaozhiDevice.connect(ota["websocket"]["url"], "aa:bb:cc:00:00:02")
    try:
        hello = await device.wait_hello()
        assert hello["transport"] == "websocket" and hello["session_id"]
        assert hello["audio_params"] == {
            "format": "opus",
            "sample_rate": 24000,
            "channels": 1,
            "frame_duration": 60,
        }
        audio_mark = len(device.audio)
        mark, _ = await turn(device, "What is the capital of France?", "manual")
        seen = kinds(device, mark)
        stt = next(m for m in device.messages[mark:] if m["type"] == "stt")
        assert {"capital", "france"} <= words(stt["text"])
        order = [seen.index(k) for k in ("stt", "llm", "tts.start", "tts.sentence_start")]
        assert order == sorted(order), seen
        assert seen.index("tts.stop") > seen.index("tts.sentence_start")
        assert all(m.get("session_id") == hello["session_id"] for m in device.messages[mark:])

        # The audio arrived between tts start and stop, and says the sentences.
        start_at = next(m["_at"] for m in device.messages[mark:] if m.get("state") == "start")
        stop_at = next(m["_at"] for m in device.messages[mark:] if m.get("state") == "stop")
        frames = device.audio[audio_mark:]
        assert frames and all(start_at <= at <= stop_at for at, _, _ in frames)
        pcm = device.decoded_audio(audio_mark)
        heard = await transcribe(pcm, 48000)
        said = " ".join(
            m["text"] for m in device.messages[mark:] if m.get("state") == "sentence_start"
        )
        overlap = words(said) & words(heard)
        assert len(overlap) >= max(1, len(words(said)) // 2), (said, heard)
    finally:
        await device.close()


@pytest.mark.parametrize("version", [2, 3])
async def test_auto_mode_in_header_framings(stack: Stack, version: int) -> None:
    device = await device_for(stack, f"aa:bb:cc:00:00:1{version}", version=version)
    try:
        assert device.server_hello["version"] == version
        audio_mark = len(device.audio)
        mark, _ = await turn(device, "What color is the sky?", "auto")
        assert "stt" in kinds(device, mark)
        frames = device.audio[audio_mark:]
        assert frames
        if version == 2:
            stamps = [stamp for _, _, stamp in frames]
            assert stamps == sorted(stamps) and stamps[-1] > 0
        assert len(device.decoded_audio(audio_mark)) > 48000 * 2 * 0.3
    finally:
        await device.close()


async def test_auto_mode_latency_median_of_five(stack: Stack) -> None:
    """End of speech -> first downlink audio, measured at the device."""
    device = await device_for(stack, "aa:bb:cc:00:00:20")
    questions = [
        "What is the capital of Italy?",
        "How many days are in a week?",
        "What is two plus two?",
        "Name a color of the rainbow.",
        "What do bees make?",
    ]
    latencies = []
    try:
        for question in questions:
            audio_mark = len(device.audio)
            _, speech_end = await turn(device, question, "auto")
            first = device.audio[audio_mark][0]
            latencies.append((first - speech_end) * 1000)
    finally:
        await device.close()
    report = {
        "protocol": "xiaozhi",
        "end_of_speech_to_first_audio_ms": [round(x) for x in latencies],
        "median_ms": round(statistics.median(latencies)),
    }
    out = REPO / "var" / "xiaozhi-latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nxiaozhi end of speech -> first audio: {report}")
    assert all(x > 0 for x in latencies)


async def test_listen_detect_with_text_and_abort_within_300_ms(stack: Stack) -> None:
    device = await device_for(stack, "aa:bb:cc:00:00:30")
    try:
        mark = len(device.messages)
        await device.send_json({"type": "listen", "state": "detect", "text": "Tell me a story."})
        await device.wait_json("tts", after=mark, state="stop", timeout=90)
        assert "tts.sentence_start" in kinds(device, mark)

        # Once the answer plays, abort: it stops at once.
        mark, audio_mark = len(device.messages), len(device.audio)
        await device.send_json(
            {"type": "listen", "state": "detect", "text": "Tell me about the moon."}
        )
        async with asyncio.timeout(60):
            while len(device.audio) <= audio_mark:
                await asyncio.sleep(0.005)
        aborted_at = time.monotonic()
        await device.send_json({"type": "abort", "reason": "wake_word_detected"})
        stop = await device.wait_json("tts", after=mark, state="stop", timeout=5)
        assert (stop["_at"] - aborted_at) < 0.3, stop["_at"] - aborted_at
        await asyncio.sleep(0.5)
        late = [at for at, _, _ in device.audio[audio_mark:] if at > stop["_at"]]
        assert not late, f"{len(late)} audio frames after tts stop"
    finally:
        await device.close()


@pytest.fixture(scope="module")
async def tool_stack(tmp_path_factory: pytest.TempPathFactory):
    """An OpenAI-compatible model (scripted), a token and an allowlist."""
    async with start_scripted_stack(
        tmp_path_factory.mktemp("xiaozhi"),
        env={
            "PARLEY_GATEWAY__XIAOZHI__AUTH_TOKEN": TOKEN,
            "PARLEY_GATEWAY__DEVICE_SECRET": DEVICE_SECRET,
            "PARLEY_GATEWAY__XIAOZHI__DEVICE_ALLOWLIST": json.dumps([ALLOWED, "aa:bb:cc:00:00:02"]),
            "PARLEY_GATEWAY__XIAOZHI__KEEPALIVE_S": "1",
        },
    ) as started:
        yield started


async def test_device_mcp_tool_is_listed_and_called(tool_stack) -> None:
    stack, stub = tool_stack
    device = await device_for(stack, ALLOWED, token=TOKEN)
    try:
        # The gateway initializes the board's MCP server and pages through tools/list.
        async with asyncio.timeout(10):
            while not any(
                m.get("payload", {}).get("method") == "tools/list"
                and m["payload"]["params"].get("cursor") == "1"
                for m in device.messages
            ):
                await asyncio.sleep(0.05)
        stub.replies = [
            ChatReply(
                tool_call_deltas([("call_v", "self_audio_speaker_set_volume", '{"volume": 30}')])
            ),
            ChatReply(["The volume is now thirty."]),
        ]
        asked = len(stub.requests)
        mark = len(device.messages)
        await turn(device, "Please set the volume to thirty.", "auto")
        offered = {t["function"]["name"] for t in stub.requests[asked].json["tools"]}
        assert {"self_audio_speaker_set_volume", "self_get_device_status"} <= offered
        assert device.tool_calls == [
            {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 30}}
        ]
        assert device.volume == 30
        tool_result = stub.requests[asked + 1].json["messages"][-1]
        assert tool_result["role"] == "tool" and tool_result["content"] == "true"
        said = [m["text"] for m in device.messages[mark:] if m.get("state") == "sentence_start"]
        assert said == ["The volume is now thirty."]
    finally:
        await device.close()


async def test_keepalive_between_turns(tool_stack) -> None:
    stack, _ = tool_stack
    device = await device_for(stack, ALLOWED, token=TOKEN)
    try:
        mark = len(device.messages)
        await asyncio.sleep(2.5)
        pings = [m for m in device.messages[mark:] if m["type"] == "llm" and "emotion" not in m]
        assert pings
    finally:
        await device.close()


async def test_ota_allowlist_and_bad_requests(tool_stack) -> None:
    stack, _ = tool_stack
    ota = await ota_check(stack.http_port, ALLOWED)
    # The board's own token, never the shared one; and it opens the door.
    own = ota["websocket"]["token"]
    assert own == device_token(DEVICE_SECRET, "xiaozhi", ALLOWED) and own != TOKEN
    device = await device_for(stack, ALLOWED, token=own)
    await device.close()
    async with httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{stack.http_port}/xiaozhi/ota/"
        refused = await client.post(base, headers={"Device-Id": "ff:ff:ff:ff:ff:ff"}, json={})
        assert refused.status_code == 403 and "not allowed" in refused.json()["error"]
        missing = await client.post(base, json={})
        assert missing.status_code == 400 and "Device-Id" in missing.json()["error"]
        garbage = await client.post(base, headers={"Device-Id": ALLOWED}, content=b"{not json")
        assert garbage.status_code == 400 and "JSON" in garbage.json()["error"]


async def test_wrong_token_missing_device_and_bad_version_are_refused(tool_stack) -> None:
    stack, _ = tool_stack
    url = ws_url(stack)
    for headers, status in (
        ({"Device-Id": ALLOWED, "Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 400),
        ({"Device-Id": ALLOWED, "Authorization": f"Bearer {TOKEN}", "Protocol-Version": "7"}, 400),
        ({"Device-Id": "ff:ff:ff:ff:ff:ff", "Authorization": f"Bearer {TOKEN}"}, 403),
    ):
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, additional_headers=headers)
        assert refused.value.response.status_code == status
    # Browsers pass the same as query parameters.
    query = f"{url}?device-id={ALLOWED}&client-id=web&authorization=Bearer%20{TOKEN}"
    async with connect(query) as ws:
        await ws.send(json.dumps({"type": "hello", "transport": "websocket"}))
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert hello["type"] == "hello" and hello["session_id"]


async def test_bad_input_gets_alerts_and_the_gateway_survives(tool_stack) -> None:
    stack, stub = tool_stack
    # A hello with audio the gateway cannot take: an alert, then the close.
    bad = await XiaozhiDevice.connect(
        ws_url(stack),
        ALLOWED,
        token=TOKEN,
        hello={"type": "hello", "transport": "websocket", "audio_params": {"format": "pcm"}},
    )
    alert = await bad.wait_json("alert", timeout=10)
    assert "opus" in alert["message"]
    await asyncio.wait_for(bad.closed.wait(), 5)

    # A hello without transport or audio_params and an empty session_id is fine.
    device = await device_for(
        stack, ALLOWED, token=TOKEN, version=3, hello={"type": "hello", "session_id": ""}
    )
    try:
        for payload, expect in (
            (b"\x00\x00\x00\x0a\xff\xfe garbage", "Opus"),  # garbage inside a good header
            (b"\x00\x00", "header"),
            (b"\x00\x00\x22\x00" + bytes(8704), "over"),  # an oversized frame
        ):
            mark = len(device.messages)
            await device.ws.send(payload)
            alert = await device.wait_json("alert", after=mark, timeout=5)
            assert expect in alert["message"], alert
            await asyncio.sleep(5.1)  # alerts of one kind are spaced out
        mark = len(device.messages)
        await device.send_json({"type": "dance", "style": "tango"})
        alert = await device.wait_json("alert", after=mark, timeout=5)
        assert "unknown message type" in alert["message"]
        await device.send_json({"type": "iot", "descriptors": [{"name": "Speaker"}]})

        # Still alive: a typed question is answered.
        stub.replies = [ChatReply(["Still here."])]
        mark = len(device.messages)
        await device.send_json({"type": "listen", "state": "detect", "text": "Are you there?"})
        sentence = await device.wait_json("tts", after=mark, state="sentence_start", timeout=30)
        assert sentence["text"] == "Still here."
        await device.wait_json("tts", after=mark, state="stop", timeout=30)
    finally:
        await device.close()


async def test_a_device_vanishing_mid_answer_is_cleaned_up(tool_stack) -> None:
    stack, stub = tool_stack
    stub.replies = [ChatReply(["One. Two. Three. Four. Five. Six. Seven. Eight. Nine. Ten."])]
    device = await device_for(stack, ALLOWED, token=TOKEN)
    await device.send_json({"type": "listen", "state": "detect", "text": "Count to ten."})
    async with asyncio.timeout(30):
        while not device.audio:
            await asyncio.sleep(0.01)
    session_id = device.session_id
    device.ws.transport.abort()  # no close handshake: the board lost power
    gateway = next(p for p in stack.processes if p.name == "gateway")
    closed = re.compile(rf"session={session_id} .*session closed")
    async with asyncio.timeout(15):
        while not closed.search(gateway.log.read_text()):
            await asyncio.sleep(0.1)
    # And the next board is served.
    stub.replies = [ChatReply(["Hello again."])]
    other = await device_for(stack, ALLOWED, token=TOKEN)
    try:
        mark = len(other.messages)
        await other.send_json({"type": "listen", "state": "detect", "text": "Hello?"})
        await other.wait_json("tts", after=mark, state="stop", timeout=30)
    finally:
        await other.close()


async def test_docs_name_every_message(tool_stack) -> None:
    doc = (REPO / "docs" / "xiaozhi.md").read_text()
    for word in ("listen", "abort", "stt", "llm", "tts", "mcp", "alert", "goodbye", "iot"):
        assert f"`{word}`" in doc, word
    # And every kind of message a board really gets in a session (the MCP
    # handshake, keepalives, a typed turn, an alert) is one the document names,
    # down to the tts states and llm emotions: a new one must be documented.
    stack, stub = tool_stack
    stub.replies = [ChatReply(["Here I am."])]
    device = await device_for(stack, ALLOWED, token=TOKEN)
    try:
        mark = len(device.messages)
        await device.send_json({"type": "listen", "state": "detect", "text": "Are you there?"})
        await device.wait_json("tts", after=mark, state="stop", timeout=30)
        await device.send_json({"type": "dance"})
        await device.wait_json("alert", after=mark, timeout=5)
        await asyncio.sleep(1.5)  # a keepalive (keepalive_s is 1)
    finally:
        await device.close()
    received = device.messages
    assert {"hello", "mcp", "stt", "llm", "tts", "alert"} <= {m["type"] for m in received}
    for m in received:
        assert f"`{m['type']}`" in doc, m
        if m["type"] == "tts":
            assert f"`state: {m['state']}`" in doc, m
        if m["type"] == "llm" and "emotion" in m:
            assert f"`{m['emotion']}`" in doc, m
        if m["type"] == "alert":
            assert f"`emotion: {m['emotion']}`" in doc, m
