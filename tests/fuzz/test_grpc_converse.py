"""Fuzzing gRPC Converse: random ConverseRequest sequences (start with random
settings and rates, audio, text, commit, interrupt, settings_update,
playback_mark, end) on one stream, a new stream only when a case starts one
or the server ended the last. Settings are typed here, so the fuzzing is in
the values: NaN and infinite thresholds, uint32 extremes, huge prompts and
word lists, enum values no version defines. Raw HTTP/2 bytes are out of
scope (the grpc library's own parser)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from hypothesis import given

from parley.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from tests.fuzz import health
from tests.fuzz.strategies import CASES, FUZZ, cases, huge_string, text

pytestmark = pytest.mark.slow

Request = gateway_pb2.ConverseRequest
UINT32 = [0, 1, 100, 700, 8000, 16000, 24000, 48000, 12345, 2**31, 2**32 - 1]
FLOATS = [0.0, 0.5, 1.0, -1.0, 2.0, float("nan"), float("inf"), -float("inf"), 1e-45]
# A handler's own exception reaches the client as UNKNOWN; INTERNAL is the
# library's. Anything else is the gateway refusing on purpose.
FAILURES = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
STREAM_END_TIMEOUT_S = 30.0
KINDS, WEIGHTS = zip(
    *{
        "start": 3,
        "audio": 30,
        "text_input": 1,
        "commit": 1,
        "interrupt": 8,
        "settings_update": 20,
        "playback_mark": 10,
        "end": 2,
        "empty": 4,
    }.items(),
    strict=True,
)


def settings(rng: random.Random) -> common_pb2.Settings:
    s = common_pb2.Settings()
    for name, make in (
        ("vad_threshold", lambda: rng.choice(FLOATS)),
        ("min_speech_ms", lambda: rng.choice(UINT32)),
        ("silence_ms", lambda: rng.choice(UINT32)),
        ("max_utterance_ms", lambda: rng.choice(UINT32)),
        ("min_interrupt_ms", lambda: rng.choice(UINT32)),
        ("language", lambda: rng.choice(["en", "fr", "", "xx", text(rng, 20)])),
        (
            "system_prompt",
            lambda: text(rng) if rng.random() < 0.95 else huge_string(rng, 1_000_000),
        ),
        ("voice", lambda: text(rng, 20)),
        ("barge_in", lambda: rng.random() < 0.5),
        ("vad_stats", lambda: rng.random() < 0.5),
        ("early_answer", lambda: rng.random() < 0.5),
        ("turn_detection", lambda: rng.random() < 0.5),
        ("turn_detector", lambda: rng.choice([0, 1, 2, 3, 99, -1])),
    ):
        if rng.random() < 0.25:
            setattr(s, name, make())
    if rng.random() < 0.1:
        count = rng.choice([0, 1, 5, 1000, 100_000])
        s.backchannels.words.extend(text(rng, 10) for _ in range(min(count, 50)))
        s.backchannels.words.extend(["mm-hm"] * max(count - 50, 0))
    return s


def request(rng: random.Random) -> Request:
    # start and end rarely: each new stream places a session on every stage
    # (~50 ms of the two cores); the rest is what a stream carries.
    kind = rng.choices(KINDS, WEIGHTS)[0]
    if kind == "start":
        return Request(
            start=Request.Start(
                settings=settings(rng) if rng.random() < 0.7 else None,
                input_sample_rate=rng.choice(UINT32),
                output_sample_rate=rng.choice(UINT32),
                resume_session_id=rng.choice(["", "", text(rng, 20)]),
                resume_token=rng.choice(["", text(rng, 20)]),
            )
        )
    if kind == "audio":
        size = rng.choice([0, 1, 3, 320, 640, 1920, 63_999, 64_000, 64_002, 200_000])
        return Request(
            audio=Request.Audio(pcm=rng.randbytes(min(size, 2000)) + bytes(max(size - 2000, 0)))
        )
    if kind == "text_input":
        return Request(text_input=Request.TextInput(text=rng.choice(["", " ", text(rng)])))
    if kind == "commit":
        return Request(commit=Request.Commit())
    if kind == "interrupt":
        return Request(interrupt=Request.Interrupt())
    if kind == "settings_update":
        return Request(
            settings_update=Request.SettingsUpdate(
                settings=settings(rng) if rng.random() < 0.8 else None,
                input_sample_rate=rng.choice(UINT32),
                output_sample_rate=rng.choice(UINT32),
            )
        )
    if kind == "playback_mark":
        return Request(
            playback_mark=Request.PlaybackMark(
                response_id=text(rng, 20), played_ms=rng.choice(FLOATS + [1e300, -5.0])
            )
        )
    if kind == "end":
        return Request(end=Request.End(reason=text(rng, 20)))
    return Request()  # no field of the oneof set


def sequence(rng: random.Random) -> list[Request]:
    return [request(rng) for _ in range(rng.randint(1, 4))]


@dataclass
class Stream:
    outbox: queue.Queue[Request | None]
    ended: threading.Event = field(default_factory=threading.Event)
    code: grpc.StatusCode | None = None
    details: str = ""


@dataclass
class GrpcDoor:
    stub: gateway_pb2_grpc.GatewayStub
    stream: Stream | None = None
    streams: int = 0
    cases: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def _read(self, stream: Stream, replies: Iterator[gateway_pb2.ConverseResponse]) -> None:
        try:
            for _ in replies:
                pass
            stream.code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            stream.code, stream.details = exc.code(), str(exc.details())
        finally:
            name = stream.code.name if stream.code else "none"
            self.codes[name] = self.codes.get(name, 0) + 1
            if stream.code in FAILURES:
                self.failures.append(f"{stream.code}: {stream.details}")
            stream.ended.set()

    def _finish(self) -> None:
        """Half-close the current stream and wait for the server to end it:
        one stream at a time, so the fuzzing never outruns the gateway."""
        if self.stream is None:
            return
        self.stream.outbox.put(None)
        assert self.stream.ended.wait(STREAM_END_TIMEOUT_S), "a stream the gateway never ended"
        self.stream = None

    def _open(self, start: Request) -> Stream:
        stream = Stream(queue.Queue())
        stream.outbox.put(start)
        replies = self.stub.Converse(iter(stream.outbox.get, None))
        threading.Thread(target=self._read, args=(stream, replies), daemon=True).start()
        self.streams += 1
        return stream

    def send(self, requests: list[Request]) -> None:
        self.cases += 1
        for req in requests:
            if req.WhichOneof("request") == "start":
                self._finish()
                self.stream = self._open(req)
                continue
            if self.stream is None or self.stream.ended.is_set():
                self._finish()
                self.stream = self._open(Request(start=Request.Start()))
            self.stream.outbox.put(req)
        assert not self.failures, self.failures

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            self._finish()


async def test_grpc_converse_survives_generated_request_sequences(fuzz_stack, question) -> None:
    before = await health.snapshot(fuzz_stack)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{fuzz_stack.grpc_port}",
        options=[("grpc.max_send_message_length", 8 * 2**20)],
    )
    door = GrpcDoor(gateway_pb2_grpc.GatewayStub(channel))

    @FUZZ
    @given(cases(sequence))
    def case(requests: list[Request]) -> None:
        door.send(requests)

    try:
        await asyncio.to_thread(case)
    finally:
        await asyncio.to_thread(door.close)
        channel.close()
    print(f"grpc: {door.cases} cases, {door.streams} streams, ends {door.codes}")
    assert door.cases >= CASES
    assert not door.failures, door.failures
    await health.still_serving(fuzz_stack, question, before)
