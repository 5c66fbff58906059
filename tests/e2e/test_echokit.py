"""EchoKit boards on Parley's gateway (/ws/{device_id}), through the whole
stack, with a client that behaves as the echokit_box firmware does: the same
URL and flags, the permessage-deflate offer, StartChat then PCM16 in chunks of
8192 samples at real-time pace, and the server's MessagePack events decoded as
rmp_serde does (compact form only: unit variants as strings, struct variants
as {name: [fields]}, byte vectors as arrays of integers)."""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from parley.config import EchoKitSettings
from services.gateway.core.errors import ClientError
from services.gateway.protocols.echokit import wire
from services.gateway.protocols.echokit.hello import load_hello
from services.gateway.protocols.endpoint import device_secret, device_token
from services.gateway.protocols.opus_codec import DECODED_RATE, OpusDecoder
from tests.e2e.harness import REPO, Stack, start_stack
from tests.e2e.test_grpc_converse import local_gateway
from tests.support.speech import synthesize_speech, with_silence

Transcribe = Callable[[bytes, int], Awaitable[str]]

RATE = 16000
CHUNK_SAMPLES = 8192  # the firmware sends its mic buffer once it holds this many
CHUNK_S = CHUNK_SAMPLES / RATE
GRACE_S = 4.0

# The firmware's ServerEvent enum: variant -> its fields, byte vectors marked.
VARIANTS: dict[str, tuple[str, ...]] = {
    "HelloStart": (),
    "HelloChunk": ("bytes",),
    "HelloEnd": (),
    "ASR": ("str",),
    "Action": ("str",),
    "StartAudio": ("str",),
    "AudioChunk": ("bytes",),
    "AudioChunkWithVowel": ("bytes", "u8"),
    "AudioChunki16": ("i16s", "u8"),
    "EndAudio": (),
    "StartVideo": (),
    "EndVideo": (),
    "EndResponse": (),
    "EndVad": (),
}


def decode_event(payload: bytes) -> tuple[str, list[Any]]:
    """A server event as rmp_serde::from_slice reads what rmp_serde::to_vec wrote."""
    obj = msgpack.unpackb(payload, raw=False)
    if isinstance(obj, str):
        assert obj in VARIANTS and not VARIANTS[obj], f"not a unit variant: {obj!r}"
        return obj, []
    assert isinstance(obj, dict) and len(obj) == 1, f"not an enum: {obj!r}"
    name, fields = next(iter(obj.items()))
    assert name in VARIANTS, f"the firmware has no variant {name!r}"
    kinds = VARIANTS[name]
    assert isinstance(fields, list) and len(fields) == len(kinds), f"{name}: {fields!r}"
    out: list[Any] = []
    for kind, value in zip(kinds, fields, strict=True):
        if kind == "bytes":
            # Vec<u8> without serde_bytes: an array of integers, never bin.
            assert isinstance(value, list) and all(
                isinstance(b, int) and 0 <= b <= 255 for b in value
            ), f"{name}: data is not an array of u8"
            out.append(bytes(value))
        elif kind == "str":
            assert isinstance(value, str)
            out.append(value)
        else:
            assert isinstance(value, int | list)
            out.append(value)
    return name, out


@dataclass
class Event:
    at: float
    name: str
    fields: list[Any]


