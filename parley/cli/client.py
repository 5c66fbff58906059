"""A client of Parley's WebSocket protocol (docs/protocol.md), the one used by
`parley talk`, `parley bench` and the tests: a session that records every
event and audio frame coming back with its arrival time, a microphone that
streams like a device, and the rules for when a turn is over.

It lives with the CLI, not in the runtime the services import: no service
talks to a gateway as a client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

FRAME_MS = 20
SESSION_START_TIMEOUT_S = 30.0
SETTINGS_TIMEOUT_S = 10.0
# Errors after which the turn can get no answer at all: nothing downstream of
# them will run, so waiting for response_end would only run into the timeout.
TURN_ENDING_STAGES = ("vad", "asr")

T = TypeVar("T")
Event = dict[str, Any]


class GatewayError(Exception):
    """The gateway could not be reached, refused us, or went away. The message
    names the URL, since that is the first thing to check."""


def describe_error(event: Event) -> str:
    return f"error [{event.get('stage')}] {event.get('code')}: {event.get('message')}"


def close_reason(ws: ClientConnection) -> str:
    code, reason = ws.close_code, ws.close_reason
    if code is None:
        return "no close frame"
    return f"code {code}" + (f": {reason}" if reason else "")


async def paced(items: Iterable[T], period_ms: float) -> AsyncGenerator[T, None]:
    """`items` one per period, item n at start + n * period, like audio that
    is sent as it is recorded; ends once the last item's period is over.
    Pacing follows that monotonic schedule, so a slow send is made up for
    rather than adding up to drift, and a consumer behind schedule still
    yields to the event loop (the reader must keep up)."""
    began = time.monotonic()
    for n, item in enumerate(items, 1):
        yield item
        await asyncio.sleep(max(began + n * period_ms / 1000 - time.monotonic(), 0))


class ParleyClient:
    """One session: every event and audio frame that comes back, with the
    client's monotonic arrival time of each. Events are kept as the gateway
    sent them (`parley talk --json` prints them), their arrival times beside
    them (`arrivals[i]` for `events[i]`, or arrived_at)."""

    def __init__(
        self, ws: ClientConnection, url: str, on_event: Callable[[Event], None] | None = None
    ) -> None:
        self.ws = ws
        self.url = url
        self.on_event = on_event
        self.events: list[Event] = []
        self.arrivals: list[float] = []
        self.audio = bytearray()
        self.frames: list[tuple[float, int]] = []  # (arrival, bytes) of each audio frame
        self.first_audio_at: float | None = None
        self.session: Event = {}
        self.closed: str | None = None  # why the connection ended, once it has
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> ParleyClient:
        """Connect and wait for session_started. A refused or failed connection
        raises what websockets raises (open_session explains it instead); a
        session that does not start (no stage instance answered, the socket
        closed...) raises GatewayError."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        # max_size=None: answer audio frames are the gateway's to size.
        ws = await connect(url, additional_headers=headers, max_size=None)
        client = cls(ws, url, on_event)
        try:
            found = await client.wait(
                lambda: client.find(lambda e: e["type"] in ("session_started", "error")),
                SESSION_START_TIMEOUT_S,
            )
        except TimeoutError:
            await client.close()
            raise GatewayError(
                f"{url}: no session_started within {SESSION_START_TIMEOUT_S:.0f} s"
            ) from None
        except GatewayError:
            await client.close()
            raise
        if found["type"] == "error":
            await client.close()
            raise GatewayError(f"{url}: the session did not start: {describe_error(found)}")
        client.session = found
        return client

    @property
    def input_rate(self) -> int:
        return int(self.session.get("input_sample_rate", 16000))

    @property
    def output_rate(self) -> int:
        return int(self.session.get("output_sample_rate", 16000))

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    if self.first_audio_at is None:
                        self.first_audio_at = now
                    self.frames.append((now, len(message)))
                    self.audio.extend(message)
                    self._changed.set()
                    continue
                try:
                    event = json.loads(message)
                except json.JSONDecodeError:
                    print(
                        f"parley: ignoring a text frame that is not JSON: {message[:80]!r}",
                        file=sys.stderr,
                    )
                    continue
                if not isinstance(event, dict) or "type" not in event:
                    continue
                self.events.append(event)
                self.arrivals.append(now)
                if event["type"] == "settings_updated":
                    self.session = {**self.session, **event}
                if self.on_event is not None:
                    self.on_event(event)
                self._changed.set()
            self.closed = f"{self.url} closed the connection ({close_reason(self.ws)})"
        except ConnectionClosed:
            self.closed = f"{self.url} dropped the connection ({close_reason(self.ws)})"
        finally:
            if self.closed is None:
                self.closed = f"connection to {self.url} ended"
            self._changed.set()

    def find(self, predicate: Callable[[Event], bool], since: int = 0) -> Event | None:
        return next((e for e in self.events[since:] if predicate(e)), None)

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e["type"] == kind]

    def arrived_at(self, event: Event) -> float:
        """The monotonic time this event (this very object) arrived."""
        return next(t for e, t in zip(self.events, self.arrivals, strict=True) if e is event)

    async def wait(self, check: Callable[[], T | None], timeout: float) -> T:
        """Until check() returns something; TimeoutError after timeout seconds,
        GatewayError if the connection ends first."""
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                found = check()
                if found is not None:
                    return found
                if self.closed is not None:
                    raise GatewayError(self.closed)
                await self._changed.wait()

    async def wait_for(self, kind: str, timeout: float = 60, after: int = 0, **match: Any) -> Event:
        """The first event of that type (from index `after`) whose fields match."""
        try:
            return await self.wait(
                lambda: self.find(
                    lambda e: e["type"] == kind and all(e.get(k) == v for k, v in match.items()),
                    since=after,
                ),
                timeout,
            )
        except GatewayError as exc:
            # What did come is what tells why the awaited event did not.
            raise GatewayError(f"{exc} before {kind}: {self.events}") from None

    async def send_json(self, message: Event) -> None:
        try:
            await self.ws.send(json.dumps(message))
        except ConnectionClosed:
            raise GatewayError(self.closed or f"{self.url} closed the connection") from None

    async def update_settings(self, message: Event, timeout: float = SETTINGS_TIMEOUT_S) -> Event:
        """Send a settings_update; its answer, settings_updated or an error.
        TimeoutError when neither comes in time."""
        mark = len(self.events)
        await self.send_json({**message, "type": "settings_update"})
        return await self.wait(
            lambda: self.find(lambda e: e["type"] in ("settings_updated", "error"), since=mark),
            timeout,
        )

    async def stream(self, pcm: bytes, frame_ms: int = FRAME_MS) -> float:
        """Send audio in frames paced in real time, then stop (Microphone goes
        on with silence); returns the monotonic time its last frame's audio
        ended."""
        step = self.input_rate * 2 * frame_ms // 1000
        frames = (pcm[i : i + step] for i in range(0, len(pcm), step))
        async with contextlib.aclosing(paced(frames, frame_ms)) as schedule:
            async for frame in schedule:
                await self.ws.send(frame)
        return time.monotonic()

    async def close(self, end_session: bool = True) -> None:
        """Say session_end first unless told not to (a device that just
        vanishes), then close the socket."""
        if end_session and self.closed is None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps({"type": "session_end"}))
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def open_session(
    url: str, token: str | None = None, on_event: Callable[[Event], None] | None = None
) -> ParleyClient:
    """ParleyClient.open for people: every failure a GatewayError that says
    what to check."""
    try:
        return await ParleyClient.open(url, token, on_event)
    except InvalidURI:
        raise GatewayError(f"{url} is not a WebSocket URL (ws://host:port/v1/ws)") from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = " (wrong or missing --token)" if status in (401, 403) else ""
        raise GatewayError(f"{url} refused the connection: HTTP {status}{hint}") from None
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise GatewayError(f"cannot connect to {url}: {exc or type(exc).__name__}") from None


