"""One conversation as the gateway sees it, whatever protocol the client speaks.

Protocol adapters drive a GatewaySession through its methods and receive its
typed events (core/events.py) through a ClientSink (core/sink.py). The jobs
live beside it: audio in (audio_in.py), the bus streams back (bus_events.py),
barge-in decisions (interruption.py), answers (responses.py), playback pacing
(playback.py), the client's own tools (client_tools.py), turn traces
(turn_trace.py). A session may outlive its connection (registry.py): the sink
is swapped, the conversation goes on."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace

from parley.bus import Bus, Subscriptions, session_subject
from parley.config import ParleySettings
from parley.logs import session_id_var
from parley.metrics import ACTIVE_SESSIONS, ERRORS, INTERRUPTS
from parley.session import MetaStamper, merge_settings
from parley.session_settings import resolve
from parley.tasks import TaskSet
from parley.v1 import (
    asr_pb2,
    audio_pb2,
    common_pb2,
    control_pb2,
    events_pb2,
    llm_pb2,
    vad_pb2,
)
from services.gateway.core import events as ev
from services.gateway.core.audio_in import BUS_RATE, AudioBudget, AudioIn
from services.gateway.core.bus_events import BusEvents
from services.gateway.core.client_tools import ClientToolRelay, ClientTools
from services.gateway.core.interruption import BargeInPolicy, Interruption, parse_backchannels
from services.gateway.core.placement import Placement, PlacementClient, PlacementError
from services.gateway.core.playback import Playback
from services.gateway.core.responses import Response, Responses
from services.gateway.core.settings import check_sample_rate, settings_in_force
from services.gateway.core.sink import ClientSink
from services.gateway.core.turn_trace import TurnTrace

log = logging.getLogger("parley.gateway")
tracer = trace.get_tracer("parley.gateway")

__all__ = ["BUS_RATE", "GatewaySession"]

# A client flooding audio is told so again at most this often (each dropped
# frame would otherwise be a message back).
TOO_FAST_NOTICE_S = 5.0


class _LoopClock:
    """The interruption rules' clock: the event loop's timers; async callbacks
    run as supervised tasks."""

    def __init__(self) -> None:
        self._tasks = TaskSet("barge-in timer")

    def call_later(
        self, delay_s: float, callback: Callable[[], Awaitable[None] | None]
    ) -> asyncio.TimerHandle:
        def fire() -> None:
            result = callback()
            if asyncio.iscoroutine(result):
                self._tasks.spawn(result)

        return asyncio.get_running_loop().call_later(delay_s, fire)

    def close(self) -> None:
        self._tasks.cancel_all()


class GatewaySession:
    def __init__(
        self,
        bus: Bus,
        placement_client: PlacementClient,
        settings: ParleySettings,
        sink: ClientSink,
        protocol: str,
    ) -> None:
        self.session_id = uuid.uuid4().hex
        # Proves a reconnecting client is the one this session was opened for.
        self.resume_token = secrets.token_urlsafe(24)
        self.bus = bus
        self.placement_client = placement_client
        self.defaults = settings
        self.sink = sink
        self.protocol = protocol
        self.settings = common_pb2.Settings()
        self.output_rate = settings.gateway.output_sample_rate
        self._stamper = MetaStamper(self.session_id)
        self._subs = Subscriptions()
        self.closed = False
        self.trace = TurnTrace(self.session_id, protocol)
        self.audio_in = AudioIn(
            self._publish_audio,
            AudioBudget(settings.gateway.max_audio_speed, settings.gateway.audio_burst_ms),
        )
        self._too_fast_told_at: float | None = None
        self.responses = Responses()
        self._clock = _LoopClock()
        self.interruption = Interruption(self, self._clock)
        self.playback = Playback(
            self.output_rate,
            # 0 is a lead too (send in real time): only None means the default.
            settings.gateway.playback_lead_ms
            if sink.playback_lead_ms is None
            else sink.playback_lead_ms,
            self._send_audio,
            self._on_first_frame,
            self._on_playback_end,
        )
        self.playback.on_sent = self._on_playback_sent
        self.bus_events = BusEvents(
            self,
            self.responses,
            self.playback,
            self.interruption,
            self.trace,
            self.audio_in.arrivals,
        )
        self.client_tools = ClientToolRelay(bus, self.session_id)

    @property
    def input_rate(self) -> int:
        return self.audio_in.rate

    # --- lifecycle ----------------------------------------------------------
    async def open(self, settings: common_pb2.Settings | None = None) -> list[PlacementError]:
        """Subscribe to the session's streams, then place it on every stage."""
        session_id_var.set(self.session_id)
        if settings is not None:
            merge_settings(self.settings, settings)
        self._apply_policy()
        b = self.bus_events
        streams: list[tuple[str, type[Message], Callable[[Any], Awaitable[None]]]] = [
            ("vad", vad_pb2.VadEvent, b.on_vad),
            ("asr", asr_pb2.Transcript, b.on_asr),
            ("llm", llm_pb2.LlmEvent, b.on_llm),
            ("audio.out", audio_pb2.AudioChunk, b.on_audio_out),
            ("events", events_pb2.Event, b.on_event),
        ]
        for stream, msg_type, handler in streams:
            self._subs.add(
                await self.bus.subscribe(
                    session_subject(self.session_id, stream), msg_type, handler
                )
            )
        self._subs.add(*await self.client_tools.subscribe())
        self.playback.start()
        ACTIVE_SESSIONS.labels("gateway").inc()
        placement = Placement(
            self.session_id,
            self.settings,
            on_error=self._on_placement_error,
            on_owner_lost=self._on_owner_lost,
            last_turn_id=lambda: self.bus_events.last_turn_id,
        )
        with tracer.start_as_current_span("gateway.place_session"):
            failures = await self.placement_client.place_session(placement)
        log.info("session opened (%s)", self.protocol)
        return failures

    async def report_placement(self, failures: list[PlacementError]) -> None:
        for failure in failures:
            await self._on_placement_error(failure.stage, str(failure))

    async def _on_owner_lost(self, stage: str, owner: str) -> None:
        """A stage's owner is gone (it missed its heartbeats) and is being
        replaced. An answer its llm was still writing would never end, and a
        half-duplex session would dismiss every later turn as spoken over the
        agent: it ends here, failed, with a stage_failed error to say why."""
        if stage != "llm":
            return
        resp = self.responses.live_current()
        if resp is None or resp.text_done:
            return  # nothing in flight, or only its audio (tts is alive)
        ERRORS.labels("gateway", "stage_failed").inc()
        log.warning("response %s lost with its llm owner %s", resp.response_id, owner)
        await self.sink.send_event(
            ev.Error(
                "llm",
                "stage_failed",
                "the llm instance writing this answer stopped; the conversation goes on "
                "on another one: ask again",
                True,
                resp.turn_id,
                resp.response_id,
            )
        )
        await self._end_answer(resp, "stage_failed", ev.Status.FAILED)

    async def _on_placement_error(self, stage: str, message: str) -> None:
        ERRORS.labels("gateway", "stage_unavailable").inc()
        await self.sink.send_event(ev.Error(stage, "stage_unavailable", message, True))

    def attach(self, sink: ClientSink) -> None:
        """A new connection takes the session over (resumption)."""
        self.sink = sink
        if sink.playback_lead_ms is not None:
            self.playback.lead_ms = sink.playback_lead_ms

    async def close(self, reason: str = "client closed") -> None:
        if self.closed:
            return
        self.closed = True
        ACTIVE_SESSIONS.labels("gateway").dec()
        await self.playback.stop()
        try:
            await self._control(control_pb2.Control(end=control_pb2.SessionEnd(reason=reason)))
        except Exception as exc:  # the bus may be gone; stages time the session out
            log.warning("cannot announce session end: %s", exc)
        await self._subs.close()
        self.client_tools.close()
        self.interruption.close()
        self._clock.close()
        self.placement_client.forget(self.session_id)
        self.trace.close()
        log.info("session closed: %s", reason)

    def info(self) -> ev.SessionInfo:
        return ev.SessionInfo(
            session_id=self.session_id,
            input_sample_rate=self.input_rate,
            output_sample_rate=self.output_rate,
            settings=settings_in_force(self.settings, self.defaults),
            resume_token=self.resume_token,
        )

    def _apply_policy(self) -> None:
        s = resolve(self.settings, self.defaults)
        self.interruption.policy = BargeInPolicy(
            barge_in=s.barge_in,
            min_speech_ms=s.min_speech_ms,
            min_interrupt_ms=s.min_interrupt_ms,
            backchannels=parse_backchannels(s.backchannels),
        )

    # --- client -> bus --------------------------------------------------------
    async def _control(self, msg: control_pb2.Control) -> None:
        self._stamper.stamp(msg.meta, "control")
        token = None
        if not trace.get_current_span().get_span_context().is_valid:
            token = otel_context.attach(self.trace.context())
        try:
            await self.bus.publish(session_subject(self.session_id, "control"), msg)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def _publish_audio(self, chunk: audio_pb2.AudioChunk) -> None:
        self._stamper.stamp(chunk.meta, "audio.in")
        token = otel_context.attach(self.trace.context())
        try:
            await self.bus.publish(session_subject(self.session_id, "audio.in"), chunk)
        finally:
            otel_context.detach(token)

    async def push_audio(self, pcm: bytes, throttle: bool = True) -> None:
        """PCM16 mono at the session's input rate, already validated for shape.
        Audio faster than real time is dropped (core/audio_in.py); the client
        hears of it as audio_too_fast, at most every TOO_FAST_NOTICE_S."""
        if not await self.audio_in.push(pcm, throttle):
            await self._too_fast()
            return
        await self.interruption.audio(self.audio_in.offset_ms)

    async def _too_fast(self) -> None:
        now = time.monotonic()
        told = self._too_fast_told_at
        if told is not None and now - told < TOO_FAST_NOTICE_S:
            return
        self._too_fast_told_at = now
        ERRORS.labels("gateway", "audio_too_fast").inc()
        speed = self.audio_in.budget.speed
        log.info("client audio faster than %.1fx real time: dropping the excess", speed)
        await self.sink.send_event(
            ev.Error(
                "gateway",
                "audio_too_fast",
                f"audio is arriving faster than {speed:g}x real time; the excess is "
                f"dropped ({self.audio_in.dropped_ms / 1000:.1f} s so far): send it "
                "as it is recorded",
                True,
            )
        )

    async def update_settings(
        self,
        settings: common_pb2.Settings | None,
        input_rate: int | None = None,
        output_rate: int | None = None,
    ) -> None:
        allowed = self.defaults.gateway.input_sample_rates
        # Both checked before either applies: a refused update changes nothing.
        if input_rate is not None:
            check_sample_rate(input_rate, allowed, "input_sample_rate")
        if output_rate is not None:
            check_sample_rate(output_rate, allowed, "output_sample_rate")
        if input_rate is not None:
            self.audio_in.set_rate(input_rate)
        if output_rate is not None:
            self.output_rate = output_rate
            self.playback.sample_rate = output_rate
        if settings is not None and settings.ListFields():
            merge_settings(self.settings, settings)
            self._apply_policy()
            await self._control(
                control_pb2.Control(settings=control_pb2.SettingsUpdate(settings=settings))
            )

    async def text_input(self, text: str) -> None:
        await self.cut_answer("text input")
        await self._control(control_pb2.Control(user_text=control_pb2.UserText(text=text)))

    async def commit(self) -> None:
        await self._control(control_pb2.Control(commit=control_pb2.Commit()))

    async def interrupt(self) -> None:
        await self.cut_answer("client")

    async def truncate(self, response_id: str, played_ms: float) -> None:
        """The client says how much of an answer it really played (a Realtime
        conversation.item.truncate, after the answer was cut): the history
        keeps what that much audio held, instead of the pacing clock's guess."""
        resp = self.responses.get(response_id)
        if resp is None:
            return
        await self._control(
            control_pb2.Control(
                interrupt=control_pb2.Interrupt(
                    response_id=response_id,
                    played_ms=played_ms,
                    reason="truncated",
                    heard_text=resp.heard(played_ms),
                )
            )
        )

    async def dismiss_turn(self, turn_id: int, reason: str) -> None:
        """Leave this user turn unanswered (the client dropped its input)."""
        await self._control(
            control_pb2.Control(dismiss=control_pb2.DismissTurn(turn_id=turn_id, reason=reason))
        )

    async def playback_mark(self, response_id: str, played_ms: float) -> None:
        await self._control(
            control_pb2.Control(
                playback=control_pb2.PlaybackMark(response_id=response_id, played_ms=played_ms)
            )
        )

    async def set_client_tools(self, tools: ClientTools | None) -> None:
        """Offer (or withdraw) the client's tools; the llm drops its cached list."""
        self.client_tools.tools = tools
        await self._control(control_pb2.Control(tools_changed=control_pb2.ToolsChanged()))

    # --- barge-in (interruption.Actions) ----------------------------------------
    def agent_active(self) -> bool:
        """True from the start of an answer until its audio has been heard."""
        resp = self.responses.live_current()
        if resp is None:
            return False
        return not resp.text_done or self.playback.playing()

    def pause_playback(self) -> None:
        self.playback.pause()

    def resume_playback(self) -> None:
        self.playback.resume()

    async def dismiss(self, turn_id: int, reason: str) -> None:
        log.info("turn %d is not an interruption (%s); the answer resumes", turn_id, reason)
        await self.dismiss_turn(turn_id, reason)

    async def hold_turn(self, turn_id: int, release: bool) -> None:
        await self._control(
            control_pb2.Control(hold=control_pb2.HoldTurn(turn_id=turn_id, release=release))
        )

    async def cut_answer(self, reason: str) -> None:
        """Stop the current answer now: drop its queued audio, tell the client
        and every stage, and keep in the history what the user heard."""
        if not self.agent_active():
            return
        resp = self.responses.live_current()
        assert resp is not None
        INTERRUPTS.labels("gateway").inc()
        await self._end_answer(resp, reason, ev.Status.CANCELLED)

    async def drop_unheard_answer(self, reason: str) -> None:
        """The listener is gone: the answer not yet heard to its end is cut,
        even one whose text is done and whose audio has not begun (which
        agent_active does not count), so none of it plays to the connection
        that takes the session next, and the history keeps what was heard."""
        resp = self.responses.live_current()
        if resp is not None and not resp.heard_to_end:
            await self._end_answer(resp, reason, ev.Status.CANCELLED)

    async def _end_answer(self, resp: Response, reason: str, status: ev.Status) -> None:
        """End an answer here (cut, or lost with its llm): its queued audio
        dropped, the client and every stage told, what was heard kept."""
        rid = resp.response_id
        played = self.playback.played_ms(rid)
        heard = resp.heard(played)
        self.responses.cancel(rid)
        self.playback.flush()
        self.trace.drop_audio_out(rid)
        if resp.turn_id:
            self.trace.end(resp.turn_id)
        how = "interrupted" if status is ev.Status.CANCELLED else status.value
        log.info("response %s %s (%s) after %.0f ms played", rid, how, reason, played)
        await self._control(
            control_pb2.Control(
                interrupt=control_pb2.Interrupt(
                    response_id=rid, played_ms=played, reason=reason, heard_text=heard
                )
            )
        )
        await self.sink.send_event(ev.PlaybackCleared(rid, reason))
        await self.sink.on_playback_finished(rid, played, True)
        if resp.tts_started:
            await self.sink.send_event(ev.TtsEnded(rid, ev.Status.CANCELLED))
        await self.sink.send_event(ev.ResponseEnded(rid, status, heard))

    # --- playback callbacks -----------------------------------------------------
    async def _send_audio(self, pcm: bytes) -> None:
        rid = self.playback.response_id
        if self.responses.stale(rid):
            return
        await self.sink.send_audio(ev.AudioOut(rid, pcm, self.output_rate))

    async def _on_first_frame(self, response_id: str) -> None:
        await self.bus_events.first_frame_sent(response_id)

    async def _on_playback_sent(self, response_id: str) -> None:
        if not self.responses.stale(response_id):
            await self.sink.on_playback_sent(response_id)

    async def _on_playback_end(self, response_id: str) -> None:
        resp = self.responses.get(response_id)
        if resp is not None:
            resp.heard_to_end = True
            if resp.turn_id:
                self.trace.end(resp.turn_id)
        if self.responses.stale(response_id):
            return
        await self.sink.on_playback_finished(
            response_id, self.playback.played_ms(response_id), False
        )
        await self.sink.send_event(ev.TtsEnded(response_id, ev.Status.COMPLETED))
        if resp is not None and resp.end_session:
            # The goodbye has been heard: end the session politely.
            await self.sink.send_event(ev.SessionEnded("the agent said goodbye"))
            await self.sink.close("goodbye")
