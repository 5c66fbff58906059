"""Parley -> board for the Xiaozhi firmware (docs/xiaozhi.md, "Parley -> board"):
the session's typed events as stt / llm / tts / alert JSON messages, answer
audio as Opus packets in the board's binary framing. Every message the board
gets is written here, including the ones the connection sends of its own
accord (hello, the echo of typed input, MCP requests, keepalives)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, assert_never

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from parley.config import XiaozhiSettings
from parley.logs import BoundedLog
from parley.metrics import ERRORS
from services.gateway.core import events as ev
from services.gateway.core.sink import ClientSink
from services.gateway.protocols.opus_codec import OpusEncoder
from services.gateway.protocols.xiaozhi import framing

log = logging.getLogger("parley.gateway.xiaozhi")
_bad_input = BoundedLog(log)

# The same error is shown on the board at most this often.
ALERT_INTERVAL_S = 5.0


class XiaozhiSink(ClientSink):
    def __init__(self, ws: ServerConnection, version: int, cfg: XiaozhiSettings) -> None:
        self.ws = ws
        self.version = version  # the board's binary framing
        self.cfg = cfg
        self.session_id = ""  # known once the session is open; every message carries it
        self.encoder: OpusEncoder | None = None  # while an answer's audio plays
        self._tts_response = ""
        # The firmware shows subtitles while speaking: sentences that come
        # before the audio starts wait for tts start.
        self._held_sentences: list[str] = []
        self._sent_emotion = False
        self._audio_ms = 0.0  # version 2 timestamps: the answer's audio so far
        self.last_sent = time.monotonic()
        self._alerted: dict[str, float] = {}

    # --- ClientSink ----------------------------------------------------------------
    async def send_event(self, event: ev.SessionEvent) -> None:
        match event:
            case ev.Transcription(final=True, text=text) if text.strip():
                await self.send_stt(text.strip())
            case ev.Transcription():
                pass  # partials: the firmware shows the final transcript only
            case ev.ResponseStarted():
                self._sent_emotion = False
                await self.send_json({"type": "llm", "text": "🤔", "emotion": "thinking"})
            case ev.ResponseSentence(response_id=rid, text=text):
                await self._sentence(rid, text)
            case ev.TtsStarted(response_id=rid):
                await self._tts_start(rid)
            case ev.TtsEnded(status=status):
                await self._tts_stop(status)
            case ev.ResponseEnded(status=status):
                if status != ev.Status.COMPLETED and not self._tts_response:
                    self._held_sentences = []  # cut before its audio: never shown
            case ev.Error(stage=stage, code=code, message=message):
                await self.alert(code, f"{stage}: {message}", force=True)
            case ev.SessionEnded(reason=reason):
                # The session closes the socket next; the firmware has no message for it.
                log.info("session ended by the agent: %s", reason)
            case ev.PlaybackCleared():
                pass  # tts stop (TtsEnded, cancelled) follows and silences the board
            case (
                ev.SessionStarted()
                | ev.SettingsUpdated()
                | ev.UserSpeechStarted()
                | ev.UserSpeechEnded()
                | ev.Processing()
                | ev.ResponseTextDelta()
                | ev.TurnMetrics()
                | ev.VadStats()
            ):
                # The protocol has no form for these: the board's own hello
                # answer stands for the session start, it listens by itself,
                # and shows sentences, not token deltas.
                pass
            case _:
                assert_never(event)

    async def send_audio(self, frame: ev.AudioOut) -> None:
        if self.encoder is None:
            return  # no tts start: the board would not play it
        for packet in self.encoder.encode(frame.pcm):
            await self._send_packet(packet)

    async def close(self, reason: str) -> None:
        await self.ws.close(1000, reason)

    # --- the answer ----------------------------------------------------------------
    async def _sentence(self, response_id: str, text: str) -> None:
        if not self._sent_emotion:
            # The emotion follows the tone of the first sentence.
            self._sent_emotion = True
            happy = text.rstrip().endswith("!")
            await self.send_json(
                {
                    "type": "llm",
                    "text": "😊" if happy else "🙂",
                    "emotion": "happy" if happy else "neutral",
                }
            )
        if self._tts_response == response_id:
            await self.send_json({"type": "tts", "state": "sentence_start", "text": text})
        else:
            self._held_sentences.append(text)

    async def _tts_start(self, response_id: str) -> None:
        self._tts_response = response_id
        self.encoder = OpusEncoder(self.cfg.downlink_sample_rate, self.cfg.downlink_frame_ms)
        self._audio_ms = 0.0
        await self.send_json({"type": "tts", "state": "start"})
        held, self._held_sentences = self._held_sentences, []
        for text in held:
            await self.send_json({"type": "tts", "state": "sentence_start", "text": text})

    async def _tts_stop(self, status: ev.Status) -> None:
        if self.encoder is not None and status == ev.Status.COMPLETED:
            # The last partial frame, padded: a cut answer stops where it was.
            for packet in self.encoder.flush():
                await self._send_packet(packet)
        self.encoder = None
        self._tts_response = ""
        self._held_sentences = []
        await self.send_json({"type": "tts", "state": "stop"})

    # --- messages the connection sends ----------------------------------------------
    async def send_hello(self) -> None:
        await self.send_json(
            {
                "type": "hello",
                "transport": "websocket",
                "session_id": self.session_id,
                "version": self.version,
                "audio_params": {
                    "format": "opus",
                    "sample_rate": self.cfg.downlink_sample_rate,
                    "channels": 1,
                    "frame_duration": self.cfg.downlink_frame_ms,
                },
            }
        )

    async def send_stt(self, text: str) -> None:
        await self.send_json({"type": "stt", "text": text})

    async def send_mcp(self, payload: dict[str, Any]) -> None:
        await self.send_json({"type": "mcp", "payload": payload})

    async def keepalive(self) -> None:
        """A message the firmware accepts and ignores (an llm message without an
        emotion), so its 120 s channel timeout never fires between turns."""
        if time.monotonic() - self.last_sent >= self.cfg.keepalive_s:
            await self.send_json({"type": "llm"})

    async def alert(self, code: str, message: str, force: bool = False) -> None:
        """The protocol's error form: the board shows it (and buzzes), so the
        same error is repeated at most every few seconds."""
        ERRORS.labels("gateway", code).inc()
        _bad_input.info("device error %s: %s", code, message)
        now = time.monotonic()
        if not force and now - self._alerted.get(code, -ALERT_INTERVAL_S) < ALERT_INTERVAL_S:
            return
        self._alerted[code] = now
        await self.send_json(
            {"type": "alert", "status": "Error", "message": message, "emotion": "sad"}
        )

    async def send_json(self, msg: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps({"session_id": self.session_id, **msg}))
            self.last_sent = time.monotonic()
        except ConnectionClosed:
            pass

    async def _send_packet(self, packet: bytes) -> None:
        data = framing.build(self.version, packet, int(self._audio_ms))
        self._audio_ms += self.cfg.downlink_frame_ms
        try:
            await self.ws.send(data)
            self.last_sent = time.monotonic()
        except ConnectionClosed:
            pass