class Board:
    """One EchoKit board: its connection and everything the server sent it."""

    def __init__(self, ws: ClientConnection, opus: bool) -> None:
        self.ws = ws
        self.opus = opus
        self.events: list[Event] = []
        self.text_frames: list[str] = []
        self.hello = bytearray()
        self.audio = bytearray()  # PCM16 (16 kHz, or 48 kHz decoded from Opus)
        self.decoder = OpusDecoder() if opus else None
        self.max_packet_samples = 0
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        port: int,
        device_id: str,
        *,
        token: str | None = None,
        local_addr: tuple[str, int] | None = None,
        **flags: bool,
    ) -> Board:
        """`token`: the board's own (?token=); `local_addr`: connect from
        another loopback address, as another machine would."""
        params: dict[str, str] = {k: "true" if v else "false" for k, v in flags.items()}
        if token is not None:
            params["token"] = token
        query = urlencode(params)
        url = f"ws://127.0.0.1:{port}/ws/{device_id}" + (f"?{query}" if query else "")
        extra: dict[str, Any] = {"local_addr": local_addr} if local_addr else {}
        ws = await connect(
            url,
            compression=None,
            # What the firmware offers; its WebSocket library cannot take it.
            additional_headers={
                "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"
            },
            max_size=None,
            **extra,
        )
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        return cls(ws, flags.get("opus", False))

    @property
    def rate(self) -> int:
        return DECODED_RATE if self.opus else RATE

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                async with self._changed:
                    if isinstance(message, str):
                        self.text_frames.append(message)  # the firmware drops these
                    else:
                        self._on_event(Event(time.monotonic(), *decode_event(message)))
                    self._changed.notify_all()
        except Exception:
            pass
        finally:
            async with self._changed:
                self._changed.notify_all()

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        if event.name == "HelloChunk":
            self.hello.extend(event.fields[0])
        elif event.name in ("AudioChunk", "AudioChunkWithVowel"):
            data = event.fields[0]
            if self.decoder is None:
                self.audio.extend(data)
            else:
                pcm = self.decoder.decode(data)
                self.max_packet_samples = max(self.max_packet_samples, len(pcm) // 2)
                self.audio.extend(pcm)

    def names(self, after: int = 0) -> list[str]:
        return [e.name for e in self.events[after:]]

    async def wait_for(self, name: str, timeout: float = 60, after: int = 0) -> Event:
        def find() -> Event | None:
            return next((e for e in self.events[after:] if e.name == name), None)

        async with asyncio.timeout(timeout):
            async with self._changed:
                while (found := find()) is None:
                    if self._reader.done():
                        raise AssertionError(f"closed before {name}: {self.names()}")
                    await self._changed.wait()
        return found

    async def closed(self, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.shield(self._reader)

    async def command(self, event: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"event": event, **fields}))

    async def speak(self, speech: bytes, *, until: str | None, tail_s: float) -> float:
        """StartChat, then the utterance (with the firmware's pre-roll and
        `tail_s` of room tone after it) in 8192-sample chunks, each sent once
        it would have been recorded. With `until`, stops as soon as that event
        arrives. Returns when the speech itself ended (monotonic)."""
        audio = with_silence(speech, RATE, 300, int(tail_s * 1000))
        chunk_bytes = CHUNK_SAMPLES * 2
        await self.command("StartChat")
        start = time.monotonic()
        speech_end = start + (0.3 + len(speech) / (2 * RATE))
        mark = len(self.events)
        for i, offset in enumerate(range(0, len(audio), chunk_bytes)):
            await asyncio.sleep(max(0.0, start + (i + 1) * CHUNK_S - time.monotonic()))
            if until is not None and until in self.names(mark):
                break
            chunk = audio[offset : offset + chunk_bytes]
            await self.ws.send(chunk[: len(chunk) - len(chunk) % 2])
        return speech_end

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def gateway_log(stack: Stack) -> str:
    return next(p for p in stack.processes if p.name == "gateway").text()


async def wait_log(stack: Stack, needle: str, timeout: float = 20) -> str:
    async with asyncio.timeout(timeout):
        while needle not in (text := gateway_log(stack)):
            await asyncio.sleep(0.2)
    return text


def session_of(log: str, line_start: str) -> str:
    """The session id in the last gateway log line containing line_start."""
    line = [x for x in log.splitlines() if line_start in x][-1]
    return line.split(line_start, 1)[1].split()[0]