@dataclass
class _Clip:
    pcm: bytes
    done: asyncio.Future[list[float]]
    offset: int = 0
    sent: list[float] = field(default_factory=list)


class Microphone:
    """Streams like a device with its microphone open: queued clips go out in
    real-time frames, and silence between and after them, because a real
    device never stops sending and the server's VAD needs that silence to end
    a turn."""

    def __init__(
        self,
        ws: ClientConnection,
        rate: int,
        frame_ms: int = FRAME_MS,
        url: str = "the gateway",
        encode: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.ws = ws
        self.url = url
        self.frame_ms = frame_ms
        self.frame_bytes = rate * 2 * frame_ms // 1000
        # What goes on the wire for one frame of PCM: the PCM itself here, an
        # Opus packet in its binary framing for a device that speaks Xiaozhi.
        self.encode = encode
        self._queue: deque[_Clip] = deque()
        self._task: asyncio.Task[None] | None = None

    async def play(self, pcm: bytes) -> list[float]:
        """Queue audio; returns the monotonic time each of its frames was sent."""
        clip = _Clip(pcm, asyncio.get_running_loop().create_future())
        self._queue.append(clip)
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return await clip.done

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _frames(self) -> Iterator[tuple[bytes, _Clip | None]]:
        """Forever: the next frame of the first queued clip, or silence."""
        silence = bytes(self.frame_bytes)
        while True:
            clip = self._queue[0] if self._queue else None
            if clip is None:
                yield silence, None
                continue
            frame = clip.pcm[clip.offset : clip.offset + self.frame_bytes]
            clip.offset += self.frame_bytes
            # Pad the last frame so every frame is whole; it is silence.
            yield frame + bytes(self.frame_bytes - len(frame)), clip

    async def _run(self) -> None:
        try:
            async with contextlib.aclosing(paced(self._frames(), self.frame_ms)) as schedule:
                async for frame, clip in schedule:
                    await self.ws.send(frame if self.encode is None else self.encode(frame))
                    if clip is None:
                        continue
                    clip.sent.append(time.monotonic())
                    if clip.offset >= len(clip.pcm):
                        self._queue.popleft()
                        if not clip.done.done():
                            clip.done.set_result(clip.sent)
        except ConnectionClosed:
            error = GatewayError(
                f"{self.url} closed the connection while audio was streaming "
                f"({close_reason(self.ws)})"
            )
            for clip in self._queue:
                if not clip.done.done():
                    clip.done.set_exception(error)
            self._queue.clear()


# --- when a turn is over ----------------------------------------------------------
@dataclass
class TurnOutcome:
    failed: bool = False
    reason: str = ""


def _last_index(events: list[Event], kind: str) -> int:
    return next((i for i in range(len(events) - 1, -1, -1) if events[i]["type"] == kind), -1)


def turn_outcome(events: list[Event]) -> TurnOutcome | None:
    """Whether a turn is over, from the events since it began: None while an
    answer is still to come or still playing.

    Over means the latest answer has both its text (response_end) and its audio
    (tts_end) complete, or it failed or was cancelled; or the turn got an
    error that leaves nothing to answer (vad, asr, a session-wide failure); or
    the last utterance was transcribed as no words, which gets no answer."""
    failure = ""
    for e in events:
        if e["type"] != "error":
            continue
        if (
            e.get("stage") in TURN_ENDING_STAGES
            or e.get("code") == "stage_unavailable"
            or e.get("recoverable") is False
        ):
            return TurnOutcome(True, describe_error(e))
        failure = failure or describe_error(e)

    # A second utterance may start inside the same clip; its answer is the one.
    started, stopped = (
        _last_index(events, "user_speech_start"),
        _last_index(events, "user_speech_end"),
    )
    if started > stopped:
        return None
    heard_turn = events[stopped].get("turn_id") if stopped >= 0 else None
    start = next((e for e in reversed(events) if e["type"] == "response_start"), None)
    if heard_turn is not None and (start is None or start.get("turn_id") != heard_turn):
        final = next(
            (
                e
                for e in events
                if e["type"] == "transcription"
                and e.get("final")
                and e.get("turn_id") == heard_turn
            ),
            None,
        )
        if final is None or final.get("text", "").strip():
            return None  # still transcribing, or its answer is on its way
        if start is None:
            return TurnOutcome(True, "speech was heard but no words were recognized")
    if start is None:
        return None

    rid = start.get("response_id")
    mine = [e for e in events if e.get("response_id") == rid]
    end = next((e for e in mine if e["type"] == "response_end"), None)
    if end is None:
        return None
    status = end.get("status")
    if status == "completed" and not any(e["type"] == "tts_end" for e in mine):
        return None
    if status == "failed":
        return TurnOutcome(True, failure or "the answer failed")
    if failure:
        return TurnOutcome(True, failure)
    tts_failed = next(
        (e for e in mine if e["type"] == "tts_end" and e.get("status") == "failed"), None
    )
    if tts_failed is not None:
        return TurnOutcome(True, "speech synthesis of the answer failed")
    return TurnOutcome()


def stalled_at(events: list[Event]) -> str:
    """What a turn that timed out was still waiting for, to say so."""
    kinds = {e["type"] for e in events}
    if "user_speech_start" not in kinds and "response_start" not in kinds:
        return "the gateway heard no speech"
    if "user_speech_start" in kinds and "user_speech_end" not in kinds:
        return "the end of speech was never detected"
    if "user_speech_end" in kinds and not any(
        e["type"] == "transcription" and e.get("final") for e in events
    ):
        return "no final transcript arrived"
    if "response_start" not in kinds:
        return "no answer started"
    if "response_end" not in kinds:
        return "the answer's text did not finish"
    if "tts_start" not in kinds:
        return "no answer audio arrived"
    return "the answer's audio did not finish (no tts_end)"


def session_failure(events: list[Event]) -> TurnOutcome | None:
    """A stage no instance took: reported once, right after session_started,
    and no turn of the session can be answered."""
    for e in events:
        if e["type"] == "error" and e.get("code") == "stage_unavailable":
            return TurnOutcome(True, describe_error(e))
    return None


async def answer(client: ParleyClient, mark: int, timeout: float) -> TurnOutcome:
    """Wait for the turn whose events begin at index `mark` to be over."""
    try:
        return await client.wait(
            lambda: session_failure(client.events) or turn_outcome(client.events[mark:]), timeout
        )
    except TimeoutError:
        why = stalled_at(client.events[mark:])
        return TurnOutcome(True, f"no complete answer within {timeout:.0f} s: {why}")
