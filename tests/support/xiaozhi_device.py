"""A test device that behaves as the Xiaozhi ESP32 firmware does: OTA check,
WebSocket upgrade with its four headers, hello, Opus frames at real-time pace
in the negotiated binary framing, and its own MCP server answering the
gateway's initialize / tools/list (paginated) / tools/call."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.gateway.protocols.opus_codec import OpusDecoder, OpusEncoder
from services.gateway.protocols.xiaozhi import framing

# The board's tools, as its MCP server lists them (one per page).
DEVICE_TOOLS = [
    {
        "name": "self.get_device_status",
        "description": "Current status of the device: volume, screen, battery.",
        "inputSchema": {"type": "object", "properties": {}},
    },
    {
        "name": "self.audio_speaker.set_volume",
        "description": "Set the speaker volume, 0 to 100.",
        "inputSchema": {
            "type": "object",
            "properties": {"volume": {"type": "integer", "minimum": 0, "maximum": 100}},
            "required": ["volume"],
        },
    },
]


async def ota_check(http_port: int, device_id: str, version: str = "1.6.0") -> dict[str, Any]:
    """The firmware's boot-time POST with its system info."""
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"http://127.0.0.1:{http_port}/xiaozhi/ota/",
            headers={
                "Device-Id": device_id,
                "Client-Id": "7b94d69a-9808-4c59-9c9b-704333b38aff",
                "Activation-Version": "1",
                "User-Agent": f"bread-compact-wifi/{version}",
                "Accept-Language": "en-US",
            },
            json={
                "version": 2,
                "flash_size": 16777216,
                "mac_address": device_id,
                "chip_model_name": "esp32s3",
                "application": {"name": "xiaozhi", "version": version},
                "board": {"type": "bread-compact-wifi"},
            },
        )
    reply.raise_for_status()
    return dict(reply.json())


@dataclass
class XiaozhiDevice:
    ws: ClientConnection
    version: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    # (arrival time, Opus packet, header timestamp)
    audio: list[tuple[float, bytes, int]] = field(default_factory=list)
    volume: int = 70
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    session_id: str = ""
    server_hello: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def connect(
        cls,
        url: str,
        device_id: str,
        token: str | None = None,
        version: int = 1,
        hello: dict[str, Any] | None = None,
    ) -> XiaozhiDevice:
        headers = {
            "Protocol-Version": str(version),
            "Device-Id": device_id,
            "Client-Id": "7b94d69a-9808-4c59-9c9b-704333b38aff",
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        ws = await connect(url, additional_headers=headers, max_size=2**20)
        device = cls(ws, version)
        device._reader = asyncio.create_task(device._read())
        await device.send_json(
            hello
            if hello is not None
            else {
                "type": "hello",
                "version": version,
                "features": {"mcp": True},
                "transport": "websocket",
                "audio_params": {
                    "format": "opus",
                    "sample_rate": 16000,
                    "channels": 1,
                    "frame_duration": 60,
                },
            }
        )
        return device

    async def wait_hello(self, timeout: float = 10.0) -> dict[str, Any]:
        self.server_hello = await self.wait_json("hello", timeout=timeout)
        self.session_id = self.server_hello.get("session_id", "")
        return self.server_hello

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()

    async def send_json(self, msg: dict[str, Any]) -> None:
        await self.ws.send(json.dumps({"session_id": self.session_id, **msg}))

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if isinstance(frame, bytes):
                    parsed = framing.parse(self.version, frame)
                    self.audio.append((time.monotonic(), parsed.payload, parsed.timestamp_ms))
                    continue
                msg = json.loads(frame)
                msg["_at"] = time.monotonic()
                self.messages.append(msg)
                if msg.get("type") == "mcp":
                    await self._serve_mcp(msg["payload"])
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    async def _serve_mcp(self, request: dict[str, Any]) -> None:
        method, rid = request.get("method"), request.get("id")
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": "2024-11-05",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "bread-compact-wifi", "version": "1.6.0"},
            }
        elif method == "tools/list":
            page = int(request["params"].get("cursor") or 0)
            more = page + 1 < len(DEVICE_TOOLS)
            result = {"tools": [DEVICE_TOOLS[page]], "nextCursor": str(page + 1) if more else ""}
        elif method == "tools/call":
            self.tool_calls.append(request["params"])
            if request["params"]["name"] == "self.audio_speaker.set_volume":
                self.volume = int(request["params"]["arguments"]["volume"])
                result = {"content": [{"type": "text", "text": "true"}], "isError": False}
            else:
                text = json.dumps({"audio_speaker": {"volume": self.volume}})
                result = {"content": [{"type": "text", "text": text}], "isError": False}
        else:
            reply = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}}
            await self.send_json({"type": "mcp", "payload": reply})
            return
        reply = {"jsonrpc": "2.0", "id": rid, "result": result}
        await self.send_json({"type": "mcp", "payload": reply})

    async def wait_json(
        self, kind: str, after: int = 0, timeout: float = 60.0, **fields: Any
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for msg in self.messages[after:]:
                    if msg.get("type") == kind and all(msg.get(k) == v for k, v in fields.items()):
                        return msg
                if self.closed.is_set():
                    raise ConnectionError(f"closed before a {kind} message: {self.messages}")
                await asyncio.sleep(0.01)

    async def stream(self, pcm16k: bytes, frame_ms: int = 60, realtime: bool = True) -> float:
        """Opus frames of 16 kHz speech at the microphone's pace; the time the
        last one was sent."""
        encoder = OpusEncoder(16000, frame_ms)
        packets = encoder.encode(pcm16k) + encoder.flush()
        start = time.monotonic()
        for index, packet in enumerate(packets):
            if realtime:
                delay = start + index * frame_ms / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.ws.send(framing.build(self.version, packet, index * frame_ms))
        return time.monotonic()

    def decoded_audio(self, after: int = 0) -> bytes:
        """The downlink decoded, PCM16 at 48 kHz."""
        decoder = OpusDecoder()
        return b"".join(decoder.decode(packet) for _, packet, _ in self.audio[after:])
