"""The OpenAI Realtime-compatible endpoint, driven by the official `openai` SDK
(GA `client.realtime` and beta `client.beta.realtime`) through the whole
stack: Piper speech appended at real-time pace, server VAD turns, input
transcription, spoken answers, client function tools, interruption and
truncation, push-to-talk, G.711 µ-law, and bad input.

The llm is a scripted OpenAI-compatible stand-in (tests/support/openai_chat_stub.py),
so answers and tool calls are known in advance; vad, asr and tts are the real
local models."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from openai import AsyncOpenAI

from tests.e2e.harness import REPO, Stack, start_scripted_stack
from tests.support.openai_chat_stub import ChatReply, OpenAIChatStub, tool_call_deltas
from tests.support.speech import synthesize_speech

pytestmark = pytest.mark.slow

RATE = 24000
CHUNK_MS = 40
STOPWORDS = {"the", "a", "an", "is", "of", "and", "to", "in", "it", "what"}
LONG_ANSWER = [
    f"{word} "
    for sentence in range(10)
    for word in f"This is sentence number {sentence} of a long spoken answer.".split()
]

# A client-declared function, in session.update's shape.
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in STOPWORDS}


def silence(ms: int, rate: int = RATE, width: int = 2) -> bytes:
    return bytes(int(rate * ms / 1000) * width)


def g711(pcm: bytes, codec: str, rate: int = 8000) -> bytes:
    ctx: Any = av.CodecContext.create(codec, "w")
    ctx.sample_rate, ctx.layout, ctx.format = rate, "mono", "s16"
    ctx.open()
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = rate
    return b"".join(bytes(p) for p in ctx.encode(frame))


def g711_decode(data: bytes, codec: str, rate: int = 8000) -> bytes:
    ctx: Any = av.CodecContext.create(codec, "r")
    ctx.sample_rate, ctx.layout, ctx.format = rate, "mono", "s16"
    return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in ctx.decode(av.Packet(data)))


class Talk:
    """One Realtime connection: every server event (as JSON and as the SDK
    parses it) with its arrival time, and real-time audio appends."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.parsed: list[Any] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            raw = await self.conn.recv_bytes()
            self.parsed.append(self.conn.parse_event(raw))
            self.events.append(json.loads(raw))
            self.times.append(time.monotonic())
            self._new.set()

    async def close(self) -> None:
        self._reader.cancel()

    def of(self, kind: str, after: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[after:] if e["type"] == kind]

    async def wait_for(
        self, kind: str, after: int = 0, timeout: float = 60, **match: Any
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events[after:]:
                if e["type"] == kind and all(_get(e, k) == v for k, v in match.items()):
                    return e
            if self._reader.done():
                self._reader.result()
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [e["type"] for e in self.events[after:]]
                raise AssertionError(f"no {kind} {match} within {timeout} s; saw {seen}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    def time_of(self, event: dict[str, Any]) -> float:
        return self.times[self.events.index(event)]

    async def append(self, data: bytes, bytes_per_ms: float = RATE * 2 / 1000) -> float:
        """Append in 40 ms pieces at real-time pace; returns when it ended."""
        step = int(CHUNK_MS * bytes_per_ms)
        step -= step % 2
        start = time.monotonic()
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            await self.conn.input_audio_buffer.append(audio=base64.b64encode(piece).decode())
            ahead = start + (i + len(piece)) / bytes_per_ms / 1000 - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        return time.monotonic()

    async def speak(self, text: str, tail_ms: int = 1200) -> float:
        """Speak like a device whose microphone stays open; returns the end of speech."""
        await self.append(silence(300))
        ended = await self.append(synthesize_speech(text, RATE))
        await self.append(silence(tail_ms))
        return ended

    def audio(self, response_id: str, kind: str = "response.output_audio.delta") -> bytes:
        return b"".join(
            base64.b64decode(e["delta"])
            for e in self.events
            if e["type"] == kind and e["response_id"] == response_id
        )


def _get(event: dict[str, Any], path: str) -> Any:
    value: Any = event
    for key in path.split("__"):
        value = value.get(key) if isinstance(value, dict) else None
    return value


@pytest.fixture(scope="module")
async def rt(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Stack, OpenAIChatStub]]:
    async with start_scripted_stack(tmp_path_factory.mktemp("realtime")) as (stack, stub):
        yield stack, stub


def client_for(stack: Stack) -> AsyncOpenAI:
    port = stack.gateway_port
    return AsyncOpenAI(
        api_key="any-key",
        base_url=f"http://127.0.0.1:{port}/v1",
        websocket_base_url=f"ws://127.0.0.1:{port}/v1",
    )


GA_SESSION: Any = {
    "type": "realtime",
    "instructions": "You are a terse assistant.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
    },
}


