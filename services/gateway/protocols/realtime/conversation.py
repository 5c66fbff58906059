"""A Realtime connection's conversation: the ClientSink that turns Parley's
session events into Realtime server events, and the state both directions
share (items, responses, the user's turns, pending function calls).

One Parley answer may become several Realtime responses: when the model calls
a client function, the response carrying the function_call item ends there
(as in the Realtime API), and what the model says once it has the output is a
new response for the same Parley answer."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from services.gateway.realtime_audio import PCM16, AudioCodec
from services.gateway.realtime_config import RealtimeConfig
from services.gateway.realtime_events import (
    Dialect,
    assistant_item,
    function_call_item,
    new_id,
    usage,
    user_item,
)
from services.gateway.session import ClientToolError

log = logging.getLogger("parley.gateway.realtime")

# Parallel function calls of one model turn reach the gateway a few ms apart;
# they share one response, which ends once no further call came for this long.
TOOL_BATCH_S = 0.05
# Parley's playback_cleared reasons that are the client's own doing.
_CLIENT_REASONS = {"client"}


@dataclass
class _Out:
    """One Realtime response."""

    answer: _Answer
    id: str = field(default_factory=lambda: new_id("resp"))
    output: list[dict[str, Any]] = field(default_factory=list)
    message: dict[str, Any] | None = None  # the assistant message still open
    text: str = ""
    audio_ms: float = 0.0
    closing: asyncio.Task[None] | None = None

    def index(self, item: dict[str, Any]) -> int:
        return self.output.index(item)


@dataclass
class _Answer:
    """One Parley response (response_id), maybe spread over Realtime responses."""

    rid: str
    turn_id: int
    out: _Out | None = None
    text_done: bool = False
    cancelled: bool = False
    over: bool = False  # no Realtime response will be opened for it again


@dataclass
class Turn:
    """A user utterance the VAD delimited: one user audio item."""

    item_id: str
    start_ms: float = 0.0
    audio_ms: float = 0.0
    transcript: str = ""
    dismissed: bool = False
    from_client: bool = False  # a conversation.item.create with audio


class RealtimeConversation:
    def __init__(self, ws: ServerConnection, dialect: Dialect) -> None:
        self.ws = ws
        self.dialect = dialect
        self.config = RealtimeConfig()
        self.out_codec = AudioCodec(PCM16, encode=True)
        # Parley events and tool calls run in different tasks: one at a time.
        self.lock = asyncio.Lock()
        self.items: dict[str, dict[str, Any]] = {}
        self.item_audio: dict[str, tuple[str, float]] = {}  # item -> (Parley rid, audio ms)
        self.answers: dict[str, _Answer] = {}
        self.current_rid = ""
        self.audio_rid = ""
        self.turns: dict[int, Turn] = {}
        self.speaking_turn = 0  # the VAD turn in progress, 0 if none
        self.buffer_ms = 0.0  # audio appended since the last commit or clear
        self.awaiting_answer = False  # a committed turn Parley will answer
        self.next_turn: Turn | None = None  # the item the next VAD turn fills
        self.pending_text: list[tuple[str, str]] = []  # (item id, text) until response.create
        self.calls: dict[str, tuple[asyncio.Future[str], str]] = {}  # call_id -> (output, rid)
        self.closed = False
        self._handlers = {
            "user_speech_start": self._on_speech_start,
            "user_speech_end": self._on_speech_end,
            "transcription": self._on_transcription,
            "response_start": self._on_response_start,
            "response_text": self._on_response_text,
            "tts_start": self._on_tts_start,
            "tts_end": self._on_tts_end,
            "response_end": self._on_response_end,
            "playback_cleared": self._on_playback_cleared,
            "error": self._on_error,
        }

    # --- ClientSink -------------------------------------------------------------
    async def send_event(self, event: dict[str, Any]) -> None:
        handler = self._handlers.get(event.get("type", ""))
        if handler is not None:
            async with self.lock:
                await handler(event)

    async def send_audio(self, pcm: bytes) -> None:
        async with self.lock:
            await self._on_audio(pcm)

    async def close(self, reason: str) -> None:
        self.closed = True
        await self.ws.close(1000, reason)

    # --- out ------------------------------------------------------------------
    async def emit(self, event: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(event))
        except ConnectionClosed:
            self.closed = True

    async def event(self, kind: str, **fields: Any) -> None:
        await self.emit(self.dialect.event(kind, **fields))

    def _last_item_id(self) -> str | None:
        return next(reversed(self.items), None) if self.items else None

    async def add_item(self, item: dict[str, Any], done: bool = True) -> None:
        """conversation.item.created (beta) / .added and, when done, .done (GA)."""
        previous = self._last_item_id()
        self.items[item["id"]] = item
        await self.emit(self.dialect.item_added(item, previous))
        if done and not self.dialect.beta:
            await self.event("conversation.item.done", previous_item_id=previous, item=item)

    async def item_done(self, item: dict[str, Any]) -> None:
        if not self.dialect.beta:
            ids = list(self.items)
            at = ids.index(item["id"]) if item["id"] in ids else 0
            previous = ids[at - 1] if at > 0 else None
            await self.event("conversation.item.done", previous_item_id=previous, item=item)

    # --- the user's turns -------------------------------------------------------
    @property
    def server_vad(self) -> bool:
        return self.config.turn_detection is not None

    async def _on_speech_start(self, e: dict[str, Any]) -> None:
        turn, self.next_turn = self.next_turn or Turn(new_id("item")), None
        turn.start_ms = float(e.get("offset_ms", 0.0))
        self.turns[e["turn_id"]] = turn
        for old in sorted(self.turns)[:-16]:
            del self.turns[old]
        self.speaking_turn = e["turn_id"]
        if self.server_vad and not turn.from_client:
            await self.event(
                "input_audio_buffer.speech_started",
                audio_start_ms=int(turn.start_ms),
                item_id=turn.item_id,
            )

    async def _on_speech_end(self, e: dict[str, Any]) -> None:
        turn_id = e["turn_id"]
        if self.speaking_turn == turn_id:
            self.speaking_turn = 0
        turn = self.turns.get(turn_id)
        if turn is None:
            turn = self.turns[turn_id] = Turn(new_id("item"), float(e["start_ms"]))
        if turn.dismissed:
            return
        turn.audio_ms = float(e["end_ms"]) - float(e["start_ms"])
        self.awaiting_answer = True
        if turn.from_client:
            return  # its item exists already, and no buffer was committed
        if self.server_vad and e.get("reason") != "commit":
            await self.event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=int(e["end_ms"]),
                item_id=turn.item_id,
            )
        self.buffer_ms = 0.0
        await self.commit_item(turn.item_id)

    async def commit_item(self, item_id: str) -> None:
        await self.event(
            "input_audio_buffer.committed",
            previous_item_id=self._last_item_id(),
            item_id=item_id,
        )
        item = user_item(item_id, [{"type": "input_audio", "transcript": None}])
        await self.add_item(item, done=False)

    async def _on_transcription(self, e: dict[str, Any]) -> None:
        if not e.get("final"):
            return  # the transcript at a pause: the final one follows
        turn = self.turns.get(e["turn_id"])
        if turn is None or turn.dismissed:
            return
        item = self.items.get(turn.item_id)
        text = str(e.get("text", "")).strip()
        turn.transcript = text
        if item is not None:
            item["content"][0]["transcript"] = text
        if not text:
            self.awaiting_answer = False  # Parley does not answer silence
        if self.config.transcription is not None:
            await self.event(
                "conversation.item.input_audio_transcription.delta",
                item_id=turn.item_id,
                content_index=0,
                delta=text,
            )
            await self.event(
                "conversation.item.input_audio_transcription.completed",
                item_id=turn.item_id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": round(turn.audio_ms / 1000, 3)},
            )
        if item is not None:
            await self.item_done(item)

    # --- responses ----------------------------------------------------------------
    def _response(self, out: _Out, status: str, details: dict[str, Any] | None) -> dict[str, Any]:
        fmt = self.config.output_format.describe(self.dialect.beta)
        turn = self.turns.get(out.answer.turn_id)
        modalities = ["text"] if self.config.text_only else ["audio"]
        body: dict[str, Any] = {
            "id": out.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": out.output,
            "conversation_id": "conv_default",
            "metadata": None,
            "usage": None
            if status == "in_progress"
            else usage(
                turn.transcript if turn else "",
                turn.audio_ms if turn else 0.0,
                out.text,
                out.audio_ms,
            ),
        }
        if self.dialect.beta:
            body.update(
                modalities=["text"] if self.config.text_only else ["text", "audio"],
                voice=self.config.voice,
                output_audio_format=fmt,
                max_output_tokens=self.config.max_output_tokens,
            )
        else:
            body.update(
                output_modalities=modalities,
                audio={"output": {"format": fmt, "voice": self.config.voice}},
                max_output_tokens=self.config.max_output_tokens,
            )
        return body

    async def _open(self, answer: _Answer) -> _Out:
        out = _Out(answer)
        answer.out = out
        await self.event("response.created", response=self._response(out, "in_progress", None))
        return out

    def active(self) -> bool:
        """A Realtime response is open, or Parley is still producing an answer."""
        answer = self.answers.get(self.current_rid)
        return answer is not None and not answer.over and not answer.cancelled

    async def _on_response_start(self, e: dict[str, Any]) -> None:
        rid = e["response_id"]
        self.awaiting_answer = False
        answer = _Answer(rid, int(e.get("turn_id", 0)))
        self.answers[rid] = answer
        for old in list(self.answers)[:-8]:
            del self.answers[old]
        self.current_rid = rid
        await self._open(answer)

    async def _message(self, answer: _Answer) -> _Out:
        """The open response's assistant message, opened on first content."""
        out = answer.out or await self._open(answer)
        if out.message is None:
            item = assistant_item(new_id("item"))
            out.message = item
            out.output.append(item)
            out.text = ""
            self.items[item["id"]] = item
            self.item_audio[item["id"]] = (answer.rid, 0.0)
            await self.event(
                "response.output_item.added",
                response_id=out.id,
                output_index=out.index(item),
                item=item,
            )
            await self.emit(self.dialect.item_added(item, self._previous(item["id"])))
            part = self.dialect.assistant_content(self.config.text_only)
            item["content"].append(part)
            await self.event(
                "response.content_part.added",
                response_id=out.id,
                item_id=item["id"],
                output_index=out.index(item),
                content_index=0,
                part=self._part(out),
            )
        return out

    def _previous(self, item_id: str) -> str | None:
        ids = list(self.items)
        at = ids.index(item_id)
        return ids[at - 1] if at > 0 else None

    def _part(self, out: _Out) -> dict[str, Any]:
        if self.config.text_only:
            return {"type": "text", "text": out.text}
        return {"type": "audio", "transcript": out.text}

    def _live(self, rid: str) -> _Answer | None:
        answer = self.answers.get(rid)
        if answer is None or answer.cancelled or answer.over:
            return None
        return answer

    async def _on_response_text(self, e: dict[str, Any]) -> None:
        answer = self._live(e["response_id"])
        if answer is None or not e.get("delta"):
            return
        out = await self._message(answer)
        assert out.message is not None
        out.text += e["delta"]
        await self.event(
            self.dialect.name("text.delta" if self.config.text_only else "transcript.delta"),
            response_id=out.id,
            item_id=out.message["id"],
            output_index=out.index(out.message),
            content_index=0,
            delta=e["delta"],
        )

    async def _on_tts_start(self, e: dict[str, Any]) -> None:
        self.audio_rid = e["response_id"]

    async def _on_audio(self, pcm: bytes) -> None:
        if self.config.text_only:
            return
        answer = self._live(self.audio_rid)
        if answer is None:
            return
        out = await self._message(answer)
        assert out.message is not None
        rate = self.out_codec.format.rate
        ms = len(pcm) / (rate * 2) * 1000
        out.audio_ms += ms
        rid, heard = self.item_audio.get(out.message["id"], (answer.rid, 0.0))
        self.item_audio[out.message["id"]] = (rid, heard + ms)
        data = self.out_codec.from_pcm(pcm)
        await self.event(
            self.dialect.name("audio.delta"),
            response_id=out.id,
            item_id=out.message["id"],
            output_index=out.index(out.message),
            content_index=0,
            delta=base64.b64encode(data).decode("ascii"),
        )

    async def _on_response_end(self, e: dict[str, Any]) -> None:
        answer = self._live(e["response_id"])
        if answer is None:
            return
        answer.text_done = True
        status = e.get("status", "completed")
        if status == "cancelled":
            answer.cancelled = True
            await self._finish(
                answer, "cancelled", {"type": "cancelled", "reason": "turn_detected"}
            )
        elif status == "failed":
            details = {
                "type": "failed",
                "error": {"type": "server_error", "code": "provider_error", "message": "failed"},
            }
            await self._finish(answer, "failed", details)
        elif self.config.text_only:
            await self._finish(answer, "completed", None)
        # With audio, the response is done once it has been heard (tts_end).

    async def _on_tts_end(self, e: dict[str, Any]) -> None:
        answer = self._live(e["response_id"])
        if answer is not None and e.get("status") == "completed":
            await self._finish(answer, "completed", None)

    async def _on_playback_cleared(self, e: dict[str, Any]) -> None:
        answer = self._live(e["response_id"])
        if answer is None:
            return
        answer.cancelled = True
        reason = "client_cancelled" if e.get("reason") in _CLIENT_REASONS else "turn_detected"
        self.fail_calls(answer.rid, "the response was cancelled")
        await self._finish(answer, "cancelled", {"type": "cancelled", "reason": reason})

    async def _on_error(self, e: dict[str, Any]) -> None:
        stage = e.get("stage", "gateway")
        kind = "invalid_request_error" if stage == "gateway" else "server_error"
        await self.emit(
            self.dialect.error(
                str(e.get("code", "server_error")), f"{stage}: {e.get('message', '')}", kind=kind
            )
        )

    async def _finish(self, answer: _Answer, status: str, details: dict[str, Any] | None) -> None:
        answer.over = True
        out, answer.out = answer.out, None
        if out is not None:
            await self._close(out, status, details)

    async def _close(self, out: _Out, status: str, details: dict[str, Any] | None) -> None:
        if out.closing is not None and out.closing is not asyncio.current_task():
            out.closing.cancel()
        if out.message is not None:
            await self._close_message(out, status)
        await self.event("response.done", response=self._response(out, status, details))

    async def _close_message(self, out: _Out, status: str) -> None:
        item, out.message = out.message, None
        assert item is not None
        index = out.index(item)
        where = {"response_id": out.id, "item_id": item["id"], "output_index": index}
        part = item["content"][0]
        if self.config.text_only:
            part["text"] = out.text
            await self.event(
                self.dialect.name("text.done"), **where, content_index=0, text=out.text
            )
        else:
            part["transcript"] = out.text
            await self.event(self.dialect.name("audio.done"), **where, content_index=0)
            await self.event(
                self.dialect.name("transcript.done"), **where, content_index=0, transcript=out.text
            )
        await self.event(
            "response.content_part.done", **where, content_index=0, part=self._part(out)
        )
        item["status"] = "completed" if status == "completed" else "incomplete"
        await self.event(
            "response.output_item.done", response_id=out.id, output_index=index, item=item
        )
        await self.item_done(item)

    # --- client function calls ----------------------------------------------------
    async def function_call(self, name: str, arguments: str) -> tuple[str, asyncio.Future[str]]:
        """Put a function_call item in the current response and end that
        response; the future gets the client's function_call_output."""
        answer = self._live(self.current_rid)
        if answer is None:
            raise ClientToolError("no response in progress to call the function from")
        out = answer.out or await self._open(answer)
        if out.message is not None:
            await self._close_message(out, "completed")
        call_id = new_id("call")
        item = function_call_item(new_id("item"), call_id, name, "")
        item["status"] = "in_progress"
        out.output.append(item)
        index = out.index(item)
        await self.event(
            "response.output_item.added", response_id=out.id, output_index=index, item=item
        )
        await self.add_item(item, done=False)
        where = {
            "response_id": out.id,
            "item_id": item["id"],
            "output_index": index,
            "call_id": call_id,
        }
        await self.event("response.function_call_arguments.delta", **where, delta=arguments)
        await self.event(
            "response.function_call_arguments.done", **where, name=name, arguments=arguments
        )
        item.update(arguments=arguments, status="completed")
        await self.event(
            "response.output_item.done", response_id=out.id, output_index=index, item=item
        )
        await self.item_done(item)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.calls[call_id] = (future, answer.rid)
        if out.closing is not None:
            out.closing.cancel()
        out.closing = asyncio.create_task(self._end_after_calls(answer, out))
        return call_id, future

    async def _end_after_calls(self, answer: _Answer, out: _Out) -> None:
        await asyncio.sleep(TOOL_BATCH_S)
        async with self.lock:
            if answer.out is out:
                answer.out = None  # what the model says next is a new response
                await self._close(out, "completed", None)

    def fail_calls(self, rid: str, why: str) -> None:
        for call_id, (future, call_rid) in list(self.calls.items()):
            if call_rid == rid:
                del self.calls[call_id]
                if not future.done():
                    future.set_exception(ClientToolError(why))
