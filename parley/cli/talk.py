"""`parley talk`: stream WAV files to the gateway in real time, like a device,
print what comes back and keep the spoken answer.

The client pieces here (connection, microphone, turn tracking) are shared with
`parley bench`, so both measure the same thing the same way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from parley.cli.wavio import WavError, read_wav, write_wav

FRAME_MS = 20
TRAILING_SILENCE_MS = 1500
SESSION_START_TIMEOUT_S = 30.0
SETTINGS_TIMEOUT_S = 10.0
HOP_LABELS = [
    ("final_transcript", "transcript"),
    ("first_token", "first token"),
    ("first_sentence", "first sentence"),
    ("first_tts_audio", "first tts audio"),
    ("first_audio_sent", "first audio"),
]
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


async def open_connection(url: str, token: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        # max_size=None: answer audio frames are the gateway's to size.
        return await connect(url, additional_headers=headers, max_size=None)
    except InvalidURI:
        raise GatewayError(f"{url} is not a WebSocket URL (ws://host:port/v1/ws)") from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = " (wrong or missing --token)" if status in (401, 403) else ""
        raise GatewayError(f"{url} refused the connection: HTTP {status}{hint}") from None
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise GatewayError(f"cannot connect to {url}: {exc or type(exc).__name__}") from None


def close_reason(ws: ClientConnection) -> str:
    code, reason = ws.close_code, ws.close_reason
    if code is None:
        return "no close frame"
    return f"code {code}" + (f": {reason}" if reason else "")


class GatewayClient:
    """One WebSocket session: every event and audio byte that comes back, with
    the client's monotonic arrival time of each."""

    def __init__(
        self, ws: ClientConnection, url: str, on_event: Callable[[Event], None] | None = None
    ) -> None:
        self.ws = ws
        self.url = url
        self.on_event = on_event
        self.events: list[Event] = []
        self.arrivals: list[float] = []  # monotonic arrival of events[i]
        self.audio = bytearray()
        self.first_audio_at: float | None = None
        self.session: Event = {}
        self.closed: str | None = None  # why the connection ended, once it has
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls, url: str, token: str | None = None, on_event: Callable[[Event], None] | None = None
    ) -> GatewayClient:
        """Connect and wait for session_started; a GatewayError if the session
        does not start (no stage instance answered, the socket closed...)."""
        client = cls(await open_connection(url, token), url, on_event)
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
                    self.audio.extend(message)
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

    async def send_json(self, message: Event) -> None:
        try:
            await self.ws.send(json.dumps(message))
        except ConnectionClosed:
            raise GatewayError(self.closed or f"{self.url} closed the connection") from None

    async def close(self) -> None:
        if self.closed is None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps({"type": "session_end"}))
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


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
    a turn. Pacing follows a monotonic schedule (frame n at start + n * 20 ms),
    so a slow send is made up for rather than adding up to drift."""

    def __init__(
        self, ws: ClientConnection, rate: int, frame_ms: int = FRAME_MS, url: str = "the gateway"
    ) -> None:
        self.ws = ws
        self.url = url
        self.frame_ms = frame_ms
        self.frame_bytes = rate * 2 * frame_ms // 1000
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

    async def _run(self) -> None:
        silence = bytes(self.frame_bytes)
        began = time.monotonic()
        sent = 0
        try:
            while True:
                clip = self._queue[0] if self._queue else None
                if clip is None:
                    frame = silence
                else:
                    frame = clip.pcm[clip.offset : clip.offset + self.frame_bytes]
                    clip.offset += self.frame_bytes
                    # Pad the last frame so every frame is whole; it is silence.
                    frame += bytes(self.frame_bytes - len(frame))
                await self.ws.send(frame)
                if clip is not None:
                    clip.sent.append(time.monotonic())
                    if clip.offset >= len(clip.pcm):
                        self._queue.popleft()
                        if not clip.done.done():
                            clip.done.set_result(clip.sent)
                sent += 1
                delay = began + sent * self.frame_ms / 1000 - time.monotonic()
                # Behind schedule: catch up, but still let the reader run.
                await asyncio.sleep(max(delay, 0))
        except ConnectionClosed:
            error = GatewayError(
                f"{self.url} closed the connection while audio was streaming "
                f"({close_reason(self.ws)})"
            )
            for clip in self._queue:
                if not clip.done.done():
                    clip.done.set_exception(error)
            self._queue.clear()


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


class Printer:
    """Events as one human-readable line each; --json prints them raw."""

    GREY, RESET, CLEAR = "\x1b[2m", "\x1b[0m", "\r\x1b[2K"

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stdout.isatty()
        self.turns = 0
        self._open = ""  # "partial" or "agent" while a line is unfinished
        self._deferred: list[str] = []

    def _close_line(self) -> None:
        if self._open == "partial" and self.tty:
            print(self.CLEAR, end="")
        elif self._open:
            print()
        self._open = ""

    def line(self, text: str) -> None:
        self._close_line()
        print(text, flush=True)

    def note(self, text: str) -> None:
        """A message of the CLI's own: on stderr, so --json output stays JSON."""
        if not self.as_json:
            self._close_line()
        print(text, file=sys.stderr, flush=True)

    def show(self, event: Event) -> None:
        if self.as_json:
            print(json.dumps(event), flush=True)
            return
        kind = event["type"]
        if kind == "transcription":
            self._transcription(event)
        elif kind == "response_start":
            self._close_line()
            print("agent: ", end="", flush=True)
            self._open = "agent"
        elif kind == "response_text":
            if self._open != "agent":
                # Another line came between: go on with the answer on a new one.
                self._close_line()
                print("agent: …", end="")
                self._open = "agent"
            print(event.get("delta", ""), end="", flush=True)
        elif kind == "response_end":
            status = event.get("status")
            if self._open == "agent":
                print("" if status == "completed" else f" [{status}]", flush=True)
                self._open = ""
            for text in self._deferred:
                print(text, flush=True)
            self._deferred.clear()
        elif kind == "playback_cleared":
            self.line("[interrupted: playback cleared]")
        elif kind == "turn_metrics":
            self.turns += 1
            hops = event.get("hops", {})
            parts = [f"{label} {hops[key]:.0f} ms" for key, label in HOP_LABELS if key in hops]
            text = f"[turn {self.turns}] end of speech → " + " → ".join(parts)
            # First audio comes while the answer's text may still stream:
            # keep the agent's line whole and report the timings after it.
            if self._open == "agent":
                self._deferred.append(text)
            else:
                self.line(text)
        elif kind == "error":
            self._close_line()
            print(describe_error(event), file=sys.stderr, flush=True)

    def _transcription(self, event: Event) -> None:
        text = event.get("text", "")
        if event.get("final"):
            if self._open == "partial" and self.tty:
                print(self.CLEAR, end="")
                self._open = ""
            self.line(f"you: {text}" if text.strip() else "you: (no words recognized)")
        elif self.tty:
            if self._open not in ("", "partial"):
                self._close_line()
            print(f"{self.CLEAR}{self.GREY}you… {text}{self.RESET}", end="", flush=True)
            self._open = "partial"
        else:
            self.line(f"you… {text}")