@contextlib.asynccontextmanager
async def configured(stack: Stack, session: Any = GA_SESSION) -> AsyncIterator[Talk]:
    """A GA connection whose session.update with `session` has been applied."""
    async with client_for(stack).realtime.connect(model="gpt-realtime") as conn:
        talk = Talk(conn)
        try:
            await talk.wait_for("session.created", timeout=15)
            await conn.session.update(session=session)
            await talk.wait_for("session.updated", timeout=10)
            yield talk
        finally:
            await talk.close()


async def test_ga_spoken_conversation_and_latency(rt, transcribe) -> None:
    stack, stub = rt
    stub.script = ["Paris is", " the capital", " of France."]
    async with client_for(stack).realtime.connect(model="gpt-realtime") as conn:
        talk = Talk(conn)
        try:
            created = await talk.wait_for("session.created", timeout=15)
            assert created["session"]["type"] == "realtime"
            assert created["session"]["audio"]["input"]["format"] == {
                "type": "audio/pcm",
                "rate": 24000,
            }
            await conn.session.update(session=GA_SESSION)
            updated = await talk.wait_for("session.updated", timeout=10)
            assert updated["session"]["instructions"] == "You are a terse assistant."
            assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"

            latencies = []
            for turn in range(5):
                start = len(talk.events)
                speech_end = await talk.speak("What is the capital of France?")
                done = await talk.wait_for("response.done", after=start, timeout=60)
                response = done["response"]
                assert response["status"] == "completed", response
                rid = response["id"]
                first_audio = talk.of("response.output_audio.delta", start)[0]
                latencies.append((talk.time_of(first_audio) - speech_end) * 1000)
                if turn:
                    continue
                kinds = [e["type"] for e in talk.events[start:]]
                order = [
                    "input_audio_buffer.speech_started",
                    "input_audio_buffer.speech_stopped",
                    "input_audio_buffer.committed",
                    "conversation.item.added",
                    "conversation.item.input_audio_transcription.completed",
                    "response.created",
                    "response.output_item.added",
                    "response.content_part.added",
                    "response.output_audio_transcript.delta",
                    "response.output_audio.delta",
                    "response.output_audio.done",
                    "response.output_audio_transcript.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.done",
                ]
                positions = [kinds.index(k) for k in order]
                assert positions == sorted(positions), kinds
                stopped = talk.of("input_audio_buffer.speech_stopped", start)[0]
                heard = talk.of("conversation.item.input_audio_transcription.completed", start)[0]
                assert heard["item_id"] == stopped["item_id"]
                assert {"capital", "france"} <= words(heard["transcript"])
                transcript = talk.of("response.output_audio_transcript.done", start)[0]
                assert transcript["transcript"] == "Paris is the capital of France."
                deltas = talk.of("response.output_audio_transcript.delta", start)
                assert "".join(d["delta"] for d in deltas) == transcript["transcript"]
                item = response["output"][0]
                assert item["role"] == "assistant" and item["status"] == "completed"
                assert item["content"][0]["transcript"] == transcript["transcript"]
                assert response["usage"]["output_tokens"] > 0
                # The SDK parses the events into its own GA types.
                parsed = {type(p).__name__ for p in talk.parsed}
                assert {
                    "ResponseAudioDeltaEvent",
                    "ResponseAudioTranscriptDeltaEvent",
                    "ConversationItemInputAudioTranscriptionCompletedEvent",
                    "ResponseDoneEvent",
                } <= parsed, parsed
                pcm = talk.audio(rid)
                assert len(pcm) / (RATE * 2) > 1.0, "less than a second of answer audio"
                said = await transcribe(pcm, RATE)
                assert {"paris", "capital"} & words(said), said
                # The model got the user's words, and the session's instructions.
                messages = stub.requests[-1].json["messages"]
                assert messages[0] == {"role": "system", "content": "You are a terse assistant."}
                assert "capital" in messages[-1]["content"].lower()
        finally:
            await talk.close()
    median = statistics.median(latencies)
    report = {
        "what": "end of speech (last speech sample appended, real-time pace) -> first "
        "response.output_audio.delta received, OpenAI Realtime GA client",
        "turns_ms": [round(x) for x in latencies],
        "median_ms": round(median),
        "server_vad_silence_duration_ms": 500,
        "llm": "scripted OpenAI-compatible stand-in (first token at once)",
        "asr": "faster-whisper tiny.en (local)",
        "tts": "Piper en_US-joe-medium (local)",
        # The models share this machine's cores with whatever else runs.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    out = Path(REPO) / "var" / "realtime-latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("\nrealtime latency:", json.dumps(report, indent=2))
    # A sanity bound only: on a loaded 2-core machine Whisper alone takes seconds.
    assert median < 20000, report


async def test_beta_dialect_speech_and_text(rt) -> None:
    stack, stub = rt
    stub.script = ["Spiders have", " eight legs."]
    async with client_for(stack).beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        talk = Talk(conn)
        try:
            created = await talk.wait_for("session.created", timeout=15)
            assert created["session"]["input_audio_format"] == "pcm16"
            await conn.session.update(
                session={
                    "modalities": ["text", "audio"],
                    "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16",
                    "input_audio_transcription": {"model": "whisper-1"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 600,
                    },
                }
            )
            updated = await talk.wait_for("session.updated", timeout=10)
            assert updated["session"]["turn_detection"]["silence_duration_ms"] == 600
            start = len(talk.events)
            await talk.speak("How many legs does a spider have?")
            done = await talk.wait_for("response.done", after=start, timeout=60)
            assert done["response"]["status"] == "completed"
            kinds = {e["type"] for e in talk.events[start:]}
            assert {
                "conversation.item.created",
                "conversation.item.input_audio_transcription.completed",
                "response.audio.delta",
                "response.audio_transcript.delta",
                "response.audio_transcript.done",
                "response.audio.done",
            } <= kinds, kinds
            assert not any(k.startswith("response.output_audio") for k in kinds)
            assert len(talk.audio(done["response"]["id"], "response.audio.delta")) > RATE

            # Typed input: a user text item, answered on response.create.
            stub.script = ["Hello to you", " too."]
            start = len(talk.events)
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Say hello."}],
                }
            )
            added = await talk.wait_for("conversation.item.created", after=start, timeout=10)
            assert added["item"]["content"][0]["text"] == "Say hello."
            await asyncio.sleep(0.5)
            assert not talk.of("response.created", start), "answered before response.create"
            await conn.response.create()
            done = await talk.wait_for("response.done", after=start, timeout=60)
            assert done["response"]["status"] == "completed"
            assert done["response"]["output"][0]["content"][0]["transcript"] == "Hello to you too."
            assert stub.requests[-1].json["messages"][-1]["content"] == "Say hello."
        finally:
            await talk.close()


