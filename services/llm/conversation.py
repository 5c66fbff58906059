"""A session's conversation: the system prompt and a bounded history."""

from __future__ import annotations


class Conversation:
    def __init__(self, system_prompt: str, max_turns: int = 20, max_chars: int = 12000) -> None:
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_chars = max_chars
        self.history: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt}, *self.history]

    def add_user(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        self._bound()

    def add_assistant(self, text: str) -> None:
        self.history.append({"role": "assistant", "content": text})
        self._bound()

    def _bound(self) -> None:
        """Drop the oldest exchanges first; the system prompt always stays."""

        def too_big() -> bool:
            users = sum(1 for m in self.history if m["role"] == "user")
            chars = sum(len(m["content"]) for m in self.history)
            return users > self.max_turns or chars > self.max_chars

        while len(self.history) > 1 and too_big():
            self.history.pop(0)
            # Never start the history with an orphaned answer.
            while self.history and self.history[0]["role"] != "user":
                self.history.pop(0)
