"""The user's turns as Parley's VAD delimits them, as the Realtime input audio
buffer: input_audio_buffer.speech_started / speech_stopped / committed, one
user audio item per turn, completed by its transcript."""

from __future__ import annotations

from dataclasses import dataclass

from services.gateway.core import events as ev
from services.gateway.protocols.realtime.events import new_id, user_item
from services.gateway.protocols.realtime.server_events import ServerEvents

# Turns kept for their transcripts and lengths (the usage of later responses).
KEPT_TURNS = 16


@dataclass
class Turn:
    """A user utterance the VAD delimited: one user audio item."""

    item_id: str
    start_ms: float = 0.0
    audio_ms: float = 0.0
    transcript: str = ""
    dismissed: bool = False
    from_client: bool = False  # a conversation.item.create with audio


class UserTurns:
    def __init__(self, out: ServerEvents) -> None:
        self.out = out
        self.turns: dict[int, Turn] = {}
        self.speaking = 0  # the VAD turn in progress, 0 if none
        self.buffer_ms = 0.0  # audio appended since the last commit or clear
        self.awaiting_answer = False  # a committed turn Parley will answer
        self.next_turn: Turn | None = None  # the item the next VAD turn fills

    def get(self, turn_id: int) -> Turn | None:
        return self.turns.get(turn_id)

    @property
    def server_vad(self) -> bool:
        return self.out.config.turn_detection is not None

    async def started(self, e: ev.UserSpeechStarted) -> None:
        turn, self.next_turn = self.next_turn or Turn(new_id("item")), None
        turn.start_ms = e.offset_ms
        self.turns[e.turn_id] = turn
        for old in sorted(self.turns)[:-KEPT_TURNS]:
            del self.turns[old]
        self.speaking = e.turn_id
        if self.server_vad and not turn.from_client:
            await self.out.event(
                "input_audio_buffer.speech_started",
                audio_start_ms=int(turn.start_ms),
                item_id=turn.item_id,
            )

    async def ended(self, e: ev.UserSpeechEnded) -> None:
        if self.speaking == e.turn_id:
            self.speaking = 0
        turn = self.turns.get(e.turn_id)
        if turn is None:
            turn = self.turns[e.turn_id] = Turn(new_id("item"), e.start_ms)
        if turn.dismissed:
            return
        turn.audio_ms = e.end_ms - e.start_ms
        self.awaiting_answer = True
        if turn.from_client:
            return  # its item exists already, and no buffer was committed
        if self.server_vad and e.reason is not ev.EndReason.COMMIT:
            # After input_audio_buffer.commit the Realtime API sends no speech_stopped.
            await self.out.event(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=int(e.end_ms),
                item_id=turn.item_id,
            )
        self.buffer_ms = 0.0
        await self.commit_item(turn.item_id)

    async def commit_item(self, item_id: str) -> None:
        await self.out.event(
            "input_audio_buffer.committed",
            previous_item_id=self.out.last_item_id(),
            item_id=item_id,
        )
        item = user_item(item_id, [{"type": "input_audio", "transcript": None}])
        await self.out.add_item(item, done=False)

    async def transcribed(self, e: ev.Transcription) -> None:
        if not e.final:
            return  # a partial, or the transcript at a pause: the final one follows
        turn = self.turns.get(e.turn_id)
        if turn is None or turn.dismissed:
            return
        item = self.out.items.get(turn.item_id)
        text = e.text.strip()
        turn.transcript = text
        if item is not None:
            item["content"][0]["transcript"] = text
        if not text:
            self.awaiting_answer = False  # Parley does not answer silence
        if self.out.config.transcription is not None:
            await self.out.event(
                "conversation.item.input_audio_transcription.delta",
                item_id=turn.item_id,
                content_index=0,
                delta=text,
            )
            await self.out.event(
                "conversation.item.input_audio_transcription.completed",
                item_id=turn.item_id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": round(turn.audio_ms / 1000, 3)},
            )
        if item is not None:
            await self.out.item_done(item)

    def dismiss_current(self) -> int:
        """Drop the turn in progress (the client cleared its buffer); its id, 0 if none."""
        turn_id, self.speaking = self.speaking, 0
        self.buffer_ms = 0.0
        turn = self.turns.get(turn_id)
        if turn is not None:
            turn.dismissed = True
        return turn_id
