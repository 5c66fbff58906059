"""The llm service: owns each session's conversation and streams its answers,
cut into speakable sentences, the first one eagerly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from opentelemetry import trace

from parley.errors import ProviderError
from parley.metrics import INTERRUPTS, STAGE_SECONDS
from parley.service import Stage
from parley.session import StageSession, setting
from parley.v1 import asr_pb2, common_pb2, control_pb2, llm_pb2
from services.llm.conversation import Conversation
from services.llm.providers import make_chat_model
from services.llm.providers.base import ChatModel
from services.llm.sentences import SentenceSplitter

log = logging.getLogger("parley.llm")
tracer = trace.get_tracer("parley.llm")


class _Generation:
    def __init__(self, response_id: str, turn_id: int) -> None:
        self.response_id = response_id
        self.turn_id = turn_id
        self.text = ""
        self.task: asyncio.Task[None] | None = None
        self.heard_text: str | None = None


class LlmSession(StageSession):
    stage = "llm"

    def __init__(
        self,
        session_id: str,
        stage: LlmStage,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__(session_id, stage.bus, settings, on_closed)
        self.llm = stage
        cfg = stage.settings.llm
        self.conversation = Conversation(
            setting(settings, "system_prompt", cfg.system_prompt),
            max_turns=cfg.max_history_turns,
        )
        self.current: _Generation | None = None

    async def start(self) -> None:
        await super().start()
        await self.subscribe("asr", asr_pb2.Transcript, self._on_transcript)

    @property
    def busy(self) -> bool:
        return (
            self.current is not None
            and self.current.task is not None
            and not self.current.task.done()
        )

    async def on_settings(self) -> None:
        if self.settings.HasField("system_prompt"):
            self.conversation.system_prompt = self.settings.system_prompt

    async def _on_transcript(self, transcript: asr_pb2.Transcript) -> None:
        if transcript.final and transcript.text.strip():
            await self._respond(transcript.meta.turn_id, transcript.text.strip())

    async def on_user_text(self, text: str, meta: common_pb2.Meta) -> None:
        await self._respond(meta.turn_id, text)

    async def on_interrupt(self, interrupt: control_pb2.Interrupt, meta: common_pb2.Meta) -> None:
        gen = self.current
        if gen is None or gen.response_id != interrupt.response_id:
            return
        INTERRUPTS.labels("llm").inc()
        gen.heard_text = interrupt.heard_text
        await self._stop(gen)

    async def _stop(self, gen: _Generation) -> None:
        if gen.task is not None and not gen.task.done():
            gen.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gen.task

    async def _respond(self, turn_id: int, text: str) -> None:
        if self.current is not None:
            await self._stop(self.current)
        gen = _Generation(uuid.uuid4().hex[:16], turn_id)
        self.current = gen
        gen.task = asyncio.create_task(self._generate(gen, text))

    async def _generate(self, gen: _Generation, user_text: str) -> None:
        cfg = self.llm.settings.llm
        model = self.llm.model
        rid, turn_id = gen.response_id, gen.turn_id
        self.conversation.add_user(user_text)
        messages = self.conversation.messages()
        splitter = SentenceSplitter()
        sentences = 0
        status = llm_pb2.ResponseEnded.COMPLETED
        error = ""
        started = time.monotonic()
        with tracer.start_as_current_span(
            "llm.generate",
            attributes={
                "parley.session_id": self.session_id,
                "parley.turn_id": turn_id,
                "parley.response_id": rid,
                "parley.model": model.name,
            },
        ) as span:
            await self.publish(
                "llm",
                llm_pb2.LlmEvent(
                    started=llm_pb2.ResponseStarted(model=model.name, input_text=user_text)
                ),
                turn_id=turn_id,
                response_id=rid,
            )

            async def emit(pieces: list[str]) -> None:
                nonlocal sentences
                for piece in pieces:
                    if sentences == 0:
                        span.add_event("first_sentence")
                        STAGE_SECONDS.labels("llm", "first_sentence").observe(
                            time.monotonic() - started
                        )
                    await self.publish(
                        "llm",
                        llm_pb2.LlmEvent(sentence=llm_pb2.Sentence(index=sentences, text=piece)),
                        turn_id=turn_id,
                        response_id=rid,
                    )
                    sentences += 1

            stream = model.stream(messages, max_tokens=cfg.max_tokens, temperature=cfg.temperature)
            try:
                async for delta in stream:
                    if not gen.text:
                        span.add_event("first_token")
                        STAGE_SECONDS.labels("llm", "first_token").observe(
                            time.monotonic() - started
                        )
                    gen.text += delta
                    await self.publish(
                        "llm",
                        llm_pb2.LlmEvent(delta=llm_pb2.TextDelta(text=delta)),
                        turn_id=turn_id,
                        response_id=rid,
                    )
                    await emit(splitter.push(delta))
                await emit(splitter.flush())
            except asyncio.CancelledError:
                status = llm_pb2.ResponseEnded.CANCELLED
            except ProviderError as exc:
                status = llm_pb2.ResponseEnded.FAILED
                error = exc.message
                await self.publish_error(
                    exc.code,
                    f"the language model failed: {exc.message}",
                    turn_id=turn_id,
                    response_id=rid,
                )
            except Exception as exc:
                log.exception("generation failed")
                status = llm_pb2.ResponseEnded.FAILED
                error = str(exc)
                await self.publish_error(
                    "provider_error",
                    f"the language model failed: {exc}",
                    turn_id=turn_id,
                    response_id=rid,
                )
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()
            span.set_attribute("parley.sentences", sentences)

        if status == llm_pb2.ResponseEnded.CANCELLED:
            # The history keeps what the user heard, so the next answer knows it.
            heard = gen.heard_text if gen.heard_text is not None else gen.text
            if heard.strip():
                self.conversation.add_assistant(heard.strip())
        elif status == llm_pb2.ResponseEnded.COMPLETED and gen.text.strip():
            self.conversation.add_assistant(gen.text.strip())
        log.info("response %s %s: %r", rid, llm_pb2.ResponseEnded.Status.Name(status), gen.text)
        await asyncio.shield(
            self.publish(
                "llm",
                llm_pb2.LlmEvent(
                    ended=llm_pb2.ResponseEnded(
                        status=status, text=gen.text, sentences=sentences, error=error
                    )
                ),
                turn_id=turn_id,
                response_id=rid,
            )
        )

    async def on_close(self) -> None:
        if self.current is not None:
            await self._stop(self.current)


class LlmStage(Stage):
    name = "llm"

    async def load(self) -> None:
        cfg = self.settings.llm
        if cfg.provider == "openai":
            self.model: ChatModel = make_chat_model(
                "openai",
                base_url=cfg.base_url,
                model=cfg.model,
                api_key=cfg.api_key,
                timeout_s=cfg.timeout_s,
            )
        else:
            self.model = make_chat_model(
                "llama_cpp",
                model_path=cfg.model_path,
                n_ctx=cfg.n_ctx,
                n_threads=cfg.n_threads,
                repeat_penalty=cfg.repeat_penalty,
            )
        await self.model.load()

    def open_session(
        self,
        session_id: str,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]],
    ) -> StageSession:
        return LlmSession(session_id, self, settings, on_closed)

    async def close(self) -> None:
        await self.model.aclose()
