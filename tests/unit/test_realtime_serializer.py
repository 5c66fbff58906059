"""The OpenAI Realtime server events for the shared event sequences
(docs/realtime.md), rendered by the Realtime conversation (its ClientSink)
into a fake WebSocket. Every event sent is also validated against the openai
SDK's own model of the Realtime server events of its dialect (GA, or beta
with `OpenAI-Beta: realtime=v1`), so a field of the wrong shape fails here."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, get_args

import pytest
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent as GaServerEvent
from pydantic import TypeAdapter

from parley.v1 import common_pb2
from services.gateway.core import events as ev
from services.gateway.protocols.realtime.client_events import ClientEvents
from services.gateway.protocols.realtime.conversation import RealtimeConversation
from services.gateway.protocols.realtime.endpoint import read_events
from services.gateway.protocols.realtime.events import Dialect
from tests.support.event_sequences import (
    BARGE_IN,
    ERROR,
    FULL_TURN,
    FULL_TURN_AUDIO,
    INFO,
    ONE_OF_EACH,
    TOOL_CALL,
)


def _models_by_type(union: Any) -> dict[str, TypeAdapter[Any]]:
    """The SDK's model of each server event, by its type literal."""
    members = get_args(get_args(union)[0])
    return {
        kind: TypeAdapter(model)
        for model in members
        for kind in get_args(model.model_fields["type"].annotation)
    }


SDK_EVENTS = {False: _models_by_type(GaServerEvent), True: _models_by_type(BetaServerEvent)}
TRANSCRIBED = {"input_audio_transcription": {"model": "whisper-1"}}
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


class FakeWs:
    """What the conversation sends, as JSON; client frames to read."""

    def __init__(self, frames: Sequence[str] = ()) -> None:
        self.sent: list[dict[str, Any]] = []
        self.frames = list(frames)
        self.closed: tuple[int, str] | None = None

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    async def __aiter__(self) -> AsyncIterator[str]:
        for frame in self.frames:
            yield frame


class FakeSession:
    """The parts of GatewaySession the client events call, recorded."""

    session_id = "s1"
    input_rate = 24000

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def info(self) -> ev.SessionInfo:
        return INFO

    def __getattr__(self, name: str) -> Any:
        async def record(*args: Any) -> None:
            self.calls.append((name, args))

        return record


def conversation(
    beta: bool = False, session: dict[str, Any] | None = None
) -> tuple[RealtimeConversation, FakeWs]:
    ws = FakeWs()
    conv = RealtimeConversation(ws, Dialect(beta))  # type: ignore[arg-type]
    # As the endpoint takes it from the URL; the SDK knows OpenAI's names only.
    conv.out.config.model = "gpt-4o-realtime-preview" if beta else "gpt-realtime"
    if session is not None:
        conv.out.config = conv.out.config.updated(session)
    return conv, ws


async def render(
    conv: RealtimeConversation,
    events: list[ev.SessionEvent],
    audio: Sequence[ev.AudioOut] = (),
) -> None:
    """The events in order, the audio frames after the first tts_start (as
    the session paces them)."""
    for event in events:
        await conv.send_event(event)
        if isinstance(event, ev.TtsStarted):
            for frame in audio:
                await conv.send_audio(frame)


def checked(ws: FakeWs, beta: bool) -> list[dict[str, Any]]:
    """What was sent, each event valid as the SDK's model of its type."""
    for event in ws.sent:
        SDK_EVENTS[beta][event["type"]].validate_python(event)
        assert event["event_id"]
    return ws.sent


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


@pytest.mark.parametrize("beta", [False, True])
async def test_every_event_type_is_handled(beta: bool) -> None:
    assert {type(e) for e in ONE_OF_EACH} == set(ev.EVENT_TYPES)
    conv, ws = conversation(beta, TRANSCRIBED)
    await render(conv, ONE_OF_EACH)  # raises on a type the dispatch has no case for
    checked(ws, beta)
    with pytest.raises(AssertionError):
        await conv.send_event(object())  # type: ignore[arg-type]


