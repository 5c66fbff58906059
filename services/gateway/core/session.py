"""One conversation as the gateway sees it: audio in to the bus, the session's
streams back to the client, turn timings, playback and barge-in.

Protocol adapters (Parley WebSocket, and others) drive a GatewaySession through
its methods and receive client-facing events through a ClientSink."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any, Protocol

import numpy as np
import soxr
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context
from opentelemetry import trace

from parley.bus import CLIENT_TOOLS_CALL, CLIENT_TOOLS_LIST, Bus, session_subject
from parley.config import ParleySettings
from parley.logs import session_id_var
from parley.metrics import ACTIVE_SESSIONS, DROPPED_FRAMES, ERRORS, FRAMES, INTERRUPTS
from parley.session import merge_settings, setting
from parley.text import heard_text
from parley.v1 import (
    asr_pb2,
    audio_pb2,
    common_pb2,
    control_pb2,
    events_pb2,
    llm_pb2,
    tools_pb2,
    vad_pb2,
)
from services.gateway.placement import Placement, PlacementClient, PlacementError
from services.gateway.playback import Playback
from services.gateway.timeline import ArrivalClock, TurnTimeline

log = logging.getLogger("parley.gateway")
tracer = trace.get_tracer("parley.gateway")

BUS_RATE = 16000
MAX_BUS_CHUNK_MS = 60
_STATUS = {
    llm_pb2.ResponseEnded.COMPLETED: "completed",
    llm_pb2.ResponseEnded.CANCELLED: "cancelled",
    llm_pb2.ResponseEnded.FAILED: "failed",
}
_STOP_REASON = {
    vad_pb2.SpeechStopped.SILENCE: "silence",
    vad_pb2.SpeechStopped.MAX_UTTERANCE: "max_utterance",
    vad_pb2.SpeechStopped.CLIENT_COMMIT: "commit",
    vad_pb2.SpeechStopped.TRANSCRIPT: "transcript",
}


class ClientSink(Protocol):
    async def send_event(self, event: dict[str, Any]) -> None: ...

    async def send_audio(self, pcm: bytes) -> None: ...

    async def close(self, reason: str) -> None: ...


# While the answer is paused on a possible acknowledgement: how long to wait
# for its words, and how much speech is too long to be one.
# (The transcript of a short clip takes ~0.2 s; seconds on a loaded machine.)
BACKCHANNEL_WAIT_S = 6.0
BACKCHANNEL_MAX_MS = 1200
# After a voice onset that faded (a cough, or a word before a pause), how long
# the answer stays paused in case more voice follows.
ONSET_RESUME_DELAY_S = 0.25
_WORDS = re.compile(r"[a-z']+(?:-[a-z']+)*")


def parse_backchannels(raw: str) -> frozenset[str]:
    return frozenset(" ".join(_WORDS.findall(w.lower())) for w in raw.split(",") if w.strip())


def is_backchannel(text: str, backchannels: frozenset[str]) -> bool:
    """Nothing but acknowledgements ("Mm-hmm.", "Yeah, okay."); no words at all
    (a cough Whisper hears as nothing) counts too."""
    words = _WORDS.findall(text.lower())
    if not words:
        return True
    if " ".join(words) in backchannels:
        return True
    return all(word in backchannels for word in words)


class ClientTools(Protocol):
    """Tools the client brings to its session (a device's MCP server, a
    Realtime client's functions). The tools service offers them beside its own
    and relays their calls here; call raises ClientToolError."""

    def list_tools(self) -> list[tools_pb2.Tool]: ...

    async def call_tool(self, name: str, arguments_json: str, timeout_s: float) -> str: ...


class ClientToolError(Exception):
    """A client tool failed; the message goes to the model."""


class ClientError(Exception):
    """Bad input from the client: reported as an error event, never fatal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


SETTINGS_FIELDS: dict[str, type] = {
    "vad_threshold": float,
    "min_speech_ms": int,
    "silence_ms": int,
    "max_utterance_ms": int,
    "language": str,
    "barge_in": bool,
    "min_interrupt_ms": int,
    "system_prompt": str,
    "voice": str,
    "vad_stats": bool,
    "early_answer": bool,
    "turn_detection": bool,
    "backchannels": str,
    "turn_detector": str,
}
_CHOICES = {"turn_detector": ("silence", "transcript")}
_RANGES = {
    "vad_threshold": (0.01, 0.99),
    "min_speech_ms": (0, 5000),
    "silence_ms": (200, 3000),
    "max_utterance_ms": (1000, 120000),
    "min_interrupt_ms": (0, 5000),
}


def settings_from_json(raw: Any) -> common_pb2.Settings:
    """Validate a client's settings object; errors name the bad key."""
    if not isinstance(raw, dict):
        raise ClientError("bad_field", "settings must be an object")
    out = common_pb2.Settings()
    for key, value in raw.items():
        kind = SETTINGS_FIELDS.get(key)
        if kind is None:
            raise ClientError("bad_field", f"unknown setting: {key}")
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ClientError("bad_field", f"settings.{key} must be a {kind.__name__}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ClientError("bad_field", f"settings.{key} must be one of {_CHOICES[key]}")
        if key in _RANGES:
            lo, hi = _RANGES[key]
            if not lo <= value <= hi:
                raise ClientError("bad_field", f"settings.{key} must be within {lo}..{hi}")
        setattr(out, key, value)
    return out


def check_sample_rate(rate: int, allowed: list[int], what: str) -> None:
    if rate not in allowed:
        raise ClientError(
            "unsupported_sample_rate", f"{what} {rate} is not supported; use one of {allowed}"
        )


def settings_to_json(settings: common_pb2.Settings, defaults: ParleySettings) -> dict[str, Any]:
    """The settings in force: the session's own, else the services' defaults."""
    d = defaults
    return {
        "vad_threshold": round(setting(settings, "vad_threshold", d.vad.threshold), 3),
        "min_speech_ms": setting(settings, "min_speech_ms", d.vad.min_speech_ms),
        "silence_ms": setting(settings, "silence_ms", d.vad.silence_ms),
        "max_utterance_ms": setting(settings, "max_utterance_ms", d.vad.max_utterance_ms),
        "language": setting(settings, "language", d.asr.language or ""),
        "barge_in": setting(settings, "barge_in", True),
        "min_interrupt_ms": setting(settings, "min_interrupt_ms", 0),
        "system_prompt": setting(settings, "system_prompt", d.llm.system_prompt),
        "voice": setting(settings, "voice", ""),
        "vad_stats": setting(settings, "vad_stats", False),
        "early_answer": setting(settings, "early_answer", True),
        "turn_detection": setting(settings, "turn_detection", True),
        "backchannels": setting(settings, "backchannels", ""),
        "turn_detector": setting(settings, "turn_detector", "silence"),
    }


class _Response:
    def __init__(self, response_id: str, turn_id: int) -> None:
        self.response_id = response_id
        self.turn_id = turn_id
        self.sentences: dict[int, str] = {}
        self.sentence_ms: dict[int, float] = {}
        self.tts_started = False
        self.text_done = False
        self.end_session = False
        self.resampler: soxr.ResampleStream | None = None
        self.in_rate = 0


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
        self.bus = bus
        self.placement_client = placement_client
        self.defaults = settings
        self.sink = sink
        self.protocol = protocol
        self.settings = common_pb2.Settings()
        self.input_rate = BUS_RATE
        self.output_rate = settings.gateway.output_sample_rate
        self._in_resampler: soxr.ResampleStream | None = None
        self._in_offset_ms = 0.0
        self._seq: dict[str, int] = {}
        self._subs: list[Subscription] = []
        self.arrivals = ArrivalClock()
        self.turns: dict[int, TurnTimeline] = {}
        self.responses: dict[str, _Response] = {}
        self.current_response: str = ""
        self.cancelled: set[str] = set()
        self.playback = Playback(
            self.output_rate,
            settings.gateway.playback_lead_ms,
            self._send_audio,
            self._on_first_frame,
            self._on_playback_end,
        )
        self.closed = False
        self.user_speaking = False
        # Each turn is one trace. Its root span opens before the user speaks
        # (audio is published under it) and is handed to the turn when VAD
        # ends it; the next audio goes under a fresh root.
        self._listen_span: trace.Span | None = None
        self.turn_spans: dict[int, trace.Span] = {}
        self._audio_out_context: dict[str, otel_context.Context] = {}
        self._interrupt_checks: set[asyncio.Task[None]] = set()
        self._holds = 0  # interrupt checks under way; the answer is paused meanwhile
        self._onset_hold: asyncio.TimerHandle | None = None
        self._speech_turn = 0
        self.client_tools: ClientTools | None = None
        self._turn_text: dict[int, str] = {}  # the latest transcript of recent turns
        self._tool_calls: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------
    async def open(self, settings: common_pb2.Settings | None = None) -> list[PlacementError]:
        """Subscribe to the session's streams, then place it on every stage."""
        session_id_var.set(self.session_id)
        if settings is not None:
            merge_settings(self.settings, settings)
        for stream, msg_type, handler in (
            ("vad", vad_pb2.VadEvent, self._on_vad),
            ("asr", asr_pb2.Transcript, self._on_asr),
            ("llm", llm_pb2.LlmEvent, self._on_llm),
            ("audio.out", audio_pb2.AudioChunk, self._on_audio_out),
            ("events", events_pb2.Event, self._on_event),
        ):
            sub = await self.bus.subscribe(
                session_subject(self.session_id, stream),
                msg_type,  # type: ignore[arg-type]
                handler,  # type: ignore[arg-type]
            )
            self._subs.append(sub)
        for stream, callback in (
            (CLIENT_TOOLS_LIST, self._on_client_tools_list),
            (CLIENT_TOOLS_CALL, self._on_client_tools_call),
        ):
            subject = session_subject(self.session_id, stream)
            self._subs.append(await self.bus.nc.subscribe(subject, cb=callback))
        self.playback.start()
        self._open_listen_span()
        ACTIVE_SESSIONS.labels("gateway").inc()
        placement = Placement(self.session_id, self.settings, on_error=self._on_placement_error)
        with tracer.start_as_current_span("gateway.place_session"):
            failures = await self.placement_client.place_session(placement)
        log.info("session opened (%s)", self.protocol)
        return failures

    async def report_placement(self, failures: list[PlacementError]) -> None:
        for failure in failures:
            await self._on_placement_error(failure.stage, str(failure))

    async def _on_placement_error(self, stage: str, message: str) -> None:
        ERRORS.labels("gateway", "stage_unavailable").inc()
        await self.sink.send_event(
            {
                "type": "error",
                "stage": stage,
                "code": "stage_unavailable",
                "message": message,
                "recoverable": True,
            }
        )

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
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        for task in [*self._tool_calls, *self._interrupt_checks]:
            task.cancel()
        if self._onset_hold is not None:
            self._onset_hold.cancel()
        self.placement_client.forget(self.session_id)
        for turn_id in list(self.turn_spans):
            self._end_turn_span(turn_id)
        if self._listen_span is not None:
            self._listen_span.end()
        log.info("session closed: %s", reason)

    def _open_listen_span(self) -> None:
        self._listen_span = tracer.start_span(
            "gateway.turn",
            context=otel_context.Context(),  # a new trace, not the connection's
            attributes={"parley.session_id": self.session_id, "parley.protocol": self.protocol},
        )

    def _turn_context(self) -> otel_context.Context:
        span = self._listen_span or trace.INVALID_SPAN
        return trace.set_span_in_context(span)

    def _end_turn_span(self, turn_id: int) -> None:
        span = self.turn_spans.pop(turn_id, None)
        if span is not None:
            span.end()

    def describe(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "input_sample_rate": self.input_rate,
            "output_sample_rate": self.output_rate,
            "settings": settings_to_json(self.settings, self.defaults),
        }

    # --- client -> bus --------------------------------------------------------
    def _meta(self, meta: common_pb2.Meta, stream: str) -> None:
        self._seq[stream] = self._seq.get(stream, 0) + 1
        meta.session_id = self.session_id
        meta.seq = self._seq[stream]
        meta.ts_ms = time.time() * 1000

    async def _control(self, msg: control_pb2.Control) -> None:
        self._meta(msg.meta, "control")
        token = None
        if not trace.get_current_span().get_span_context().is_valid:
            token = otel_context.attach(self._turn_context())
        try:
            await self.bus.publish(session_subject(self.session_id, "control"), msg)
        finally:
            if token is not None:
                otel_context.detach(token)

    async def push_audio(self, pcm: bytes) -> None:
        """PCM16 mono at the session's input rate, already validated for shape."""
        FRAMES.labels("gateway", "audio.in").inc()
        if self.input_rate != BUS_RATE:
            if self._in_resampler is None:
                self._in_resampler = soxr.ResampleStream(
                    self.input_rate, BUS_RATE, 1, dtype="int16"
                )
            samples = np.frombuffer(pcm, dtype="<i2")
            pcm = self._in_resampler.resample_chunk(samples).astype("<i2").tobytes()
        step = int(BUS_RATE * 2 * MAX_BUS_CHUNK_MS / 1000)
        now = time.monotonic()
        for i in range(0, len(pcm), step):
            piece = pcm[i : i + step]
            if not piece:
                continue
            chunk = audio_pb2.AudioChunk(
                pcm=piece, sample_rate=BUS_RATE, offset_ms=self._in_offset_ms
            )
            self._in_offset_ms += len(piece) / (BUS_RATE * 2) * 1000
            self.arrivals.record(self._in_offset_ms, now)
            self._meta(chunk.meta, "audio.in")
            token = otel_context.attach(self._turn_context())
            try:
                await self.bus.publish(session_subject(self.session_id, "audio.in"), chunk)
            finally:
                otel_context.detach(token)

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
        if input_rate is not None and input_rate != self.input_rate:
            self.input_rate = input_rate
            self._in_resampler = None
        if output_rate is not None:
            self.output_rate = output_rate
            self.playback.sample_rate = output_rate
        if settings is not None and settings.ListFields():
            merge_settings(self.settings, settings)
            await self._control(
                control_pb2.Control(settings=control_pb2.SettingsUpdate(settings=settings))
            )

    async def text_input(self, text: str) -> None:
        await self._interrupt("text input")
        await self._control(control_pb2.Control(user_text=control_pb2.UserText(text=text)))

    async def commit(self) -> None:
        await self._control(control_pb2.Control(commit=control_pb2.Commit()))

    async def interrupt(self) -> None:
        await self._interrupt("client")

    async def truncate(self, response_id: str, played_ms: float) -> None:
        """The client says how much of an answer it really played (a Realtime
        conversation.item.truncate, after the answer was cut): the history
        keeps what that much audio held, instead of the pacing clock's guess."""
        resp = self.responses.get(response_id)
        if resp is None:
            return
        order = sorted(resp.sentences)
        heard = heard_text(
            [resp.sentences[i] for i in order],
            [resp.sentence_ms.get(i, 0.0) for i in order],
            played_ms,
        )
        await self._control(
            control_pb2.Control(
                interrupt=control_pb2.Interrupt(
                    response_id=response_id,
                    played_ms=played_ms,
                    reason="truncated",
                    heard_text=heard,
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

    # --- client tools -----------------------------------------------------------
    async def set_client_tools(self, tools: ClientTools | None) -> None:
        """Offer (or withdraw) the client's tools; the llm drops its cached list."""
        self.client_tools = tools
        await self._control(control_pb2.Control(tools_changed=control_pb2.ToolsChanged()))

    async def _on_client_tools_list(self, raw: Msg) -> None:
        reply = tools_pb2.ToolListReply()
        if self.client_tools is not None:
            reply.tools.extend(self.client_tools.list_tools())
        await self.bus.reply(raw, reply)

    async def _on_client_tools_call(self, raw: Msg) -> None:
        # As its own task: a device may take seconds, and parallel calls must not queue.
        task = asyncio.create_task(self._client_tool_call(raw))
        self._tool_calls.add(task)
        task.add_done_callback(self._tool_calls.discard)

    async def _client_tool_call(self, raw: Msg) -> None:
        request = tools_pb2.ToolCallRequest()
        reply = tools_pb2.ToolCallReply()
        try:
            request.ParseFromString(raw.data)
            reply.call_id = request.call_id
            if self.client_tools is None:
                raise ClientToolError(f"unknown tool: {request.name}")
            timeout = request.timeout_s if request.timeout_s > 0 else 10.0
            async with asyncio.timeout(timeout):
                reply.content = await self.client_tools.call_tool(
                    request.name, request.arguments_json, timeout
                )
            reply.ok = True
        except ClientToolError as exc:
            reply.error = str(exc)
        except TimeoutError:
            reply.error = f"the client did not answer the call of {request.name} in time"
        except Exception as exc:
            log.exception("client tool call failed")
            reply.error = f"tool {request.name} failed: {exc or type(exc).__name__}"
        try:
            await self.bus.reply(raw, reply)
        except Exception as exc:
            log.warning("cannot reply to a client tool call: %s", exc)

    # --- barge-in -------------------------------------------------------------
    def agent_active(self) -> bool:
        """True from the start of an answer until its audio has been heard."""
        rid = self.current_response
        if not rid or rid in self.cancelled:
            return False
        resp = self.responses.get(rid)
        if resp is None:
            return False
        return not resp.text_done or self.playback.playing()

    def _hold_on_onset(self) -> None:
        """A voice began while the agent talks: stop sending its audio now
        rather than when the voice has lasted min_speech_ms, so a real
        interruption silences it at once. The turn's start (or the voice
        fading) releases the hold; the timer covers a lost event."""
        if self._onset_hold is None:
            self._holds += 1
            self.playback.pause()
        else:
            self._onset_hold.cancel()
        limit = setting(self.settings, "min_speech_ms", self.defaults.vad.min_speech_ms) / 1000 + 1
        self._onset_hold = asyncio.get_running_loop().call_later(limit, self._release_onset)

    def _onset_dropped(self) -> None:
        """The voice faded before it was speech. It may be the first word
        before a pause ("Wait, ... stop"): resume only if no voice follows soon."""
        if self._onset_hold is not None:
            self._onset_hold.cancel()
            self._onset_hold = asyncio.get_running_loop().call_later(
                ONSET_RESUME_DELAY_S, self._release_onset
            )

    def _release_onset(self) -> None:
        if self._onset_hold is None:
            return
        self._onset_hold.cancel()
        self._onset_hold = None
        self._holds -= 1
        if not self._holds:
            self.playback.resume()

    async def _maybe_interrupt(self, start_ms: float) -> None:
        """Barge-in. With a minimum interrupt duration the answer is paused
        first, and cut only if the user is still speaking when it has passed;
        with backchannel words it is cut only once the words heard are not just
        an "mm-hm". A cough or an acknowledgement lets it resume where it stopped."""
        needed = setting(self.settings, "min_interrupt_ms", 0)
        backchannels = parse_backchannels(setting(self.settings, "backchannels", ""))
        if needed <= 0 and not backchannels:
            await self._interrupt("user speech")
            return
        # Each sound is judged on its own (an "mm-hm", then a cough); the
        # answer stays paused until every judgement is in.
        self._holds += 1
        self.playback.pause()
        turn_id = self._speech_turn
        # The llm waits for the verdict: a final transcript racing the
        # dismissal must not be answered.
        await self._control(control_pb2.Control(hold=control_pb2.HoldTurn(turn_id=turn_id)))
        task = asyncio.create_task(self._confirm_interrupt(turn_id, start_ms, needed, backchannels))
        self._interrupt_checks.add(task)
        task.add_done_callback(self._interrupt_checks.discard)

    async def _confirm_interrupt(
        self, turn_id: int, start_ms: float, needed: int, backchannels: frozenset[str]
    ) -> None:
        try:
            while self.user_speaking and self._in_offset_ms < start_ms + needed:
                await asyncio.sleep(0.02)
            if not self.user_speaking and (needed > 0 or not backchannels):
                await self._dismiss(turn_id, "too short")
                return
            if backchannels:
                words = await self._words_of(turn_id, start_ms)
                if words is not None and is_backchannel(words, backchannels):
                    await self._dismiss(turn_id, f"backchannel {words!r}")
                    return
            await self._interrupt("user speech")
            await self._control(
                control_pb2.Control(hold=control_pb2.HoldTurn(turn_id=turn_id, release=True))
            )
        finally:
            self._holds -= 1
            if not self._holds:
                self.playback.resume()

    async def _words_of(self, turn_id: int, start_ms: float) -> str | None:
        """What the user said, once they stop (the transcript at the pause or
        the final one: a partial may be the "okay" of "okay, stop"); None when
        they go on too long for an acknowledgement."""
        deadline = time.monotonic() + BACKCHANNEL_WAIT_S
        while time.monotonic() < deadline:
            if self.user_speaking and self._speech_turn == turn_id:
                if self._in_offset_ms - start_ms > BACKCHANNEL_MAX_MS:
                    return None
            elif (text := self._turn_text.get(turn_id)) is not None:
                return text
            await asyncio.sleep(0.02)
        return None

    async def _dismiss(self, turn_id: int, reason: str) -> None:
        log.info("turn %d is not an interruption (%s); the answer resumes", turn_id, reason)
        await self._control(
            control_pb2.Control(dismiss=control_pb2.DismissTurn(turn_id=turn_id, reason=reason))
        )

    async def _interrupt(self, reason: str) -> None:
        rid = self.current_response
        if not self.agent_active():
            return
        resp = self.responses[rid]
        played = self.playback.played_ms(rid)
        heard = heard_text(
            [resp.sentences.get(i, "") for i in sorted(resp.sentences)],
            [resp.sentence_ms.get(i, 0.0) for i in sorted(resp.sentences)],
            played,
        )
        self.cancelled.add(rid)
        self.playback.flush()
        self._audio_out_context.pop(rid, None)
        if resp.turn_id:
            self._end_turn_span(resp.turn_id)
        INTERRUPTS.labels("gateway").inc()
        log.info("response %s interrupted (%s) after %.0f ms played", rid, reason, played)
        await self._control(
            control_pb2.Control(
                interrupt=control_pb2.Interrupt(
                    response_id=rid, played_ms=played, reason=reason, heard_text=heard
                )
            )
        )
        await self.sink.send_event(
            {"type": "playback_cleared", "response_id": rid, "reason": reason}
        )
        if resp.tts_started:
            await self.sink.send_event(
                {"type": "tts_end", "response_id": rid, "status": "cancelled"}
            )
        await self.sink.send_event(
            {"type": "response_end", "response_id": rid, "status": "cancelled", "text": heard}
        )

    # --- bus -> client --------------------------------------------------------
    def _turn(self, turn_id: int) -> TurnTimeline:
        timeline = self.turns.get(turn_id)
        if timeline is None:
            timeline = self.turns[turn_id] = TurnTimeline(turn_id)
            # Keep a bounded window of turns.
            for old in sorted(self.turns)[:-8]:
                del self.turns[old]
        return timeline

    async def _on_vad(self, msg: vad_pb2.VadEvent) -> None:
        kind = msg.WhichOneof("event")
        turn_id = msg.meta.turn_id
        if kind == "voice_onset":
            if msg.voice_onset.dropped:
                self._onset_dropped()
            elif self.agent_active() and setting(self.settings, "barge_in", True):
                self._hold_on_onset()
        elif kind == "speech_started":
            self.user_speaking = True
            self._speech_turn = turn_id
            await self.sink.send_event(
                {
                    "type": "user_speech_start",
                    "turn_id": turn_id,
                    "offset_ms": round(msg.speech_started.start_ms, 1),
                }
            )
            if self.agent_active():
                if setting(self.settings, "barge_in", True):
                    await self._maybe_interrupt(msg.speech_started.start_ms)
                else:
                    # Half duplex: without barge-in, what is heard while the
                    # agent speaks (often its own voice) is not a turn.
                    await self._control(
                        control_pb2.Control(
                            dismiss=control_pb2.DismissTurn(
                                turn_id=turn_id, reason="agent speaking"
                            )
                        )
                    )
            # The turn's own judgement (cut, or pause until confirmed) takes over.
            self._release_onset()
        elif kind == "speech_stopped":
            self.user_speaking = False
            stopped = msg.speech_stopped
            if self._listen_span is not None:
                self._listen_span.set_attribute("parley.turn_id", turn_id)
                self._listen_span.set_attribute(
                    "parley.speech_ms", stopped.end_ms - stopped.start_ms
                )
                self.turn_spans[turn_id] = self._listen_span
                for old in sorted(self.turn_spans)[:-4]:
                    self._end_turn_span(old)
            self._open_listen_span()
            timeline = self._turn(turn_id)
            timeline.end_of_speech_ms = stopped.end_ms
            timeline.end_of_speech = self.arrivals.time_of(stopped.end_ms)
            await self.sink.send_event(
                {
                    "type": "user_speech_end",
                    "turn_id": turn_id,
                    "start_ms": round(stopped.start_ms, 1),
                    "end_ms": round(stopped.end_ms, 1),
                    "reason": _STOP_REASON.get(stopped.reason, "silence"),
                }
            )
        elif kind == "speech_paused":
            # Not the end of the turn, but enough to know a would-be
            # interruption was short.
            self.user_speaking = False
        elif kind == "stats":
            s = msg.stats
            await self.sink.send_event(
                {
                    "type": "vad_stats",
                    "probability": round(s.speech_probability, 3),
                    "energy_db": round(s.energy_db, 1),
                    "speaking": s.speaking,
                    "offset_ms": round(s.offset_ms, 1),
                }
            )

    async def _on_asr(self, msg: asr_pb2.Transcript) -> None:
        if msg.final or msg.at_pause:
            self._turn_text[msg.meta.turn_id] = msg.text
            for old in sorted(self._turn_text)[:-4]:
                del self._turn_text[old]
        if msg.final:
            self._turn(msg.meta.turn_id).mark("final_transcript")
            if not msg.text.strip():
                self._end_turn_span(msg.meta.turn_id)
        await self.sink.send_event(
            {
                "type": "transcription",
                "turn_id": msg.meta.turn_id,
                "text": msg.text,
                "final": msg.final,
            }
        )

    def _stale(self, response_id: str) -> bool:
        return response_id in self.cancelled

    async def _on_llm(self, msg: llm_pb2.LlmEvent) -> None:
        rid = msg.meta.response_id
        if self._stale(rid):
            DROPPED_FRAMES.labels("gateway", "stale_response").inc()
            return
        kind = msg.WhichOneof("event")
        turn_id = msg.meta.turn_id
        if kind == "started":
            previous = self.current_response
            if previous and previous != rid and self.agent_active():
                await self._interrupt("superseded")
            self.responses[rid] = _Response(rid, turn_id)
            for old in list(self.responses)[:-8]:
                del self.responses[old]
            self.current_response = rid
            await self.sink.send_event(
                {"type": "response_start", "response_id": rid, "turn_id": turn_id}
            )
            return
        resp = self.responses.get(rid)
        if resp is None:
            DROPPED_FRAMES.labels("gateway", "unknown_response").inc()
            return
        timeline = self._turn(resp.turn_id) if resp.turn_id else None
        if kind == "delta":
            if timeline:
                timeline.mark("first_token")
            await self.sink.send_event(
                {"type": "response_text", "response_id": rid, "delta": msg.delta.text}
            )
        elif kind == "sentence":
            if timeline:
                timeline.mark("first_sentence")
            resp.sentences[msg.sentence.index] = msg.sentence.text
            await self.sink.send_event(
                {
                    "type": "response_sentence",
                    "response_id": rid,
                    "index": msg.sentence.index,
                    "text": msg.sentence.text,
                }
            )
        elif kind == "ended":
            resp.text_done = True
            resp.end_session = msg.ended.end_session
            await self.sink.send_event(
                {
                    "type": "response_end",
                    "response_id": rid,
                    "status": _STATUS.get(msg.ended.status, "completed"),
                    "text": msg.ended.text,
                }
            )

    async def _on_audio_out(self, chunk: audio_pb2.AudioChunk) -> None:
        rid = chunk.meta.response_id
        resp = self.responses.get(rid)
        if self._stale(rid) or resp is None:
            DROPPED_FRAMES.labels("gateway", "stale_audio").inc()
            return
        if resp.turn_id:
            self._turn(resp.turn_id).mark("first_tts_audio")
        self._audio_out_context.setdefault(rid, otel_context.get_current())
        if chunk.pcm:
            pcm = chunk.pcm
            if chunk.sample_rate != self.output_rate:
                if resp.resampler is None or resp.in_rate != chunk.sample_rate:
                    resp.resampler = soxr.ResampleStream(
                        chunk.sample_rate, self.output_rate, 1, dtype="int16"
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
                await self.sink.send_event(
                    {"type": "tts_start", "response_id": rid, "sample_rate": self.output_rate}
                )
            self.playback.enqueue(rid, pcm)
        if chunk.end_of_response:
            if resp.resampler is not None:
                tail = resp.resampler.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
                self.playback.enqueue(rid, tail.astype("<i2").tobytes())
            self.playback.end(rid)

    async def _on_event(self, msg: events_pb2.Event) -> None:
        kind = msg.WhichOneof("event")
        if kind == "error":
            e = msg.error
            await self.sink.send_event(
                {
                    "type": "error",
                    "stage": e.stage,
                    "code": e.code,
                    "message": e.message,
                    "recoverable": e.recoverable,
                    "turn_id": msg.meta.turn_id,
                    "response_id": msg.meta.response_id,
                }
            )
        elif kind == "processing":
            await self.sink.send_event(
                {
                    "type": "processing",
                    "stage": msg.processing.stage,
                    "detail": msg.processing.detail,
                    "turn_id": msg.meta.turn_id,
                }
            )

    # --- playback callbacks -----------------------------------------------------
    async def _send_audio(self, pcm: bytes) -> None:
        if self._stale(self.playback.response_id):
            return
        await self.sink.send_audio(pcm)

    async def _on_first_frame(self, response_id: str) -> None:
        resp = self.responses.get(response_id)
        if resp is None or not resp.turn_id:
            return
        timeline = self._turn(resp.turn_id)
        timeline.mark("first_audio_sent")
        parent = self._audio_out_context.pop(response_id, None)
        if parent is not None:
            tracer.start_span(
                "gateway.first_audio_sent",
                context=parent,
                attributes={
                    "parley.session_id": self.session_id,
                    "parley.turn_id": resp.turn_id,
                    "parley.response_id": response_id,
                },
            ).end()
        if timeline.reported or timeline.end_of_speech is None:
            return
        timeline.reported = True
        hops = timeline.observe()
        log.info("turn %d timings (ms from end of speech): %s", resp.turn_id, hops)
        await self.sink.send_event(
            {
                "type": "turn_metrics",
                "turn_id": resp.turn_id,
                "response_id": response_id,
                "end_of_speech_ms": round(timeline.end_of_speech_ms, 1),
                "hops": hops,
            }
        )

    async def _on_playback_end(self, response_id: str) -> None:
        resp = self.responses.get(response_id)
        if resp is not None and resp.turn_id:
            self._end_turn_span(resp.turn_id)
        if self._stale(response_id):
            return
        await self.sink.send_event(
            {"type": "tts_end", "response_id": response_id, "status": "completed"}
        )
        if resp is not None and resp.end_session:
            # The goodbye has been heard: end the session politely.
            await self.sink.send_event({"type": "session_end", "reason": "the agent said goodbye"})
            await self.sink.close("goodbye")
