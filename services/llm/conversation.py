"""A session's conversation: the system prompt and a bounded history, which
keeps of an interrupted answer only what the listener heard; encoded as a
`History` (proto/parley/v1/state.proto) for the state store."""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError

from parley.v1 import state_pb2
from services.llm.providers.base import Message, ToolCall

log = logging.getLogger("parley.llm")

_ROLES = {
    "user": state_pb2.HistoryMessage.USER,
    "assistant": state_pb2.HistoryMessage.ASSISTANT,
    "tool": state_pb2.HistoryMessage.TOOL,
}
_ROLE_NAMES = {v: k for k, v in _ROLES.items()}


class Conversation:
    """messages() is what a chat model is sent: the system prompt, then the
    history, oldest first. The history is bounded by turns and by size; the
    oldest exchanges go first, the system prompt never."""

    def __init__(self, system_prompt: str, max_turns: int = 20, max_chars: int = 12000) -> None:
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_chars = max_chars
        self.history: list[Message] = []
        # Told after every change of the history (the llm stores it).
        self.on_change: Callable[[], None] | None = None

    def messages(self) -> list[Message]:
        # Copies: a caller appending to a message must not rewrite history.
        return [
            {"role": "system", "content": self.system_prompt},
            *(dict(m) for m in self.history),
        ]

    def add_user(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        self._bound()
        self._changed()

    def add_assistant(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text})
        self._bound()
        self._changed()

    def add_tool_round(self, calls: list[ToolCall], results: list[str], text: str = "") -> None:
        """One round of tool calls and their results, added together so the
        history never holds a call without its answer."""
        self.history.append(
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in calls
                ],
            }
        )
        for call, result in zip(calls, results, strict=True):
            self.history.append({"role": "tool", "tool_call_id": call.id, "content": result})
        self._bound()
        self._changed()

    def truncate_last_assistant(self, heard_text: str) -> bool:
        """An answer was interrupted: keep of it only what was heard, so the
        next answer does not assume the user knows the rest. Nothing heard
        removes it. False when there is no spoken answer to truncate."""
        for index in range(len(self.history) - 1, -1, -1):
            message = self.history[index]
            if message["role"] == "user":
                return False
            if message["role"] == "assistant" and isinstance(message.get("content"), str):
                if message.get("tool_calls"):
                    # The calls happened whatever was heard: keep them.
                    message["content"] = heard_text.strip() or None
                elif heard_text.strip():
                    message["content"] = heard_text.strip()
                else:
                    del self.history[index]
                self._changed()
                return True
        return False

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- the stored form ------------------------------------------------------
    def encode(self) -> bytes:
        stored = state_pb2.History(system_prompt=self.system_prompt)
        for m in self.history:
            out = stored.messages.add(role=_ROLES[m["role"]])
            if m.get("content") is not None:
                out.content = m["content"]
            for call in m.get("tool_calls") or []:
                out.tool_calls.add(
                    id=call["id"],
                    name=call["function"]["name"],
                    arguments=call["function"]["arguments"],
                )
            if m.get("tool_call_id"):
                out.tool_call_id = m["tool_call_id"]
        return stored.SerializeToString()

    def restore(self, data: bytes) -> bool:
        """The history as stored (by this session's previous owner); bounded
        again by this instance's limits. False, history untouched, when the
        value cannot be read."""
        stored = state_pb2.History()
        try:
            stored.ParseFromString(data)
            history = [_message(m) for m in stored.messages]
        except (DecodeError, KeyError) as exc:
            log.warning("stored history unreadable, starting afresh: %s", exc)
            return False
        if stored.system_prompt:
            self.system_prompt = stored.system_prompt
        self.history = history
        self._bound()
        return True

    def _bound(self) -> None:
        def size(message: Message) -> int:
            chars = len(message.get("content") or "")
            for call in message.get("tool_calls") or []:
                chars += len(call["function"]["arguments"]) + len(call["function"]["name"])
            return chars

        def too_big() -> bool:
            users = sum(1 for m in self.history if m["role"] == "user")
            chars = sum(size(m) for m in self.history)
            return users > self.max_turns or chars > self.max_chars

        # Whole exchanges go, oldest first: a user message with its answer and
        # any tool calls and results in between, so the history never starts
        # with an orphaned answer or tool result. The latest user message stays
        # even when it alone is over the size: without it there is nothing to
        # answer.
        while too_big():
            users = _user_indices(self.history)
            if users and users[0] > 0:
                del self.history[: users[0]]
            elif len(users) >= 2:
                del self.history[: users[1]]
            else:
                break


def _message(m: state_pb2.HistoryMessage) -> Message:
    message: Message = {
        "role": _ROLE_NAMES[m.role],
        "content": m.content if m.HasField("content") else None,
    }
    if m.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in m.tool_calls
        ]
    if m.role == state_pb2.HistoryMessage.TOOL:
        message["tool_call_id"] = m.tool_call_id
    return message


def _user_indices(history: list[Message]) -> list[int]:
    return [i for i, m in enumerate(history) if m["role"] == "user"]
