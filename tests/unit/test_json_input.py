"""Bounded JSON: nesting attacks are a clear error, never a RecursionError."""

from __future__ import annotations

import pytest

from parley import json_input


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, "[" * 33 + "]" * 33, '{"a":' * 40 + "1" + "}" * 40, "{not json", b"\xff"],
)
def test_refused_with_a_reason(text: str | bytes) -> None:
    with pytest.raises(json_input.BadJson):
        json_input.loads(text)


def test_ordinary_messages_pass() -> None:
    deep_enough = "[" * 32 + "]" * 32
    assert json_input.loads(deep_enough) is not None
    assert json_input.loads('{"type": "ping", "a": [1, {"b": 2}]}')["type"] == "ping"
