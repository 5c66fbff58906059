"""The client's conversation.item.* events: user messages (text held until
response.create, audio spoken into the session), function call outputs,
truncation of an answer's audio, deletion and retrieval."""

from __future__ import annotations

from parley.text import heard_text
from services.gateway.core.session import GatewaySession
from services.gateway.protocols.realtime.conversation import RealtimeConversation
from services.gateway.protocols.realtime.events import (
    RealtimeClientError,
    Wire,
    function_output_item,
    new_id,
    user_item,
)
from services.gateway.protocols.realtime.input_buffer import InputBuffer


class ItemEvents:
    def __init__(
        self, session: GatewaySession, conv: RealtimeConversation, audio: InputBuffer
    ) -> None:
        self.session = session
        self.conv = conv
        self.audio = audio
        # (item id, text) of user text items, sent as typed input on response.create.
        self.pending_text: list[tuple[str, str]] = []

    def take_pending_text(self) -> str:
        text = " ".join(t for _, t in self.pending_text)
        self.pending_text.clear()
        return text

    async def create(self, msg: Wire) -> None:
        item = msg.get("item")
        if not isinstance(item, dict):
            raise RealtimeClientError("missing_required_parameter", "item is required", "item")
        kind = item.get("type")
        if kind == "function_call_output":
            await self._function_output(item)
        elif kind == "message" and item.get("role") == "user":
            await self._user_message(item)
        elif kind == "message":
            raise RealtimeClientError(
                "unsupported",
                f"{item.get('role')!r} messages are not supported: Parley's LLM keeps its "
                "own history; set instructions with session.update",
                "item.role",
            )
        else:
            raise RealtimeClientError(
                "unsupported",
                f"items of type {kind!r} cannot be created; use message or function_call_output",
                "item.type",
            )

    async def _function_output(self, item: Wire) -> None:
        out, tools = self.conv.out, self.conv.tools
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str) or not isinstance(output, str):
            raise RealtimeClientError(
                "missing_required_parameter",
                "function_call_output needs string call_id and output",
                "item.call_id",
            )
        if not tools.is_waiting(call_id):
            raise RealtimeClientError(
                "invalid_value",
                f"no function call is waiting for call_id {call_id!r}",
                "item.call_id",
            )
        async with out.lock:
            await out.add_item(function_output_item(_item_id(item), call_id, output))
        tools.answer(call_id, output)

    async def _user_message(self, item: Wire) -> None:
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise RealtimeClientError(
                "missing_required_parameter", "a user message needs content", "item.content"
            )
        texts: list[str] = []
        audio = b""
        for i, part in enumerate(content):
            p = f"item.content[{i}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "input_audio":
                audio += self.audio.decode(part.get("audio"), f"{p}.audio")
            else:
                raise RealtimeClientError(
                    "unsupported", f"{p}: only input_text and input_audio are supported", p
                )
        item_id = _item_id(item)
        text = " ".join(t.strip() for t in texts if t.strip())
        if audio and text:
            raise RealtimeClientError(
                "unsupported", "mix text and audio in separate items", "item.content"
            )
        if audio:
            await self.audio.speak_item(item_id, audio)
            return
        if not text:
            raise RealtimeClientError("invalid_value", "the message has no text", "item.content")
        async with self.conv.out.lock:
            self.pending_text.append((item_id, text))
            await self.conv.out.add_item(user_item(item_id, [{"type": "input_text", "text": text}]))

    async def truncate(self, msg: Wire) -> None:
        out, responses = self.conv.out, self.conv.responses
        item_id, end_ms = msg.get("item_id"), msg.get("audio_end_ms")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise RealtimeClientError(
                "invalid_value", "audio_end_ms must be a non-negative integer", "audio_end_ms"
            )
        item = out.items.get(item_id) if isinstance(item_id, str) else None
        audio = responses.item_audio.get(item_id) if isinstance(item_id, str) else None
        if item is None or audio is None or item.get("role") != "assistant":
            raise RealtimeClientError(
                "invalid_value", f"no assistant audio item {item_id!r} to truncate", "item_id"
            )
        rid, audio_ms = audio
        if end_ms > audio_ms + 1:
            raise RealtimeClientError(
                "invalid_value",
                f"audio_end_ms {end_ms} is beyond the item's {audio_ms:.0f} ms of audio",
                "audio_end_ms",
            )
        if rid == responses.current_rid and responses.active():
            # The client stopped playing it: the answer stops here too.
            await self.session.interrupt()
        # The llm's history keeps what end_ms of audio held (Parley's own
        # guess at the cut came from its pacing clock).
        await self.session.truncate(rid, float(end_ms))
        async with out.lock:
            part = item["content"][0] if item["content"] else None
            if part is not None and part.get("transcript"):
                part["transcript"] = heard_text([part["transcript"]], [audio_ms], float(end_ms))
            await out.event(
                "conversation.item.truncated",
                item_id=item_id,
                content_index=msg.get("content_index", 0),
                audio_end_ms=end_ms,
            )

    async def delete(self, msg: Wire) -> None:
        out = self.conv.out
        item_id = msg.get("item_id")
        if not isinstance(item_id, str) or item_id not in out.items:
            raise RealtimeClientError("invalid_value", f"no item {item_id!r}", "item_id")
        pending = [p for p in self.pending_text if p[0] == item_id]
        if not pending:
            raise RealtimeClientError(
                "unsupported",
                "Parley's LLM keeps the conversation history itself: only a message not yet "
                "answered (before response.create) can be deleted",
                "item_id",
            )
        async with out.lock:
            self.pending_text.remove(pending[0])
            del out.items[item_id]
            await out.event("conversation.item.deleted", item_id=item_id)

    async def retrieve(self, msg: Wire) -> None:
        item_id = msg.get("item_id")
        item = self.conv.out.items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise RealtimeClientError("invalid_value", f"no item {item_id!r}", "item_id")
        await self.conv.out.event("conversation.item.retrieved", item=item)


def _item_id(item: Wire) -> str:
    given = item.get("id")
    return given if isinstance(given, str) and given else new_id("item")
