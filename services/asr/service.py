"""The asr service: keeps each session's recent audio and transcribes each
utterance the VAD delimits, as soon as it ends; partial transcripts while the
user speaks when the machine has time for them."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from opentelemetry import trace

from parley.errors import ProviderError
from parley.logs import log_content
from parley.metrics import FRAMES, REAL_TIME_FACTOR, STAGE_SECONDS
from parley.service import Stage
from parley.session import StageSession
from parley.v1 import asr_pb2, audio_pb2, common_pb2, vad_pb2
from services.asr.providers import make_transcriber
from services.asr.providers.base import Transcriber

log = logging.getLogger("parley.asr")
tracer = trace.get_tracer("parley.asr")

RATE = 16000
BYTES_PER_MS = RATE * 2 / 1000
# Audio after the VAD's end offset: the last phoneme's tail.
TAIL_MS = 150
# Too little speech for a partial worth showing.
MIN_PARTIAL_MS = 400


class AudioRing:
    """The last few tens of seconds of a session's audio.in, addressable by offset."""

    def __init__(self, keep_ms: float) -> None:
        self.keep_bytes = int(keep_ms * BYTES_PER_MS)
        self.buffer = bytearray()
        self.start_ms = 0.0  # stream offset of buffer[0]

    @property
    def end_ms(self) -> float:
        return self.start_ms + len(self.buffer) / BYTES_PER_MS

    def append(self, offset_ms: float, pcm: bytes) -> None:
        if not self.buffer:
            self.start_ms = offset_ms
        self.buffer.extend(pcm)
        extra = len(self.buffer) - self.keep_bytes
        if extra > 0:
            extra -= extra % 2
            del self.buffer[:extra]
            self.start_ms += extra / BYTES_PER_MS

    def slice(self, start_ms: float, end_ms: float) -> bytes:
        # Times come off the bus as doubles, NaN and infinity included: no
        # audio lies between bounds that are not times (int(inf) raised
        # OverflowError in the recognizing task; tests/fuzz/test_bus.py).
        if not all(math.isfinite(t) for t in (start_ms, end_ms, self.start_ms)):
            return b""
        a = max(0, int((start_ms - self.start_ms) * BYTES_PER_MS))
        b = max(a, int((end_ms - self.start_ms) * BYTES_PER_MS))
        return bytes(self.buffer[a - a % 2 : b - b % 2])


