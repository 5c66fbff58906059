"""What a Xiaozhi board says before its session starts: the upgrade request's
headers (or query parameters) and its hello message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request

from services.gateway.protocols.opus_codec import OPUS_FRAME_MS, OPUS_RATES


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
