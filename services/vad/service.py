"""The vad service: one Silero stream and segmenter per placed session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from opentelemetry import trace

from parley.config import VadSettings
from parley.metrics import DROPPED_FRAMES, FRAMES, TURNS
from parley.service import Stage
from parley.session import StageSession
from parley.session_settings import TurnDetector as TurnDetectorName
from parley.v1 import asr_pb2, audio_pb2, common_pb2, control_pb2, vad_pb2
from services.vad.segmenter import (
    Decision,
    Paused,
    Segmenter,
    SegmenterConfig,
    Started,
)
from services.vad.silero import SAMPLE_RATE, WINDOW_MS, SileroModel, SileroStream
from services.vad.turn_detector import turn_detector

log = logging.getLogger("parley.vad")
tracer = trace.get_tracer("parley.vad")

_REASONS = {
    "silence": vad_pb2.SpeechStopped.SILENCE,
    "max_utterance": vad_pb2.SpeechStopped.MAX_UTTERANCE,
    "commit": vad_pb2.SpeechStopped.CLIENT_COMMIT,
    "transcript": vad_pb2.SpeechStopped.TRANSCRIPT,
}


class VadSession(StageSession):
    stage = "vad"

    def __init__(
        self,
        session_id: str,
        stage: VadStage,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__(session_id, stage.bus, settings, on_closed, stage.settings)
        self.vad_stage = stage
        self.stream: SileroStream = stage.model.stream()
        self.segmenter = Segmenter(self._segmenter_config(), WINDOW_MS)
        self.turn_id = 0
        self._next_stats_ms = 0.0
        # The segmenter counts from the stream offset of the first chunk it
        # hears: a session taken over mid-stream (its vad died) must report
        # the offsets asr slices its audio by, not offsets from 0.
        self._positioned = False

    def _segmenter_config(self) -> SegmenterConfig:
        d: VadSettings = self.vad_stage.settings.vad
        s = self.in_force
        return SegmenterConfig(
            threshold=s.vad_threshold,
            neg_offset=d.neg_threshold_offset,
            min_speech_ms=s.min_speech_ms,
            silence_ms=s.silence_ms,
            max_utterance_ms=s.max_utterance_ms,
            # Pauses feed the early answer and the transcript turn detector.
            early_pause_ms=d.early_pause_ms
            if s.early_answer or s.turn_detector != TurnDetectorName.SILENCE
            else 0,
            end_on_silence=s.turn_detection,
        )

    async def start(self) -> None:
        # Taken over: turn ids go on from the last one the gateway saw.
        self.turn_id = self.last_turn_id
        await super().start()
        await self.subscribe("audio.in", audio_pb2.AudioChunk, self._on_audio)
        await self.subscribe("asr", asr_pb2.Transcript, self._on_transcript)

    async def _on_transcript(self, transcript: asr_pb2.Transcript) -> None:
        """The transcript at a pause, for a detector that ends turns on words."""
        if not transcript.at_pause or transcript.meta.turn_id != self.turn_id:
            return
        detector = turn_detector(self.in_force.turn_detector)
        if not detector.ends_turn(transcript.text):
            return
        decision = self.segmenter.end_at_pause(transcript.end_ms)
        if decision is not None:
            log.info("turn %d complete at its pause", self.turn_id)
            log.debug("turn %d words at its pause: %r", self.turn_id, transcript.text)
            await self._announce(decision)

    async def on_settings(self) -> None:
        self.segmenter.config = self._segmenter_config()

    @property
    def busy(self) -> bool:
        return self.segmenter.speaking

    async def _on_audio(self, chunk: audio_pb2.AudioChunk) -> None:
        FRAMES.labels("vad", "audio.in").inc()
        if chunk.sample_rate != SAMPLE_RATE or len(chunk.pcm) % 2:
            DROPPED_FRAMES.labels("vad", "bad_audio").inc()
            await self.publish_error(
                "bad_audio",
                f"audio.in must be PCM16 at {SAMPLE_RATE} Hz, got {chunk.sample_rate} Hz "
                f"and {len(chunk.pcm)} bytes",
            )
            return
        if not self._positioned:
            self._positioned = True
            self.segmenter.position_ms = self._next_stats_ms = chunk.offset_ms
        loop = asyncio.get_running_loop()
        with self.vad_stage.meter.step():
            windows = await loop.run_in_executor(
                self.vad_stage.executor, self.stream.push, chunk.pcm
            )
        for probability, energy_db in windows:
            onset = self.segmenter.voice_onset_ms
            decision = self.segmenter.push(probability)
            if decision is not None:
                await self._announce(decision)
            elif onset != self.segmenter.voice_onset_ms:
                await self._announce_onset(self.segmenter.voice_onset_ms, onset)
            if self.in_force.vad_stats:
                await self._maybe_stats(probability, energy_db)

    async def _maybe_stats(self, probability: float, energy_db: float) -> None:
        position = self.segmenter.position_ms
        if position < self._next_stats_ms:
            return
        self._next_stats_ms = position + self.vad_stage.settings.vad.stats_interval_ms
        stats = vad_pb2.VadStats(
            speech_probability=probability,
            energy_db=energy_db,
            speaking=self.segmenter.speaking,
            offset_ms=position,
        )
        await self.publish("vad", vad_pb2.VadEvent(stats=stats), turn_id=self.turn_id)

    async def _announce_onset(self, now: float | None, before: float | None) -> None:
        # Only a session that can be interrupted cares when a voice begins.
        if not self.in_force.barge_in:
            return
        onset = (
            vad_pb2.VoiceOnset(start_ms=now)
            if now is not None
            else vad_pb2.VoiceOnset(start_ms=before or 0.0, dropped=True)
        )
        await self.publish("vad", vad_pb2.VadEvent(voice_onset=onset), turn_id=self.turn_id)

    async def _announce(self, decision: Decision) -> None:
        if isinstance(decision, Paused):
            event = vad_pb2.VadEvent(
                speech_paused=vad_pb2.SpeechPaused(
                    start_ms=decision.start_ms, end_ms=decision.end_ms
                )
            )
            # The early transcription, and maybe the answer, grow from here.
            with tracer.start_as_current_span(
                "vad.pause",
                attributes={
                    "parley.session_id": self.session_id,
                    "parley.turn_id": self.turn_id,
                    "parley.speech_end_ms": decision.end_ms,
                },
            ):
                await self.publish("vad", event, turn_id=self.turn_id)
            return
        if isinstance(decision, Started):
            self.turn_id += 1
            TURNS.labels("vad").inc()
            log.info("turn %d: speech started at %.0f ms", self.turn_id, decision.start_ms)
            event = vad_pb2.VadEvent(
                speech_started=vad_pb2.SpeechStarted(start_ms=decision.start_ms)
            )
            await self.publish("vad", event, turn_id=self.turn_id)
            return
        log.info(
            "turn %d: speech stopped at %.0f ms (%s)",
            self.turn_id,
            decision.end_ms,
            decision.reason,
        )
        event = vad_pb2.VadEvent(
            speech_stopped=vad_pb2.SpeechStopped(
                start_ms=decision.start_ms,
                end_ms=decision.end_ms,
                reason=_REASONS[decision.reason],
            )
        )
        # Published inside the span: asr's transcription becomes its child.
        with tracer.start_as_current_span(
            "vad.end_of_turn",
            attributes={
                "parley.session_id": self.session_id,
                "parley.turn_id": self.turn_id,
                "parley.speech_start_ms": decision.start_ms,
                "parley.speech_end_ms": decision.end_ms,
                "parley.audio_ms": decision.end_ms - decision.start_ms,
                "parley.reason": decision.reason,
            },
        ):
            await self.publish("vad", event, turn_id=self.turn_id)

    async def on_commit(self, meta: common_pb2.Meta) -> None:
        decision = self.segmenter.commit()
        if decision is not None:
            await self._announce(decision)

    async def on_interrupt(self, interrupt: control_pb2.Interrupt, meta: common_pb2.Meta) -> None:
        pass

    async def on_dismiss(self, turn_id: int) -> None:
        # Push-to-talk: a dismissed turn in progress would otherwise swallow
        # everything said until the next commit.
        if not self.in_force.turn_detection and turn_id == self.turn_id and self.segmenter.speaking:
            self.segmenter.discard()


class VadStage(Stage):
    name = "vad"
    session_class = VadSession

    async def load(self) -> None:
        self.model = SileroModel(self.settings.vad.model_path)
        # One thread: windows are sub-millisecond and ordering per session matters.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="silero")

    async def close(self) -> None:
        self.executor.shutdown(wait=False)