GA_FULL_TURN = [
    "session.created",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.done",
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
BETA_FULL_TURN = [
    "session.created",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.created",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "response.output_item.added",
    "conversation.item.created",
    "response.content_part.added",
    "response.audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.audio.delta",
    "response.audio.done",
    "response.audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]


@pytest.mark.parametrize(("beta", "expected"), [(False, GA_FULL_TURN), (True, BETA_FULL_TURN)])
async def test_full_turn(beta: bool, expected: list[str]) -> None:
    conv, ws = conversation(beta, TRANSCRIBED)
    await render(conv, FULL_TURN, FULL_TURN_AUDIO)
    out = checked(ws, beta)
    assert types(out) == expected
    by_type = {e["type"]: e for e in out}  # the last of each

    session = out[0]["session"]
    assert session["id"] == "s1"
    assert session["instructions"] == "Be brief."  # Parley's system prompt in force
    if beta:
        assert session["turn_detection"]["silence_duration_ms"] == 500
        assert session["input_audio_format"] == "pcm16"
    else:
        assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}

    started, stopped = out[1], out[2]
    user_item = started["item_id"]
    assert started["audio_start_ms"] == 120
    assert stopped["audio_end_ms"] == 1800 and stopped["item_id"] == user_item
    assert out[3]["item_id"] == user_item and out[3]["previous_item_id"] is None
    assert out[4]["item"]["role"] == "user" and out[4]["item"]["id"] == user_item
    completed = by_type["conversation.item.input_audio_transcription.completed"]
    assert completed["transcript"] == "What is the capital of France?"
    assert completed["usage"] == {"type": "duration", "seconds": 1.68}

    created = by_type["response.created"]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    deltas = [e for e in out if e["type"].endswith("audio_transcript.delta")]
    assert [d["delta"] for d in deltas] == ["Paris is", " the capital."]
    assert {d["response_id"] for d in deltas} == {created["id"]}
    audio = by_type["response.audio.delta" if beta else "response.output_audio.delta"]
    assert audio["delta"]  # base64 PCM16

    done = by_type["response.done"]["response"]
    assert done["id"] == created["id"]
    assert done["status"] == "completed" and done["status_details"] is None
    [message] = done["output"]
    assert message["role"] == "assistant" and message["status"] == "completed"
    assert message["content"][0]["transcript"] == "Paris is the capital."
    assert message["content"][0]["type"] == ("audio" if beta else "output_audio")
    assert done["usage"]["output_token_details"]["audio_tokens"] == 0  # 20 ms of audio
    if not beta:
        assert done["output_modalities"] == ["audio"]


async def test_text_only_full_turn_ends_on_the_text() -> None:
    conv, ws = conversation(False, {"output_modalities": ["text"]})
    await render(conv, FULL_TURN[:-1], FULL_TURN_AUDIO)  # no tts_end needed
    out = checked(ws, False)
    assert "response.output_audio.delta" not in types(out)
    assert [e["delta"] for e in out if e["type"] == "response.output_text.delta"] == [
        "Paris is",
        " the capital.",
    ]
    done = out[-1]
    assert done["type"] == "response.done" and done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["text"] == "Paris is the capital."


@pytest.mark.parametrize("beta", [False, True])
async def test_barge_in(beta: bool) -> None:
    conv, ws = conversation(beta)
    await render(conv, BARGE_IN, [ev.AudioOut("r2", b"\x00\x01" * 2400, 24000)])
    out = checked(ws, beta)
    audio = "response.audio" if beta else "response.output_audio"
    assert types(out)[:6] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.created" if beta else "conversation.item.added",
        "response.content_part.added",
        f"{audio}.delta",
        "input_audio_buffer.speech_started",
    ]
    done = next(e for e in out if e["type"] == "response.done")["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    # Nothing more for the cancelled answer (tts_end, response_end); the
    # interrupting turn is committed.
    after = types(out)[types(out).index("response.done") + 1 :]
    assert after == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created" if beta else "conversation.item.added",
    ]
    # 100 ms of audio was sent: output audio at 1 token per 50 ms.
    assert done["usage"]["output_token_details"]["audio_tokens"] == 2


