"""One Converse stream (docs/grpc.md): the client's requests drive a
GatewaySession, its output comes back through GrpcSink.

A reader task dispatches the requests; the RPC's own task writes the sink's
queue out until the stream is to end. A stream that ends with `end` or a
half-close closes its session; one that breaks off (the client cancelled, the
connection dropped) leaves it detached for gateway.resume_grace_s, and a new
stream whose start carries its id and resume token takes it over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, NoReturn

import grpc

from parley.logs import BoundedLog
from parley.metrics import ERRORS
from parley.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc
from services.gateway.core import events as ev
from services.gateway.core.audio_check import check_pcm16
from services.gateway.core.errors import ClientError, ServerBusy
from services.gateway.core.placement import PlacementError
from services.gateway.core.session import GatewaySession
from services.gateway.core.settings import checked_settings
from services.gateway.protocols.endpoint import GatewayHost, token_matches
from services.gateway.protocols.grpc.serializer import check_rate
from services.gateway.protocols.grpc.sink import STALL_TIMEOUT_S, Finish, GrpcSink

log = logging.getLogger("parley.gateway.grpc")
_bad_input = BoundedLog(log)

Request = gateway_pb2.ConverseRequest

# A stream that sends no start this long after opening is refused.
START_TIMEOUT_S = 10.0
ERROR_CODE_KEY = "parley-error-code"


class StartRefused(Exception):
    """The stream cannot begin: answered with a gRPC status, not an event."""

    def __init__(self, status: grpc.StatusCode, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


def _owns(session: GatewaySession, sink: GrpcSink) -> bool:
    """False once a newer stream has resumed the session: this one may not
    have noticed yet that its client is gone, and must leave it alone."""
    return session.sink is sink


class ConverseServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, gateway: GatewayHost) -> None:
        self.gateway = gateway
        g = gateway.settings.gateway
        self.max_frame_bytes = g.max_frame_bytes
        self.rates = list(g.input_sample_rates)
        self.token = g.auth_token

    async def Converse(  # noqa: N802 (the RPC's name)
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        # Reads go through context.read(), writes through context.write(), so
        # every await of the stream is in this frame and cleanup is certain.
        del request_iterator
        if self.token and not token_matches(_bearer(context), self.token):
            await _abort(
                context, grpc.StatusCode.UNAUTHENTICATED, "unauthorized", "missing or wrong token"
            )
        if self.gateway.draining:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "draining", "gateway draining")
        try:
            start = await self._read_start(context)
            settings = checked_settings(start.settings) if start.HasField("settings") else None
            in_rate = check_rate(start.input_sample_rate, self.rates, "input_sample_rate")
            out_rate = check_rate(start.output_sample_rate, self.rates, "output_sample_rate")
        except StartRefused as exc:
            await _abort(context, exc.status, exc.code, str(exc))
        except ClientError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.code, str(exc))

        task = asyncio.current_task()
        sink = GrpcSink(on_stall=lambda: _stalled(task))
        resumed = bool(start.resume_session_id)
        session, failures = await self._begin(context, start, settings, sink)
        reader: asyncio.Task[None] | None = None
        finish: Finish | None = None
        lost = False
        try:
            # A new session got its settings when it was placed; a resumed one
            # takes the start's on top of its own.
            await session.update_settings(settings if resumed else None, in_rate, out_rate)
            await sink.send_event(ev.SessionStarted(session.info(), resumed=resumed))
            await session.report_placement(failures)
            reader = asyncio.create_task(self._read(context, session, sink))
            finish = await self._write(context, sink)
        except asyncio.CancelledError:
            if not sink.stalled or task is None:
                # The client cancelled or its connection dropped (or the server
                # stops, and then the draining gateway closes the session).
                lost = True
                raise
            # Our own cancellation, which broke a write the client never took.
            task.uncancel()
            finish = Finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the client stopped reading for {STALL_TIMEOUT_S:.0f} s",
                "slow_client",
            )
        finally:
            sink.stop()
            if reader is not None:
                reader.cancel()
            # Shielded: a second cancellation must not leave the session open.
            lost = lost or (finish is not None and finish.lost)
            await asyncio.shield(self._release(session, sink, reader, lost))
        if finish.code is not None:
            # A client that reads nothing may never take the status either.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STALL_TIMEOUT_S):
                    await _abort(context, finish.code, finish.error_code, finish.details)

    async def _begin(
        self,
        context: grpc.aio.ServicerContext,
        start: Request.Start,
        settings: common_pb2.Settings | None,
        sink: GrpcSink,
    ) -> tuple[GatewaySession, list[PlacementError]]:
        """The session this stream drives: the detached one it resumes, or a
        new one placed on every stage."""
        sessions = self.gateway.sessions
        if start.resume_session_id:
            try:
                session = await sessions.resume(start.resume_session_id, start.resume_token, sink)
            except ClientError as exc:
                await _abort(context, grpc.StatusCode.NOT_FOUND, exc.code, str(exc))
            return session, []
        try:
            return await sessions.open(sink, "grpc", settings)
        except ServerBusy as exc:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, exc.code, str(exc))
        except Exception as exc:
            log.warning("cannot open a gRPC session: %s", exc)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "stage_unavailable", str(exc))

    async def _write(self, context: grpc.aio.ServicerContext, sink: GrpcSink) -> Finish:
        """Writes the session's output in order until the stream is to end."""
        while True:
            item = await sink.get()
            if isinstance(item, Finish):
                return item
            await context.write(item)

    async def _release(
        self,
        session: GatewaySession,
        sink: GrpcSink,
        reader: asyncio.Task[None] | None,
        lost: bool,
    ) -> None:
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        if not _owns(session, sink):
            return  # a newer stream has it now
        g = self.gateway
        if lost and not session.closed:
            await g.sessions.detach(session, g.settings.gateway.resume_grace_s, g.draining)
        else:
            await g.sessions.close(session)

    async def _read_start(self, context: grpc.aio.ServicerContext) -> Request.Start:
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                first = await context.read()
        except TimeoutError:
            raise StartRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_field",
                f"no start message within {START_TIMEOUT_S:.0f} s",
            ) from None
        if first is grpc.aio.EOF:
            raise StartRefused(
                grpc.StatusCode.INVALID_ARGUMENT, "bad_field", "the stream ended before start"
            )
        kind = first.WhichOneof("request")
        if kind != "start":
            raise StartRefused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad_field",
                f"the first ConverseRequest must be start, not {kind or 'empty'}",
            )
        start: Request.Start = first.start
        return start

    async def _read(
        self, context: grpc.aio.ServicerContext, session: GatewaySession, sink: GrpcSink
    ) -> None:
        """Drives the session until end, half-close or the stream's end."""
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                if not _owns(session, sink):
                    await sink.finish(
                        Finish(
                            grpc.StatusCode.ABORTED,
                            "the session was resumed by another stream",
                            "session_resumed",
                        )
                    )
                    return
                try:
                    if not await self._dispatch(request, session, sink):
                        break
                except ClientError as exc:
                    ERRORS.labels("gateway", exc.code).inc()
                    _bad_input.info("client error %s: %s", exc.code, exc)
                    if not sink.finished:
                        await sink.send_event(ev.Error("gateway", exc.code, str(exc), True))
            await sink.finish(Finish())
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:  # the stream broke under us
            log.info("gRPC stream ended: %s", exc.code())
            await sink.finish(Finish(lost=True))
        except Exception as exc:
            log.exception("gRPC request handling failed")
            await sink.finish(Finish(grpc.StatusCode.INTERNAL, f"gateway error: {exc}", "internal"))

    async def _dispatch(self, request: Request, session: GatewaySession, sink: GrpcSink) -> bool:
        """Handles one request; False ends the session."""
        kind = request.WhichOneof("request")
        if kind == "audio":
            pcm = request.audio.pcm
            check_pcm16(pcm, self.max_frame_bytes)
            await session.push_audio(pcm)
        elif kind == "text_input":
            text = request.text_input.text.strip()
            if not text:
                raise ClientError("bad_field", "text_input needs a non-empty text")
            await session.text_input(text)
        elif kind == "commit":
            await session.commit()
        elif kind == "interrupt":
            await session.interrupt()
        elif kind == "settings_update":
            update = request.settings_update
            settings = checked_settings(update.settings) if update.HasField("settings") else None
            # 0 keeps the rate in force; update_settings checks the others.
            await session.update_settings(
                settings,
                update.input_sample_rate or None,
                update.output_sample_rate or None,
            )
            await sink.send_event(ev.SettingsUpdated(session.info()))
        elif kind == "playback_mark":
            mark = request.playback_mark
            if not mark.response_id or not math.isfinite(mark.played_ms) or mark.played_ms < 0:
                raise ClientError(
                    "bad_field", "playback_mark needs a response_id and played_ms >= 0"
                )
            await session.playback_mark(mark.response_id, mark.played_ms)
        elif kind == "end":
            log.info("client ended the session: %s", request.end.reason or "end")
            return False
        elif kind == "start":
            wanted = request.start.resume_session_id
            if wanted and wanted != session.session_id:
                raise ClientError(
                    "unknown_session",
                    f"session {wanted!r} is not this stream's (session {session.session_id}); "
                    "resume a session with the start of a new stream",
                )
            raise ClientError(
                "bad_field", "start is only valid as the first message; use settings_update"
            )
        else:
            raise ClientError(
                "unknown_type", "a ConverseRequest with no request set (a newer client?)"
            )
        return True


def _stalled(task: asyncio.Task[Any] | None) -> None:
    log.warning("gRPC client stopped reading for %.1f s; ending its stream", STALL_TIMEOUT_S)
    if task is not None:
        task.cancel()


async def _abort(
    context: grpc.aio.ServicerContext, status: grpc.StatusCode, code: str, message: str
) -> NoReturn:
    """Ends the RPC with a status; the Parley error code rides in trailing metadata."""
    ERRORS.labels("gateway", code).inc()
    log.info("gRPC stream refused (%s): %s", status.name, message)
    await context.abort(status, message, trailing_metadata=((ERROR_CODE_KEY, code),))
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker
