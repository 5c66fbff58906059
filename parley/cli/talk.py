"""`parley talk`: stream WAV files to the gateway in real time, like a device,
print what comes back and keep the spoken answer.

The client pieces (connection, microphone, turn tracking) are parley.cli.client,
shared with `parley bench` and the tests, so all measure the same thing the
same way."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from parley.cli.client import (
    SETTINGS_TIMEOUT_S,
    Event,
    GatewayError,
    Microphone,
    TurnOutcome,
    answer,
    describe_error,
    open_session,
)
from parley.wavio import WavError, read_wav, write_wav

TRAILING_SILENCE_MS = 1500
HOP_LABELS = [
    ("final_transcript", "transcript"),
    ("first_token", "first token"),
    ("first_sentence", "first sentence"),
    ("first_tts_audio", "first tts audio"),
    ("first_audio_sent", "first audio"),
]


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
        client = await open_session(url, token, on_event=printer.show)
    except GatewayError as exc:
        printer.note(f"parley: {exc}")
        return 1
    mic = Microphone(client.ws, client.input_rate, url=url)
    failed = False
    try:
        if settings:
            reply = await client.update_settings(_settings_message(settings))
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