async def test_response_cancel_is_the_clients_own() -> None:
    conv, ws = conversation()
    await render(conv, [ev.ResponseStarted("r3", 0), ev.PlaybackCleared("r3", "client")])
    done = checked(ws, False)[-1]["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}


@pytest.mark.parametrize("beta", [False, True])
async def test_error(beta: bool) -> None:
    conv, ws = conversation(beta)
    await render(conv, [*ERROR, ev.Error("gateway", "bad_audio", "odd length")])
    out = checked(ws, beta)
    assert types(out)[:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    stage, gateway = out[-2], out[-1]
    assert stage["type"] == "error"
    assert stage["error"] == {
        "type": "server_error",
        "code": "asr_failed",
        "message": "asr: transcription failed",
        "param": None,
        "event_id": None,
    }
    assert gateway["error"]["type"] == "invalid_request_error"
    assert gateway["error"]["code"] == "bad_audio"


async def test_failed_answer() -> None:
    conv, ws = conversation()
    await render(
        conv,
        [
            ev.ResponseStarted("r4", 0),
            ev.ResponseTextDelta("r4", "Let me"),
            ev.ResponseEnded("r4", ev.Status.FAILED, "Let me"),
        ],
    )
    done = checked(ws, False)[-1]["response"]
    assert done["status"] == "failed"
    assert done["status_details"]["type"] == "failed"
    assert done["status_details"]["error"]["type"] == "server_error"
    assert done["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize("beta", [False, True])
async def test_tool_call_of_parleys_own_tools_is_unseen(beta: bool) -> None:
    """A tool of Parley's tools service runs on the server: the client sees
    the answer, no function_call item and no progress event."""
    conv, ws = conversation(beta)
    await render(conv, TOOL_CALL)
    out = checked(ws, beta)
    assert types(out) == ["response.created", "response.done"]
    assert out[-1]["response"]["status"] == "completed"
    assert out[-1]["response"]["output"] == []


async def test_client_function_call_round_trip() -> None:
    """A call of the client's own function: a function_call item ends the
    response; the client's output answers the call; what the model says next
    is a new response for the same Parley answer."""
    conv, ws = conversation(False, {"tools": [WEATHER]})
    session = FakeSession()
    client = ClientEvents(session, conv)  # type: ignore[arg-type]
    await render(conv, [ev.ResponseStarted("r6", 6)])
    assert [t.name for t in conv.tools.list_tools()] == ["get_weather"]
    call = asyncio.create_task(conv.tools.call_tool("get_weather", '{"city": "Paris"}', 5.0))
    while not any(e["type"] == "response.done" for e in ws.sent):
        await asyncio.sleep(0.01)
    out = checked(ws, False)
    assert types(out) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    args = out[4]
    assert args["name"] == "get_weather" and args["arguments"] == '{"city": "Paris"}'
    done = out[-1]["response"]
    assert done["status"] == "completed"
    assert [(o["type"], o["call_id"]) for o in done["output"]] == [
        ("function_call", args["call_id"])
    ]

    mark = len(ws.sent)
    item = {"type": "function_call_output", "call_id": args["call_id"], "output": "sunny"}
    await client.handle({"type": "conversation.item.create", "item": item})
    assert await asyncio.wait_for(call, 1) == "sunny"
    await render(
        conv,
        [
            ev.ResponseTextDelta("r6", "It is sunny."),
            ev.ResponseEnded("r6", ev.Status.COMPLETED, "It is sunny."),
            ev.TtsEnded("r6", ev.Status.COMPLETED),
        ],
    )
    out = checked(ws, False)[mark:]
    assert out[0]["type"] == "conversation.item.added"
    assert out[0]["item"]["type"] == "function_call_output"
    continuation = [e for e in out if e["type"] in ("response.created", "response.done")]
    assert [e["type"] for e in continuation] == ["response.created", "response.done"]
    assert continuation[0]["response"]["id"] != done["id"]
    assert continuation[1]["response"]["output"][0]["content"][0]["transcript"] == "It is sunny."


async def test_a_cancelled_answer_fails_its_function_calls() -> None:
    conv, ws = conversation(False, {"tools": [WEATHER]})
    await render(conv, [ev.ResponseStarted("r7", 7)])
    call = asyncio.create_task(conv.tools.call_tool("get_weather", "{}", 5.0))
    while "response.function_call_arguments.done" not in types(ws.sent):
        await asyncio.sleep(0.01)
    await render(conv, [ev.PlaybackCleared("r7", "user speech")])
    with pytest.raises(Exception, match="cancelled"):
        await asyncio.wait_for(call, 1)


async def test_settings_parley_refuses_are_realtime_errors() -> None:
    """session.update passes Parley's settings validation: a value it refuses
    is Realtime's error event naming the field, and nothing is applied."""
    frames = [
        json.dumps(
            {
                "type": "session.update",
                "event_id": "evt_1",
                "session": {"audio": {"input": {"turn_detection": {"threshold": math.nan}}}},
            }
        ),
        json.dumps(
            {"type": "session.update", "event_id": "evt_2", "session": {"instructions": "x" * 9000}}
        ),
        json.dumps({"type": "session.update", "event_id": "evt_3", "session": {"voice": "cedar"}}),
    ]
    ws = FakeWs(frames)
    conv = RealtimeConversation(ws, Dialect(False))  # type: ignore[arg-type]
    conv.out.config.model = "gpt-realtime"
    session = FakeSession()
    await read_events(ws, ClientEvents(session, conv), conv)  # type: ignore[arg-type]
    out = checked(ws, False)
    assert types(out) == ["error", "error", "session.updated"]
    assert out[0]["error"]["type"] == "invalid_request_error"
    assert out[0]["error"]["code"] == "invalid_value"
    assert out[0]["error"]["param"] == "session.audio.input.turn_detection.threshold"
    assert out[0]["error"]["event_id"] == "evt_1"
    assert out[1]["error"]["param"] == "session.instructions"
    assert "8000" in out[1]["error"]["message"]
    # Only the good update reached the session.
    [(name, args)] = [c for c in session.calls if c[0] == "update_settings"]
    settings: common_pb2.Settings = args[0]
    assert settings.voice == "cedar" and not settings.HasField("system_prompt")
    assert out[2]["session"]["audio"]["output"]["voice"] == "cedar"
