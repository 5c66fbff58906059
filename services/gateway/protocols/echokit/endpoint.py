"""EchoKit boards (second-state/echokit_box firmware, protocol of
second-state/echokit_server) at /ws/{device_id}; docs/echokit.md.

A board's conversation outlives its WebSocket: the firmware reconnects with
reconnect=true to speak over an answer or to start a new chat, and expects to
carry on where it was. So one `Device` per board id holds the GatewaySession
and is the session's ClientSink; each connection (`Link`) is attached to it in
turn, and a board that drops off keeps its session for a grace period."""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley.config import EchoKitSettings, ParleySettings
from parley.logs import session_id_var
from parley.v1 import common_pb2
from services.gateway import echokit_wire as wire
from services.gateway.audio_check import check_pcm16
from services.gateway.echokit_hello import load_hello
from services.gateway.endpoints import check_token, refuse
from services.gateway.opus_codec import OpusEncoder
from services.gateway.session import ClientError, GatewaySession

if TYPE_CHECKING:
    from services.gateway.service import Gateway

log = logging.getLogger("parley.gateway.echokit")

PREFIX = "/ws/"
SAMPLE_RATE = 16000
# The real server sends 120 ms packets; the shared encoder tops out at 60 ms,
# which the firmware's 120 ms decode buffer takes just as well.
OPUS_FRAME_MS = 60
HELLO_CHUNK_BYTES = 2048
MAX_DEVICE_ID = 128
MAX_TEXT_CHARS = 4000
# A board sends Submit right behind its last audio frame: let the vad stage
# take in the audio still on its way before the turn is cut.
SUBMIT_SETTLE_S = 0.15
# An answer whose text is done but whose audio never starts (tts down) still
# ends for the board after this long.
AUDIO_WAIT_S = 10.0


def device_id_of(path: str) -> str | None:
    """The {id} of /ws/{id}: one non-empty path segment."""
    if not path.startswith(PREFIX):
        return None
    raw = path[len(PREFIX) :]
    if not raw or "/" in raw:
        return None
    device_id = unquote(raw)
    if len(device_id) > MAX_DEVICE_ID or not device_id.isprintable():
        return None
    return device_id


