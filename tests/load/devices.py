"""The simulated devices. Each opens one session, keeps its microphone open
as a device does, asks its questions one after another (a pause to think
between them), and on a barge-in turn speaks its next question over the
answer. Every turn becomes one record: what happened and when, timed on the
device's clock from the true end of its speech.

- `parley`: the Parley WebSocket through the shared client (parley.cli.client),
  PCM in 20 ms frames; barge-in by speaking over the answer (server VAD).
- `xiaozhi`: the firmware's way (tests/support/xiaozhi_device.py): OTA check,
  hello, `listen start` in auto mode, Opus in 60 ms frames, the uplink
  paused while the board speaks; barge-in as the firmware does it on a wake
  word: `abort`, then `listen start` and the next question."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus

from parley.cli.bench import end_of_speech_frame, turn_result
from parley.cli.client import (
    FRAME_MS,
    GatewayError,
    Microphone,
    ParleyClient,
    answer,
    open_session,
    session_failure,
    turn_outcome,
)
from parley.wavio import silence
from services.gateway.protocols.opus_codec import OpusEncoder
from services.gateway.protocols.xiaozhi import framing
from tests.load.voices import RATE, Clip
from tests.support.xiaozhi_device import XiaozhiDevice, ota_check

PROTOCOLS = ("parley", "xiaozhi")
LEAD_MS = 300
XIAOZHI_FRAME_MS = 60  # the firmware's default uplink frame
# Outcomes of a turn.
OK, INTERRUPTED, FAILED, REFUSED = "ok", "interrupted", "failed", "refused"


@dataclass
class TurnPlan:
    question: str
    # Speak the next question over this answer, this long after its first audio.
    barge_after_s: float | None = None
    # Think time after the answer (before the next question).
    pause_s: float = 1.0


@dataclass
class DevicePlan:
    index: int
    protocol: str
    voice: str
    start_delay_s: float
    turns: list[TurnPlan]

    @property
    def name(self) -> str:
        return f"{self.protocol}-{self.index}"


@dataclass
class Target:
    """Where the devices connect: the gateway's WebSocket and HTTP (OTA) ports."""

    ws_port: int
    http_port: int

    @property
    def parley_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/v1/ws"

    @property
    def xiaozhi_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/xiaozhi/v1/"


