"""An EchoKit board's MessagePack events for the shared event sequences
(docs/echokit.md, "Server -> board"; the events of second-state/echokit_server),
byte for byte as protocols/echokit/wire.py writes them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, cast

import msgpack
import pytest

from parley.config import ParleySettings
from services.gateway.core import events as ev
from services.gateway.protocols.echokit import wire
from services.gateway.protocols.echokit.board import Board, Link
from services.gateway.protocols.opus_codec import OpusDecoder
from tests.support.event_sequences import (
    BARGE_IN,
    ERROR,
    FULL_TURN,
    FULL_TURN_AUDIO,
    ONE_OF_EACH,
    TOOL_CALL,
)
from tests.support.fake_ws import FakeWebSocket

PCM = FULL_TURN_AUDIO[0].pcm
# What the firmware asks for (docs/echokit.md, "Connecting").
FIRMWARE = wire.ConnectFlags(opus=True, vowel=True, stream_asr=True)


def board_for(flags: wire.ConnectFlags) -> tuple[Board, FakeWebSocket]:
    ws = FakeWebSocket()
    return Board("kit-1", ParleySettings(), Link(cast(Any, ws), flags)), ws


async def play(board: Board, events: list[ev.SessionEvent]) -> None:
    """The events as the session sends them: audio after tts start; the
    playback's "all sent" before the listener has heard it (TtsEnded)."""
    for event in events:
        if isinstance(event, ev.TtsEnded) and event.status == ev.Status.COMPLETED:
            await board.on_playback_sent(event.response_id)
        await board.send_event(event)
        if isinstance(event, ev.TtsStarted):
            for frame in FULL_TURN_AUDIO:
                await board.send_audio(replace(frame, response_id=event.response_id))


async def render(events: list[ev.SessionEvent], flags: wire.ConnectFlags) -> list[bytes]:
    board, ws = board_for(flags)
    await play(board, events)
    assert not ws.json()  # the firmware drops text frames
    return ws.binary()


def test_the_board_buffers_more_than_other_clients() -> None:
    board, _ = board_for(wire.ConnectFlags())
    assert board.playback_lead_ms == ParleySettings().gateway.echokit.playback_lead_ms == 1500


async def test_one_of_each_is_handled() -> None:
    assert {type(e) for e in ONE_OF_EACH} == set(ev.EVENT_TYPES)
    board, _ = board_for(FIRMWARE)
    for event in ONE_OF_EACH:
        await board.send_event(event)  # an unhandled type raises
    assert board.ended  # SessionEnded: the next connection starts afresh


async def test_an_unknown_event_type_is_refused() -> None:
    board, _ = board_for(FIRMWARE)
    with pytest.raises(AssertionError):
        await board.send_event(cast(Any, object()))


async def test_full_turn_push_to_talk_pcm() -> None:
    assert await render(FULL_TURN, wire.ConnectFlags()) == [
        wire.asr("What is the capital of France?"),
        wire.start_audio("Paris is the capital."),
        wire.audio_chunk(PCM),
        wire.END_AUDIO,
        wire.END_RESPONSE,
    ]


async def test_full_turn_stream_asr_opus_with_vowels() -> None:
    out = await render(FULL_TURN, FIRMWARE)
    assert out[:4] == [
        wire.asr("What is the capital"),  # the partial, streamed
        wire.END_VAD,
        wire.asr("What is the capital of France?"),
        wire.start_audio("Paris is the capital."),
    ]
    assert out[-2:] == [wire.END_AUDIO, wire.END_RESPONSE]
    # 20 ms of audio: one 60 ms Opus packet, padded, once all has been sent.
    (chunk,) = out[4:-2]
    # {"AudioChunkWithVowel": [the packet as an array of u8, vowel 0 (mouth at rest)]}
    data, vowel = msgpack.unpackb(chunk)["AudioChunkWithVowel"]
    assert chunk == wire.audio_chunk_with_vowel(bytes(data), 0) and vowel == 0
    assert len(OpusDecoder().decode(bytes(data))) == 48000 * 2 * 60 // 1000


async def test_end_audio_goes_out_once_sent_not_once_heard() -> None:
    board, ws = board_for(wire.ConnectFlags())
    await play(board, FULL_TURN[:10])  # up to TtsStarted, with its audio
    await board.on_playback_sent("r1")
    assert ws.binary()[-1] == wire.END_AUDIO
    await board.send_event(ev.ResponseEnded("r1", ev.Status.COMPLETED, "Paris is the capital."))
    assert ws.binary()[-1] == wire.END_AUDIO  # EndResponse waits for the listener
    await board.send_event(ev.TtsEnded("r1", ev.Status.COMPLETED))
    assert ws.binary()[-2:] == [wire.END_AUDIO, wire.END_RESPONSE]


async def test_barge_in() -> None:
    assert await render(BARGE_IN, wire.ConnectFlags(stream_asr=True)) == [
        wire.start_audio(""),  # no text deltas came before the audio
        wire.audio_chunk(PCM),
        wire.END_AUDIO,  # the board has no "clear": the audio ends
        wire.END_RESPONSE,
        wire.END_VAD,  # the interrupting turn
    ]


async def test_error() -> None:
    # A failed transcription means no answer: the board listens again.
    assert await render(ERROR, wire.ConnectFlags(stream_asr=True)) == [
        wire.END_VAD,
        wire.END_RESPONSE,
    ]


async def test_tool_call() -> None:
    assert await render(TOOL_CALL, wire.ConnectFlags()) == [
        wire.asr("What time is it?"),
        wire.start_audio(""),
        wire.audio_chunk(PCM),
        wire.END_AUDIO,
        wire.END_RESPONSE,
    ]


async def test_no_words_heard_releases_the_board() -> None:
    events: list[ev.SessionEvent] = [
        ev.UserSpeechStarted(1, 0.0),
        ev.UserSpeechEnded(1, 0.0, 700.0, ev.EndReason.SILENCE),
        ev.Transcription(1, "  ", True),
    ]
    assert await render(events, wire.ConnectFlags()) == [wire.END_RESPONSE]


class FakeSession:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def interrupt(self) -> None:
        self.calls.append("interrupt")

    async def commit(self) -> None:
        self.calls.append("commit")

    async def update_settings(self, settings: Any) -> None:
        self.calls.append(f"turn_detection={settings.turn_detection}")


async def test_a_reconnect_keeps_earlier_turns_from_the_new_connection() -> None:
    board, old_ws = board_for(FIRMWARE)
    session = FakeSession()
    board.session = cast(Any, session)
    await play(board, [ev.UserSpeechStarted(1, 0.0)])  # cut off by the drop
    new_ws = FakeWebSocket()
    await board.reattach(Link(cast(Any, new_ws), wire.ConnectFlags(stream_asr=False)))
    assert session.calls == ["interrupt", "commit", "turn_detection=False"]
    # The utterance before the reconnect, and its answer: not the board's any more.
    await play(
        board,
        [
            ev.UserSpeechEnded(1, 0.0, 900.0, ev.EndReason.COMMIT),
            ev.Transcription(1, "half a question", True),
            ev.ResponseStarted("r1", 1),
            ev.TtsStarted("r1", 16000),
        ],
    )
    await asyncio.sleep(0)
    assert new_ws.sent == []
    assert session.calls[-1] == "interrupt"  # the stale answer is stopped
    assert old_ws.closed == (1000, "replaced by a reconnect")
    await play(board, [ev.Transcription(2, "A new question?", True)])
    assert new_ws.binary() == [wire.asr("A new question?")]