def assert_turn_order(names: list[str]) -> None:
    """ASR, StartAudio, audio, EndAudio, EndResponse: in that order."""
    audio = {"AudioChunk", "AudioChunkWithVowel"}
    asr = names.index("ASR")
    start = names.index("StartAudio", asr)
    first_audio = next(i for i, n in enumerate(names) if n in audio)
    end_audio = names.index("EndAudio", start)
    end = names.index("EndResponse", end_audio)
    assert asr < start < first_audio < end_audio < end, names
    assert not any(n in audio for n in names[end_audio:]), names


def wav_pcm(data: bytes) -> tuple[bytes, int, int]:
    with wave.open(io.BytesIO(data), "rb") as w:
        assert w.getsampwidth() == 2
        return w.readframes(w.getnframes()), w.getframerate(), w.getnchannels()


# --- the wire format, byte for byte ---------------------------------------------------


def test_events_are_encoded_as_rmp_serde_to_vec() -> None:
    # Hand-assembled from rmp_serde's rules: unit variant = str; struct
    # variant = fixmap{name: fixarray[fields]}; Vec<u8> = array of uints.
    assert wire.HELLO_START == b"\xaaHelloStart"
    assert wire.END_VAD == b"\xa6EndVad"
    assert wire.END_RESPONSE == b"\xabEndResponse"
    assert wire.asr("hi") == b"\x81\xa3ASR\x91\xa2hi"
    assert wire.start_audio("") == b"\x81\xaaStartAudio\x91\xa0"
    assert wire.audio_chunk(b"\x01\xc8") == b"\x81\xaaAudioChunk\x91\x92\x01\xcc\xc8"
    assert wire.audio_chunk_with_vowel(b"\x05", 0) == b"\x81\xb3AudioChunkWithVowel\x92\x91\x05\x00"
    big = wire.hello_chunk(bytes(range(256)) * 8)
    assert big[:18] == b"\x81\xaaHelloChunk\x91\xdc\x08\x00\x00\x01"
    assert decode_event(big) == ("HelloChunk", [bytes(range(256)) * 8])


def test_flags_and_commands_parse_as_serde_does() -> None:
    flags = wire.parse_flags("reconnect=true&opus=true&vowel=false&stream_asr=true&x=1")
    assert flags == wire.ConnectFlags(reconnect=True, opus=True, stream_asr=True)
    with pytest.raises(ValueError):
        wire.parse_flags("opus=1")
    assert wire.parse_command('{"event":"StartChat"}') == wire.Command("StartChat")
    assert wire.parse_command('{"event":"Text","input":"hi","extra":1}').input == "hi"
    assert wire.parse_command('{"event":"Select","index":2}').index == 2
    for bad in ("hello", "[]", '{"event":"Dance"}', '{"event":"Text"}', '{"event":"Select"}'):
        with pytest.raises(ClientError):
            wire.parse_command(bad)


