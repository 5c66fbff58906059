"""The Xiaozhi ESP32 firmware's WebSocket protocol at /xiaozhi/v1/ (docs/xiaozhi.md).

A board connects with Authorization, Protocol-Version, Device-Id and Client-Id
headers (or the same as query parameters, for browser clients), says hello,
streams Opus, and hears Opus back with stt / llm / tts messages around it.
Its own MCP server becomes the session's client tools."""

from __future__ import annotations

import asyncio
import http
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley.config import ParleySettings, XiaozhiSettings
from parley.metrics import ERRORS, FRAMES
from parley.v1 import common_pb2
from services.gateway import xiaozhi_framing as framing
from services.gateway.endpoints import refuse
from services.gateway.opus_codec import (
    DECODED_RATE,
    OPUS_FRAME_MS,
    OPUS_RATES,
    OpusDecoder,
    OpusEncoder,
    OpusError,
)
from services.gateway.session import ClientError, GatewaySession
from services.gateway.xiaozhi_mcp import DeviceMcp

if TYPE_CHECKING:
    from services.gateway.service import Gateway

log = logging.getLogger("parley.gateway.xiaozhi")

XIAOZHI_PATH = "/xiaozhi/v1"
# Opus packets are at most 1275 bytes a frame; 120 ms of them fits in this.
MAX_OPUS_FRAME_BYTES = 8000
LISTEN_MODES = ("auto", "manual", "realtime")
# The same error is shown on the board at most this often.
ALERT_INTERVAL_S = 5.0


@dataclass
class DeviceInfo:
    device_id: str
    client_id: str
    token: str | None
    version: int

    @classmethod
    def from_request(cls, request: Request) -> DeviceInfo:
        """Headers as the firmware sends them; query parameters for browsers."""
        query = {
            key.lower().replace("_", "-"): values[0]
            for key, values in parse_qs(urlsplit(request.path).query).items()
        }

        def pick(header: str) -> str:
            return request.headers.get(header) or query.get(header.lower(), "")

        auth = pick("Authorization") or query.get("token", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
        raw_version = pick("Protocol-Version") or "1"
        version = int(raw_version) if raw_version.isdigit() else -1
        return cls(pick("Device-Id"), pick("Client-Id"), token or None, version)


class XiaozhiEndpoint:
    name = "xiaozhi"

    def __init__(self, settings: ParleySettings) -> None:
        self.cfg = settings.gateway.xiaozhi

    def matches(self, path: str) -> bool:
        return path.rstrip("/") == XIAOZHI_PATH

    def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        info = DeviceInfo.from_request(request)
        cfg = self.cfg
        if cfg.auth_token and info.token != cfg.auth_token:
            return refuse(connection, http.HTTPStatus.UNAUTHORIZED, "missing or wrong token")
        if not info.device_id:
            return refuse(connection, http.HTTPStatus.BAD_REQUEST, "missing Device-Id")
        if info.version not in framing.VERSIONS:
            return refuse(
                connection,
                http.HTTPStatus.BAD_REQUEST,
                f"Protocol-Version must be one of {framing.VERSIONS}",
            )
        if cfg.device_allowlist is not None and info.device_id not in cfg.device_allowlist:
            return refuse(connection, http.HTTPStatus.FORBIDDEN, "device not allowed")
        return None

    async def serve(self, gateway: Gateway, ws: ServerConnection) -> None:
        assert ws.request is not None
        connection = XiaozhiConnection(gateway, ws, DeviceInfo.from_request(ws.request), self.cfg)
        await connection.run()


class HelloError(Exception):
    pass


def check_hello(hello: dict[str, Any]) -> tuple[int, int]:
    """(sample rate, frame ms) of the board's uplink. A hello without
    audio_params (seen in the wild) means the firmware's defaults."""
    transport = hello.get("transport", "websocket")
    if transport != "websocket":
        raise HelloError(f"transport {transport!r} is not served here; use websocket")
    params = hello.get("audio_params") or {}
    if not isinstance(params, dict):
        raise HelloError("audio_params must be an object")
    fmt = params.get("format", "opus")
    rate = params.get("sample_rate", 16000)
    channels = params.get("channels", 1)
    frame_ms = params.get("frame_duration", 60)
    if fmt != "opus":
        raise HelloError(f"audio format {fmt!r} is not supported; send opus")
    if rate not in OPUS_RATES:
        raise HelloError(f"sample_rate {rate} is not an Opus rate {OPUS_RATES}")
    if channels != 1:
        raise HelloError(f"channels {channels} is not supported; send mono")
    if frame_ms not in OPUS_FRAME_MS:
        raise HelloError(f"frame_duration {frame_ms} is not one of {OPUS_FRAME_MS}")
    return int(rate), int(frame_ms)


class XiaozhiConnection:
    """One board's connection; also the session's ClientSink."""

    def __init__(
        self, gateway: Gateway, ws: ServerConnection, device: DeviceInfo, cfg: XiaozhiSettings
    ) -> None:
        self.gateway = gateway
        self.ws = ws
        self.device = device
        self.cfg = cfg
        self.session: GatewaySession | None = None
        self.session_id = ""
        self.mode = "auto"
        self.decoder = OpusDecoder()
        self.encoder: OpusEncoder | None = None
        self._tts_response = ""
        self._held_sentences: list[str] = []
        self._sent_emotion = False
        self._audio_ms = 0.0
        self._last_sent = time.monotonic()
        self._alerted: dict[str, float] = {}
        self.mcp: DeviceMcp | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- connection ------------------------------------------------------------
    async def run(self) -> None:
        hello = await self._await_hello()
        if hello is None:
            return
        try:
            rate, frame_ms = check_hello(hello)
        except HelloError as exc:
            await self._alert("bad_hello", str(exc), force=True)
            await self.ws.close(1003, str(exc)[:120])
            return
        gateway = self.gateway
        session, failures = await gateway.open_session(self, "xiaozhi")
        self.session, self.session_id = session, session.session_id
        try:
            await session.update_settings(
                None, input_rate=DECODED_RATE, output_rate=self.cfg.downlink_sample_rate
            )
            log.info(
                "device %s (client %s) hello: opus %d Hz %d ms, framing v%d",
                self.device.device_id,
                self.device.client_id or "-",
                rate,
                frame_ms,
                self.device.version,
            )
            await self._send_json(
                {
                    "type": "hello",
                    "transport": "websocket",
                    "session_id": self.session_id,
                    "version": self.device.version,
                    "audio_params": {
                        "format": "opus",
                        "sample_rate": self.cfg.downlink_sample_rate,
                        "channels": 1,
                        "frame_duration": self.cfg.downlink_frame_ms,
                    },
                }
            )
            await session.report_placement(failures)
            features = hello.get("features")
            if isinstance(features, dict) and features.get("mcp"):
                self._spawn(self._discover_tools())
            self._spawn(self._keepalive())
            await self._read()
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self.mcp is not None:
                self.mcp.close()
            await gateway.close_session(session)

    async def _await_hello(self) -> dict[str, Any] | None:
        """The board's hello, within the firmware's own patience."""
        deadline = asyncio.get_running_loop().time() + self.cfg.hello_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                async for frame in self.ws:
                    if isinstance(frame, bytes):
                        continue  # audio before hello has nowhere to go
                    msg = _json_object(frame)
                    if msg is not None and msg.get("type") == "hello":
                        return msg
                    await self._alert("hello_expected", "say hello first", force=True)
        except TimeoutError:
            await self.ws.close(1002, "no hello")
        except ConnectionClosed:
            pass
        return None

    async def _read(self) -> None:
        async for frame in self.ws:
            try:
                if isinstance(frame, bytes):
                    await self._on_binary(frame)
                else:
                    if not await self._on_text(frame):
                        return
            except ClientError as exc:
                await self._alert(exc.code, str(exc))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- board -> Parley -----------------------------------------------------------
    async def _on_binary(self, data: bytes) -> None:
        try:
            frame = framing.parse(self.device.version, data)
        except framing.FramingError as exc:
            raise ClientError("bad_frame", str(exc)) from None
        if frame.kind == framing.TYPE_JSON:
            await self._on_text(frame.payload.decode("utf-8", "replace"))
            return
        if len(frame.payload) > MAX_OPUS_FRAME_BYTES:
            raise ClientError(
                "frame_too_large",
                f"an Opus frame of {len(frame.payload)} bytes is over {MAX_OPUS_FRAME_BYTES}",
            )
        try:
            pcm = self.decoder.decode(frame.payload)
        except OpusError as exc:
            FRAMES.labels("gateway", "xiaozhi.bad_opus").inc()
            raise ClientError("bad_audio", str(exc)) from None
        assert self.session is not None
        await self.session.push_audio(pcm)

    async def _on_text(self, text: str) -> bool:
        """One JSON message; False ends the connection."""
        msg = _json_object(text)
        if msg is None:
            raise ClientError("bad_json", "a text frame must be a JSON object")
        kind = msg.get("type")
        session = self.session
        assert session is not None
        if kind == "listen":
            await self._on_listen(msg)
        elif kind == "abort":
            log.info("device abort (%s)", msg.get("reason") or "no reason")
            await session.interrupt()
        elif kind == "mcp":
            if self.mcp is not None:
                await self.mcp.on_payload(msg.get("payload"))
        elif kind == "hello":
            await self._alert("hello_again", "already said hello")
        elif kind == "iot":
            # Deprecated descriptors/states of old firmware: accepted, unused
            # (their devices also speak MCP, which is what tools use).
            log.info("legacy iot message accepted and ignored")
        elif kind == "goodbye":
            return False
        else:
            raise ClientError("unknown_type", f"unknown message type: {kind!r}")
        return True

    async def _on_listen(self, msg: dict[str, Any]) -> None:
        session = self.session
        assert session is not None
        state = msg.get("state")
        if state == "start":
            mode = msg.get("mode", "auto")
            if mode not in LISTEN_MODES:
                raise ClientError("bad_field", f"listen mode must be one of {LISTEN_MODES}")
            if (mode == "manual") != (self.mode == "manual"):
                # Push-to-talk: the button, not a pause, ends the turn.
                await session.update_settings(common_pb2.Settings(turn_detection=mode != "manual"))
            self.mode = mode
        elif state == "stop":
            # The end of a push-to-talk turn; in auto mode server VAD has
            # usually ended it already, and a commit then does nothing.
            await session.commit()
        elif state == "detect":
            text = msg.get("text")
            if isinstance(text, str) and text.strip():
                await self._send_json({"type": "stt", "text": text.strip()})
                await session.text_input(text.strip())
        else:
            raise ClientError("bad_field", "listen state must be start, stop or detect")

    # --- device tools ---------------------------------------------------------------
    async def _discover_tools(self) -> None:
        async def send(payload: dict[str, Any]) -> None:
            await self._send_json({"type": "mcp", "payload": payload})

        mcp = DeviceMcp(send, self.cfg.mcp_timeout_s, self.cfg.mcp_max_pages)
        self.mcp = mcp
        try:
            count = await mcp.discover()
        except Exception as exc:  # a board without working MCP still talks
            log.warning("device MCP discovery failed: %s", exc or type(exc).__name__)
            return
        log.info("device offers %d MCP tools", count)
        if self.session is not None:
            await self.session.set_client_tools(mcp)

    async def _keepalive(self) -> None:
        """A message the firmware accepts and ignores (an llm message without an
        emotion), so its 120 s channel timeout never fires between turns."""
        while True:
            await asyncio.sleep(self.cfg.keepalive_s / 4)
            if time.monotonic() - self._last_sent >= self.cfg.keepalive_s:
                await self._send_json({"type": "llm"})

    # --- Parley -> board (ClientSink) ------------------------------------------------
    async def send_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "transcription":
            if event.get("final") and event.get("text", "").strip():
                await self._send_json({"type": "stt", "text": event["text"].strip()})
        elif kind == "response_start":
            self._sent_emotion = False
            await self._send_json({"type": "llm", "text": "🤔", "emotion": "thinking"})
        elif kind == "response_sentence":
            text = event.get("text", "")
            if not self._sent_emotion:
                self._sent_emotion = True
                happy = text.rstrip().endswith("!")
                await self._send_json(
                    {
                        "type": "llm",
                        "text": "😊" if happy else "🙂",
                        "emotion": "happy" if happy else "neutral",
                    }
                )
            if self._tts_response == event.get("response_id"):
                await self._send_json({"type": "tts", "state": "sentence_start", "text": text})
            else:
                # The firmware shows subtitles while speaking: after tts start.
                self._held_sentences.append(text)
        elif kind == "tts_start":
            self._tts_response = event.get("response_id", "")
            self.encoder = OpusEncoder(self.cfg.downlink_sample_rate, self.cfg.downlink_frame_ms)
            self._audio_ms = 0.0
            await self._send_json({"type": "tts", "state": "start"})
            held, self._held_sentences = self._held_sentences, []
            for text in held:
                await self._send_json({"type": "tts", "state": "sentence_start", "text": text})
        elif kind == "tts_end":
            if self.encoder is not None and event.get("status") == "completed":
                for packet in self.encoder.flush():
                    await self._send_packet(packet)
            self.encoder = None
            self._tts_response = ""
            self._held_sentences = []
            await self._send_json({"type": "tts", "state": "stop"})
        elif kind == "response_end":
            if event.get("status") != "completed" and not self._tts_response:
                self._held_sentences = []
        elif kind == "error":
            await self._alert(
                str(event.get("code", "error")),
                f"{event.get('stage', 'parley')}: {event.get('message', '')}",
                force=True,
            )
        elif kind == "session_end":
            log.info("session ended by the agent: %s", event.get("reason", ""))

    async def send_audio(self, pcm: bytes) -> None:
        if self.encoder is None:
            return
        for packet in self.encoder.encode(pcm):
            await self._send_packet(packet)

    async def close(self, reason: str) -> None:
        await self.ws.close(1000, reason)

    async def _send_packet(self, packet: bytes) -> None:
        data = framing.build(self.device.version, packet, int(self._audio_ms))
        self._audio_ms += self.cfg.downlink_frame_ms
        try:
            await self.ws.send(data)
            self._last_sent = time.monotonic()
        except ConnectionClosed:
            pass

    async def _send_json(self, msg: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps({"session_id": self.session_id, **msg}))
            self._last_sent = time.monotonic()
        except ConnectionClosed:
            pass

    async def _alert(self, code: str, message: str, force: bool = False) -> None:
        """The protocol's error form: the board shows it (and buzzes), so the
        same error is repeated at most every few seconds."""
        ERRORS.labels("gateway", code).inc()
        log.info("device error %s: %s", code, message)
        now = time.monotonic()
        if not force and now - self._alerted.get(code, -ALERT_INTERVAL_S) < ALERT_INTERVAL_S:
            return
        self._alerted[code] = now
        await self._send_json(
            {"type": "alert", "status": "Error", "message": message, "emotion": "sad"}
        )


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        msg = json.loads(text)
    except json.JSONDecodeError:
        return None
    return msg if isinstance(msg, dict) else None
