"""The client's input audio: input_audio_buffer.append / commit / clear, and
audio a user item carries, decoded from the session's input format and
spoken into the Parley session."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from services.gateway.core.session import GatewaySession
from services.gateway.protocols.realtime.audio import AudioCodec, AudioFormat
from services.gateway.protocols.realtime.conversation import RealtimeConversation
from services.gateway.protocols.realtime.events import RealtimeClientError, Wire, new_id, user_item
from services.gateway.protocols.realtime.turns import Turn

# One append carries at most this much audio (a 1 MiB WebSocket message holds
# about 16 s of base64 PCM16 at 24 kHz; the Realtime API's own limit is 15 MiB).
MAX_APPEND_MS = 10_000
# The Realtime API refuses to commit less than this.
MIN_COMMIT_MS = 100
# Spoken after a user audio item, so the VAD ends its turn itself.
ITEM_TAIL_S = 0.7


class InputBuffer:
    def __init__(self, session: GatewaySession, conv: RealtimeConversation) -> None:
        self.session = session
        self.conv = conv
        self.codec = AudioCodec(conv.out.config.input_format, encode=False)

    def set_format(self, fmt: AudioFormat) -> None:
        if fmt != self.codec.format:
            self.codec = AudioCodec(fmt, encode=False)

    def decode(self, value: Any, param: str) -> bytes:
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
        fmt = self.codec.format
        if len(data) > MAX_APPEND_MS * fmt.bytes_per_ms:
            raise RealtimeClientError(
                "audio_too_large",
                f"{len(data)} bytes of {fmt.beta_name} audio in one event is over "
                f"{MAX_APPEND_MS} ms; append it in smaller pieces",
                param,
            )
        return self.codec.to_pcm(data)

    async def append(self, msg: Wire) -> None:
        pcm = self.decode(msg.get("audio"), "audio")
        if not pcm:
            return
        await self.session.push_audio(pcm)
        self.conv.turns.buffer_ms += len(pcm) / (self.session.input_rate * 2) * 1000

    async def commit(self, msg: Wire) -> None:
        turns, out = self.conv.turns, self.conv.out
        if turns.speaking:
            # The VAD is inside a turn: end it; its committed event follows.
            turns.awaiting_answer = True
            await self.session.commit()
            return
        if (have := turns.buffer_ms) < MIN_COMMIT_MS:
            raise RealtimeClientError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {have:.2f}ms of audio.",
            )
        # Audio without speech in it: an item with nothing to answer.
        async with out.lock:
            turns.buffer_ms = 0.0
            item_id = new_id("item")
            await turns.commit_item(item_id)
            item = out.items[item_id]
            item["content"][0]["transcript"] = ""
            if out.config.transcription is not None:
                await out.event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript="",
                    usage={"type": "duration", "seconds": 0.0},
                )
            await out.item_done(item)

    async def clear(self, msg: Wire) -> None:
        turn_id = self.conv.turns.dismiss_current()
        if turn_id:
            await self.session.dismiss_turn(turn_id, "input audio buffer cleared")
        await self.conv.out.event("input_audio_buffer.cleared")

    async def speak_item(self, item_id: str, pcm: bytes) -> None:
        """Audio as a user item: spoken into the session, then the turn is
        ended; its transcript completes the item."""
        turns, out = self.conv.turns, self.conv.out
        async with out.lock:
            turns.next_turn = Turn(item_id, from_client=True)
            content = [{"type": "input_audio", "transcript": None}]
            await out.add_item(user_item(item_id, content), done=False)
        # A whole recording at once: not a live stream, so not held to real time.
        await self.session.push_audio(pcm, throttle=False)
        # A silence after it lets the VAD end the turn itself; commit ends it
        # without turn detection.
        await self.session.push_audio(
            bytes(int(self.session.input_rate * 2 * ITEM_TAIL_S)), throttle=False
        )
        turns.awaiting_answer = True
        if not turns.server_vad:
            await self.session.commit()