def _write_wav(path: Path, pcm: bytes, rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


# The hello is real speech: Piper, so slow.
@pytest.mark.slow
def test_hello_file_is_sent_verbatim_or_converted(tmp_path: Path) -> None:
    speech = synthesize_speech("Hi there.", 22050, steady=True)
    native = tmp_path / "native.wav"
    _write_wav(native, speech, RATE, 1)  # the samples at 16 kHz: only the format matters
    assert load_hello(EchoKitSettings(hello_wav=str(native))) == native.read_bytes()

    stereo = tmp_path / "stereo.wav"
    doubled = b"".join(speech[i : i + 2] * 2 for i in range(0, len(speech), 2))
    _write_wav(stereo, doubled, 22050, 2)
    pcm, rate, channels = wav_pcm(load_hello(EchoKitSettings(hello_wav=str(stereo))))
    assert (rate, channels) == (RATE, 1)
    assert abs(len(pcm) / (2 * RATE) - len(speech) / (2 * 22050)) < 0.01

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF nonsense")
    assert load_hello(EchoKitSettings(hello_wav=str(broken))) == b""
    assert load_hello(EchoKitSettings(hello_wav=str(tmp_path / "missing.wav"))) == b""


# --- through the stack -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def echokit_stack(tmp_path_factory: pytest.TempPathFactory):
    async with start_stack(
        tmp_path_factory.mktemp("echokit"),
        env={"PARLEY_GATEWAY__ECHOKIT__RECONNECT_GRACE_S": str(GRACE_S)},
    ) as running:
        yield running


@pytest.mark.slow
async def test_hello_then_push_to_talk_turn(echokit_stack: Stack, transcribe: Transcribe) -> None:
    board = await Board.connect(echokit_stack.gateway_port, "kit-submit")
    try:
        await board.wait_for("HelloEnd", timeout=120)  # the first connection may synthesize it
        assert board.names()[0] == "HelloStart" and board.names().count("HelloEnd") == 1
        pcm, rate, channels = wav_pcm(bytes(board.hello))
        assert (rate, channels) == (RATE, 1)
        heard = (await transcribe(pcm, rate)).lower()
        assert "hello" in heard and "listening" in heard, heard

        mark = len(board.events)
        speech = synthesize_speech("What is the capital of France?", RATE, steady=True)
        await board.speak(speech, until=None, tail_s=0.4)
        await board.command("Submit")
        await board.wait_for("EndResponse", timeout=90, after=mark)
        names = board.names(mark)
        assert "EndVad" not in names  # push-to-talk: the board ended the turn
        assert_turn_order(names)
        asr = next(e for e in board.events[mark:] if e.name == "ASR").fields[0].lower()
        assert "capital" in asr and "france" in asr, asr
        spoken = await transcribe(bytes(board.audio), board.rate)
        assert len(spoken.split()) >= 2, spoken
        assert not board.text_frames
    finally:
        await board.close()


@pytest.mark.slow
async def test_stream_asr_turn_with_opus_as_the_firmware_connects(
    echokit_stack: Stack, transcribe: Transcribe
) -> None:
    board = await Board.connect(
        echokit_stack.gateway_port, "kit-stream", opus=True, vowel=True, stream_asr=True
    )
    try:
        await board.wait_for("HelloEnd", timeout=120)
        mark = len(board.events)
        speech = synthesize_speech("How many legs does a spider have?", RATE, steady=True)
        await board.speak(speech, until="EndVad", tail_s=4.0)
        await board.wait_for("EndResponse", timeout=90, after=mark)
        names = board.names(mark)
        assert names.index("EndVad") < names.index("ASR", names.index("EndVad")), names
        assert_turn_order(names)
        assert "AudioChunkWithVowel" in names and "AudioChunk" not in names
        final = [e.fields[0] for e in board.events[mark:] if e.name == "ASR"][-1].lower()
        assert "legs" in final and "spider" in final, final
        # Opus packets the firmware's 120 ms decode buffer holds (at 16 kHz: 1920).
        assert 0 < board.max_packet_samples <= DECODED_RATE * 120 // 1000
        spoken = await transcribe(bytes(board.audio), board.rate)
        assert len(spoken.split()) >= 2, spoken
    finally:
        await board.close()


@pytest.mark.slow
async def test_reconnect_continues_the_session_and_plain_connect_starts_afresh(
    echokit_stack: Stack,
) -> None:
    port = echokit_stack.gateway_port
    first = await Board.connect(port, "kit-again", opus=True, stream_asr=True)
    await first.wait_for("HelloEnd", timeout=120)
    await first.command("Text", input="What is two plus two?")
    assert (await first.wait_for("ASR")).fields == ["What is two plus two?"]
    await first.wait_for("EndResponse", timeout=90)
    assert "AudioChunk" in first.names() and "AudioChunkWithVowel" not in first.names()
    await first.close()
    log = await wait_log(echokit_stack, "echokit kit-again disconnected")
    opened = session_of(log, "echokit kit-again opened session ")

    again = await Board.connect(port, "kit-again", reconnect=True, opus=True, stream_asr=True)
    try:
        log = await wait_log(echokit_stack, "echokit kit-again reconnected to session ")
        assert session_of(log, "echokit kit-again reconnected to session ") == opened
        await again.command("Text", input="And three plus three?")
        await again.wait_for("EndResponse", timeout=90)
        assert "HelloStart" not in again.names()  # the real server greets fresh connections only
        assert_turn_order(again.names())

        fresh = await Board.connect(port, "kit-again", opus=True, stream_asr=True)
        try:
            await fresh.wait_for("HelloEnd", timeout=30)
            await again.closed()  # the old connection is closed for the new one
            # The hello goes out before the new session opens: wait for its line.
            async with asyncio.timeout(20):
                while (log := gateway_log(echokit_stack)).count(
                    "echokit kit-again opened session "
                ) < 2:
                    await asyncio.sleep(0.2)
            assert session_of(log, "echokit kit-again opened session ") != opened
            assert f"echokit kit-again: session {opened} closed (replaced" in log
        finally:
            await fresh.close()
    finally:
        await again.close()


@pytest.mark.slow
async def test_reconnect_while_answering_barges_in(echokit_stack: Stack) -> None:
    port = echokit_stack.gateway_port
    board = await Board.connect(port, "kit-barge", stream_asr=True)
    await board.wait_for("HelloEnd", timeout=120)
    await board.command("Text", input="Tell me a long story about a dragon and a knight.")
    await board.wait_for("AudioChunk", timeout=90)
    # The firmware's barge-in: a new connection with reconnect=true, then StartChat.
    again = await Board.connect(port, "kit-barge", reconnect=True, stream_asr=True)
    try:
        await board.closed()
        await wait_log(echokit_stack, "interrupted (client)")
        await asyncio.sleep(1.5)
        assert again.names() == []  # nothing of the old answer reaches the new connection
        await again.command("Text", input="What is the capital of Italy?")
        await again.wait_for("EndResponse", timeout=90)
        assert_turn_order(again.names())
    finally:
        await again.close()
        await board.close()


@pytest.mark.slow
async def test_bad_input_is_logged_and_skipped(echokit_stack: Stack) -> None:
    port = echokit_stack.gateway_port
    for query, status in (("opus=yes", 400), ("record=true", 501)):
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{port}/ws/kit-bad?{query}")
        assert refused.value.response.status_code == status
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{port}/ws/a/b")
    assert refused.value.response.status_code == 404

    board = await Board.connect(port, "kit-bad")
    try:
        await board.wait_for("HelloEnd", timeout=120)
        mark = len(board.events)
        for text in ("not json", "[1, 2]", '{"event": "Dance"}', '{"event": "Text"}'):
            await board.ws.send(text)
        await board.command("Select", index=-1)
        await board.command("Text", input="   ")
        await board.ws.send(bytes(1001))  # odd length: not PCM16
        await board.ws.send(bytes(70_000))  # over gateway.max_frame_bytes
        await board.ws.send(b"RIFF" + bytes(500))  # a WAV file, not raw PCM
        await board.command("Select", index=0)  # valid, but Parley offers no choices
        await board.command("StartRecord")
        await board.command("Text", input="What colour is the sky?")
        await board.wait_for("EndResponse", timeout=90, after=mark)
        assert board.names(mark)[0] == "ASR"  # nothing was answered before the real input
        assert_turn_order(board.names(mark))
        log = gateway_log(echokit_stack)
        assert log.count("echokit kit-bad: ignored") == 9, log[-3000:]
        assert "odd length" in log and "exceeds the limit" in log and "unknown command" in log
    finally:
        await board.close()


@pytest.mark.slow
async def test_board_vanishing_mid_answer_is_cleaned_up(echokit_stack: Stack) -> None:
    board = await Board.connect(echokit_stack.gateway_port, "kit-gone", opus=True)
    await board.wait_for("HelloEnd", timeout=120)
    log = await wait_log(echokit_stack, "echokit kit-gone opened session ")
    session = session_of(log, "echokit kit-gone opened session ")
    await board.command("Text", input="Tell me a long story about the sea.")
    await board.wait_for("AudioChunk", timeout=90)
    board.ws.transport.abort()  # the board loses power: no close frame
    await wait_log(echokit_stack, "echokit kit-gone disconnected")
    closed = f"echokit kit-gone: session {session} closed (no reconnect within the grace period)"
    log = await wait_log(echokit_stack, closed, GRACE_S + 10)
    for leak in ("Task was destroyed", "exception was never retrieved", "Traceback"):
        assert leak not in log, log[-3000:]


QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky?",
    "Name a large animal.",
    "What is two plus two?",
)