class AsrSession(StageSession):
    stage = "asr"

    def __init__(
        self,
        session_id: str,
        stage: AsrStage,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__(session_id, stage.bus, settings, on_closed, stage.settings)
        self.asr = stage
        cfg = stage.settings
        self.ring = AudioRing(cfg.vad.max_utterance_ms + cfg.asr.pre_roll_ms + 5000)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._at_pause: tuple[tuple[float, float], asyncio.Task[Any]] | None = None
        # The turn being spoken (turn id, start offset), for partials.
        self._speaking: tuple[int, float] | None = None
        self._next_partial_at = 0.0

    async def start(self) -> None:
        await super().start()
        await self.subscribe("audio.in", audio_pb2.AudioChunk, self._on_audio)
        await self.subscribe("vad", vad_pb2.VadEvent, self._on_vad)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def _on_audio(self, chunk: audio_pb2.AudioChunk) -> None:
        FRAMES.labels("asr", "audio.in").inc()
        if chunk.sample_rate == RATE and len(chunk.pcm) % 2 == 0:
            self.ring.append(chunk.offset_ms, chunk.pcm)
            self._maybe_partial()

    def _maybe_partial(self) -> None:
        """A partial only when nothing else is being transcribed for the
        session: the final (or the at-pause transcript) never queues behind it."""
        interval = self.asr.settings.asr.partial_interval_ms
        if not interval or self._speaking is None or self._tasks:
            return
        turn_id, start_ms = self._speaking
        if self.ring.end_ms - start_ms < MIN_PARTIAL_MS or time.monotonic() < self._next_partial_at:
            return
        self._spawn(self._partial(turn_id, start_ms, self.ring.end_ms))

    async def _partial(self, turn_id: int, start_ms: float, end_ms: float) -> None:
        pcm = self.ring.slice(start_ms - self.asr.settings.asr.pre_roll_ms, end_ms)
        language = self.in_force.language or None
        try:
            with self.asr.meter.step():
                result = await self.asr.transcriber.transcribe(pcm, RATE, language)
        except Exception as exc:  # a partial is a nicety: the final reports failures
            log.info("partial transcript failed: %s", exc)
            return
        finally:
            interval = self.asr.settings.asr.partial_interval_ms
            self._next_partial_at = time.monotonic() + interval / 1000
        STAGE_SECONDS.labels("asr", "partial").observe(result.processing_ms / 1000)
        # At most half the time on partials: wait as long as this one took.
        self._next_partial_at = max(
            self._next_partial_at, time.monotonic() + result.processing_ms / 1000
        )
        if self._speaking is None or self._speaking[0] != turn_id or not result.text.strip():
            return  # the turn ended meanwhile: its final says it better
        await self.publish(
            "asr",
            asr_pb2.Transcript(
                text=result.text,
                final=False,
                start_ms=start_ms,
                end_ms=end_ms,
                language=result.language or "",
                processing_ms=result.processing_ms,
            ),
            turn_id=turn_id,
        )

    async def _on_vad(self, event: vad_pb2.VadEvent) -> None:
        kind = event.WhichOneof("event")
        turn_id = event.meta.turn_id
        if kind == "speech_started":
            self._speaking = (turn_id, event.speech_started.start_ms)
        elif kind == "speech_paused":
            span = (event.speech_paused.start_ms, event.speech_paused.end_ms)
            # Transcribed now, while the user is silent anyway; if the turn
            # ends at this same point, the final transcript is ready at once.
            self._at_pause = (span, self._spawn(self._recognize(turn_id, *span, at_pause=True)))
        elif kind == "speech_stopped":
            self._speaking = None
            stopped = event.speech_stopped
            span = (stopped.start_ms, stopped.end_ms)
            early = self._at_pause
            self._at_pause = None
            if early is not None and early[0] == span:
                self._spawn(self._finish_from_pause(turn_id, early[1]))
            else:
                self._spawn(self._recognize(turn_id, *span, at_pause=False))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _finish_from_pause(self, turn_id: int, early: asyncio.Task[Any]) -> None:
        transcript = await early
        if transcript is None:
            return
        final = asr_pb2.Transcript()
        final.CopyFrom(transcript)
        final.final = True
        final.at_pause = False
        await self.publish("asr", final, turn_id=turn_id)

    async def _recognize(
        self, turn_id: int, start_ms: float, end_ms: float, at_pause: bool
    ) -> asr_pb2.Transcript | None:
        pre_roll = self.asr.settings.asr.pre_roll_ms
        # The VAD decided after hearing more audio, so the tail is here.
        pcm = self.ring.slice(start_ms - pre_roll, min(end_ms + TAIL_MS, self.ring.end_ms))
        language = self.in_force.language or None
        with tracer.start_as_current_span(
            "asr.transcribe",
            attributes={
                "parley.session_id": self.session_id,
                "parley.turn_id": turn_id,
                "parley.audio_ms": len(pcm) / BYTES_PER_MS,
                "parley.model": self.asr.transcriber.name,
                "parley.at_pause": at_pause,
            },
        ):
            if not at_pause:
                await self.publish_processing("transcribing", turn_id=turn_id)
            try:
                with self.asr.meter.step():
                    result = await self.asr.transcriber.transcribe(pcm, RATE, language)
            except ProviderError as exc:
                # The details (URL, body excerpt) stay here; the client hears why in short.
                log.warning("transcription failed: %s", exc.message)
                await self.publish_error(
                    exc.code, f"transcription failed: {exc.public}", turn_id=turn_id
                )
                return None
            except Exception as exc:
                log.exception("transcription failed")
                await self.publish_error(
                    "provider_error",
                    f"transcription failed ({type(exc).__name__})",
                    turn_id=turn_id,
                )
                return None
            STAGE_SECONDS.labels("asr", "transcribe").observe(result.processing_ms / 1000)
            if result.audio_ms > 0:
                REAL_TIME_FACTOR.labels("asr").observe(result.processing_ms / result.audio_ms)
            # What was said is personal: its length at INFO, the words per log.content.
            log.info(
                "turn %d %s (%.0f ms, %d characters)",
                turn_id,
                "transcript at pause" if at_pause else "transcript",
                result.processing_ms,
                len(result.text),
            )
            log_content(log, "turn %d words: %r", turn_id, result.text)
            transcript = asr_pb2.Transcript(
                text=result.text,
                final=not at_pause,
                at_pause=at_pause,
                start_ms=start_ms,
                end_ms=end_ms,
                language=result.language or "",
                processing_ms=result.processing_ms,
            )
            # Inside the span: the llm's answer becomes its child.
            await self.publish("asr", transcript, turn_id=turn_id)
            return transcript

    async def on_close(self) -> None:
        for task in self._tasks:
            task.cancel()


class AsrStage(Stage):
    name = "asr"
    session_class = AsrSession

    async def load(self) -> None:
        cfg = self.settings.asr
        if cfg.provider == "openai":
            self.transcriber: Transcriber = make_transcriber(
                "openai",
                base_url=cfg.base_url,
                api_key=cfg.api_key,
                model=cfg.remote_model,
                timeout_s=cfg.timeout_s,
            )
        else:
            self.transcriber = make_transcriber(
                "faster_whisper",
                model=cfg.model,
                device=cfg.device,
                compute_type=cfg.compute_type,
                beam_size=cfg.beam_size,
                language=cfg.language,
            )
        await self.transcriber.load()

    async def close(self) -> None:
        await self.transcriber.aclose()
