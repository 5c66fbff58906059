"""An OpenAI Realtime-compatible WebSocket endpoint (docs/realtime.md): apps
written against the Realtime API (GA, or beta with `OpenAI-Beta: realtime=v1`)
talk to Parley by changing their base URL.

This module serves the connection and handles client events; the translation
of Parley's session events lives in realtime_conversation.py."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from parley.config import ParleySettings
from parley.metrics import ERRORS
from parley.text import heard_text
from services.gateway.endpoints import check_token
from services.gateway.realtime_audio import AudioCodec
from services.gateway.realtime_config import RealtimeConfig
from services.gateway.realtime_conversation import RealtimeConversation, Turn
from services.gateway.realtime_events import (
    Dialect,
    RealtimeClientError,
    function_output_item,
    new_id,
    user_item,
)
from services.gateway.realtime_tools import RealtimeTools
from services.gateway.session import ClientError, GatewaySession

if TYPE_CHECKING:
    from services.gateway.service import Gateway

log = logging.getLogger("parley.gateway.realtime")

REALTIME_PATHS = ("/v1/realtime",)
# One append carries at most this much audio (a 1 MiB WebSocket message holds
# about 16 s of base64 PCM16 at 24 kHz; the Realtime API's own limit is 15 MiB).
MAX_APPEND_MS = 10_000
# The Realtime API refuses to commit less than this.
MIN_COMMIT_MS = 100


class RealtimeEndpoint:
    """The OpenAI Realtime API at /v1/realtime?model=..."""

    name = "realtime"

    def __init__(self, settings: ParleySettings) -> None:
        self.token = settings.gateway.auth_token

    def matches(self, path: str) -> bool:
        return path in REALTIME_PATHS

    def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        # Without a configured token any API key is accepted: apps must send one.
        return check_token(connection, request, self.token, "API key")

    async def serve(self, gateway: Gateway, ws: ServerConnection) -> None:
        assert ws.request is not None
        beta = "realtime=v1" in ws.request.headers.get("OpenAI-Beta", "")
        conv = RealtimeConversation(ws, Dialect(beta))
        model = parse_qs(urlsplit(ws.request.path).query).get("model")
        if model:
            conv.config.model = model[0]
        session, failures = await gateway.open_session(
            conv, "realtime", conv.config.parley_settings()
        )
        try:
            protocol = RealtimeProtocol(ws, session, conv)
            await protocol.start()
            await session.report_placement(failures)
            await protocol.run()
        finally:
            await gateway.close_session(session)


class RealtimeProtocol:
    """Reads the client's events and drives the session."""

    def __init__(
        self, ws: ServerConnection, session: GatewaySession, conv: RealtimeConversation
    ) -> None:
        self.ws = ws
        self.session = session
        self.conv = conv
        self.in_codec = AudioCodec(conv.config.input_format, encode=False)
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self.session_update,
            "input_audio_buffer.append": self.append,
            "input_audio_buffer.commit": self.commit,
            "input_audio_buffer.clear": self.clear,
            "conversation.item.create": self.item_create,
            "conversation.item.truncate": self.item_truncate,
            "conversation.item.delete": self.item_delete,
            "conversation.item.retrieve": self.item_retrieve,
            "response.create": self.response_create,
            "response.cancel": self.response_cancel,
        }

    @property
    def beta(self) -> bool:
        return self.conv.dialect.beta

    async def start(self) -> None:
        config = self.conv.config
        await self.session.update_settings(
            None, config.input_format.rate, config.output_format.rate
        )
        await self.conv.event("session.created", session=self.describe())

    def describe(self) -> dict[str, Any]:
        effective = self.session.describe()["settings"]
        return self.conv.config.describe(self.session.session_id, self.beta, effective)

    async def run(self) -> None:
        async for frame in self.ws:
            event_id: str | None = None
            try:
                if isinstance(frame, bytes):
                    raise RealtimeClientError(
                        "invalid_event", "binary frames are not Realtime events; send JSON text"
                    )
                msg = _parse(frame)
                event_id = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
                handler = self._handlers.get(msg["type"])
                if handler is None:
                    raise RealtimeClientError(
                        "invalid_value",
                        f"Invalid value: {msg['type']!r}. Supported values are: "
                        + ", ".join(repr(k) for k in self._handlers)
                        + ".",
                        "type",
                    )
                await handler(msg)
            except ClientError as exc:
                await self.error(exc, event_id)
            if self.conv.closed:
                return

    async def error(self, exc: ClientError, event_id: str | None) -> None:
        ERRORS.labels("gateway", exc.code).inc()
        log.info("realtime client error %s: %s", exc.code, exc)
        param = exc.param if isinstance(exc, RealtimeClientError) else None
        kind = exc.kind if isinstance(exc, RealtimeClientError) else "invalid_request_error"
        await self.conv.emit(self.conv.dialect.error(exc.code, str(exc), param, event_id, kind))

    # --- session ----------------------------------------------------------------
    async def session_update(self, msg: dict[str, Any]) -> None:
        conv, old = self.conv, self.conv.config
        new: RealtimeConfig = old.updated(msg.get("session", {}))
        await self.session.update_settings(
            new.parley_settings(), new.input_format.rate, new.output_format.rate
        )
        async with conv.lock:
            conv.config = new
            if new.input_format != old.input_format:
                self.in_codec = AudioCodec(new.input_format, encode=False)
            if new.output_format != old.output_format:
                conv.out_codec = AudioCodec(new.output_format, encode=True)
        if new.tool_protos() != old.tool_protos():
            tools = RealtimeTools(conv) if new.tool_protos() else None
            await self.session.set_client_tools(tools)
        await conv.event("session.updated", session=self.describe())

    # --- input audio ------------------------------------------------------------
    def _audio(self, value: Any, param: str) -> bytes:
        """Base64 audio in the session's input format, as PCM16 for the session."""
        if not isinstance(value, str):
            raise RealtimeClientError(
                "invalid_value", f"{param} must be a base64-encoded string", param
            )
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeClientError(
                "invalid_value", f"Invalid '{param}': not valid base64-encoded audio.", param
            ) from None
        fmt = self.in_codec.format
        if len(data) > MAX_APPEND_MS * fmt.bytes_per_ms:
            raise RealtimeClientError(
                "audio_too_large",
                f"{len(data)} bytes of {fmt.beta_name} audio in one event is over "
                f"{MAX_APPEND_MS} ms; append it in smaller pieces",
                param,
            )
        return self.in_codec.to_pcm(data)

    async def append(self, msg: dict[str, Any]) -> None:
        pcm = self._audio(msg.get("audio"), "audio")
        if not pcm:
            return
        await self.session.push_audio(pcm)
        self.conv.buffer_ms += len(pcm) / (self.session.input_rate * 2) * 1000

    async def commit(self, msg: dict[str, Any]) -> None:
        conv = self.conv
        if conv.speaking_turn:
            # The VAD is inside a turn: end it; its committed event follows.
            conv.awaiting_answer = True
            await self.session.commit()
            return
        if conv.buffer_ms < MIN_COMMIT_MS:
            raise RealtimeClientError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {conv.buffer_ms:.2f}ms of audio.",
            )
        # Audio without speech in it: an item with nothing to answer.
        async with conv.lock:
            conv.buffer_ms = 0.0
            item_id = new_id("item")
            await conv.commit_item(item_id)
            item = conv.items[item_id]
            item["content"][0]["transcript"] = ""
            if conv.config.transcription is not None:
                await conv.event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript="",
                    usage={"type": "duration", "seconds": 0.0},
                )
            await conv.item_done(item)

    async def clear(self, msg: dict[str, Any]) -> None:
        conv = self.conv
        conv.buffer_ms = 0.0
        turn_id = conv.speaking_turn
        if turn_id:
            conv.speaking_turn = 0
            turn = conv.turns.get(turn_id)
            if turn is not None:
                turn.dismissed = True
            await self.session.dismiss_turn(turn_id, "input audio buffer cleared")
        await conv.event("input_audio_buffer.cleared")

    # --- conversation items -----------------------------------------------------
    async def item_create(self, msg: dict[str, Any]) -> None:
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

    async def _function_output(self, item: dict[str, Any]) -> None:
        conv = self.conv
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str) or not isinstance(output, str):
            raise RealtimeClientError(
                "missing_required_parameter",
                "function_call_output needs string call_id and output",
                "item.call_id",
            )
        waiting = conv.calls.get(call_id)
        if waiting is None:
            raise RealtimeClientError(
                "invalid_value",
                f"no function call is waiting for call_id {call_id!r}",
                "item.call_id",
            )
        future, _ = waiting
        async with conv.lock:
            await conv.add_item(function_output_item(_item_id(item), call_id, output))
        if not future.done():
            future.set_result(output)

    async def _user_message(self, item: dict[str, Any]) -> None:
        conv = self.conv
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
                audio += self._audio(part.get("audio"), f"{p}.audio")
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
            await self._audio_message(item_id, audio)
            return
        if not text:
            raise RealtimeClientError("invalid_value", "the message has no text", "item.content")
        async with conv.lock:
            conv.pending_text.append((item_id, text))
            parts = [{"type": "input_text", "text": text}]
            await conv.add_item(user_item(item_id, parts))

    async def _audio_message(self, item_id: str, pcm: bytes) -> None:
        """Audio as a user item: spoken into the session, then the turn is
        ended; its transcript completes the item."""
        conv = self.conv
        async with conv.lock:
            conv.next_turn = Turn(item_id, from_client=True)
            content = [{"type": "input_audio", "transcript": None}]
            await conv.add_item(user_item(item_id, content), done=False)
        await self.session.push_audio(pcm)
        # A silence after it lets the VAD end the turn itself; commit ends it
        # without turn detection.
        rate = self.session.input_rate
        await self.session.push_audio(bytes(int(rate * 2 * 0.7)))
        conv.awaiting_answer = True
        if conv.config.turn_detection is None:
            await self.session.commit()

    async def item_truncate(self, msg: dict[str, Any]) -> None:
        conv = self.conv
        item_id, end_ms = msg.get("item_id"), msg.get("audio_end_ms")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            raise RealtimeClientError(
                "invalid_value", "audio_end_ms must be a non-negative integer", "audio_end_ms"
            )
        item = conv.items.get(item_id) if isinstance(item_id, str) else None
        audio = conv.item_audio.get(item_id) if isinstance(item_id, str) else None
        if item is None or audio is None or item.get("role") != "assistant":
            raise RealtimeClientError(
                "invalid_value",
                f"no assistant audio item {item_id!r} to truncate",
                "item_id",
            )
        rid, audio_ms = audio
        if end_ms > audio_ms + 1:
            raise RealtimeClientError(
                "invalid_value",
                f"audio_end_ms {end_ms} is beyond the item's {audio_ms:.0f} ms of audio",
                "audio_end_ms",
            )
        if rid == conv.current_rid and conv.active():
            # The client stopped playing it: the answer stops here too.
            await self.session.interrupt()
        # The llm's history keeps what end_ms of audio held (Parley's own
        # guess at the cut came from its pacing clock).
        await self.session.truncate(rid, float(end_ms))
        async with conv.lock:
            part = item["content"][0] if item["content"] else None
            if part is not None and part.get("transcript"):
                part["transcript"] = heard_text([part["transcript"]], [audio_ms], float(end_ms))
            await conv.event(
                "conversation.item.truncated",
                item_id=item_id,
                content_index=msg.get("content_index", 0),
                audio_end_ms=end_ms,
            )

    async def item_delete(self, msg: dict[str, Any]) -> None:
        conv = self.conv
        item_id = msg.get("item_id")
        if not isinstance(item_id, str) or item_id not in conv.items:
            raise RealtimeClientError("invalid_value", f"no item {item_id!r}", "item_id")
        pending = [p for p in conv.pending_text if p[0] == item_id]
        if not pending:
            raise RealtimeClientError(
                "unsupported",
                "Parley's LLM keeps the conversation history itself: only a message not yet "
                "answered (before response.create) can be deleted",
                "item_id",
            )
        async with conv.lock:
            conv.pending_text.remove(pending[0])
            del conv.items[item_id]
            await conv.event("conversation.item.deleted", item_id=item_id)

    async def item_retrieve(self, msg: dict[str, Any]) -> None:
        item = self.conv.items.get(msg.get("item_id", ""))
        if item is None:
            raise RealtimeClientError("invalid_value", f"no item {msg.get('item_id')!r}", "item_id")
        await self.conv.event("conversation.item.retrieved", item=item)

    # --- responses ----------------------------------------------------------------
    async def response_create(self, msg: dict[str, Any]) -> None:
        conv = self.conv
        response = msg.get("response") or {}
        if isinstance(response, dict) and response.get("conversation") == "none":
            raise RealtimeClientError(
                "unsupported",
                "out-of-band responses (conversation: none) are not supported",
                "response.conversation",
            )
        if conv.active() or conv.awaiting_answer:
            # Parley already answers (a VAD or push-to-talk turn, or the model
            # going on after a function output): this asks for that same answer.
            log.info("response.create joins the answer in progress")
            return
        if not conv.pending_text:
            raise RealtimeClientError(
                "no_input",
                "nothing to respond to: add a user message or audio first "
                "(Parley answers the user, it cannot speak unprompted)",
            )
        text = " ".join(t for _, t in conv.pending_text)
        conv.pending_text.clear()
        conv.awaiting_answer = True
        await self.session.text_input(text)

    async def response_cancel(self, msg: dict[str, Any]) -> None:
        if not self.conv.active():
            raise RealtimeClientError(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
            )
        answer = self.conv.answers.get(self.conv.current_rid)
        await self.session.interrupt()
        if answer is not None and not answer.cancelled and not answer.over:
            # Text done and heard, only tts_end outstanding: nothing left to cut.
            raise RealtimeClientError(
                "response_cancel_not_active", "the response has already been delivered"
            )


def _parse(text: str) -> dict[str, Any]:
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RealtimeClientError("invalid_json", f"the event is not valid JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise RealtimeClientError(
            "invalid_event", "an event must be a JSON object with a string 'type'", "type"
        )
    return msg


def _item_id(item: dict[str, Any]) -> str:
    given = item.get("id")
    return given if isinstance(given, str) and given else new_id("item")
