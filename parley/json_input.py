"""JSON from outside (clients, devices, tool arguments), parsed with bounds:
`json.loads("[" * 100000)` raises RecursionError, not JSONDecodeError, which
escaped every handler that caught only the latter and killed the connection
with a traceback; and a document nested a thousand levels deep is an attack,
not a message."""

from __future__ import annotations

import json
from typing import Any

# Deeper than any message of any protocol Parley speaks (Realtime's session
# config is the deepest, about 6 levels).
MAX_DEPTH = 32


class BadJson(ValueError):
    """Not JSON, or nested too deep; the message says which."""


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadJson(f"JSON nested deeper than {max_depth} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadJson(str(exc)) from None
    if _depth_over(value, max_depth):
        raise BadJson(f"JSON nested deeper than {max_depth} levels")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Iterative, so checking the depth cannot itself recurse too deep."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