@dataclass
class Device:
    """One device's run: its plan, the clips it speaks and the records of its
    turns so far (a step that runs out of time keeps what was recorded)."""

    plan: DevicePlan
    clips: dict[tuple[str, str], Clip]
    target: Target
    turn_timeout_s: float
    records: list[dict[str, Any]] = field(default_factory=list)

    def clip(self, question: str) -> Clip:
        return self.clips[(self.plan.voice, question)]

    def record(self, turn: int, question: str, outcome: str, **fields: Any) -> dict[str, Any]:
        rec = {
            "device": self.plan.name,
            "protocol": self.plan.protocol,
            "voice": self.plan.voice,
            "turn": turn,
            "question": question,
            "outcome": outcome,
            "errors": [],
            **fields,
        }
        self.records.append(rec)
        return rec

    def refuse_all(self, why: str) -> None:
        """The session did not open: every planned turn is refused (the
        gateway said server_busy / 503) or failed (anything else)."""
        busy = "server_busy" in why or "503" in why or "RESOURCE_EXHAUSTED" in why
        for n, turn in enumerate(self.plan.turns, 1):
            self.record(n, turn.question, REFUSED if busy else FAILED, errors=[why])

    async def run(self) -> None:
        await asyncio.sleep(self.plan.start_delay_s)
        if self.plan.protocol == "parley":
            await self._run_parley()
        else:
            await self._run_xiaozhi()

    # --- Parley WebSocket -------------------------------------------------------
    async def _run_parley(self) -> None:
        url = self.target.parley_url
        try:
            client = await open_session(url)
        except GatewayError as exc:
            self.refuse_all(str(exc))
            return
        mic = Microphone(client.ws, client.input_rate, FRAME_MS, url)
        try:
            barged: tuple[dict[str, Any], int] | None = None  # (record, its mark)
            for n, turn in enumerate(self.plan.turns, 1):
                clip = self.clip(turn.question)
                mark = len(client.events)
                sent = await mic.play(silence(LEAD_MS, RATE) + clip.pcm)
                spoke_at = sent[min(LEAD_MS // FRAME_MS, len(sent) - 1)]
                end_at = sent[end_of_speech_frame(LEAD_MS + clip.true_end_ms, FRAME_MS)]
                if barged is not None:
                    self._parley_barge_result(client, *barged, spoke_at)
                    barged = None
                if turn.barge_after_s is not None:
                    rec = await self._parley_until_audio(client, n, turn, mark, end_at)
                    if rec["outcome"] == OK:
                        barged = (rec, mark)
                        await asyncio.sleep(turn.barge_after_s)
                    continue
                outcome = await answer(client, mark, self.turn_timeout_s)
                result = turn_result(client, mark, end_at)
                if outcome.failed and outcome.reason not in result["errors"]:
                    result["errors"].append(outcome.reason)
                self.record(n, turn.question, FAILED if outcome.failed else OK, **result)
                if client.closed is not None:
                    break
                await asyncio.sleep(turn.pause_s)
        finally:
            await mic.stop()
            await client.close()

    async def _parley_until_audio(
        self, client: ParleyClient, n: int, turn: TurnPlan, mark: int, end_at: float
    ) -> dict[str, Any]:
        """A turn to be spoken over: until its answer's first audio."""

        def audio_or_over() -> object | None:
            # Cheap, since it runs on every frame that arrives: audio after
            # a tts_start of this turn's.
            tts_at = next(
                (
                    at
                    for e, at in zip(client.events[mark:], client.arrivals[mark:], strict=True)
                    if e["type"] == "tts_start"
                ),
                None,
            )
            if tts_at is not None and client.frames and client.frames[-1][0] >= tts_at:
                return True
            return session_failure(client.events) or turn_outcome(client.events[mark:])

        why = ""
        try:
            await client.wait(audio_or_over, self.turn_timeout_s)
        except TimeoutError:
            why = f"no answer audio within {self.turn_timeout_s:.0f} s"
        except GatewayError as exc:
            why = str(exc)
        result = turn_result(client, mark, end_at)
        if "first_audio" not in result["hops_ms"]:
            outcome = turn_outcome(client.events[mark:])
            result["errors"].append(why or (outcome.reason if outcome else "") or "no answer audio")
            return self.record(n, turn.question, FAILED, **result)
        return self.record(n, turn.question, OK, barge_in=True, **result)

    @staticmethod
    def _parley_barge_result(
        client: ParleyClient, rec: dict[str, Any], mark: int, spoke_at: float
    ) -> None:
        """Was the answer spoken over cut? Looked at once the next question has
        been said: a playback_cleared for it, and how long after the new
        speech began."""
        rid = rec.get("response_id")
        for event, at in zip(client.events[mark:], client.arrivals[mark:], strict=True):
            if event.get("response_id") != rid:
                continue
            if event["type"] == "turn_metrics":
                # It comes after the first audio frame, so after the record.
                rec["server_hops_ms"] = event.get("hops", {})
            elif event["type"] == "playback_cleared" and "barge_in_ms" not in rec:
                rec["outcome"] = INTERRUPTED
                rec["barge_in_ms"] = round((at - spoke_at) * 1000, 1)
        if "barge_in_ms" not in rec:
            # It ended before the new speech started: nothing to interrupt.
            rec["barge_in_missed"] = True

    # --- Xiaozhi --------------------------------------------------------------------
    async def _run_xiaozhi(self) -> None:
        device_id = f"02:00:00:00:{self.plan.index // 256:02x}:{self.plan.index % 256:02x}"
        try:
            await ota_check(self.target.http_port, device_id)
            device = await XiaozhiDevice.connect(self.target.xiaozhi_url, device_id)
            await device.wait_hello(timeout=30.0)
        except InvalidStatus as exc:
            self.refuse_all(f"HTTP {exc.response.status_code} at the WebSocket upgrade")
            return
        except (OSError, TimeoutError, ConnectionError, ConnectionClosed) as exc:
            self.refuse_all(f"the board could not connect: {exc or type(exc).__name__}")
            return
        encoder = OpusEncoder(RATE, XIAOZHI_FRAME_MS)

        def opus(pcm: bytes) -> bytes:
            # One 60 ms frame in, one packet out: libopus through PyAV holds
            # none back (measured: a packet for every frame from the first).
            (packet,) = encoder.encode(pcm)
            return framing.build(device.version, packet, 0)

        mic = Microphone(device.ws, RATE, XIAOZHI_FRAME_MS, self.target.xiaozhi_url, encode=opus)
        try:
            pause_s = 0.0
            for n, turn in enumerate(self.plan.turns, 1):
                if not await self._xiaozhi_turn(device, mic, n, turn, pause_s):
                    break
                # After a barge-in the next question follows the wake word at once.
                pause_s = 0.0 if turn.barge_after_s is not None else turn.pause_s
        finally:
            await mic.stop()
            await device.close()

    async def _xiaozhi_turn(
        self, device: XiaozhiDevice, mic: Microphone, n: int, turn: TurnPlan, pause_s: float
    ) -> bool:
        """One turn: listening again after the last answer (the firmware's
        auto mode), the user's pause to think, the question. False when the
        connection is gone."""
        clip = self.clip(turn.question)
        mark, audio_mark = len(device.messages), len(device.audio)
        await device.send_json({"type": "listen", "state": "start", "mode": "auto"})
        lead_ms = pause_s * 1000 + LEAD_MS
        sent = await mic.play(silence(lead_ms, RATE) + clip.pcm)
        end_at = sent[end_of_speech_frame(lead_ms + clip.true_end_ms, XIAOZHI_FRAME_MS)]
        timeout = self.turn_timeout_s
        result: dict[str, Any] = {"hops_ms": {}, "errors": []}

        def since(kind: str, **match: Any) -> dict[str, Any] | None:
            return next(
                (
                    m
                    for m in device.messages[mark:]
                    if m.get("type") == kind and all(m.get(k) == v for k, v in match.items())
                ),
                None,
            )

        async def until(check: Callable[[], Any]) -> Any:
            """check() once it is something, or an alert, a closed socket, the timeout."""
            async with asyncio.timeout(timeout):
                while True:
                    found = check()
                    if found:
                        return found
                    alert = since("alert")
                    if alert is not None:
                        raise GatewayError(f"alert: {alert.get('message')}")
                    if device.closed.is_set():
                        raise GatewayError("the gateway closed the connection")
                    await asyncio.sleep(0.01)

        def first_audio() -> float | None:
            start = since("tts", state="start")
            if start is None:
                return None
            return next((at for at, _, _ in device.audio[audio_mark:] if at >= start["_at"]), None)

        try:
            await until(lambda: since("tts", state="start"))
            # Auto mode: the board stops sending while it speaks.
            await mic.stop()
            await until(first_audio)
            if turn.barge_after_s is not None:
                await asyncio.sleep(turn.barge_after_s)
                stop = since("tts", state="stop")
                aborted_at = time.monotonic()
                await device.send_json({"type": "abort", "reason": "wake_word_detected"})
                if stop is None:
                    stop = await until(lambda: since("tts", state="stop"))
                    result["barge_in_ms"] = round((stop["_at"] - aborted_at) * 1000, 1)
                else:
                    result["barge_in_missed"] = True
                result["barge_in"] = True
            else:
                await until(lambda: since("tts", state="stop"))
        except (TimeoutError, GatewayError) as exc:
            await mic.stop()
            why = str(exc) if isinstance(exc, GatewayError) else f"no answer within {timeout:.0f} s"
            result["errors"].append(why)
        self._xiaozhi_hops(device, mark, end_at, result, first_audio())
        if result["errors"]:
            outcome = FAILED
        elif "barge_in_ms" in result:
            outcome = INTERRUPTED
        else:
            outcome = OK
        self.record(n, turn.question, outcome, **result)
        return not device.closed.is_set()

    @staticmethod
    def _xiaozhi_hops(
        device: XiaozhiDevice,
        mark: int,
        end_at: float,
        result: dict[str, Any],
        first_audio_at: float | None,
    ) -> None:
        """What a board can time: the transcript (stt), the first sentence's
        emotion, tts start and the first Opus packet."""
        marks = {
            "final_transcript": lambda m: m.get("type") == "stt",
            "first_sentence": lambda m: (
                m.get("type") == "llm" and m.get("emotion") not in (None, "thinking")
            ),
            "first_tts_audio": lambda m: m.get("type") == "tts" and m.get("state") == "start",
        }
        for hop, matches in marks.items():
            found = next((m for m in device.messages[mark:] if matches(m)), None)
            if found is not None:
                result["hops_ms"][hop] = round((found["_at"] - end_at) * 1000, 1)
        if first_audio_at is not None:
            result["hops_ms"]["first_audio"] = round((first_audio_at - end_at) * 1000, 1)
        stt = next((m for m in device.messages[mark:] if m.get("type") == "stt"), None)
        result["transcript"] = stt.get("text") if stt else None
        result["answer"] = " ".join(
            m.get("text", "")
            for m in device.messages[mark:]
            if m.get("type") == "tts" and m.get("state") == "sentence_start"
        )
