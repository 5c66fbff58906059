"""Typed protobuf publish/subscribe over NATS with trace context in headers.

Subjects are keyed by session: parley.v1.s.<session_id>.<stream>.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context

from parley.config import NatsSettings
from parley.logs import session_id_var
from parley.metrics import BUS_LATENCY_SECONDS, ERRORS
from parley.tasks import TaskSet
from parley.tracing import extract_context, inject_headers

log = logging.getLogger("parley.bus")

PREFIX = "parley.v1"
STREAMS = ("audio.in", "vad", "asr", "llm", "audio.out", "control", "events")
SENT_AT_HEADER = "Parley-Sent-At"

M = TypeVar("M", bound=Message)
Handler = Callable[[M], Awaitable[None]]


def session_subject(session_id: str, stream: str) -> str:
    return f"{PREFIX}.s.{session_id}.{stream}"


def place_subject(stage: str, instance_id: str = "") -> str:
    """The stage's queue group subject, or one instance's own."""
    return f"{PREFIX}.place.{stage}.{instance_id}" if instance_id else f"{PREFIX}.place.{stage}"


def heartbeat_subject(stage: str) -> str:
    return f"{PREFIX}.heartbeat.{stage}"


def release_subject(stage: str) -> str:
    return f"{PREFIX}.release.{stage}"


TOOLS_LIST = f"{PREFIX}.tools.list"
TOOLS_CALL = f"{PREFIX}.tools.call"
# Request/reply with the gateway holding a session, for the client's own tools
# (a device's MCP tools, a Realtime client's functions).
CLIENT_TOOLS_LIST = "client_tools.list"
CLIENT_TOOLS_CALL = "client_tools.call"


def split_session_subject(subject: str) -> tuple[str, str] | None:
    """(session_id, stream) of a session subject, or None."""
    parts = subject.split(".", 4)
    if len(parts) == 5 and parts[0] == "parley" and parts[1] == "v1" and parts[2] == "s":
        return parts[3], parts[4]
    return None


class DecodeFailure(Exception):
    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"cannot decode message on {subject}: {reason}")
        self.subject = subject


class PayloadTooLarge(Exception):
    """A message over the bus's limit (nats.max_payload_bytes), refused before
    it is sent, with what it was."""

    def __init__(self, subject: str, size: int, limit: int) -> None:
        super().__init__(f"message on {subject} is {size} bytes, over the bus limit of {limit}")
        self.subject = subject
        self.size = size
        self.limit = limit


DecodeErrorHook = Callable[[str, str], Awaitable[None]]


def client_tls(settings: NatsSettings) -> ssl.SSLContext | None:
    """TLS to the NATS server when any nats.tls_* is set (a tls:// URL alone
    gets nats-py's default context)."""
    if not (settings.tls_ca or settings.tls_cert):
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca)
    if settings.tls_cert:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