async def test_function_tool_round_trip(rt) -> None:
    stack, stub = rt
    stub.replies = [
        ChatReply(tool_call_deltas([("call_w", "get_weather", '{"city": "Paris"}')])),
        ChatReply(["It is sunny", " and 21 degrees", " in Paris."]),
    ]
    async with configured(stack, {**GA_SESSION, "tools": [WEATHER_TOOL]}) as talk:
        conn = talk.conn
        start = len(talk.events)
        await talk.speak("What is the weather in Paris?", tail_ms=800)
        args = await talk.wait_for("response.function_call_arguments.done", after=start, timeout=60)
        assert args["name"] == "get_weather"
        assert json.loads(args["arguments"]) == {"city": "Paris"}
        first = await talk.wait_for("response.done", after=start, timeout=10)
        output = first["response"]["output"]
        assert [o["type"] for o in output] == ["function_call"]
        assert output[0]["call_id"] == args["call_id"]
        # The client's function sits beside the tools service's own.
        offered = [t["function"]["name"] for t in stub.requests[-1].json["tools"]]
        assert "get_weather" in offered
        assert {"get_current_time", "end_conversation"} <= set(offered)

        mark = len(talk.events)
        await conn.conversation.item.create(
            item={
                "type": "function_call_output",
                "call_id": args["call_id"],
                "output": json.dumps({"sky": "sunny", "temp_c": 21}),
            }
        )
        await conn.response.create()
        done = await talk.wait_for("response.done", after=mark, timeout=60)
        assert done["response"]["id"] != first["response"]["id"]
        assert done["response"]["status"] == "completed"
        transcript = done["response"]["output"][0]["content"][0]["transcript"]
        assert transcript == "It is sunny and 21 degrees in Paris."
        assert len(talk.audio(done["response"]["id"])) > RATE
        # The model got the client's output as the tool result.
        tool_msgs = [m for m in stub.requests[-1].json["messages"] if m["role"] == "tool"]
        assert "sunny" in tool_msgs[-1]["content"]
        # response.create after the output joined the answer: no second one.
        await asyncio.sleep(1.5)
        assert len(talk.of("response.created", mark)) == 1
        assert not talk.of("error", start)