@dataclass
class Link:
    """One WebSocket connection of a board."""

    ws: ServerConnection
    flags: wire.ConnectFlags

    async def send(self, payload: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(payload)

    async def send_hello(self, wav: bytes) -> None:
        await self.send(wire.HELLO_START)
        for i in range(0, len(wav), HELLO_CHUNK_BYTES):
            await self.send(wire.hello_chunk(wav[i : i + HELLO_CHUNK_BYTES]))
        await self.send(wire.HELLO_END)


@dataclass
class _Answer:
    """One response of the agent, as the board sees it: StartAudio, audio,
    EndAudio, then EndResponse once both text and audio are over."""

    turn_id: int
    stale: bool = False  # from before a reconnect: never shown to the board
    text: str = ""
    audio_started: bool = False
    audio_open: bool = False
    audio_done: bool = False
    text_done: bool = False
    finished: bool = False
    watchdog: asyncio.Task[None] | None = field(default=None, repr=False)


class Device:
    """One board's conversation; the ClientSink of its GatewaySession."""

    def __init__(self, device_id: str, settings: ParleySettings) -> None:
        self.device_id = device_id
        self.settings = settings
        self.session: GatewaySession | None = None
        self.link: Link | None = None
        self.ended = False  # the session is over (goodbye, or replaced)
        self.grace: asyncio.Task[None] | None = None
        self.stream_asr = False
        self.listening = False  # stream_asr: a StartChat opened the turn
        self.speaking = False  # the vad hears the user
        self.awaiting_answer = False  # a turn ended; EndResponse not yet sent
        self.last_turn = 0
        self.min_turn = 1  # turns before a reconnect are not this board's any more
        self.text_pending = 0  # Text commands whose answers are still to start
        self.answers: dict[str, _Answer] = {}
        self.encoder: OpusEncoder | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------
    async def open(self, gateway: Gateway, link: Link) -> None:
        cfg = self.settings.gateway.echokit
        self.stream_asr = link.flags.stream_asr
        session, failures = await gateway.open_session(self, "echokit", self._mode_settings())
        self.session = session
        try:
            await session.update_settings(None, SAMPLE_RATE, SAMPLE_RATE)
        except ClientError as exc:
            log.error("echokit %s: cannot run at 16 kHz: %s", self.device_id, exc)
        session.playback.lead_ms = cfg.playback_lead_ms
        session.playback.on_sent = self._on_audio_sent
        self.link = link
        await session.report_placement(failures)

    def _mode_settings(self) -> common_pb2.Settings:
        # Without stream_asr the board ends each turn with Submit (push-to-talk),
        # so silence must not; with it, the vad's own timing ends the turn.
        return common_pb2.Settings(turn_detection=self.stream_asr)

    async def reattach(self, link: Link) -> None:
        """A reconnect=true connection takes over: whatever was under way is
        interrupted (that is how the firmware barges in) and kept from it."""
        assert self.session is not None
        if self.grace is not None:
            self.grace.cancel()
            self.grace = None
        old, self.link = self.link, None
        if old is not None:
            self.spawn(old.ws.close(1000, "replaced by a reconnect"))
        await self.session.interrupt()
        if self.speaking:
            # An utterance cut off by the drop: end it, its answer is stale.
            await self.session.commit()
        for answer in self.answers.values():
            self._drop(answer)
        self.min_turn = self.last_turn + 1
        self.text_pending = 0
        self.listening = self.speaking = self.awaiting_answer = False
        if link.flags.stream_asr != self.stream_asr:
            self.stream_asr = link.flags.stream_asr
            await self.session.update_settings(self._mode_settings())
        self.link = link

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in [*self.tasks, self.grace]:
            if task is not None and task is not current:
                task.cancel()

    # --- board -> session --------------------------------------------------------
    async def serve_link(self, link: Link) -> None:
        try:
            async for frame in link.ws:
                if self.link is not link:
                    break
                try:
                    if isinstance(frame, bytes):
                        await self._on_audio(frame)
                    else:
                        await self._on_command(frame)
                except ClientError as exc:
                    # EchoKit has no error event; the real server skips such frames.
                    log.warning("echokit %s: ignored: %s", self.device_id, exc)
        except ConnectionClosed:
            pass

    async def _on_audio(self, frame: bytes) -> None:
        assert self.session is not None
        check_pcm16(frame, self.settings.gateway.max_frame_bytes)
        if self.stream_asr and not self.listening:
            # As the real server: audio before StartChat (or after EndVad) is not a turn.
            return
        await self.session.push_audio(frame)

    async def _on_command(self, text: str) -> None:
        assert self.session is not None
        cmd = wire.parse_command(text)
        if cmd.event == "StartChat":
            self.listening = True
        elif cmd.event == "Submit":
            await self._submit()
        elif cmd.event == "Text":
            await self._text(cmd.input)
        elif cmd.event == "Select":
            log.info("echokit %s: Select ignored (Parley offers no choices)", self.device_id)
        # StartRecord: the real server skips it too.

    async def _submit(self) -> None:
        assert self.session is not None
        if self.stream_asr:
            log.info("echokit %s: Submit in stream_asr mode ends the turn now", self.device_id)
        self.listening = False
        await asyncio.sleep(SUBMIT_SETTLE_S)
        if self.speaking:
            await self.session.commit()
        elif not self.awaiting_answer:
            # Nothing was heard: the real server answers an empty input so.
            await self._send(wire.END_RESPONSE)

    async def _text(self, value: str) -> None:
        assert self.session is not None
        text = value.strip()
        if not text or len(text) > MAX_TEXT_CHARS:
            raise ClientError("bad_command", f"Text input must be 1-{MAX_TEXT_CHARS} characters")
        self.listening = False
        self.text_pending += 1
        self.awaiting_answer = True
        # The real server shows typed input as the recognized text.
        await self._send(wire.asr(text))
        await self.session.text_input(text)

    # --- session -> board (ClientSink) ---------------------------------------------
    async def _send(self, payload: bytes) -> None:
        link = self.link
        if link is not None:
            await link.send(payload)

    async def send_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        turn_id = int(event.get("turn_id") or 0)
        if kind == "user_speech_start":
            self.last_turn = max(self.last_turn, turn_id)
            self.speaking = turn_id >= self.min_turn
        elif kind == "user_speech_end":
            self.last_turn = max(self.last_turn, turn_id)
            if turn_id >= self.min_turn:
                self.speaking = False
                self.awaiting_answer = True
                if self.stream_asr:
                    self.listening = False
                    await self._send(wire.END_VAD)
        elif kind == "transcription":
            await self._on_transcription(event, turn_id)
        elif kind == "response_start":
            self._on_response_start(event["response_id"], turn_id)
        else:
            answer = self.answers.get(str(event.get("response_id", "")))
            if answer is not None:
                await self._on_answer_event(answer, event)
            elif kind == "error":
                await self._on_error(event, turn_id)
            elif kind == "session_end":
                self.ended = True

    async def _on_transcription(self, event: dict[str, Any], turn_id: int) -> None:
        if turn_id < self.min_turn:
            return
        text = str(event.get("text", "")).strip()
        if not event.get("final"):
            if self.stream_asr and text:
                await self._send(wire.asr(text))
        elif text:
            await self._send(wire.asr(text))
        elif self.awaiting_answer:
            # No words, so no answer follows: the board goes back to listening.
            self.awaiting_answer = False
            await self._send(wire.END_RESPONSE)

    def _on_response_start(self, response_id: str, turn_id: int) -> None:
        if turn_id == 0 and self.text_pending:
            self.text_pending -= 1
            stale = False
        else:
            stale = turn_id == 0 or turn_id < self.min_turn
        answer = _Answer(turn_id, stale=stale)
        self.answers[response_id] = answer
        for old in [rid for rid, a in self.answers.items() if a.finished][:-4]:
            del self.answers[old]
        if stale and self.session is not None:
            log.info("echokit %s: answer to a turn before the reconnect stopped", self.device_id)
            answer.finished = True
            self.spawn(self.session.interrupt())

    async def _on_answer_event(self, answer: _Answer, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if answer.stale:
            return
        if kind == "response_text":
            answer.text += str(event.get("delta", ""))
        elif kind == "tts_start":
            await self._start_audio(answer)
        elif kind == "tts_end":
            answer.audio_done = True
            await self._end_audio(answer)
            if answer.text_done:
                await self._finish(answer)
        elif kind == "playback_cleared":
            # The board has no "clear": ending the audio is all it can be told.
            await self._end_audio(answer)
        elif kind == "response_end":
            answer.text_done = True
            if event.get("status") != "completed" or answer.audio_done:
                await self._finish(answer)
            elif not answer.audio_started:
                answer.watchdog = asyncio.create_task(self._finish_later(answer))
        elif kind == "error":
            log.warning("echokit %s: %s", self.device_id, event.get("message"))

    async def _on_error(self, event: dict[str, Any], turn_id: int) -> None:
        log.warning(
            "echokit %s: %s error %s: %s",
            self.device_id,
            event.get("stage"),
            event.get("code"),
            event.get("message"),
        )
        if event.get("stage") == "asr" and turn_id >= self.min_turn and self.awaiting_answer:
            # A failed transcription means no answer: release the board.
            self.awaiting_answer = False
            await self._send(wire.END_RESPONSE)

    async def _start_audio(self, answer: _Answer) -> None:
        if answer.finished or answer.audio_open:
            return
        answer.audio_started = answer.audio_open = True
        link = self.link
        # A fresh encoder per stretch of audio, as the real server resets its own.
        self.encoder = OpusEncoder(SAMPLE_RATE, OPUS_FRAME_MS) if link and link.flags.opus else None
        await self._send(wire.start_audio(answer.text.strip()))

    async def send_audio(self, pcm: bytes) -> None:
        link = self.link
        if link is None or self.session is None:
            return
        answer = self.answers.get(self.session.playback.response_id)
        if answer is None or answer.stale or not answer.audio_open:
            return
        if self.encoder is None:
            await link.send(wire.audio_chunk(pcm))
            return
        for packet in self.encoder.encode(pcm):
            await link.send(self._opus_chunk(link, packet))

    @staticmethod
    def _opus_chunk(link: Link, packet: bytes) -> bytes:
        # No lip sync analysis here: vowel 0 keeps the avatar's mouth at rest.
        if link.flags.vowel:
            return wire.audio_chunk_with_vowel(packet, 0)
        return wire.audio_chunk(packet)

    async def _on_audio_sent(self, response_id: str) -> None:
        """Every frame of the response has left: EndAudio now, not once it has
        been heard. The firmware times StartAudio..EndAudio against the audio's
        length and stops streaming playback if that comes out slower than real
        time, which waiting for the listener always would."""
        answer = self.answers.get(response_id)
        if answer is not None and not answer.stale:
            try:
                await self._end_audio(answer)
            except Exception:  # never into the playback loop
                log.exception("echokit %s: EndAudio failed", self.device_id)

    async def _end_audio(self, answer: _Answer) -> None:
        if not answer.audio_open:
            return
        answer.audio_open = False
        encoder, self.encoder = self.encoder, None
        link = self.link
        if encoder is not None and link is not None:
            for packet in encoder.flush():
                await link.send(self._opus_chunk(link, packet))
        await self._send(wire.END_AUDIO)

    async def _finish(self, answer: _Answer) -> None:
        if answer.finished:
            return
        answer.finished = True
        if answer.watchdog is not None and answer.watchdog is not asyncio.current_task():
            answer.watchdog.cancel()
        await self._end_audio(answer)
        self.awaiting_answer = False
        await self._send(wire.END_RESPONSE)

    async def _finish_later(self, answer: _Answer) -> None:
        await asyncio.sleep(AUDIO_WAIT_S)
        if not answer.audio_started and not answer.finished:
            log.warning("echokit %s: answer without audio, ending it", self.device_id)
            await self._finish(answer)

    def _drop(self, answer: _Answer) -> None:
        """Ends an answer for the session's sake without telling the board."""
        answer.stale = answer.finished = True
        answer.audio_open = False
        if answer.watchdog is not None:
            answer.watchdog.cancel()

    async def close(self, reason: str) -> None:
        """The session ends the conversation (the agent said goodbye)."""
        self.ended = True
        link = self.link
        if link is not None:
            await link.ws.close(1000, reason)

    def shutdown(self) -> None:
        for answer in self.answers.values():
            self._drop(answer)
        self.cancel_tasks()


class EchoKitEndpoint:
    """/ws/{device_id}?reconnect=&opus=&vowel=&stream_asr= (all false by default)."""

    name = "echokit"

    def __init__(self, settings: ParleySettings) -> None:
        self.settings = settings
        self.cfg: EchoKitSettings = settings.gateway.echokit
        self.devices: dict[str, Device] = {}
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._hello: bytes | None = None
        self._hello_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def matches(self, path: str) -> bool:
        return device_id_of(path) is not None

    def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        device_id = device_id_of(url.path)
        try:
            flags = wire.parse_flags(url.query)
        except ValueError as exc:
            return refuse(connection, http.HTTPStatus.BAD_REQUEST, str(exc))
        if flags.record:
            return refuse(
                connection, http.HTTPStatus.NOT_IMPLEMENTED, "record mode is not supported"
            )
        allowed = self.cfg.device_allowlist
        if allowed is not None and device_id not in allowed:
            return refuse(connection, http.HTTPStatus.FORBIDDEN, "device not allowed")
        if (refused := check_token(connection, request, self.cfg.auth_token)) is not None:
            return refused
        # The firmware offers permessage-deflate but its WebSocket library
        # rejects compressed frames (as the real server never sends them).
        if "Sec-WebSocket-Extensions" in request.headers:
            del request.headers["Sec-WebSocket-Extensions"]
        return None

    async def serve(self, gateway: Gateway, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        device_id = device_id_of(url.path)
        assert device_id is not None  # matched already
        link = Link(ws, wire.parse_flags(url.query))
        device = await self._attach(gateway, device_id, link)
        try:
            await device.serve_link(link)
        finally:
            await self._detach(gateway, device, link)

    @contextlib.asynccontextmanager
    async def _device_lock(self, device_id: str) -> AsyncIterator[None]:
        # Per board, so one board's slow placement never holds up another's.
        lock, users = self._locks.setdefault(device_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[device_id]

    async def _hello_wav(self) -> bytes:
        async with self._hello_lock:
            if self._hello is None:
                self._hello = await asyncio.to_thread(load_hello, self.cfg)
            return self._hello

    async def _attach(self, gateway: Gateway, device_id: str, link: Link) -> Device:
        async with self._device_lock(device_id):
            device = self.devices.get(device_id)
            if device is not None and link.flags.reconnect and not device.ended:
                assert device.session is not None
                session_id_var.set(device.session.session_id)
                await device.reattach(link)
                log.info(
                    "echokit %s reconnected to session %s",
                    device_id,
                    device.session.session_id,
                )
                return device
            if device is not None:
                if device.session is not None:
                    session_id_var.set(device.session.session_id)
                await self._retire(gateway, device, "replaced by a new connection")
            # The real server greets fresh connections only, before anything else.
            if self.cfg.send_hello and not link.flags.reconnect:
                await link.send_hello(await self._hello_wav())
            device = Device(device_id, self.settings)
            await device.open(gateway, link)
            assert device.session is not None
            self.devices[device_id] = device
            log.info(
                "echokit %s opened session %s (%s)",
                device_id,
                device.session.session_id,
                ", ".join(f"{k}={v}" for k, v in vars(link.flags).items() if v) or "no flags",
            )
            return device

    async def _detach(self, gateway: Gateway, device: Device, link: Link) -> None:
        async with self._device_lock(device.device_id):
            if device.link is not link:
                return  # replaced by a newer connection already
            device.link = None
            device.listening = False
            if device.ended or self.cfg.reconnect_grace_s <= 0:
                await self._retire(gateway, device, "device disconnected")
                return
            assert device.session is not None
            # Nobody hears the rest of the answer; the history keeps what was.
            await device.session.interrupt()
            device.grace = asyncio.create_task(self._expire(gateway, device))
            log.info(
                "echokit %s disconnected; session kept %.0f s for a reconnect",
                device.device_id,
                self.cfg.reconnect_grace_s,
            )

    async def _expire(self, gateway: Gateway, device: Device) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.reconnect_grace_s
        # In short steps: a draining gateway should not wait out the grace.
        while loop.time() < deadline and not gateway.draining:
            await asyncio.sleep(min(1.0, deadline - loop.time()))
        async with self._device_lock(device.device_id):
            if device.link is None and self.devices.get(device.device_id) is device:
                await self._retire(gateway, device, "no reconnect within the grace period")

    async def _retire(self, gateway: Gateway, device: Device, reason: str) -> None:
        """Closes the board's connection (if any) and its session."""
        device.ended = True
        device.shutdown()
        if self.devices.get(device.device_id) is device:
            del self.devices[device.device_id]
        link, device.link = device.link, None
        if link is not None:
            # Not awaited: a dead peer would hold the lock for the close timeout.
            task = asyncio.create_task(link.ws.close(1000, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if device.session is not None:
            await gateway.close_session(device.session, reason)
            log.info(
                "echokit %s: session %s closed (%s)",
                device.device_id,
                device.session.session_id,
                reason,
            )
