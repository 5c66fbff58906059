"""The llm service: owns each session's conversation and streams its answers,
cut into speakable sentences, the first one eagerly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.kv import KeyValue
from opentelemetry import context as otel_context
from opentelemetry import trace

from parley.bus import TOOLS_CALL, TOOLS_LIST
from parley.errors import ProviderError
from parley.logs import log_content
from parley.metrics import INTERRUPTS, STAGE_SECONDS
from parley.service import Stage
from parley.session import StageSession
from parley.state import HISTORY, CasRecord, open_bucket
from parley.tool_policy import allowed, refusal
from parley.v1 import asr_pb2, common_pb2, control_pb2, llm_pb2, tools_pb2
from services.llm.conversation import Conversation
from services.llm.providers import make_chat_model
from services.llm.providers.base import ChatModel, ToolCall
from services.llm.sentences import SentenceSplitter

log = logging.getLogger("parley.llm")
tracer = trace.get_tracer("parley.llm")

TOOLS_CACHE_S = 30.0
END_CONVERSATION = "end_conversation"
TOOLS_LIST_TIMEOUT_S = 1.0


class _Generation:
    def __init__(self, response_id: str, turn_id: int, input_text: str, speculative: bool) -> None:
        self.response_id = response_id
        self.turn_id = turn_id
        self.input_text = input_text
        self.text = ""
        self.task: asyncio.Task[None] | None = None
        self.heard_text: str | None = None
        # Speculative: started at a pause, before the turn is known to be over.
        # Its events are held back and its tools wait until the final
        # transcript confirms it (commit), or it is dropped without a trace.
        self.speculative = speculative
        # With the trace context each was made in, so the trace stays whole.
        self.held: list[tuple[llm_pb2.LlmEvent, otel_context.Context]] = []
        self.committed = asyncio.Event()
        self.failed = False
        self.user_added = False
        self.end_session = False
        self.lock = asyncio.Lock()
        if not speculative:
            self.committed.set()


class LlmSession(StageSession):
    stage = "llm"

    def __init__(
        self,
        session_id: str,
        stage: LlmStage,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]],
    ) -> None:
        super().__init__(session_id, stage.bus, settings, on_closed, stage.settings)
        self.llm = stage
        cfg = stage.settings.llm
        self.conversation = Conversation(
            self.in_force.system_prompt,
            max_turns=cfg.max_history_turns,
        )
        self.current: _Generation | None = None
        self._dismissed: set[int] = set()
        # Turns the gateway is still judging (interruption or not), with their
        # final transcript once it has come.
        self._held: dict[int, asr_pb2.Transcript | None] = {}
        self._ending = False
        self._tools_cache: tuple[float, list[dict[str, Any]] | None] | None = None
        # The history in the state store (None: state.enabled is off).
        self.stored: CasRecord | None = None
        if stage.history is not None:
            self.stored = CasRecord(
                stage.history, session_id, "llm", stage.settings.state.max_value_bytes
            )

    async def start(self) -> None:
        if self.stored is not None:
            await self._load_history(self.stored)
        await super().start()
        await self.subscribe("asr", asr_pb2.Transcript, self._on_transcript)

    async def _load_history(self, stored: CasRecord) -> None:
        """The conversation so far, if the session was held elsewhere before
        (its llm died or drained): the next answer knows every earlier turn."""
        try:
            data = await stored.load()
        except Exception as exc:  # a store that is down costs the history, not the session
            log.warning("cannot read the stored history, starting afresh: %s", exc)
            data = None
        if data is not None and self.conversation.restore(data):
            if self.settings.HasField("system_prompt"):
                self.conversation.system_prompt = self.settings.system_prompt
            log.info(
                "history of %d messages taken over (revision %d)",
                len(self.conversation.history),
                stored.revision,
            )
        self.conversation.on_change = self._store_history

    def _store_history(self) -> None:
        if self.stored is not None:
            self.stored.save_soon(self.conversation.encode)

    @property
    def busy(self) -> bool:
        generating = (
            self.current is not None
            and self.current.task is not None
            and not self.current.task.done()
        )
        # Drain hands the session over only once its history is stored.
        return generating or (self.stored is not None and self.stored.pending)

    async def on_settings(self) -> None:
        if self.settings.HasField("system_prompt"):
            self.conversation.system_prompt = self.settings.system_prompt
            self._store_history()

    async def _on_transcript(self, transcript: asr_pb2.Transcript) -> None:
        text = transcript.text.strip()
        turn_id = transcript.meta.turn_id
        if not text or turn_id in self._dismissed:
            return
        if turn_id in self._held:
            if transcript.final:
                self._held[turn_id] = transcript
            return
        if transcript.at_pause:
            # Not over an answer still being generated: the words may be an
            # "mm-hm" the gateway lets the answer go on through.
            current = self.current
            answering = (
                current is not None
                and not current.speculative
                and current.task is not None
                and not current.task.done()
            )
            if self.in_force.early_answer and not answering:
                await self._respond(turn_id, text, speculative=True)
            return
        if not transcript.final:
            return
        gen = self.current
        if (
            gen is not None
            and gen.speculative
            and not gen.failed
            and gen.turn_id == turn_id
            and gen.input_text == text
            and gen.task is not None
            and not gen.task.done()
        ):
            await self._commit(gen)
            return
        await self._respond(turn_id, text)

    async def on_tools_changed(self) -> None:
        self._tools_cache = None

    async def on_hold(self, turn_id: int, release: bool) -> None:
        if not release:
            self._held.setdefault(turn_id, None)
            return
        transcript = self._held.pop(turn_id, None)
        if transcript is not None:
            await self._on_transcript(transcript)

    async def on_dismiss(self, turn_id: int) -> None:
        self._held.pop(turn_id, None)
        self._dismissed.add(turn_id)
        gen = self.current
        if gen is not None and gen.speculative and gen.turn_id == turn_id:
            await self._stop(gen)

    async def _commit(self, gen: _Generation) -> None:
        """The turn ended where the early answer began: let it out."""
        async with gen.lock:
            gen.speculative = False
            self._add_user(gen)
            for event, context in gen.held:
                token = otel_context.attach(context)
                try:
                    await self.publish(
                        "llm", event, turn_id=gen.turn_id, response_id=gen.response_id
                    )
                finally:
                    otel_context.detach(token)
            gen.held.clear()
            gen.committed.set()
        log.info("early answer %s committed", gen.response_id)

    def _add_user(self, gen: _Generation) -> None:
        if not gen.user_added:
            gen.user_added = True
            self.conversation.add_user(gen.input_text)

    async def _out(self, gen: _Generation, event: llm_pb2.LlmEvent) -> None:
        async with gen.lock:
            if gen.speculative:
                gen.held.append((event, otel_context.get_current()))
                return
            await self.publish("llm", event, turn_id=gen.turn_id, response_id=gen.response_id)

    async def on_user_text(self, text: str, meta: common_pb2.Meta) -> None:
        await self._respond(meta.turn_id, text)

    async def on_interrupt(self, interrupt: control_pb2.Interrupt, meta: common_pb2.Meta) -> None:
        gen = self.current
        if gen is None or gen.response_id != interrupt.response_id:
            return
        if interrupt.reason != "truncated":
            INTERRUPTS.labels("llm").inc()
        gen.heard_text = interrupt.heard_text
        if gen.task is not None and gen.task.done():
            # Generated in full before it was cut (its audio was still
            # playing): the history holds all of it, keep what was heard.
            self.conversation.truncate_last_assistant(interrupt.heard_text)
            return
        await self._stop(gen)

    async def _stop(self, gen: _Generation) -> None:
        if gen.task is not None and not gen.task.done():
            gen.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gen.task

    async def _respond(self, turn_id: int, text: str, speculative: bool = False) -> None:
        if self.current is not None:
            await self._stop(self.current)
        gen = _Generation(uuid.uuid4().hex[:16], turn_id, text, speculative)
        self.current = gen
        gen.task = asyncio.create_task(self._generate(gen, text))

    async def _tool_specs(self) -> list[dict[str, Any]] | None:
        """The tools the model may call, from the tools service (cached briefly)."""
        cfg = self.llm.settings.llm
        if not self.llm.model.supports_tools or cfg.max_tool_rounds == 0:
            return None
        now = time.monotonic()
        if self._tools_cache is not None and now - self._tools_cache[0] < TOOLS_CACHE_S:
            return self._tools_cache[1]
        try:
            reply = await self.bus.request(
                TOOLS_LIST,
                tools_pb2.ToolListRequest(session_id=self.session_id),
                tools_pb2.ToolListReply,
                timeout=TOOLS_LIST_TIMEOUT_S,
            )
        except Exception as exc:  # no tools is better than no answer
            log.warning("cannot list tools, answering without: %s", exc)
            return None
        specs = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": json.loads(t.parameters_json or "{}"),
                },
            }
            for t in reply.tools
            if allowed(t.name, cfg.tools_allow)
        ]
        self._tools_cache = (now, specs or None)
        return specs or None

    async def _call_tool(self, call: ToolCall, turn_id: int, response_id: str) -> str:
        """One tool call through the bus; failures become text the model can explain."""
        timeout = self.llm.settings.llm.tool_timeout_s
        with tracer.start_as_current_span(
            "llm.tool_call",
            attributes={"parley.session_id": self.session_id, "parley.tool": call.name},
        ) as span:
            if not allowed(call.name, self.llm.settings.llm.tools_allow):
                # A tool the model was never shown (it made the name up, or
                # an injected text named it): refused here too.
                span.set_attribute("error", True)
                return f"Error: {refusal(call.name)}"
            await self.publish_processing(f"calling {call.name}", turn_id, response_id)
            request = tools_pb2.ToolCallRequest(
                session_id=self.session_id,
                call_id=call.id,
                name=call.name,
                arguments_json=call.arguments,
                timeout_s=timeout,
            )
            try:
                reply = await self.bus.request(
                    TOOLS_CALL, request, tools_pb2.ToolCallReply, timeout=timeout + 1.0
                )
            except Exception as exc:
                span.set_attribute("error", True)
                log.warning("tool %s got no answer: %s", call.name, exc)
                return f"Error: the tool {call.name} did not answer ({type(exc).__name__})."
            if not reply.ok:
                span.set_attribute("error", True)
                return f"Error: {reply.error}"
            if call.name == END_CONVERSATION:
                self._ending = True
            return reply.content

    async def _generate(self, gen: _Generation, user_text: str) -> None:
        cfg = self.llm.settings.llm
        model = self.llm.model
        rid, turn_id = gen.response_id, gen.turn_id
        if not gen.speculative:
            self._add_user(gen)
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
            await self._out(
                gen,
                llm_pb2.LlmEvent(
                    started=llm_pb2.ResponseStarted(model=model.name, input_text=user_text)
                ),
            )

            async def emit(pieces: list[str]) -> None:
                nonlocal sentences
                for piece in pieces:
                    if sentences == 0:
                        span.add_event("first_sentence")
                        STAGE_SECONDS.labels("llm", "first_sentence").observe(
                            time.monotonic() - started
                        )
                    span.add_event(
                        "sentence", {"parley.index": sentences, "parley.chars": len(piece)}
                    )
                    await self._out(
                        gen,
                        llm_pb2.LlmEvent(sentence=llm_pb2.Sentence(index=sentences, text=piece)),
                    )
                    sentences += 1

            async def filler() -> None:
                await asyncio.sleep(cfg.filler_delay_s)
                if cfg.filler_text:
                    await emit([cfg.filler_text])

            try:
                tools = await self._tool_specs()
                for round_no in range(cfg.max_tool_rounds + 1):
                    calls: list[ToolCall] = []
                    round_text = ""
                    # The last round offers no tools: the model must answer in words.
                    offered = tools if round_no < cfg.max_tool_rounds else None
                    messages = self.conversation.messages()
                    if not gen.user_added:
                        messages.append({"role": "user", "content": user_text})
                    stream = model.stream(
                        messages,
                        max_tokens=cfg.max_tokens,
                        temperature=cfg.temperature,
                        tools=offered,
                    )
                    # One model step: its slot is busy until the stream ends.
                    with self.llm.meter.step():
                        try:
                            async for item in stream:
                                if isinstance(item, ToolCall):
                                    calls.append(item)
                                    continue
                                if not gen.text:
                                    span.add_event("first_token")
                                    STAGE_SECONDS.labels("llm", "first_token").observe(
                                        time.monotonic() - started
                                    )
                                gen.text += item
                                round_text += item
                                await self._out(
                                    gen, llm_pb2.LlmEvent(delta=llm_pb2.TextDelta(text=item))
                                )
                                await emit(splitter.push(item))
                        finally:
                            await stream.aclose()
                    if not calls:
                        break
                    await emit(splitter.push("\n"))
                    # Tools act on the world: never on a guess about the turn.
                    await gen.committed.wait()
                    span.add_event("tool_calls", {"parley.tools": [c.name for c in calls]})
                    waiting = asyncio.create_task(filler())
                    try:
                        results = await asyncio.gather(
                            *(self._call_tool(c, turn_id, rid) for c in calls)
                        )
                    finally:
                        waiting.cancel()
                    self.conversation.add_tool_round(calls, list(results), round_text)
                await emit(splitter.flush())
            except asyncio.CancelledError:
                status = llm_pb2.ResponseEnded.CANCELLED
            except ProviderError as exc:
                status = llm_pb2.ResponseEnded.FAILED
                # The details (URL, body excerpt) stay here; the client hears why in short.
                log.warning("the language model failed: %s", exc.message)
                error = exc.public
                gen.failed = True
                if gen.speculative:
                    # Nobody has seen this answer: try again on the final transcript.
                    return
                await self.publish_error(
                    exc.code,
                    f"the language model failed: {exc.public}",
                    turn_id=turn_id,
                    response_id=rid,
                )
            except Exception as exc:
                log.exception("generation failed")
                status = llm_pb2.ResponseEnded.FAILED
                # A bug of ours: its traceback is logged; the client hears its kind.
                error = type(exc).__name__
                gen.failed = True
                if gen.speculative:
                    return
                await self.publish_error(
                    "provider_error",
                    f"the language model failed ({type(exc).__name__})",
                    turn_id=turn_id,
                    response_id=rid,
                )
            span.set_attribute("parley.sentences", sentences)

        if gen.speculative and status == llm_pb2.ResponseEnded.COMPLETED:
            # Ready before the turn is known to be over: wait for the verdict.
            try:
                await gen.committed.wait()
            except asyncio.CancelledError:
                pass
        if gen.speculative:
            # Never confirmed: it leaves no trace, in the history or elsewhere.
            log.info("early answer %s dropped", rid)
            return
        if status == llm_pb2.ResponseEnded.CANCELLED:
            # The history keeps what the user heard, so the next answer knows it.
            heard = gen.heard_text if gen.heard_text is not None else gen.text
            if heard.strip():
                self.conversation.add_assistant(heard.strip())
        elif status == llm_pb2.ResponseEnded.COMPLETED and gen.text.strip():
            self.conversation.add_assistant(gen.text.strip())
        # What was said is personal: its length at INFO, the words at DEBUG only.
        log.info(
            "response %s %s (%d characters)",
            rid,
            llm_pb2.ResponseEnded.Status.Name(status),
            len(gen.text),
        )
        log_content(log, "response %s text: %r", rid, gen.text)
        await asyncio.shield(
            self._out(
                gen,
                llm_pb2.LlmEvent(
                    ended=llm_pb2.ResponseEnded(
                        status=status,
                        text=gen.text,
                        sentences=sentences,
                        error=error,
                        end_session=self._ending,
                    )
                ),
            )
        )

    async def on_close(self) -> None:
        if self.current is not None:
            await self._stop(self.current)
        if self.stored is None:
            return
        if self.ended:
            # The conversation is over: nobody will take it over.
            await self.stored.delete(self.llm.settings.state.timeout_s)
        else:
            # Idle or draining: whoever takes the session next reads it.
            await self.stored.flush(self.llm.settings.state.timeout_s)


class LlmStage(Stage):
    name = "llm"
    session_class = LlmSession
    # Bucket parley_history, when state.enabled.
    history: KeyValue | None = None

    async def start(self) -> None:
        if self.settings.state.enabled:
            self.history = await open_bucket(self.bus.nc, HISTORY, self.settings.state)

    @property
    def model_workers(self) -> int:
        # xllamacpp generates llm.parallel answers at once; the others one.
        return self.settings.llm.parallel if self.settings.llm.provider == "xllamacpp" else 1

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
                cfg.provider,
                model_path=cfg.model_path,
                n_ctx=cfg.n_ctx,
                n_threads=cfg.n_threads,
                repeat_penalty=cfg.repeat_penalty,
                parallel=cfg.parallel,
            )
        await self.model.load()

    async def close(self) -> None:
        await self.model.aclose()