async def test_client_functions_and_hub_tools_coexist(rt) -> None:
    """With a client function declared, a call to one of the tools service's
    own tools runs on the server: the client sees no function_call item, and
    the answer uses the tool's result."""
    stack, stub = rt
    stub.replies = [
        ChatReply(tool_call_deltas([("call_t", "get_current_time", '{"timezone": "Asia/Tokyo"}')])),
        ChatReply(["It is", " night", " in Tokyo."]),
    ]
    async with configured(stack, {**GA_SESSION, "tools": [WEATHER_TOOL]}) as talk:
        start = len(talk.events)
        await talk.speak("What time is it in Tokyo?", tail_ms=800)
        done = await talk.wait_for("response.done", after=start, timeout=90)
        assert done["response"]["status"] == "completed"
        output = done["response"]["output"]
        assert [o["type"] for o in output] == ["message"], output
        assert output[0]["content"][0]["transcript"] == "It is night in Tokyo."
        assert not talk.of("response.function_call_arguments.done", start)
        # The model got the hub's answer (the time in Tokyo) as the tool result.
        tool_msgs = [m for m in stub.requests[-1].json["messages"] if m["role"] == "tool"]
        assert "Asia/Tokyo" in tool_msgs[-1]["content"], tool_msgs
        offered = [t["function"]["name"] for t in stub.requests[-1].json["tools"]]
        assert {"get_weather", "get_current_time"} <= set(offered)


async def test_interruption_then_truncate(rt) -> None:
    stack, stub = rt
    stub.script = LONG_ANSWER
    async with configured(stack) as talk:
        conn = talk.conn
        start = len(talk.events)
        await talk.speak("Tell me a long story.", tail_ms=600)
        first = await talk.wait_for("response.output_audio.delta", after=start, timeout=60)
        rid, item_id = first["response_id"], first["item_id"]
        # Let about two seconds of the answer play, then speak over it.
        await talk.append(silence(2000))
        stub.script = ["Sure, something else."]
        mark = len(talk.events)
        interrupting = asyncio.create_task(
            talk.append(synthesize_speech("Stop, tell me something else.", RATE) + silence(1200))
        )
        done = await talk.wait_for("response.done", after=mark, timeout=30, response__id=rid)
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        started = talk.of("input_audio_buffer.speech_started", mark)
        assert started and talk.events.index(started[0]) < talk.events.index(done)
        item = done["response"]["output"][0]
        assert item["status"] == "incomplete"
        received_ms = len(talk.audio(rid)) / (RATE * 2) * 1000

        # The client played less than it received: it says where it stopped.
        played = int(min(received_ms, 2000) - 300)
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=played)
        truncated = await talk.wait_for("conversation.item.truncated", after=mark, timeout=10)
        assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == played
        await conn.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=int(received_ms) + 5000
        )
        error = await talk.wait_for("error", after=mark, timeout=10)
        assert error["error"]["param"] == "audio_end_ms"

        await interrupting
        after = talk.events.index(done) + 1
        answer = await talk.wait_for("response.done", after=after, timeout=60)
        assert answer["response"]["id"] != rid
        assert answer["response"]["status"] == "completed"
        # The model's history keeps only what was heard of the long answer.
        history = stub.requests[-1].json["messages"]
        kept = [m["content"] for m in history if m["role"] == "assistant"][-1]
        # Less than two seconds were played: part of the first sentence,
        # as the truncation said (the pacing clock had counted more).
        first_sentence = "This is sentence number 0 of a long spoken answer."
        assert kept and first_sentence.startswith(kept), kept
        assert len(kept) < len(first_sentence), kept


async def test_push_to_talk(rt) -> None:
    stack, stub = rt
    stub.script = ["Two plus two", " is four."]
    session = json.loads(json.dumps(GA_SESSION))
    session["audio"]["input"]["turn_detection"] = None
    async with configured(stack, session) as talk:
        conn = talk.conn
        updated = talk.of("session.updated")[0]
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await conn.input_audio_buffer.commit()
        empty = await talk.wait_for("error", timeout=10)
        assert empty["error"]["code"] == "input_audio_buffer_commit_empty"

        start = len(talk.events)
        # Long silences after the speech: without turn detection they end nothing.
        await talk.speak("What is two plus two?", tail_ms=2500)
        kinds = {e["type"] for e in talk.events[start:]}
        assert not kinds & {
            "input_audio_buffer.speech_started",
            "input_audio_buffer.committed",
            "response.created",
        }, kinds
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        committed = await talk.wait_for("input_audio_buffer.committed", after=start, timeout=10)
        heard = await talk.wait_for(
            "conversation.item.input_audio_transcription.completed", after=start, timeout=30
        )
        assert heard["item_id"] == committed["item_id"]
        assert "plus" in words(heard["transcript"]), heard
        done = await talk.wait_for("response.done", after=start, timeout=60)
        assert done["response"]["status"] == "completed"
        assert len(talk.of("response.created", start)) == 1
        assert not talk.of("error", start)

        # response.cancel with nothing in progress is an error, not a hang.
        await conn.response.cancel()
        error = await talk.wait_for("error", after=start, timeout=10)
        assert error["error"]["code"] == "response_cancel_not_active"


