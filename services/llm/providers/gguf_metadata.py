"""Reads one string from a GGUF file's metadata, without a model runtime.

llama.cpp's server reports a chat template for every model, its own ChatML
fallback for a GGUF that has none, so whether a GGUF brings a template of its
own (and is a chat model rather than a base model to steer) is read here.

The layout (GGUF v2 and v3): magic, version, tensor count, key count, then
each key as a string, a value type and the value; arrays hold a type, a
count and the elements."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"GGUF"
_STRING = 8
_ARRAY = 9
# Sizes of the fixed-size value types, by type id.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


class GgufError(ValueError):
    """Not a GGUF file, or one cut short."""


def gguf_string(path: str | Path, key: str) -> str | None:
    """The string value of key, or None when the file has no such key."""
    with open(path, "rb") as f:
        if f.read(4) != _MAGIC:
            raise GgufError(f"{path}: not a GGUF file")
        version = _unpack(f, "<I")
        if version < 2:
            raise GgufError(f"{path}: GGUF version {version} is not supported")
        _unpack(f, "<Q")  # tensors
        count = _unpack(f, "<Q")
        wanted = key.encode()
        for _ in range(count):
            name = _read_string(f)
            kind = _unpack(f, "<I")
            if name == wanted:
                return _read_string(f).decode("utf-8", "replace") if kind == _STRING else None
            _skip(f, kind)
    return None


def _unpack(f: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GgufError("GGUF metadata cut short")
    return int(struct.unpack(fmt, data)[0])


def _read_string(f: BinaryIO) -> bytes:
    size = _unpack(f, "<Q")
    data = f.read(size)
    if len(data) != size:
        raise GgufError("GGUF metadata cut short")
    return data


def _skip(f: BinaryIO, kind: int) -> None:
    if kind in _FIXED:
        f.seek(_FIXED[kind], 1)
    elif kind == _STRING:
        f.seek(_unpack(f, "<Q"), 1)
    elif kind == _ARRAY:
        inner = _unpack(f, "<I")
        count = _unpack(f, "<Q")
        if inner in _FIXED:
            f.seek(_FIXED[inner] * count, 1)
        else:  # strings (a vocabulary) or nested arrays: one by one
            for _ in range(count):
                _skip(f, inner)
    else:
        raise GgufError(f"unknown GGUF value type {kind}")
