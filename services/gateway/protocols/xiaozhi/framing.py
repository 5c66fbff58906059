"""The Xiaozhi firmware's binary frames: version 1 is the bare Opus packet,
version 2 a 16-byte header with a timestamp (for server-side echo
cancellation), version 3 a 4-byte header. Header fields are big-endian."""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSIONS = (1, 2, 3)
TYPE_OPUS = 0
TYPE_JSON = 1
_V2 = struct.Struct(">HHIII")  # version, type, reserved, timestamp, payload_size
_V3 = struct.Struct(">BBH")  # type, reserved, payload_size


class FramingError(ValueError):
    """A binary frame that does not match the negotiated version."""


@dataclass
class Frame:
    kind: int  # TYPE_OPUS or TYPE_JSON
    payload: bytes
    timestamp_ms: int = 0


def parse(version: int, data: bytes) -> Frame:
    if version == 2:
        if len(data) < _V2.size:
            raise FramingError(f"a version 2 frame needs a 16-byte header, got {len(data)} bytes")
        _, kind, _, timestamp, size = _V2.unpack_from(data)
        payload = data[_V2.size :]
        if size != len(payload):
            raise FramingError(f"header says {size} payload bytes, frame has {len(payload)}")
        return Frame(kind, payload, timestamp)
    if version == 3:
        if len(data) < _V3.size:
            raise FramingError(f"a version 3 frame needs a 4-byte header, got {len(data)} bytes")
        kind, _, size = _V3.unpack_from(data)
        payload = data[_V3.size :]
        if size != len(payload):
            raise FramingError(f"header says {size} payload bytes, frame has {len(payload)}")
        return Frame(kind, payload)
    return Frame(TYPE_OPUS, data)


def build(version: int, payload: bytes, timestamp_ms: int = 0, kind: int = TYPE_OPUS) -> bytes:
    if version == 2:
        return _V2.pack(2, kind, 0, timestamp_ms & 0xFFFFFFFF, len(payload)) + payload
    if version == 3:
        return _V3.pack(kind, 0, len(payload)) + payload
    return payload
