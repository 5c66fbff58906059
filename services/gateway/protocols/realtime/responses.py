"""Parley's answers as Realtime responses: response.created, the assistant
message item with its text or audio deltas, function_call items, and
response.done with its status.

One Parley answer may become several Realtime responses: when the model calls
a client function, the response carrying the function_call item ends there
(as in the Realtime API), and what the model says once it has the output is a
new response for the same Parley answer."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field

from services.gateway.core import events as ev
from services.gateway.core.errors import ClientToolError
from services.gateway.protocols.realtime.events import (
    Wire,
    assistant_item,
    function_call_item,
    new_id,
    usage,
)
from services.gateway.protocols.realtime.server_events import ServerEvents
from services.gateway.protocols.realtime.turns import UserTurns

# Parallel function calls of one model turn reach the gateway a few ms apart;
# they share one response, which ends once no further call came for this long.
TOOL_BATCH_S = 0.05
# Parley answers kept for late events and truncation.
KEPT_ANSWERS = 8
FAILED: Wire = {
    "type": "failed",
    "error": {"type": "server_error", "code": "provider_error", "message": "failed"},
}


@dataclass
class Response:
    """One Realtime response."""

    answer: Answer
    id: str = field(default_factory=lambda: new_id("resp"))
    output: list[Wire] = field(default_factory=list)
    message: Wire | None = None  # the assistant message still open
    text: str = ""
    audio_ms: float = 0.0
    closing: asyncio.Task[None] | None = None

    def index(self, item: Wire) -> int:
        return self.output.index(item)


@dataclass
class Answer:
    """One Parley response (response_id), maybe spread over Realtime responses."""

    rid: str
    turn_id: int
    out: Response | None = None
    text_done: bool = False
    cancelled: bool = False
    over: bool = False  # no Realtime response will be opened for it again


class Responses:
    def __init__(self, out: ServerEvents, turns: UserTurns) -> None:
        self.out = out
        self.turns = turns
        self.answers: dict[str, Answer] = {}
        self.current_rid = ""
        # Assistant item -> (Parley response id, ms of its audio sent), for truncation.
        self.item_audio: dict[str, tuple[str, float]] = {}

    def live(self, rid: str) -> Answer | None:
        answer = self.answers.get(rid)
        if answer is None or answer.cancelled or answer.over:
            return None
        return answer

    def active(self) -> bool:
        """A Realtime response is open, or Parley is still producing an answer."""
        return self.live(self.current_rid) is not None

    # --- Parley's answer ----------------------------------------------------------
    async def started(self, e: ev.ResponseStarted) -> None:
        answer = Answer(e.response_id, e.turn_id)
        self.answers[e.response_id] = answer
        for old in list(self.answers)[:-KEPT_ANSWERS]:
            del self.answers[old]
        self.current_rid = e.response_id
        await self._open(answer)

    async def text(self, e: ev.ResponseTextDelta) -> None:
        answer = self.live(e.response_id)
        if answer is None or not e.delta:
            return
        out = await self._message(answer)
        assert out.message is not None
        out.text += e.delta
        kind = "text.delta" if self.out.config.text_only else "transcript.delta"
        await self.out.event(
            self.out.dialect.name(kind),
            response_id=out.id,
            item_id=out.message["id"],
            output_index=out.index(out.message),
            content_index=0,
            delta=e.delta,
        )

    async def audio(self, frame: ev.AudioOut) -> None:
        if self.out.config.text_only:
            return  # audio is dropped at the gateway: the client asked for text
        answer = self.live(frame.response_id)
        if answer is None:
            return
        out = await self._message(answer)
        assert out.message is not None
        ms = len(frame.pcm) / (frame.sample_rate * 2) * 1000
        out.audio_ms += ms
        rid, sent = self.item_audio.get(out.message["id"], (answer.rid, 0.0))
        self.item_audio[out.message["id"]] = (rid, sent + ms)
        data = self.out.out_codec.from_pcm(frame.pcm)
        await self.out.event(
            self.out.dialect.name("audio.delta"),
            response_id=out.id,
            item_id=out.message["id"],
            output_index=out.index(out.message),
            content_index=0,
            delta=base64.b64encode(data).decode("ascii"),
        )

    async def ended(self, e: ev.ResponseEnded) -> None:
        answer = self.live(e.response_id)
        if answer is None:
            return
        answer.text_done = True
        if e.status is ev.Status.CANCELLED:
            answer.cancelled = True
            await self._finish(
                answer, "cancelled", {"type": "cancelled", "reason": "turn_detected"}
            )
        elif e.status is ev.Status.FAILED:
            await self._finish(answer, "failed", FAILED)
        elif self.out.config.text_only:
            await self._finish(answer, "completed", None)
        # With audio, the response is done once it has been heard (heard()).

    async def heard(self, e: ev.TtsEnded) -> None:
        answer = self.live(e.response_id)
        if answer is not None and e.status is ev.Status.COMPLETED:
            await self._finish(answer, "completed", None)

    async def cancel(self, answer: Answer, by_client: bool) -> None:
        """Barge-in, or the client's response.cancel / truncate."""
        answer.cancelled = True
        reason = "client_cancelled" if by_client else "turn_detected"
        await self._finish(answer, "cancelled", {"type": "cancelled", "reason": reason})

    # --- Realtime responses ---------------------------------------------------------
    def _body(self, out: Response, status: str, details: Wire | None) -> Wire:
        config = self.out.config
        fmt = config.output_format.describe(self.out.beta)
        turn = self.turns.get(out.answer.turn_id)
        body: Wire = {
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
        if self.out.beta:
            body.update(
                modalities=["text"] if config.text_only else ["text", "audio"],
                voice=config.voice,
                output_audio_format=fmt,
                max_output_tokens=config.max_output_tokens,
            )
        else:
            body.update(
                output_modalities=["text"] if config.text_only else ["audio"],
                audio={"output": {"format": fmt, "voice": config.voice}},
                max_output_tokens=config.max_output_tokens,
            )
        return body

    async def _open(self, answer: Answer) -> Response:
        out = Response(answer)
        answer.out = out
        await self.out.event("response.created", response=self._body(out, "in_progress", None))
        return out

    def _part(self, out: Response) -> Wire:
        if self.out.config.text_only:
            return {"type": "text", "text": out.text}
        return {"type": "audio", "transcript": out.text}

    async def _message(self, answer: Answer) -> Response:
        """The open response's assistant message, opened on first content."""
        out = answer.out or await self._open(answer)
        if out.message is not None:
            return out
        item = assistant_item(new_id("item"))
        out.message = item
        out.output.append(item)
        out.text = ""
        self.out.items[item["id"]] = item
        self.item_audio[item["id"]] = (answer.rid, 0.0)
        await self.out.event(
            "response.output_item.added",
            response_id=out.id,
            output_index=out.index(item),
            item=item,
        )
        await self.out.emit(self.out.dialect.item_added(item, self.out.previous(item["id"])))
        item["content"].append(self.out.dialect.assistant_content(self.out.config.text_only))
        await self.out.event(
            "response.content_part.added",
            response_id=out.id,
            item_id=item["id"],
            output_index=out.index(item),
            content_index=0,
            part=self._part(out),
        )
        return out

    async def _finish(self, answer: Answer, status: str, details: Wire | None) -> None:
        answer.over = True
        out, answer.out = answer.out, None
        if out is not None:
            await self._close(out, status, details)

    async def _close(self, out: Response, status: str, details: Wire | None) -> None:
        if out.closing is not None and out.closing is not asyncio.current_task():
            out.closing.cancel()
        if out.message is not None:
            await self._close_message(out, status)
        await self.out.event("response.done", response=self._body(out, status, details))

    async def _close_message(self, out: Response, status: str) -> None:
        item, out.message = out.message, None
        assert item is not None
        index = out.index(item)
        where = {"response_id": out.id, "item_id": item["id"], "output_index": index}
        part = item["content"][0]
        name = self.out.dialect.name
        if self.out.config.text_only:
            part["text"] = out.text
            await self.out.event(name("text.done"), **where, content_index=0, text=out.text)
        else:
            part["transcript"] = out.text
            await self.out.event(name("audio.done"), **where, content_index=0)
            await self.out.event(
                name("transcript.done"), **where, content_index=0, transcript=out.text
            )
        await self.out.event(
            "response.content_part.done", **where, content_index=0, part=self._part(out)
        )
        item["status"] = "completed" if status == "completed" else "incomplete"
        await self.out.event(
            "response.output_item.done", response_id=out.id, output_index=index, item=item
        )
        await self.out.item_done(item)

    # --- client function calls ----------------------------------------------------
    async def function_call(self, name: str, arguments: str) -> tuple[str, str]:
        """Put a function_call item in the current response, and end that
        response shortly (parallel calls share it); (call_id, Parley rid)."""
        answer = self.live(self.current_rid)
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
        await self.out.event(
            "response.output_item.added", response_id=out.id, output_index=index, item=item
        )
        await self.out.add_item(item, done=False)
        where = {
            "response_id": out.id,
            "item_id": item["id"],
            "output_index": index,
            "call_id": call_id,
        }
        await self.out.event("response.function_call_arguments.delta", **where, delta=arguments)
        await self.out.event(
            "response.function_call_arguments.done", **where, name=name, arguments=arguments
        )
        item.update(arguments=arguments, status="completed")
        await self.out.event(
            "response.output_item.done", response_id=out.id, output_index=index, item=item
        )
        await self.out.item_done(item)
        if out.closing is not None:
            out.closing.cancel()
        out.closing = asyncio.create_task(self._end_after_calls(answer, out))
        return call_id, answer.rid

    async def _end_after_calls(self, answer: Answer, out: Response) -> None:
        await asyncio.sleep(TOOL_BATCH_S)
        async with self.out.lock:
            if answer.out is out:
                answer.out = None  # what the model says next is a new response
                await self._close(out, "completed", None)