def session_failure(events: list[Event]) -> TurnOutcome | None:
    """A stage no instance took: reported once, right after session_started,
    and no turn of the session can be answered."""
    for e in events:
        if e["type"] == "error" and e.get("code") == "stage_unavailable":
            return TurnOutcome(True, describe_error(e))
    return None


async def answer(client: GatewayClient, mark: int, timeout: float) -> TurnOutcome:
    """Wait for the turn whose events begin at index `mark` to be over."""
    try:
        return await client.wait(
            lambda: session_failure(client.events) or turn_outcome(client.events[mark:]), timeout
        )
    except TimeoutError:
        why = stalled_at(client.events[mark:])
        return TurnOutcome(True, f"no complete answer within {timeout:.0f} s: {why}")


async def talk(
    url: str,
    wavs: list[str],
    out: str | None,
    token: str | None,
    text: str | None,
    settings: dict[str, Any] | None,
    as_json: bool,
    timeout: float,
) -> int:
    printer = Printer(as_json)
    try:
        # Read every file first: a bad path should fail before any connecting.
        for path in wavs:
            read_wav(path)
    except (OSError, WavError) as exc:
        printer.note(f"parley: {exc}")
        return 1
    try:
        client = await GatewayClient.open(url, token, on_event=printer.show)
    except GatewayError as exc:
        printer.note(f"parley: {exc}")
        return 1
    mic = Microphone(client.ws, client.input_rate, url=url)
    failed = False
    try:
        if settings:
            mark = len(client.events)
            await client.send_json(_settings_message(settings))
            reply = await client.wait(
                lambda: client.find(
                    lambda e: e["type"] in ("settings_updated", "error"), since=mark
                ),
                SETTINGS_TIMEOUT_S,
            )
            if reply["type"] == "error":
                printer.note("parley: the gateway refused --settings")
                return 1
            mic = Microphone(client.ws, client.input_rate, url=url)
        if text:
            mark = len(client.events)
            await client.send_json({"type": "text_input", "text": text})
            failed |= _report(printer, await answer(client, mark, timeout), "--text")
        for path in wavs:
            mark = len(client.events)
            pcm = read_wav(path, client.input_rate)
            # The microphone goes on with silence after the clip, as long as
            # the answer takes; at least TRAILING_SILENCE_MS before waiting.
            await mic.play(pcm)
            await asyncio.sleep(TRAILING_SILENCE_MS / 1000)
            failed |= _report(printer, await answer(client, mark, timeout), path)
    except TimeoutError:
        printer.note(f"parley: {url} did not answer --settings within {SETTINGS_TIMEOUT_S:.0f} s")
        failed = True
    except (GatewayError, OSError) as exc:
        printer.note(f"parley: {exc}")
        failed = True
    finally:
        await mic.stop()
        await client.close()
        if out:
            write_wav(out, bytes(client.audio), client.output_rate)
            seconds = len(client.audio) / (client.output_rate * 2)
            printer.note(f"wrote {seconds:.1f} s of answer audio to {out}")
    return 1 if failed else 0


def _settings_message(settings: dict[str, Any]) -> Event:
    """--settings is the `settings` object; sample rates, which the protocol
    keeps beside it, are lifted out so one flag can carry everything."""
    body = dict(settings)
    message: Event = {"type": "settings_update"}
    for key in ("input_sample_rate", "output_sample_rate"):
        if key in body:
            message[key] = body.pop(key)
    if body:
        message["settings"] = body
    return message


def _report(printer: Printer, outcome: TurnOutcome, what: str) -> bool:
    if outcome.failed:
        printer.note(f"parley: {what}: {outcome.reason}")
    return outcome.failed
