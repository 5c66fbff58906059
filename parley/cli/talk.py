"""`parley talk`: stream WAV files to the gateway in real time, like a device,
print what comes back and keep the spoken answer."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from parley.cli.wavio import read_wav, write_wav

FRAME_MS = 20
TRAILING_SILENCE_MS = 1500
HOP_LABELS = [
    ("final_transcript", "transcript"),
    ("first_token", "first token"),
    ("first_sentence", "first sentence"),
    ("first_tts_audio", "first tts audio"),
    ("first_audio_sent", "first audio"),
]


@dataclass
class Conversation:
    ws: ClientConnection
    as_json: bool = False
    output_rate: int = 16000
    audio: bytearray = field(default_factory=bytearray)
    events: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _open_line: bool = False

    def _print(self, text: str = "", end: str = "\n") -> None:
        if self._open_line and end == "\n" and text:
            print()
        print(text, end=end, flush=True)
        self._open_line = end != "\n"

    def show(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if self.as_json:
            print(json.dumps(event), flush=True)
            return
        if kind == "transcription" and event.get("final"):
            self._print(f"you: {event['text']}")
        elif kind == "transcription":
            self._print(f"you… {event['text']}")
        elif kind == "response_start":
            self._print("agent: ", end="")
        elif kind == "response_text":
            self._print(event["delta"], end="")
        elif kind == "response_end":
            status = event["status"]
            self._print("" if status == "completed" else f" [{status}]")
        elif kind == "turn_metrics":
            hops = event["hops"]
            parts = [f"{label} {hops[key]:.0f} ms" for key, label in HOP_LABELS if key in hops]
            self._print(f"[turn {event['turn_id']}] end of speech → " + " → ".join(parts))
        elif kind == "error":
            self._print()
            print(
                f"error [{event.get('stage')}] {event.get('code')}: {event.get('message')}",
                file=sys.stderr,
                flush=True,
            )
        elif kind == "playback_cleared":
            self._print("[interrupted]")

    async def read(self) -> None:
        async for message in self.ws:
            if isinstance(message, bytes):
                self.audio.extend(message)
                continue
            event = json.loads(message)
            self.events.append(event)
            if event["type"] == "error" and not event.get("recoverable", True):
                self.failed = True
            self.show(event)
            self._changed.set()

    async def wait(self, predicate: Any, timeout: float, since: int = 0) -> dict[str, Any]:
        """The first event from index `since` on that satisfies predicate."""
        checked = since
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events[checked:]:
                    if predicate(event):
                        return event
                checked = len(self.events)
                self._changed.clear()
                await self._changed.wait()

    async def stream(self, pcm: bytes) -> None:
        step = 16000 * 2 * FRAME_MS // 1000
        began = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), step)):
            await self.ws.send(pcm[i : i + step])
            delay = began + (n + 1) * FRAME_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def answer(self, mark: int, timeout: float) -> None:
        """Wait until the turn started after event `mark` is answered and spoken.
        An error of this turn ends the wait too."""
        started = await self.wait(
            lambda e: e["type"] in ("response_start", "error"), timeout, since=mark
        )
        if started["type"] == "error":
            self.failed = True
            return
        rid = started["response_id"]
        ended = await self.wait(
            lambda e: e.get("response_id") == rid and e["type"] == "response_end", timeout, mark
        )
        if ended["status"] == "failed":
            self.failed = True
            return
        if ended["status"] == "completed":
            await self.wait(
                lambda e: e.get("response_id") == rid and e["type"] == "tts_end", timeout, mark
            )


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
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        ws = await connect(url, additional_headers=headers, max_size=None)
    except OSError as exc:
        print(f"parley: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    async with ws:
        conv = Conversation(ws, as_json=as_json)
        reader = asyncio.create_task(conv.read())
        try:
            started = await conv.wait(lambda e: e["type"] == "session_started", 30)
            mark = len(conv.events)
            conv.output_rate = started["output_sample_rate"]
            if settings:
                await ws.send(json.dumps({"type": "settings_update", "settings": settings}))
                await conv.wait(
                    lambda e: e["type"] in ("settings_updated", "error"), 10, since=mark
                )
            if text:
                mark = len(conv.events)
                await ws.send(json.dumps({"type": "text_input", "text": text}))
                await conv.answer(mark, timeout)
            for path in wavs:
                mark = len(conv.events)
                pcm = read_wav(path) + bytes(16000 * 2 * TRAILING_SILENCE_MS // 1000)
                # A device keeps its microphone open: stream on while waiting.
                await conv.stream(pcm)
                await conv.answer(mark, timeout)
        except TimeoutError:
            print(f"parley: no complete answer within {timeout:.0f} s", file=sys.stderr)
            conv.failed = True
        finally:
            reader.cancel()
        if out:
            write_wav(out, bytes(conv.audio), conv.output_rate)
            seconds = len(conv.audio) / (conv.output_rate * 2)
            if not as_json:
                print(f"wrote {seconds:.1f} s of answer audio to {out}")
        return 1 if conv.failed else 0
