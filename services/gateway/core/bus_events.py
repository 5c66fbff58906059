"""The session's streams back from the bus (vad, asr, llm, audio.out, events),
turned into typed events for the client, playback and barge-in decisions."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import soxr

from parley.metrics import DROPPED_FRAMES
from parley.v1 import asr_pb2, audio_pb2, events_pb2, llm_pb2, vad_pb2
from services.gateway.core import events as ev
from services.gateway.core.interruption import Interruption
from services.gateway.core.playback import Playback
from services.gateway.core.responses import Responses
from services.gateway.core.sink import ClientSink
from services.gateway.core.timeline import ArrivalClock, TurnTimeline
from services.gateway.core.turn_trace import TurnTrace

log = logging.getLogger("parley.gateway")

_STATUS = {
    llm_pb2.ResponseEnded.COMPLETED: ev.Status.COMPLETED,
    llm_pb2.ResponseEnded.CANCELLED: ev.Status.CANCELLED,
    llm_pb2.ResponseEnded.FAILED: ev.Status.FAILED,
}
_STOP_REASON = {
    vad_pb2.SpeechStopped.SILENCE: ev.EndReason.SILENCE,
    vad_pb2.SpeechStopped.MAX_UTTERANCE: ev.EndReason.MAX_UTTERANCE,
    vad_pb2.SpeechStopped.CLIENT_COMMIT: ev.EndReason.COMMIT,
    vad_pb2.SpeechStopped.TRANSCRIPT: ev.EndReason.TRANSCRIPT,
}
# Turns whose timings are kept for answers still in flight.
KEEP_TURNS = 8


class Host(Protocol):
    """The parts of the session the translation acts through."""

    @property
    def sink(self) -> ClientSink: ...

    @property
    def output_rate(self) -> int: ...

    async def cut_answer(self, reason: str) -> None: ...


class BusEvents:
    def __init__(
        self,
        host: Host,
        responses: Responses,
        playback: Playback,
        interruption: Interruption,
        trace: TurnTrace,
        arrivals: ArrivalClock,
    ) -> None:
        self.host = host
        self.responses = responses
        self.playback = playback
        self.interruption = interruption
        self.trace = trace
        self.arrivals = arrivals
        self.turns: dict[int, TurnTimeline] = {}
        # The latest user turn the vad announced (placement hands it to a new
        # vad owner, so turn ids go on rising).
        self.last_turn_id = 0

    def timeline(self, turn_id: int) -> TurnTimeline:
        timeline = self.turns.get(turn_id)
        if timeline is None:
            timeline = self.turns[turn_id] = TurnTimeline(turn_id)
            for old in sorted(self.turns)[:-KEEP_TURNS]:
                del self.turns[old]
        return timeline

    async def _emit(self, event: ev.SessionEvent) -> None:
        await self.host.sink.send_event(event)

    # --- vad ------------------------------------------------------------------
    async def on_vad(self, msg: vad_pb2.VadEvent) -> None:
        kind = msg.WhichOneof("event")
        turn_id = msg.meta.turn_id
        self.last_turn_id = max(self.last_turn_id, turn_id)
        if kind == "voice_onset":
            if msg.voice_onset.dropped:
                self.interruption.voice_dropped()
            else:
                self.interruption.voice_onset()
        elif kind == "speech_started":
            start_ms = msg.speech_started.start_ms
            await self._emit(ev.UserSpeechStarted(turn_id, round(start_ms, 1)))
            await self.interruption.speech_started(turn_id, start_ms)
        elif kind == "speech_stopped":
            stopped = msg.speech_stopped
            self.trace.turn_ended(turn_id, stopped.end_ms - stopped.start_ms)
            timeline = self.timeline(turn_id)
            timeline.end_of_speech_ms = stopped.end_ms
            timeline.end_of_speech = self.arrivals.time_of(stopped.end_ms)
            await self._emit(
                ev.UserSpeechEnded(
                    turn_id,
                    round(stopped.start_ms, 1),
                    round(stopped.end_ms, 1),
                    _STOP_REASON.get(stopped.reason, ev.EndReason.SILENCE),
                )
            )
            await self.interruption.speech_stopped()
        elif kind == "speech_paused":
            await self.interruption.speech_paused()
        elif kind == "stats":
            s = msg.stats
            await self._emit(
                ev.VadStats(
                    round(s.speech_probability, 3),
                    round(s.energy_db, 1),
                    s.speaking,
                    round(s.offset_ms, 1),
                )
            )

    # --- asr ------------------------------------------------------------------
    async def on_asr(self, msg: asr_pb2.Transcript) -> None:
        turn_id = msg.meta.turn_id
        if msg.final:
            self.timeline(turn_id).mark("final_transcript")
            if not msg.text.strip():
                self.trace.end(turn_id)
        await self._emit(ev.Transcription(turn_id, msg.text, msg.final))
        if msg.final or msg.at_pause:
            await self.interruption.transcript(turn_id, msg.text)

    # --- llm ------------------------------------------------------------------
    async def on_llm(self, msg: llm_pb2.LlmEvent) -> None:
        rid = msg.meta.response_id
        if self.responses.stale(rid):
            DROPPED_FRAMES.labels("gateway", "stale_response").inc()
            return
        kind = msg.WhichOneof("event")
        if kind == "started":
            previous = self.responses.current
            if previous and previous != rid:
                await self.host.cut_answer("superseded")
            self.responses.start(rid, msg.meta.turn_id)
            await self._emit(ev.ResponseStarted(rid, msg.meta.turn_id))
            return
        resp = self.responses.get(rid)
        if resp is None:
            DROPPED_FRAMES.labels("gateway", "unknown_response").inc()
            return
        timeline = self.timeline(resp.turn_id) if resp.turn_id else None
        if kind == "delta":
            if timeline:
                timeline.mark("first_token")
            await self._emit(ev.ResponseTextDelta(rid, msg.delta.text))
        elif kind == "sentence":
            if timeline:
                timeline.mark("first_sentence")
            resp.sentences[msg.sentence.index] = msg.sentence.text
            await self._emit(ev.ResponseSentence(rid, msg.sentence.index, msg.sentence.text))
        elif kind == "ended":
            resp.text_done = True
            resp.end_session = msg.ended.end_session
            status = _STATUS.get(msg.ended.status, ev.Status.COMPLETED)
            await self._emit(ev.ResponseEnded(rid, status, msg.ended.text))

    # --- audio.out ------------------------------------------------------------
    async def on_audio_out(self, chunk: audio_pb2.AudioChunk) -> None:
        rid = chunk.meta.response_id
        resp = self.responses.get(rid)
        if self.responses.stale(rid) or resp is None:
            DROPPED_FRAMES.labels("gateway", "stale_audio").inc()
            return
        if resp.turn_id:
            self.timeline(resp.turn_id).mark("first_tts_audio")
        self.trace.audio_out(rid)
        out_rate = self.host.output_rate
        if chunk.pcm:
            pcm = chunk.pcm
            if chunk.sample_rate != out_rate:
                if resp.resampler is None or resp.in_rate != chunk.sample_rate:
                    resp.resampler = soxr.ResampleStream(
                        chunk.sample_rate, out_rate, 1, dtype="int16"
                    )
                    resp.in_rate = chunk.sample_rate
                samples = np.frombuffer(pcm, dtype="<i2")
                pcm = resp.resampler.resample_chunk(samples).astype("<i2").tobytes()
            index = chunk.sentence_index
            resp.sentence_ms[index] = (
                resp.sentence_ms.get(index, 0.0) + len(chunk.pcm) / (chunk.sample_rate * 2) * 1000
            )
            if not resp.tts_started:
                resp.tts_started = True
                await self._emit(ev.TtsStarted(rid, out_rate))
            self.playback.enqueue(rid, pcm)
        if chunk.end_of_response:
            if resp.resampler is not None:
                tail = resp.resampler.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
                self.playback.enqueue(rid, tail.astype("<i2").tobytes())
            self.playback.end(rid)

    # --- events ---------------------------------------------------------------
    async def on_event(self, msg: events_pb2.Event) -> None:
        kind = msg.WhichOneof("event")
        if kind == "error":
            e = msg.error
            await self._emit(
                ev.Error(
                    e.stage,
                    e.code,
                    e.message,
                    e.recoverable,
                    msg.meta.turn_id,
                    msg.meta.response_id,
                )
            )
        elif kind == "processing":
            p = msg.processing
            await self._emit(ev.Processing(p.stage, p.detail, msg.meta.turn_id))

    # --- playback -------------------------------------------------------------
    async def first_frame_sent(self, response_id: str) -> None:
        resp = self.responses.get(response_id)
        if resp is None or not resp.turn_id:
            return
        timeline = self.timeline(resp.turn_id)
        timeline.mark("first_audio_sent")
        self.trace.first_audio_sent(response_id, resp.turn_id)
        if timeline.reported or timeline.end_of_speech is None:
            return
        timeline.reported = True
        hops = timeline.observe()
        log.info("turn %d timings (ms from end of speech): %s", resp.turn_id, hops)
        await self._emit(
            ev.TurnMetrics(resp.turn_id, response_id, round(timeline.end_of_speech_ms, 1), hops)
        )