class Bus:
    """One NATS connection for a process; reconnects by itself."""

    def __init__(self, nc: NatsClient, service: str, max_payload_bytes: int = 0) -> None:
        self.nc = nc
        self.service = service
        self.on_decode_error: DecodeErrorHook | None = None
        # nats.max_payload_bytes (0: the server's own limit alone).
        self.max_payload_bytes = max_payload_bytes

    @property
    def max_payload(self) -> int:
        """The largest message this connection sends: the configured limit,
        or the server's if that is lower (nats-py refuses beyond it anyway)."""
        server = int(getattr(self.nc, "max_payload", 0) or 0)
        limits = [n for n in (self.max_payload_bytes, server) if n > 0]
        return min(limits) if limits else 1_048_576

    def _check_size(self, subject: str, data: bytes) -> None:
        if len(data) > self.max_payload:
            ERRORS.labels(self.service, "payload_too_large").inc()
            raise PayloadTooLarge(subject, len(data), self.max_payload)

    @classmethod
    async def connect(cls, settings: NatsSettings, service: str) -> Bus:
        async def error_cb(exc: Exception) -> None:
            log.warning("nats error: %s", exc)

        async def disconnected_cb() -> None:
            log.warning("disconnected from nats, reconnecting")

        async def reconnected_cb() -> None:
            log.info("reconnected to nats")

        nc = await nats.connect(
            servers=settings.url,
            name=f"parley-{service}",
            # Its own credentials and TLS (docs/security.md); None: the URL's.
            user=settings.user,
            password=settings.password,
            user_credentials=settings.creds,
            tls=client_tls(settings),
            connect_timeout=int(settings.connect_timeout_s),
            reconnect_time_wait=int(settings.reconnect_wait_s),
            max_reconnect_attempts=settings.max_reconnect_attempts,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
        )
        return cls(nc, service, settings.max_payload_bytes)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def publish(self, subject: str, msg: Message) -> None:
        headers = inject_headers({SENT_AT_HEADER: f"{time.time():.6f}"})
        data = msg.SerializeToString()
        self._check_size(subject, data)
        await self.nc.publish(subject, data, headers=headers)

    async def request(self, subject: str, msg: Message, reply_type: type[M], timeout: float) -> M:
        headers = inject_headers({SENT_AT_HEADER: f"{time.time():.6f}"})
        data = msg.SerializeToString()
        self._check_size(subject, data)
        reply = await self.nc.request(subject, data, timeout=timeout, headers=headers)
        return _decode(reply_type, reply)

    async def subscribe(
        self,
        subject: str,
        msg_type: type[M],
        handler: Handler[M],
        queue: str = "",
    ) -> Subscription:
        """Decode each message as msg_type and run handler in its trace context.

        A message that cannot be decoded is counted, logged with its subject and
        reported through on_decode_error; the subscription carries on.
        """
        target = split_session_subject(subject)
        stream = target[1] if target else subject.rsplit(".", 1)[-1]

        async def on_msg(raw: Msg) -> None:
            sent_at = (raw.headers or {}).get(SENT_AT_HEADER)
            if sent_at:
                try:
                    BUS_LATENCY_SECONDS.labels(stream).observe(
                        max(0.0, time.time() - float(sent_at))
                    )
                except ValueError:
                    pass
            try:
                msg = _decode(msg_type, raw)
            except DecodeFailure as exc:
                ERRORS.labels(self.service, "bad_bus_message").inc()
                log.warning("%s", exc)
                if self.on_decode_error is not None:
                    await self.on_decode_error(raw.subject, str(exc))
                return
            token = otel_context.attach(extract_context(raw.headers))
            session = split_session_subject(raw.subject)
            session_token = session_id_var.set(session[0]) if session else None
            try:
                await handler(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                ERRORS.labels(self.service, "handler_failed").inc()
                log.exception("handler for %s failed", raw.subject)
            finally:
                if session_token is not None:
                    session_id_var.reset(session_token)
                otel_context.detach(token)

        return await self.nc.subscribe(subject, queue=queue, cb=on_msg)

    async def serve(
        self,
        subject: str,
        request_type: type[M],
        handler: Callable[[M], Awaitable[Message]],
        *,
        bad_request: Callable[[str], Message],
        queue: str = "",
        tasks: TaskSet | None = None,
    ) -> Subscription:
        """The answering side of request/reply: each request decoded, handled
        in the caller's trace context, and answered with what handler returns.
        A request that cannot be decoded is still answered (bad_request's
        reply, with the reason), so the caller learns why instead of waiting
        for its timeout; so is one whose handler fails. With `tasks`, each
        request runs as its own task: nats-py runs one subscription's
        callbacks one after another, and a slow one must not hold up others."""

        async def answer(raw: Msg) -> None:
            request = request_type()
            try:
                request.ParseFromString(raw.data)
            except (DecodeError, ValueError) as exc:
                ERRORS.labels(self.service, "bad_bus_message").inc()
                log.warning("malformed request on %s: %s", raw.subject, exc)
                await self._answer(raw, bad_request(f"malformed request: {exc or 'cannot decode'}"))
                return
            token = otel_context.attach(extract_context(raw.headers))
            session_token = session_id_var.set(getattr(request, "session_id", "") or "-")
            try:
                reply = await handler(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ERRORS.labels(self.service, "handler_failed").inc()
                log.exception("request on %s failed", raw.subject)
                reply = bad_request(f"{type(exc).__name__}: {exc}")
            finally:
                session_id_var.reset(session_token)
                otel_context.detach(token)
            await self._answer(raw, reply)

        async def on_msg(raw: Msg) -> None:
            if tasks is None:
                await answer(raw)
            else:
                tasks.spawn(answer(raw))

        return await self.nc.subscribe(subject, queue=queue, cb=on_msg)

    async def _answer(self, raw: Msg, reply: Message) -> None:
        if not raw.reply:
            return  # published, not requested: nobody to answer
        try:
            await self.reply(raw, reply)
        except Exception as exc:  # the connection is gone; the caller times out
            log.warning("cannot answer on %s: %s", raw.subject, exc)

    async def reply(self, raw: Msg, msg: Message) -> None:
        if raw.reply:
            await self.nc.publish(raw.reply, msg.SerializeToString(), headers=inject_headers())

    async def close(self) -> None:
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception:  # already closing, or the server is gone
            await self.nc.close()


class Subscriptions:
    """A session's subscriptions, ended together."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    def add(self, *subs: Subscription) -> None:
        self._subs.extend(subs)

    async def close(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be gone
                pass


def _decode(msg_type: type[M], raw: Msg) -> M:
    msg = msg_type()
    try:
        msg.ParseFromString(raw.data)
    except (DecodeError, ValueError) as exc:
        raise DecodeFailure(raw.subject, f"not a {msg_type.DESCRIPTOR.full_name}: {exc}") from None
    return msg


def now_ms() -> float:
    return time.time() * 1000.0
