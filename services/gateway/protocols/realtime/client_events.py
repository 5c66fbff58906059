"""The client's Realtime events, each driving the Parley session: the event
table, session.update and response.create / cancel here; the input audio
buffer in input_buffer.py, conversation items in items.py."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from services.gateway.core import events as ev
from services.gateway.core.session import GatewaySession
from services.gateway.protocols.realtime.audio import AudioCodec
from services.gateway.protocols.realtime.conversation import RealtimeConversation
from services.gateway.protocols.realtime.events import RealtimeClientError, Wire
from services.gateway.protocols.realtime.input_buffer import InputBuffer
from services.gateway.protocols.realtime.items import ItemEvents

log = logging.getLogger("parley.gateway.realtime")


class ClientEvents:
    def __init__(self, session: GatewaySession, conv: RealtimeConversation) -> None:
        self.session = session
        self.conv = conv
        self.input = InputBuffer(session, conv)
        self.items = ItemEvents(session, conv, self.input)
        self._handlers: dict[str, Callable[[Wire], Awaitable[None]]] = {
            "session.update": self.session_update,
            "input_audio_buffer.append": self.input.append,
            "input_audio_buffer.commit": self.input.commit,
            "input_audio_buffer.clear": self.input.clear,
            "conversation.item.create": self.items.create,
            "conversation.item.truncate": self.items.truncate,
            "conversation.item.delete": self.items.delete,
            "conversation.item.retrieve": self.items.retrieve,
            "response.create": self.response_create,
            "response.cancel": self.response_cancel,
        }

    async def start(self) -> None:
        """The session takes the configured formats' rates; session.created."""
        config = self.conv.out.config
        await self.session.update_settings(
            None, config.input_format.rate, config.output_format.rate
        )
        await self.conv.send_event(ev.SessionStarted(self.session.info()))

    async def handle(self, msg: Wire) -> None:
        """One client event, an object with a string type; ClientError for bad input."""
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

    # --- session ----------------------------------------------------------------
    async def session_update(self, msg: Wire) -> None:
        conv, old = self.conv, self.conv.out.config
        # Checked whole, Parley's validation included, before anything applies.
        new = old.updated(msg.get("session", {}))
        await self.session.update_settings(
            new.parley_settings(), new.input_format.rate, new.output_format.rate
        )
        async with conv.out.lock:
            conv.out.config = new
            self.input.set_format(new.input_format)
            if new.output_format != old.output_format:
                conv.out.out_codec = AudioCodec(new.output_format, encode=True)
        if new.tool_protos() != old.tool_protos():
            await self.session.set_client_tools(conv.tools if new.tool_protos() else None)
        await conv.send_event(ev.SettingsUpdated(self.session.info()))

    # --- responses ----------------------------------------------------------------
    async def response_create(self, msg: Wire) -> None:
        turns, responses = self.conv.turns, self.conv.responses
        response = msg.get("response") or {}
        if isinstance(response, dict) and response.get("conversation") == "none":
            raise RealtimeClientError(
                "unsupported",
                "out-of-band responses (conversation: none) are not supported",
                "response.conversation",
            )
        if responses.active() or turns.awaiting_answer:
            # Parley already answers (a VAD or push-to-talk turn, or the model
            # going on after a function output): this asks for that same answer.
            log.info("response.create joins the answer in progress")
            return
        text = self.items.take_pending_text()
        if not text:
            raise RealtimeClientError(
                "no_input",
                "nothing to respond to: add a user message or audio first "
                "(Parley answers the user, it cannot speak unprompted)",
            )
        turns.awaiting_answer = True
        await self.session.text_input(text)

    async def response_cancel(self, msg: Wire) -> None:
        responses = self.conv.responses
        if not responses.active():
            raise RealtimeClientError(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        answer = responses.answers.get(responses.current_rid)
        await self.session.interrupt()
        if answer is not None and not answer.cancelled and not answer.over:
            # Text done and heard, only tts_end outstanding: nothing left to cut.
            raise RealtimeClientError(
                "response_cancel_not_active", "the response has already been delivered"
            )
