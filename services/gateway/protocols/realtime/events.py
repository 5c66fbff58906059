"""Realtime server event shapes: ids, the names that differ between the beta
(`OpenAI-Beta: realtime=v1`) and GA dialects, items, responses and errors.

Events and items are built here as the wire JSON the client gets; nothing
outside this protocol's folder sees them."""

from __future__ import annotations

import uuid
from typing import Any

from services.gateway.core.errors import ClientError

# A Realtime server event, or a conversation item, in its wire form. Items are
# kept in this form: conversation.item.retrieve returns them as held.
Wire = dict[str, Any]


class RealtimeClientError(ClientError):
    """Bad client input, reported as a Realtime `error` event naming its param."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(code, message)
        self.param = param
        self.kind = kind


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# Event names by dialect, for the events the GA API renamed.
_GA = {
    "audio.delta": "response.output_audio.delta",
    "audio.done": "response.output_audio.done",
    "transcript.delta": "response.output_audio_transcript.delta",
    "transcript.done": "response.output_audio_transcript.done",
    "text.delta": "response.output_text.delta",
    "text.done": "response.output_text.done",
}
_BETA = {
    "audio.delta": "response.audio.delta",
    "audio.done": "response.audio.done",
    "transcript.delta": "response.audio_transcript.delta",
    "transcript.done": "response.audio_transcript.done",
    "text.delta": "response.text.delta",
    "text.done": "response.text.done",
}


class Dialect:
    def __init__(self, beta: bool) -> None:
        self.beta = beta
        self._names = _BETA if beta else _GA

    def name(self, key: str) -> str:
        return self._names[key]

    def event(self, kind: str, **fields: Any) -> Wire:
        return {"type": kind, "event_id": new_id("event"), **fields}

    def item_added(self, item: Wire, previous_item_id: str | None) -> Wire:
        """conversation.item.created (beta) or conversation.item.added (GA)."""
        kind = "conversation.item.created" if self.beta else "conversation.item.added"
        return self.event(kind, previous_item_id=previous_item_id, item=item)

    def assistant_content(self, text_only: bool) -> Wire:
        if text_only:
            return {"type": "text" if self.beta else "output_text", "text": ""}
        return {"type": "audio" if self.beta else "output_audio", "transcript": ""}

    def error(
        self,
        code: str,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> Wire:
        return self.event(
            "error",
            error={
                "type": kind,
                "code": code,
                "message": message,
                "param": param,
                "event_id": event_id,
            },
        )


def user_item(item_id: str, content: list[Wire]) -> Wire:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": content,
    }


def assistant_item(item_id: str) -> Wire:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }


def function_call_item(item_id: str, call_id: str, name: str, arguments: str) -> Wire:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def function_output_item(item_id: str, call_id: str, output: str) -> Wire:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call_output",
        "status": "completed",
        "call_id": call_id,
        "output": output,
    }


def estimate_tokens(text: str) -> int:
    """About four characters a token; Parley's stages do not count tokens."""
    return (len(text) + 3) // 4


def usage(in_text: str, in_audio_ms: float, out_text: str, out_audio_ms: float) -> Wire:
    """Estimated usage: text at ~4 characters a token, audio at OpenAI's rates
    (input 1 token per 100 ms, output 1 per 50 ms). Nothing is billed."""
    in_t, in_a = estimate_tokens(in_text), int(in_audio_ms / 100)
    out_t, out_a = estimate_tokens(out_text), int(out_audio_ms / 50)
    return {
        "total_tokens": in_t + in_a + out_t + out_a,
        "input_tokens": in_t + in_a,
        "output_tokens": out_t + out_a,
        "input_token_details": {"text_tokens": in_t, "audio_tokens": in_a, "cached_tokens": 0},
        "output_token_details": {"text_tokens": out_t, "audio_tokens": out_a},
    }
