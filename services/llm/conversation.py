"""A session's conversation: the system prompt and a bounded history."""

from __future__ import annotations

from typing import Any


class Conversation:
    def __init__(self, system_prompt: str, max_turns: int = 20, max_chars: int = 12000) -> None:
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_chars = max_chars
        self.history: list[dict[str, Any]] = []

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": self.system_prompt}, *self.history]

    def add_user(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        self._bound()

    def add_assistant(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text})
        self._bound()

    def add_tool_round(self, calls: list[Any], results: list[str], text: str = "") -> None:
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

    def _bound(self) -> None:
        """Drop the oldest exchanges first; the system prompt always stays."""

        def too_big() -> bool:
            users = sum(1 for m in self.history if m["role"] == "user")
            chars = sum(len(m.get("content") or "") for m in self.history)
            return users > self.max_turns or chars > self.max_chars

        while len(self.history) > 1 and too_big():
            self.history.pop(0)
            # Never start the history with an orphaned answer.
            while self.history and self.history[0]["role"] != "user":
                self.history.pop(0)
