"""The gRPC Converse API and the standard gRPC health service (docs/grpc.md).

One Converse stream is one GatewaySession: a reader task drives the session
from the client's requests, the session's events come back through GrpcSink
onto a bounded queue, and the RPC's own task writes them out in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from parley.metrics import ERRORS
from parley.v1 import gateway_pb2, gateway_pb2_grpc
from services.gateway.audio_check import check_pcm16
from services.gateway.grpc_events import (
    check_rate,
    checked_settings,
    event_to_response,
)
from services.gateway.session import ClientError, GatewaySession

if TYPE_CHECKING:
    from services.gateway.service import Gateway

log = logging.getLogger("parley.gateway.grpc")

Request = gateway_pb2.ConverseRequest
Response = gateway_pb2.ConverseResponse

SERVICE_NAME = "parley.v1.Gateway"
# Events waiting for the client; audio is paced by the session, so a full
# queue (about ten seconds of it) means the client has stopped reading.
QUEUE_ITEMS = 256
STALL_TIMEOUT_S = 5.0
# A stream that sends no start this long after opening is refused.
START_TIMEOUT_S = 10.0
HEALTH_POLL_S = 0.25
ERROR_CODE_KEY = "parley-error-code"


@dataclass
class _Finish:
    """Ends the stream once everything queued before it is written."""

    code: grpc.StatusCode | None = None  # None: complete with OK
    details: str = ""
    error_code: str = ""  # the Parley code, in trailing metadata


class StartRefused(Exception):
    """The stream cannot begin: answered with a gRPC status, not an event."""

    def __init__(self, status: grpc.StatusCode, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class GrpcSink:
    """ClientSink onto the stream's bounded outgoing queue."""

    def __init__(self, on_stall: Any) -> None:
        self._queue: asyncio.Queue[Response | _Finish] = asyncio.Queue(QUEUE_ITEMS)
        self._on_stall = on_stall
        self.session: GatewaySession | None = None
        self.finished = False
        self.stalled = False

    async def send_event(self, event: dict[str, Any]) -> None:
        msg = event_to_response(event)
        if msg is not None:
            await self._put(msg)

    async def send_audio(self, pcm: bytes) -> None:
        s = self.session
        audio = Response.Audio(pcm=pcm)
        if s is not None:
            audio.response_id = s.playback.response_id
            audio.sample_rate = s.output_rate
        await self._put(Response(audio=audio))

    async def close(self, reason: str) -> None:
        log.info("stream ends: %s", reason)
        await self.finish()

    async def finish(
        self, code: grpc.StatusCode | None = None, details: str = "", error_code: str = ""
    ) -> None:
        if self.finished:
            return
        await self._put(_Finish(code, details, error_code))
        self.finished = True

    def stop(self) -> None:
        """The stream is gone: drop whatever the session still sends."""
        self.finished = True

    async def get(self) -> Response | _Finish:
        return await self._queue.get()

    async def _put(self, item: Response | _Finish) -> None:
        if self.finished:
            return
        try:
            async with asyncio.timeout(STALL_TIMEOUT_S):
                await self._queue.put(item)
        except TimeoutError:
            self.finished = self.stalled = True
            self._on_stall()


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


class ConverseServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, gateway: Gateway) -> None:
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
        if self.token and _bearer(context) != self.token:
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
        try:
            session, failures = await self.gateway.open_session(sink, "grpc", settings)
        except Exception as exc:
            log.warning("cannot open a gRPC session: %s", exc)
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "stage_unavailable", str(exc))
        reader: asyncio.Task[None] | None = None
        finish: _Finish | None = None
        try:
            await session.update_settings(None, in_rate, out_rate)
            sink.session = session
            await sink.send_event({"type": "session_started", **session.describe()})
            await session.report_placement(failures)
            reader = asyncio.create_task(self._read(context, session, sink))
            finish = await self._write(context, sink)
        except asyncio.CancelledError:
            if not sink.stalled or task is None:
                raise  # the client cancelled, or the server stops
            # Our own cancellation, which broke a write the client never took.
            task.uncancel()
            finish = _Finish(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the client stopped reading for {STALL_TIMEOUT_S:.0f} s",
                "slow_client",
            )
        finally:
            sink.stop()
            if reader is not None:
                reader.cancel()
            # Shielded: a second cancellation must not leave the session open.
            await asyncio.shield(self._close(session, reader))
        if finish.code is not None:
            # A client that reads nothing may never take the status either.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STALL_TIMEOUT_S):
                    await _abort(context, finish.code, finish.error_code, finish.details)

    async def _write(self, context: grpc.aio.ServicerContext, sink: GrpcSink) -> _Finish:
        """Writes the session's output in order until the stream is to end."""
        while True:
            item = await sink.get()
            if isinstance(item, _Finish):
                return item
            await context.write(item)

    async def _close(self, session: GatewaySession, reader: asyncio.Task[None] | None) -> None:
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        await self.gateway.close_session(session)

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
        if start.resume_session_id:
            raise StartRefused(
                grpc.StatusCode.NOT_FOUND,
                "unknown_session",
                f"session {start.resume_session_id!r} is not held by this gateway "
                "(sessions do not outlive their stream)",
            )
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
                try:
                    if not await self._dispatch(request, session, sink):
                        break
                except ClientError as exc:
                    ERRORS.labels("gateway", exc.code).inc()
                    log.info("client error %s: %s", exc.code, exc)
                    if not sink.finished:
                        await sink.send_event({"type": "error", **_error_fields(exc)})
            await sink.finish()
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:  # the stream broke under us
            log.info("gRPC stream ended: %s", exc.code())
            await sink.finish()
        except Exception as exc:
            log.exception("gRPC request handling failed")
            await sink.finish(grpc.StatusCode.INTERNAL, f"gateway error: {exc}", "internal")

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
            await sink.send_event({"type": "settings_updated", **session.describe()})
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
                    f"session {wanted!r} is not held by this gateway; "
                    f"this stream is session {session.session_id}",
                )
            raise ClientError(
                "bad_field", "start is only valid as the first message; use settings_update"
            )
        else:
            raise ClientError(
                "unknown_type", "a ConverseRequest with no request set (a newer client?)"
            )
        return True


def _error_fields(exc: ClientError) -> dict[str, Any]:
    return {"stage": "gateway", "code": exc.code, "message": str(exc), "recoverable": True}


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


class GrpcServer:
    """The grpc.aio server with Converse and health, and its health watcher."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.server = grpc.aio.server(
            options=[
                # Never share the port with another process by accident.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", gateway.settings.gateway.max_message_bytes),
            ]
        )
        self.health = HealthServicer()
        gateway_pb2_grpc.add_GatewayServicer_to_server(ConverseServicer(gateway), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc's word for a port in use
            bound = 0
        if not bound:
            raise OSError(f"cannot bind the gRPC port {address} (in use?); set gateway.grpc_port")
        await self.server.start()
        await self._set(False)
        self._watcher = asyncio.create_task(self._watch())
        return int(bound)

    async def _set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # "" is the whole server, as probes ask by default.
        for name in ("", "parley.gateway", SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch(self) -> None:
        """SERVING while the bus is connected and the gateway not draining."""
        serving: bool | None = None
        while True:
            now = self.gateway.bus.connected and not self.gateway.draining
            if now != serving:
                await self._set(now)
                serving = now
                log.info("gRPC health: %s", "SERVING" if now else "NOT_SERVING")
            await asyncio.sleep(HEALTH_POLL_S)

    async def stop(self, grace_s: float) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.health.enter_graceful_shutdown()
        # Streams still open after the grace period are cancelled; each
        # closes its session on the way out.
        await self.server.stop(grace_s)


async def start_grpc_server(gateway: Gateway, host: str, port: int) -> tuple[Any, int]:
    """Serve Converse and health on host:port; (server, bound port)."""
    server = GrpcServer(gateway)
    bound = await server.start(host, port)
    return server, bound


async def stop_grpc_server(server: Any, grace_s: float) -> None:
    await server.stop(grace_s)
