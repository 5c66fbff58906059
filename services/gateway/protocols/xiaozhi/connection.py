"""Board -> Parley for the Xiaozhi firmware (docs/xiaozhi.md, "Board -> Parley"):
one board's connection, from its hello to its goodbye, driving a session.
What Parley sends back goes through the connection's XiaozhiSink."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from parley import json_input
from parley.config import XiaozhiSettings
from parley.metrics import FRAMES
from parley.tasks import TaskSet
from parley.v1 import common_pb2
from services.gateway.core.errors import ClientError, ServerBusy
from services.gateway.core.session import GatewaySession
from services.gateway.protocols.endpoint import BUSY_CLOSE_CODE, GatewayHost
from services.gateway.protocols.opus_codec import DECODED_RATE, OpusDecoder, OpusError
from services.gateway.protocols.xiaozhi import framing
from services.gateway.protocols.xiaozhi.hello import DeviceInfo, HelloError, check_hello
from services.gateway.protocols.xiaozhi.mcp import DeviceMcp
from services.gateway.protocols.xiaozhi.sink import XiaozhiSink

log = logging.getLogger("parley.gateway.xiaozhi")

# Opus packets are at most 1275 bytes a frame; 120 ms of them fits in this.
MAX_OPUS_FRAME_BYTES = 8000
LISTEN_MODES = ("auto", "manual", "realtime")


class XiaozhiConnection:
    """One board's connection and its session (closed when the board goes:
    Xiaozhi boards say hello afresh on every connection)."""

    def __init__(
        self, gateway: GatewayHost, ws: ServerConnection, device: DeviceInfo, cfg: XiaozhiSettings
    ) -> None:
        self.gateway = gateway
        self.ws = ws
        self.device = device
        self.cfg = cfg
        self.sink = XiaozhiSink(ws, device.version, cfg)
        self.mode = "auto"
        self.decoder = OpusDecoder()
        self.mcp: DeviceMcp | None = None
        self._tasks = TaskSet("xiaozhi connection")

    async def run(self) -> None:
        hello = await self._await_hello()
        if hello is None:
            return
        try:
            rate, frame_ms = check_hello(hello)
        except HelloError as exc:
            await self.sink.alert("bad_hello", str(exc), force=True)
            await self.ws.close(1003, str(exc)[:120])
            return
        sessions = self.gateway.sessions
        try:
            session, failures = await sessions.open(self.sink, "xiaozhi")
        except ServerBusy as exc:
            await self.sink.alert(exc.code, str(exc), force=True)
            await self.ws.close(BUSY_CLOSE_CODE, "server busy, try again later")
            return
        self.sink.session_id = session.session_id
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
            await self.sink.send_hello()
            await session.report_placement(failures)
            features = hello.get("features")
            if isinstance(features, dict) and features.get("mcp"):
                self._tasks.spawn(self._discover_tools(session))
            self._tasks.spawn(self._keepalive())
            await self._read(session)
        finally:
            self._tasks.cancel_all()
            if self.mcp is not None:
                self.mcp.close()
            await sessions.close(session)

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
                    await self.sink.alert("hello_expected", "say hello first", force=True)
        except TimeoutError:
            await self.ws.close(1002, "no hello")
        except ConnectionClosed:
            pass
        return None

    async def _read(self, session: GatewaySession) -> None:
        try:
            async for frame in self.ws:
                try:
                    if isinstance(frame, bytes):
                        await self._on_binary(session, frame)
                    elif not await self._on_text(session, frame):
                        return
                except ClientError as exc:
                    await self.sink.alert(exc.code, str(exc))
        except ConnectionClosed:
            pass

    async def _on_binary(self, session: GatewaySession, data: bytes) -> None:
        try:
            frame = framing.parse(self.device.version, data)
        except framing.FramingError as exc:
            raise ClientError("bad_frame", str(exc)) from None
        if frame.kind == framing.TYPE_JSON:
            await self._on_text(session, frame.payload.decode("utf-8", "replace"))
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
        await session.push_audio(pcm)

    async def _on_text(self, session: GatewaySession, text: str) -> bool:
        """One JSON message; False ends the connection."""
        msg = _json_object(text)
        if msg is None:
            raise ClientError("bad_json", "a text frame must be a JSON object")
        kind = msg.get("type")
        if kind == "listen":
            await self._on_listen(session, msg)
        elif kind == "abort":
            log.info("device abort (%s)", msg.get("reason") or "no reason")
            await session.interrupt()
        elif kind == "mcp":
            if self.mcp is not None:
                await self.mcp.on_payload(msg.get("payload"))
        elif kind == "hello":
            await self.sink.alert("hello_again", "already said hello")
        elif kind == "iot":
            # Deprecated descriptors/states of old firmware: accepted, unused
            # (their devices also speak MCP, which is what tools use).
            log.info("legacy iot message accepted and ignored")
        elif kind == "goodbye":
            return False
        else:
            raise ClientError("unknown_type", f"unknown message type: {kind!r}")
        return True

    async def _on_listen(self, session: GatewaySession, msg: dict[str, Any]) -> None:
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
                await self.sink.send_stt(text.strip())
                await session.text_input(text.strip())
        else:
            raise ClientError("bad_field", "listen state must be start, stop or detect")

    async def _discover_tools(self, session: GatewaySession) -> None:
        mcp = DeviceMcp(self.sink.send_mcp, self.cfg.mcp_timeout_s, self.cfg.mcp_max_pages)
        self.mcp = mcp
        try:
            count = await mcp.discover()
        except Exception as exc:  # a board without working MCP still talks
            log.warning("device MCP discovery failed: %s", exc or type(exc).__name__)
            return
        log.info("device offers %d MCP tools", count)
        await session.set_client_tools(mcp)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.keepalive_s / 4)
            await self.sink.keepalive()


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        msg = json_input.loads(text)
    except json_input.BadJson:
        return None
    return msg if isinstance(msg, dict) else None