@pytest.mark.slow
async def test_end_of_speech_to_first_audio(echokit_stack: Stack) -> None:
    board = await Board.connect(
        echokit_stack.gateway_port, "kit-latency", opus=True, vowel=True, stream_asr=True
    )
    latencies: list[float] = []
    try:
        await board.wait_for("HelloEnd", timeout=120)
        for question in QUESTIONS:
            mark = len(board.events)
            speech = synthesize_speech(question, RATE, steady=True)
            speech_end = await board.speak(speech, until="EndVad", tail_s=4.0)
            first = await board.wait_for("AudioChunkWithVowel", timeout=90, after=mark)
            latencies.append((first.at - speech_end) * 1000)
            await board.wait_for("EndResponse", timeout=90, after=mark)
    finally:
        await board.close()
    median = statistics.median(latencies)
    report = {
        "protocol": "echokit (opus, vowel, stream_asr)",
        "measure": "end of speech -> first downlink audio (ms)",
        "uplink": f"PCM16 16 kHz, {CHUNK_SAMPLES}-sample chunks at real-time pace",
        "turns_ms": [round(x) for x in latencies],
        "median_ms": round(median),
    }
    out = Path(REPO) / "var" / "echokit-latency.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nechokit end of speech -> first audio: median {median:.0f} ms, turns {latencies}")
    assert len(latencies) == 5


