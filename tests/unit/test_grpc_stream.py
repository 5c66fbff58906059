"""A Converse stream's lifetime, without NATS or a network: which session it
drives, and whether its end closes the session (end, half-close) or leaves it
for a resume (the stream broke off), with fakes for the RPC context and the
session registry."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from parley.config import ParleySettings
from parley.v1 import gateway_pb2
from services.gateway.core import events as ev
from services.gateway.core.errors import ClientError
from services.gateway.core.sink import ClientSink
from services.gateway.protocols.grpc.converse import ConverseServicer
from tests.support.event_sequences import SETTINGS

Request = gateway_pb2.ConverseRequest
Response = gateway_pb2.ConverseResponse


class Aborted(Exception):
    def __init__(self, status: grpc.StatusCode, code: str) -> None:
        super().__init__(status, code)
        self.status, self.code = status, code


class FakeContext:
    """The server side of one stream: requests the test feeds, what the
    servicer writes, and the status it ends with."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.written: list[Response] = []
        self.changed = asyncio.Event()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def read(self) -> Any:
        return await self.requests.get()

    async def write(self, message: Response) -> None:
        self.written.append(message)
        self.changed.set()

    async def abort(self, status: grpc.StatusCode, message: str, trailing_metadata: Any) -> None:
        raise Aborted(status, dict(trailing_metadata)["parley-error-code"])

    def of(self, kind: str) -> list[Any]:
        return [getattr(m, kind) for m in self.written if m.WhichOneof("event") == kind]

    async def wait_for(self, kind: str, count: int = 1) -> Any:
        async with asyncio.timeout(2):
            while len(self.of(kind)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.of(kind)[count - 1]


@dataclass
class FakeSession:
    session_id: str
    sink: ClientSink
    resume_token: str = "tok"
    closed: bool = False
    texts: list[str] = field(default_factory=list)

    def info(self) -> ev.SessionInfo:
        return ev.SessionInfo(self.session_id, 16000, 16000, SETTINGS, self.resume_token)

    async def update_settings(self, settings: Any, input_rate: Any, output_rate: Any) -> None:
        pass

    async def report_placement(self, failures: Any) -> None:
        pass

    async def text_input(self, text: str) -> None:
        self.texts.append(text)


@dataclass
class FakeRegistry:
    sessions: dict[str, FakeSession] = field(default_factory=dict)
    closed: list[str] = field(default_factory=list)
    detached: list[tuple[str, float]] = field(default_factory=list)

    async def open(self, sink: ClientSink, protocol: str, settings: Any = None) -> Any:
        session = FakeSession(f"s{len(self.sessions) + 1}", sink)
        self.sessions[session.session_id] = session
        return session, []

    async def resume(self, session_id: str, token: str, sink: ClientSink) -> FakeSession:
        session = self.sessions.get(session_id)
        if session is None or session.closed or token != session.resume_token:
            raise ClientError("unknown_session", f"session {session_id!r} cannot be resumed")
        session.sink = sink
        return session

    async def close(self, session: FakeSession, reason: str = "client closed") -> None:
        session.closed = True
        self.closed.append(session.session_id)

    async def detach(self, session: FakeSession, grace_s: float, draining: bool) -> None:
        self.detached.append((session.session_id, grace_s))


@dataclass
class FakeHost:
    settings: ParleySettings = field(
        default_factory=lambda: ParleySettings(gateway={"resume_grace_s": 12.0})
    )
    sessions: FakeRegistry = field(default_factory=FakeRegistry)
    draining: bool = False


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


def converse(host: FakeHost, start: Any) -> tuple[FakeContext, asyncio.Task[None]]:
    context = FakeContext()
    context.requests.put_nowait(Request(start=start))
    servicer = ConverseServicer(host)  # type: ignore[arg-type]
    return context, asyncio.create_task(servicer.Converse(None, context))  # type: ignore[arg-type]


async def test_end_closes_the_session(host: FakeHost) -> None:
    context, rpc = converse(host, Request.Start())
    started = await context.wait_for("session_started")
    assert started.session_id == "s1" and started.resume_token == "tok" and not started.resumed
    context.requests.put_nowait(Request(end=Request.End(reason="bye")))
    await asyncio.wait_for(rpc, 2)
    assert host.sessions.closed == ["s1"] and not host.sessions.detached


async def test_a_half_close_closes_the_session(host: FakeHost) -> None:
    context, rpc = converse(host, Request.Start())
    await context.wait_for("session_started")
    context.requests.put_nowait(grpc.aio.EOF)
    await asyncio.wait_for(rpc, 2)
    assert host.sessions.closed == ["s1"] and not host.sessions.detached


async def test_a_stream_that_breaks_off_leaves_its_session_for_a_resume(host: FakeHost) -> None:
    context, rpc = converse(host, Request.Start())
    await context.wait_for("session_started")
    rpc.cancel()  # how grpc.aio tells a handler that the client cancelled or is gone
    with pytest.raises(asyncio.CancelledError):
        await rpc
    assert host.sessions.detached == [("s1", 12.0)] and not host.sessions.closed

    # A new stream with the id and the token takes it over.
    again, rpc2 = converse(host, Request.Start(resume_session_id="s1", resume_token="tok"))
    started = await again.wait_for("session_started")
    assert started.session_id == "s1" and started.resumed
    again.requests.put_nowait(Request(text_input=Request.TextInput(text="What did I ask?")))
    again.requests.put_nowait(Request(end=Request.End()))
    await asyncio.wait_for(rpc2, 2)
    assert host.sessions.sessions["s1"].texts == ["What did I ask?"]
    assert host.sessions.closed == ["s1"]


@pytest.mark.parametrize(
    "start",
    [
        Request.Start(resume_session_id="s1", resume_token="wrong"),
        Request.Start(resume_session_id="s1"),
        Request.Start(resume_session_id="no-such", resume_token="tok"),
    ],
)
async def test_a_resume_that_cannot_be_is_not_found(host: FakeHost, start: Any) -> None:
    context, rpc = converse(host, Request.Start())
    await context.wait_for("session_started")
    rpc.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rpc
    _, refused = converse(host, start)
    with pytest.raises(Aborted) as err:
        await asyncio.wait_for(refused, 2)
    assert (err.value.status, err.value.code) == (grpc.StatusCode.NOT_FOUND, "unknown_session")


async def test_a_stream_whose_session_was_resumed_elsewhere_lets_it_go(host: FakeHost) -> None:
    # The first stream's client is gone, but the server has not noticed yet.
    old, old_rpc = converse(host, Request.Start())
    await old.wait_for("session_started")
    new, new_rpc = converse(host, Request.Start(resume_session_id="s1", resume_token="tok"))
    assert (await new.wait_for("session_started")).resumed

    # Whatever still arrives on the old stream no longer drives the session,
    # and its end neither closes nor detaches it.
    old.requests.put_nowait(Request(text_input=Request.TextInput(text="stale")))
    with pytest.raises(Aborted) as err:
        await asyncio.wait_for(old_rpc, 2)
    assert (err.value.status, err.value.code) == (grpc.StatusCode.ABORTED, "session_resumed")
    session = host.sessions.sessions["s1"]
    assert not session.texts and not session.closed and not host.sessions.detached

    new.requests.put_nowait(Request(end=Request.End()))
    await asyncio.wait_for(new_rpc, 2)
    assert host.sessions.closed == ["s1"]