async def test_g711_ulaw_in_and_out(rt, transcribe) -> None:
    stack, stub = rt
    stub.script = ["The sky", " is blue."]
    async with client_for(stack).beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        talk = Talk(conn)
        try:
            await talk.wait_for("session.created", timeout=15)
            await conn.session.update(
                session={
                    "input_audio_format": "g711_ulaw",
                    "output_audio_format": "g711_ulaw",
                    "input_audio_transcription": {"model": "whisper-1"},
                }
            )
            updated = await talk.wait_for("session.updated", timeout=10)
            assert updated["session"]["input_audio_format"] == "g711_ulaw"
            start = len(talk.events)
            speech = synthesize_speech("What colour is the sky?", 8000)
            ulaw = g711(silence(300, 8000) + speech + silence(1200, 8000), "pcm_mulaw")
            await talk.append(ulaw, bytes_per_ms=8)
            heard = await talk.wait_for(
                "conversation.item.input_audio_transcription.completed", after=start, timeout=60
            )
            assert {"colour", "color", "sky"} & words(heard["transcript"]), heard
            done = await talk.wait_for("response.done", after=start, timeout=60)
            assert done["response"]["status"] == "completed"
            data = talk.audio(done["response"]["id"], "response.audio.delta")
            assert len(data) > 8000, "less than a second of 8 kHz µ-law"
            said = await transcribe(g711_decode(data, "pcm_mulaw"), 8000)
            assert {"sky", "blue"} & words(said), said

            # The GA names for the other G.711 law are understood too.
            mark = len(talk.events)
            await conn.session.update(session={"output_audio_format": "g711_alaw"})
            updated = await talk.wait_for("session.updated", after=mark, timeout=10)
            assert updated["session"]["output_audio_format"] == "g711_alaw"
        finally:
            await talk.close()


async def test_bad_input_gets_errors_and_the_session_goes_on(rt) -> None:
    stack, _ = rt
    async with client_for(stack).realtime.connect(model="gpt-realtime") as conn:
        talk = Talk(conn)
        try:
            await talk.wait_for("session.created", timeout=15)

            async def expect_error(raw: str, code: str, param: str | None = None) -> None:
                mark = len(talk.events)
                await conn.send_raw(raw)
                error = (await talk.wait_for("error", after=mark, timeout=10))["error"]
                assert error["code"] == code, error
                assert error["type"] == "invalid_request_error"
                if param is not None:
                    assert error["param"] == param, error

            await expect_error(
                json.dumps({"type": "no.such.event", "event_id": "e1"}), "invalid_value", "type"
            )
            assert talk.of("error")[-1]["error"]["event_id"] == "e1"
            await expect_error("{not json", "invalid_json")
            await expect_error(
                json.dumps({"type": "input_audio_buffer.append", "audio": "***not base64***"}),
                "invalid_value",
                "audio",
            )
            wav_header = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64)).decode()
            await expect_error(
                json.dumps({"type": "input_audio_buffer.append", "audio": wav_header}),
                "invalid_audio",
            )
            odd = base64.b64encode(bytes(101)).decode()
            await expect_error(
                json.dumps({"type": "input_audio_buffer.append", "audio": odd}), "invalid_audio"
            )
            big = base64.b64encode(silence(11_000)).decode()
            await expect_error(
                json.dumps({"type": "input_audio_buffer.append", "audio": big}),
                "audio_too_large",
                "audio",
            )
            await expect_error(
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {"type": "realtime", "audio": {"input": {"format": "mp3"}}},
                    }
                ),
                "invalid_value",
                "session.audio.input.format",
            )
            await expect_error(
                json.dumps(
                    {"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": 5}
                ),
                "invalid_value",
                "item_id",
            )
            await expect_error(
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {"type": "function_call_output", "call_id": "x", "output": "1"},
                    }
                ),
                "invalid_value",
                "item.call_id",
            )
            await expect_error(json.dumps({"type": "response.create"}), "no_input")
            # Still a working session.
            mark = len(talk.events)
            await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
            updated = await talk.wait_for("session.updated", after=mark, timeout=10)
            assert updated["session"]["instructions"] == "Be brief."
        finally:
            await talk.close()