@pytest.mark.slow
async def test_takeover_without_the_device_token_is_refused(echokit_stack: Stack) -> None:
    # A gateway with a device secret (as any gateway with an auth token has):
    # an id alone, from another address, takes over nothing.
    async with local_gateway(
        echokit_stack, device_secret="test-device-secret", echokit={"send_hello": False}
    ) as gw:
        port = gw.port
        victim = await Board.connect(port, "kit-victim", stream_asr=True)
        neighbour = ("127.0.0.2", 0)
        try:
            for flags in ({"reconnect": True}, {}):
                intruder = await Board.connect(port, "kit-victim", local_addr=neighbour, **flags)
                await intruder.closed()
                assert intruder.ws.close_code == 1008, flags
            with pytest.raises(InvalidStatus) as refused:
                await Board.connect(port, "kit-victim", token="guess", local_addr=neighbour)
            assert refused.value.response.status_code == 401
            # The board itself was never disturbed.
            await victim.command("Text", input="What is two plus two?")
            await victim.wait_for("EndResponse", timeout=90)

            # Its own token resumes it from anywhere.
            secret = device_secret(gw.settings)
            assert secret is not None
            token = device_token(secret, "echokit", "kit-victim")
            owner = await Board.connect(
                port, "kit-victim", token=token, local_addr=neighbour, reconnect=True
            )
            try:
                await victim.closed()
                await owner.command("Text", input="And three plus three?")
                await owner.wait_for("EndResponse", timeout=90)
            finally:
                await owner.close()
        finally:
            await victim.close()
