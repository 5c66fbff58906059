"""The tts service: speaks each sentence of a response as it arrives, in
order, streaming audio chunks while they are synthesized."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from opentelemetry import trace

from parley.errors import ProviderError
from parley.metrics import INTERRUPTS, REAL_TIME_FACTOR, STAGE_SECONDS
from parley.service import Stage
from parley.session import StageSession
from parley.v1 import audio_pb2, common_pb2, control_pb2, llm_pb2
from services.tts.providers import make_synthesizer
from services.tts.providers.base import Synthesizer

log = logging.getLogger("parley.tts")
tracer = trace.get_tracer("parley.tts")

_END = None


# The longest text synthesized in one go. A sentence comes off the bus at
# any length: one of 100,000 characters took the tts process to 21 GB and the
# OOM killer (tests/fuzz/test_bus.py); the llm's own sentences are far shorter.
MAX_PIECE_CHARS = 400


def pieces(text: str) -> list[str]:
    """The text in order, in pieces of at most MAX_PIECE_CHARS, cut at a
    space where there is one."""
    out: list[str] = []
    while len(text) > MAX_PIECE_CHARS:
        cut = text.rfind(" ", 0, MAX_PIECE_CHARS + 1)
        if cut <= 0:
            cut = MAX_PIECE_CHARS
        out.append(text[:cut])
        text = text[cut:].lstrip()
    if text or not out:
        out.append(text)
    return out


class _Response:
    def __init__(self, response_id: str, turn_id: int) -> None:
        self.response_id = response_id
        self.turn_id = turn_id
        self.queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.offset_ms = 0.0


class TtsSession(StageSession):
    stage = "tts"

    def __init__(
        self,
        session_id: str,
        stage: TtsStage,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__(session_id, stage.bus, settings, on_closed, stage.settings)
        self.tts = stage
        self.responses: dict[str, _Response] = {}

    async def start(self) -> None:
        await super().start()
        await self.subscribe("llm", llm_pb2.LlmEvent, self._on_llm)

    @property
    def busy(self) -> bool:
        return any(r.task and not r.task.done() for r in self.responses.values())

    async def _on_llm(self, event: llm_pb2.LlmEvent) -> None:
        rid = event.meta.response_id
        kind = event.WhichOneof("event")
        if kind == "started":
            # A new answer supersedes whatever is still being spoken.
            for old in list(self.responses):
                await self._cancel(old)
            fresh = _Response(rid, event.meta.turn_id)
            fresh.task = asyncio.create_task(self._speak(fresh))
            self.responses[rid] = fresh
        elif kind == "sentence":
            resp = self.responses.get(rid)
            if resp is not None:
                resp.queue.put_nowait((event.sentence.index, event.sentence.text))
        elif kind == "ended":
            resp = self.responses.get(rid)
            if resp is not None:
                resp.queue.put_nowait(_END)

    async def on_interrupt(self, interrupt: control_pb2.Interrupt, meta: common_pb2.Meta) -> None:
        if interrupt.response_id in self.responses:
            INTERRUPTS.labels("tts").inc()
            await self._cancel(interrupt.response_id)

    async def _cancel(self, response_id: str) -> None:
        resp = self.responses.pop(response_id, None)
        if resp is not None and resp.task is not None:
            resp.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resp.task

    async def _speak(self, resp: _Response) -> None:
        try:
            while True:
                item = await resp.queue.get()
                if item is _END:
                    break
                index, text = item
                ok = True
                for piece in pieces(text):
                    ok = await self._speak_sentence(resp, index, piece)
                    if not ok:
                        break
                if not ok:
                    break
            await self.publish(
                "audio.out",
                audio_pb2.AudioChunk(
                    sample_rate=self.tts.synthesizer.sample_rate,
                    offset_ms=resp.offset_ms,
                    end_of_response=True,
                ),
                turn_id=resp.turn_id,
                response_id=resp.response_id,
            )
        finally:
            if self.responses.get(resp.response_id) is resp:
                del self.responses[resp.response_id]

    async def _speak_sentence(self, resp: _Response, index: int, text: str) -> bool:
        synth = self.tts.synthesizer
        rate = synth.sample_rate
        chunk_bytes = int(rate * 2 * self.tts.settings.tts.chunk_ms / 1000)
        chunk_bytes -= chunk_bytes % 2
        voice = self.in_force.voice or None
        started = time.monotonic()
        audio_bytes = 0
        first = True
        with (
            tracer.start_as_current_span(
                "tts.synthesize",
                attributes={
                    "parley.session_id": self.session_id,
                    "parley.turn_id": resp.turn_id,
                    "parley.response_id": resp.response_id,
                    "parley.sentence_index": index,
                    "parley.model": synth.name,
                },
            ) as span,
            self.tts.meter.step(),
        ):
            stream = synth.synthesize(text, voice)
            try:
                async for pcm in stream:
                    if first:
                        STAGE_SECONDS.labels("tts", "first_audio").observe(
                            time.monotonic() - started
                        )
                        span.add_event("first_audio")
                    for i in range(0, len(pcm), chunk_bytes):
                        piece = pcm[i : i + chunk_bytes]
                        chunk = audio_pb2.AudioChunk(
                            pcm=piece,
                            sample_rate=rate,
                            offset_ms=resp.offset_ms,
                            sentence_index=index,
                            text=text if first else "",
                        )
                        first = False
                        resp.offset_ms += len(piece) / (rate * 2) * 1000
                        audio_bytes += len(piece)
                        await self.publish(
                            "audio.out", chunk, turn_id=resp.turn_id, response_id=resp.response_id
                        )
            except ProviderError as exc:
                # The details (URL, body excerpt) stay here; the client hears why in short.
                log.warning("speech synthesis failed: %s", exc.message)
                await self.publish_error(
                    exc.code,
                    f"speech synthesis failed: {exc.public}",
                    turn_id=resp.turn_id,
                    response_id=resp.response_id,
                )
                return False
            except Exception as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.exception("speech synthesis failed")
                await self.publish_error(
                    "provider_error",
                    f"speech synthesis failed ({type(exc).__name__})",
                    turn_id=resp.turn_id,
                    response_id=resp.response_id,
                )
                return False
            finally:
                await stream.aclose()
            elapsed = time.monotonic() - started
            audio_s = audio_bytes / (rate * 2)
            span.set_attribute("parley.audio_ms", audio_s * 1000)
        STAGE_SECONDS.labels("tts", "sentence").observe(elapsed)
        if audio_s > 0:
            REAL_TIME_FACTOR.labels("tts").observe(elapsed / audio_s)
        return True

    async def on_close(self) -> None:
        for rid in list(self.responses):
            await self._cancel(rid)


class TtsStage(Stage):
    name = "tts"
    session_class = TtsSession

    async def load(self) -> None:
        cfg = self.settings.tts
        if cfg.provider == "openai":
            self.synthesizer: Synthesizer = make_synthesizer(
                "openai",
                base_url=cfg.base_url,
                api_key=cfg.api_key,
                model=cfg.model,
                voice=cfg.voice,
                timeout_s=cfg.timeout_s,
            )
        else:
            self.synthesizer = make_synthesizer(
                "piper",
                model_path=cfg.model_path,
                config_path=cfg.config_path,
                length_scale=cfg.length_scale,
            )
        await self.synthesizer.load()

    async def close(self) -> None:
        await self.synthesizer.aclose()
