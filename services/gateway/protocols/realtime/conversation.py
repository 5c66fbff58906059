"""A Realtime connection's conversation: the ClientSink that renders Parley's
typed session events as Realtime server events. The rendering lives by job in
turns.py (the user's turns), responses.py (answers) and tools.py (client
functions); the events go out through server_events.py."""

from __future__ import annotations

from typing import assert_never

from websockets.asyncio.server import ServerConnection

from services.gateway.core import events as ev
from services.gateway.core.settings import settings_to_json
from services.gateway.core.sink import ClientSink
from services.gateway.protocols.realtime.events import Dialect, Wire
from services.gateway.protocols.realtime.responses import Responses
from services.gateway.protocols.realtime.server_events import ServerEvents
from services.gateway.protocols.realtime.tools import RealtimeTools
from services.gateway.protocols.realtime.turns import UserTurns

# The playback_cleared reasons that are the client's own doing (response.cancel,
# or a truncate of the answer still playing).
CLIENT_REASONS = {"client"}


class RealtimeConversation(ClientSink):
    def __init__(self, ws: ServerConnection, dialect: Dialect) -> None:
        self.out = ServerEvents(ws, dialect)
        self.turns = UserTurns(self.out)
        self.responses = Responses(self.out, self.turns)
        self.tools = RealtimeTools(self.out, self.responses)

    @property
    def closed(self) -> bool:
        return self.out.closed

    def describe(self, info: ev.SessionInfo) -> Wire:
        """The session object of session.created / session.updated."""
        effective = settings_to_json(info.settings)
        return self.out.config.describe(info.session_id, self.out.beta, effective)

    # --- ClientSink -------------------------------------------------------------
    async def send_event(self, event: ev.SessionEvent) -> None:
        async with self.out.lock:
            await self._render(event)

    async def send_audio(self, frame: ev.AudioOut) -> None:
        async with self.out.lock:
            await self.responses.audio(frame)

    async def close(self, reason: str) -> None:
        await self.out.close(reason)

    async def _render(self, event: ev.SessionEvent) -> None:
        out = self.out
        match event:
            case ev.SessionStarted(info=info):
                await out.event("session.created", session=self.describe(info))
            case ev.SettingsUpdated(info=info):
                await out.event("session.updated", session=self.describe(info))
            case ev.UserSpeechStarted():
                await self.turns.started(event)
            case ev.UserSpeechEnded():
                await self.turns.ended(event)
            case ev.Transcription():
                await self.turns.transcribed(event)
            case ev.ResponseStarted():
                self.turns.awaiting_answer = False
                await self.responses.started(event)
            case ev.ResponseTextDelta():
                await self.responses.text(event)
            case ev.ResponseEnded():
                await self.responses.ended(event)
            case ev.TtsEnded():
                await self.responses.heard(event)
            case ev.PlaybackCleared():
                answer = self.responses.live(event.response_id)
                if answer is not None:
                    self.tools.fail(answer.rid, "the response was cancelled")
                    await self.responses.cancel(answer, event.reason in CLIENT_REASONS)
            case ev.Error():
                # A stage's failure is the server's; the gateway's is about the request.
                kind = "invalid_request_error" if event.stage == "gateway" else "server_error"
                await out.error(event.code, f"{event.stage}: {event.message}", kind=kind)
            case ev.Processing():
                pass  # no Realtime counterpart: a tool of Parley's runs unseen, and
                # a client function shows as its function_call item
            case ev.ResponseSentence():
                pass  # the text deltas carry the same words
            case ev.TtsStarted():
                pass  # the first audio frame opens the message; frames carry their response
            case ev.TurnMetrics():
                pass  # no Realtime counterpart
            case ev.VadStats():
                pass  # no Realtime counterpart (and the Realtime path never asks for them)
            case ev.SessionEnded():
                pass  # no Realtime event: close() ends the connection after the goodbye
            case _:
                assert_never(event)
