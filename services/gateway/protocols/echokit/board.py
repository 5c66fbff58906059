"""One EchoKit board's conversation as the firmware sees it (docs/echokit.md):
its commands and audio into the session, the session's typed events out as
MessagePack events (wire.py).

A board outlives each of its WebSocket connections (`Link`): the firmware
reconnects with reconnect=true to speak over an answer, so the Board, which
is the session's sink while a connection is attached, keeps what the firmware
needs across them (which turns are still its own, the answers under way)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import assert_never

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from parley.config import ParleySettings
from parley.logs import BoundedLog
from parley.metrics import ERRORS
from parley.tasks import TaskSet
from parley.v1 import common_pb2
from services.gateway.core import events as ev
from services.gateway.core.audio_check import check_pcm16
from services.gateway.core.errors import ClientError
from services.gateway.core.session import GatewaySession
from services.gateway.core.sink import ClientSink
from services.gateway.protocols.echokit import wire
from services.gateway.protocols.opus_codec import OpusEncoder

log = logging.getLogger("parley.gateway.echokit")
_bad_input = BoundedLog(log)

SAMPLE_RATE = 16000
# The real server sends 120 ms packets; the shared encoder tops out at 60 ms,
# which the firmware's 120 ms decode buffer takes just as well.
OPUS_FRAME_MS = 60
HELLO_CHUNK_BYTES = 2048
MAX_TEXT_CHARS = 4000
# A board sends Submit right behind its last audio frame: let the vad stage
# take in the audio still on its way before the turn is cut.
SUBMIT_SETTLE_S = 0.15
# An answer whose text is done but whose audio never starts (tts down) still
# ends for the board after this long.
AUDIO_WAIT_S = 10.0
# Finished answers remembered, for their late events.
KEEP_ANSWERS = 4


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


def remote_ip(link: Link) -> str:
    peer = link.ws.remote_address
    return str(peer[0]) if peer else ""


class Board(ClientSink):
    def __init__(self, device_id: str, settings: ParleySettings, link: Link) -> None:
        self.device_id = device_id
        self.settings = settings
        # The boards buffer what they get; see EchoKitSettings.playback_lead_ms.
        self.playback_lead_ms = settings.gateway.echokit.playback_lead_ms
        self.session: GatewaySession | None = None  # set once opened
        self.link: Link | None = link  # None while the board is away
        # The address its connections come from (the endpoint's takeover rule).
        self.address = remote_ip(link)
        self.ended = False  # the session is over (goodbye, or replaced)
        self.stream_asr = link.flags.stream_asr
        self.listening = False  # stream_asr: a StartChat opened the turn
        self.speaking = False  # the vad hears the user
        self.awaiting_answer = False  # a turn ended; EndResponse not yet sent
        self.last_turn = 0
        self.min_turn = 1  # turns before a reconnect are not this board's any more
        self.text_pending = 0  # Text commands whose answers are still to start
        self.answers: dict[str, _Answer] = {}
        self.encoder: OpusEncoder | None = None
        self.tasks = TaskSet("echokit board")

    def mode_settings(self) -> common_pb2.Settings:
        # Without stream_asr the board ends each turn with Submit (push-to-talk),
        # so silence must not; with it, the vad's own timing ends the turn.
        return common_pb2.Settings(turn_detection=self.stream_asr)

    @property
    def _session(self) -> GatewaySession:
        assert self.session is not None, "the board's session is not open yet"
        return self.session

    async def reattach(self, link: Link) -> None:
        """A reconnect=true connection takes over: whatever was under way is
        interrupted (that is how the firmware barges in) and kept from it."""
        session = self._session
        old, self.link = self.link, None
        if old is not None:
            self.tasks.spawn(old.ws.close(1000, "replaced by a reconnect"))
        await session.interrupt()
        if self.speaking:
            # An utterance cut off by the drop: end it, its answer is stale.
            await session.commit()
        for answer in self.answers.values():
            self._drop(answer)
        self.min_turn = self.last_turn + 1
        self.text_pending = 0
        self.listening = self.speaking = self.awaiting_answer = False
        if link.flags.stream_asr != self.stream_asr:
            self.stream_asr = link.flags.stream_asr
            await session.update_settings(self.mode_settings())
        self.link = link

    def shutdown(self) -> None:
        """The session is closed: nothing more goes to the board."""
        self.ended = True
        for answer in self.answers.values():
            self._drop(answer)
        self.tasks.cancel_all()

    # --- board -> session --------------------------------------------------------
    async def serve(self, link: Link) -> None:
        """Read the connection until it closes or a newer one replaces it."""
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
                    ERRORS.labels("gateway", exc.code).inc()
                    _bad_input.warning("echokit %s: ignored: %s", self.device_id, exc)
        except ConnectionClosed:
            pass

    async def _on_audio(self, frame: bytes) -> None:
        check_pcm16(frame, self.settings.gateway.max_frame_bytes)
        if self.stream_asr and not self.listening:
            # As the real server: audio before StartChat (or after EndVad) is not a turn.
            return
        await self._session.push_audio(frame)

    async def _on_command(self, text: str) -> None:
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
        if self.stream_asr:
            log.info("echokit %s: Submit in stream_asr mode ends the turn now", self.device_id)
        self.listening = False
        await asyncio.sleep(SUBMIT_SETTLE_S)
        if self.speaking:
            await self._session.commit()
        elif not self.awaiting_answer:
            # Nothing was heard: the real server answers an empty input so.
            await self._send(wire.END_RESPONSE)

    async def _text(self, value: str) -> None:
        text = value.strip()
        if not text or len(text) > MAX_TEXT_CHARS:
            raise ClientError("bad_command", f"Text input must be 1-{MAX_TEXT_CHARS} characters")
        self.listening = False
        self.text_pending += 1
        self.awaiting_answer = True
        # The real server shows typed input as the recognized text.
        await self._send(wire.asr(text))
        await self._session.text_input(text)

    # --- session -> board (ClientSink) ---------------------------------------------
    async def send_event(self, event: ev.SessionEvent) -> None:
        match event:
            case ev.UserSpeechStarted(turn_id=turn):
                self.last_turn = max(self.last_turn, turn)
                self.speaking = turn >= self.min_turn
            case ev.UserSpeechEnded(turn_id=turn):
                await self._speech_ended(turn)
            case ev.Transcription():
                await self._transcription(event)
            case ev.ResponseStarted(response_id=rid, turn_id=turn):
                self._response_started(rid, turn)
            case ev.ResponseTextDelta(response_id=rid, delta=delta):
                if (answer := self._live(rid)) is not None:
                    answer.text += delta  # StartAudio shows the text so far
            case ev.TtsStarted(response_id=rid):
                if (answer := self._live(rid)) is not None:
                    await self._start_audio(answer)
            case ev.TtsEnded(response_id=rid):
                if (answer := self._live(rid)) is not None:
                    answer.audio_done = True
                    await self._end_audio(answer)
                    if answer.text_done:
                        await self._finish(answer)
            case ev.PlaybackCleared(response_id=rid):
                if (answer := self._live(rid)) is not None:
                    # The board has no "clear": ending the audio is all it can be told.
                    await self._end_audio(answer)
            case ev.ResponseEnded(response_id=rid, status=status):
                if (answer := self._live(rid)) is not None:
                    await self._text_ended(answer, status)
            case ev.Error():
                await self._error(event)
            case ev.SessionEnded():
                self.ended = True  # the next connection starts afresh
            case (
                ev.SessionStarted()
                | ev.SettingsUpdated()
                | ev.Processing()
                | ev.ResponseSentence()
                | ev.TurnMetrics()
                | ev.VadStats()
            ):
                # No EchoKit event for these: the board learns of the session
                # by the hello, shows the answer's text from its deltas, and
                # has nothing to show a tool call, metrics or voice levels on.
                pass
            case _:
                assert_never(event)

    async def send_audio(self, frame: ev.AudioOut) -> None:
        link = self.link
        if link is None:
            return
        answer = self._live(frame.response_id)
        if answer is None or not answer.audio_open:
            return
        if self.encoder is None:
            await link.send(wire.audio_chunk(frame.pcm))
            return
        for packet in self.encoder.encode(frame.pcm):
            await link.send(self._opus_chunk(link, packet))

    async def on_playback_sent(self, response_id: str) -> None:
        """Every frame of the response has left: EndAudio now, not once it has
        been heard. The firmware times StartAudio..EndAudio against the audio's
        length and stops streaming playback if that comes out slower than real
        time, which waiting for the listener always would."""
        answer = self._live(response_id)
        if answer is not None:
            try:
                await self._end_audio(answer)
            except Exception:  # never into the playback loop
                log.exception("echokit %s: EndAudio failed", self.device_id)

    async def close(self, reason: str) -> None:
        """The session ends the conversation (the agent said goodbye)."""
        self.ended = True
        link = self.link
        if link is not None:
            await link.ws.close(1000, reason)

    # --- the turn ----------------------------------------------------------------------
    async def _send(self, payload: bytes) -> None:
        link = self.link
        if link is not None:
            await link.send(payload)

    async def _speech_ended(self, turn_id: int) -> None:
        self.last_turn = max(self.last_turn, turn_id)
        if turn_id < self.min_turn:
            return
        self.speaking = False
        self.awaiting_answer = True
        if self.stream_asr:
            self.listening = False
            await self._send(wire.END_VAD)

    async def _transcription(self, event: ev.Transcription) -> None:
        if event.turn_id < self.min_turn:
            return
        text = event.text.strip()
        if not event.final:
            if self.stream_asr and text:
                await self._send(wire.asr(text))
        elif text:
            await self._send(wire.asr(text))
        elif self.awaiting_answer:
            # No words, so no answer follows: the board goes back to listening.
            self.awaiting_answer = False
            await self._send(wire.END_RESPONSE)

    async def _error(self, error: ev.Error) -> None:
        answer = self.answers.get(error.response_id)
        if answer is not None:
            if not answer.stale:
                log.warning("echokit %s: %s", self.device_id, error.message)
            return
        log.warning(
            "echokit %s: %s error %s: %s", self.device_id, error.stage, error.code, error.message
        )
        if error.stage == "asr" and error.turn_id >= self.min_turn and self.awaiting_answer:
            # A failed transcription means no answer: release the board.
            self.awaiting_answer = False
            await self._send(wire.END_RESPONSE)

    # --- answers -----------------------------------------------------------------------
    def _live(self, response_id: str) -> _Answer | None:
        """The answer if the board is to see it."""
        answer = self.answers.get(response_id)
        return None if answer is None or answer.stale else answer

    def _response_started(self, response_id: str, turn_id: int) -> None:
        if turn_id == 0 and self.text_pending:
            self.text_pending -= 1
            stale = False
        else:
            stale = turn_id == 0 or turn_id < self.min_turn
        answer = _Answer(turn_id, stale=stale)
        self.answers[response_id] = answer
        for old in [rid for rid, a in self.answers.items() if a.finished][:-KEEP_ANSWERS]:
            del self.answers[old]
        if stale and self.session is not None:
            log.info("echokit %s: answer to a turn before the reconnect stopped", self.device_id)
            answer.finished = True
            self.tasks.spawn(self.session.interrupt())

    async def _text_ended(self, answer: _Answer, status: ev.Status) -> None:
        answer.text_done = True
        if status != ev.Status.COMPLETED or answer.audio_done:
            await self._finish(answer)
        elif not answer.audio_started:
            answer.watchdog = self.tasks.spawn(self._finish_later(answer))

    async def _start_audio(self, answer: _Answer) -> None:
        if answer.finished or answer.audio_open:
            return
        answer.audio_started = answer.audio_open = True
        link = self.link
        # A fresh encoder per stretch of audio, as the real server resets its own.
        self.encoder = OpusEncoder(SAMPLE_RATE, OPUS_FRAME_MS) if link and link.flags.opus else None
        await self._send(wire.start_audio(answer.text.strip()))

    @staticmethod
    def _opus_chunk(link: Link, packet: bytes) -> bytes:
        # No lip sync analysis here: vowel 0 keeps the avatar's mouth at rest.
        if link.flags.vowel:
            return wire.audio_chunk_with_vowel(packet, 0)
        return wire.audio_chunk(packet)

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
