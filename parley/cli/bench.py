"""`parley bench`: spoken questions through the gateway, one session each,
timed on the client's own clock from the true end of speech in the input
audio, into a JSON report.

The server's turn_metrics start from where its VAD placed the end of speech;
this starts from where the speech really ends in the audio that was sent, so
it also counts what the server cannot see of itself: VAD's end-of-turn wait,
network and client-side delays."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from parley.cli.client import (
    FRAME_MS,
    GatewayError,
    Microphone,
    ParleyClient,
    answer,
    describe_error,
    open_session,
)
from parley.speech import synthesize_speech
from parley.wavio import last_voiced_ms, silence

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "Can you tell me a short joke?",
    "What is the tallest mountain in the world?",
    "How far away is the moon?",
    "What do bees make?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Why do cats purr?",
    "What is the largest ocean on Earth?",
    "How many days are in a leap year?",
    "What is the speed of light?",
    "Which planet is closest to the sun?",
    "How do airplanes stay in the air?",
    "What is the chemical symbol for gold?",
    "How many minutes are in an hour?",
    "What language is spoken in Brazil?",
    "Why is the ocean salty?",
    "What is the freezing point of water in Fahrenheit?",
]
# Not timed: the first turn of a fresh stack may load or compile things.
WARMUP_QUESTION = "Hello, can you hear me?"
# Client-side hops, in the order they happen; the first is extra to the
# server's set and shows how much of the wait is VAD deciding the turn ended.
HOPS = ["vad_end", "final_transcript", "first_token", "first_sentence", "first_tts_audio"]
HOPS_WITH_AUDIO = [*HOPS, "first_audio"]
SERVER_HOPS = [
    "final_transcript",
    "first_token",
    "first_sentence",
    "first_tts_audio",
    "first_audio_sent",
]
# Which event's arrival marks each client hop (first of its kind in the turn).
HOP_EVENTS = {
    "vad_end": lambda e: e["type"] == "user_speech_end",
    "final_transcript": lambda e: e["type"] == "transcription" and bool(e.get("final")),
    "first_token": lambda e: e["type"] == "response_text",
    "first_sentence": lambda e: e["type"] == "response_sentence",
    "first_tts_audio": lambda e: e["type"] == "tts_start",
}
SERVICES = ("gateway", "vad", "asr", "llm", "tts", "tools")
RATE = 16000
LEAD_MS = 300
TAIL_MS = 1500


# --- pure helpers -------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1), linear between closest ranks; nan for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q * 100))


def summary(values: list[float]) -> dict[str, float]:
    """p50, p95 and mean (ms, 0.1 precision) and how many; {} for no values."""
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 0.5), 1),
        "p95": round(percentile(values, 0.95), 1),
        "mean": round(statistics.fmean(values), 1),
        "n": len(values),
    }


def end_of_speech_frame(true_end_ms: float, frame_ms: int = FRAME_MS) -> int:
    """Index of the frame that carries the last voiced sample: the speech has
    truly ended, as far as the server can know, once that frame is sent."""
    return max(0, math.ceil(true_end_ms / frame_ms) - 1)


def pick_questions(count: int) -> list[str]:
    """count questions, all distinct while the list lasts, then round again."""
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]


def parse_pids(spec: str) -> dict[str, list[int]]:
    """`gateway=12,asr=34,asr=35` -> {"gateway": [12], "asr": [34, 35]}."""
    pids: dict[str, list[int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, pid = item.partition("=")
        if not sep or not pid.strip().isdigit() or not name.strip():
            raise ValueError(f"--pids: {item!r} is not service=pid")
        pids.setdefault(name.strip(), []).append(int(pid))
    return pids


# --- peak memory ----------------------------------------------------------------
def _service_processes() -> dict[int, tuple[str, int]]:
    """pid -> (service, parent pid) of every `python -m services.<name>` here."""
    found: dict[int, tuple[str, int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        for flag, module in zip(args, args[1:], strict=False):
            match = re.fullmatch(r"services\.(\w+)", module)
            if flag == "-m" and match and match.group(1) in SERVICES:
                ppid = re.search(r"^PPid:\s+(\d+)", status, re.M)
                found[int(proc.name)] = (match.group(1), int(ppid.group(1)) if ppid else 0)
                break
    return found


def _listening_pids(port: int) -> set[int]:
    """Processes with a TCP socket listening on that port (their own, so
    readable without privileges)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return set()
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    pids.add(int(proc.name))
                    break
            except OSError:
                continue
    return pids


def discover_services(url: str) -> tuple[dict[str, list[int]], str]:
    """The services of the stack behind `url`, and how they were found.

    Several stacks may run on one machine (tests, a dev stack), so when the
    gateway's process can be found by its listening port, only it and its
    siblings (the services one `parley up` or test harness started) count;
    otherwise every Parley service process here does."""
    processes = _service_processes()
    port = urlsplit(url).port or 80
    gateways = _listening_pids(port) & set(processes)
    parents = {processes[pid][1] for pid in gateways}
    stack = {pid for pid, (_, ppid) in processes.items() if pid in gateways or ppid in parents}
    scope = f"the stack of the gateway on port {port}"
    if len(stack) <= len(gateways):
        stack, scope = set(processes), "every Parley service process on this machine"
    by_service: dict[str, list[int]] = {}
    for pid in sorted(stack):
        by_service.setdefault(processes[pid][0], []).append(pid)
    return by_service, scope


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM, the peak resident set of a process so far, in MB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    return round(int(match.group(1)) / 1024, 1) if match else None


def peak_memory_mb(pids: dict[str, list[int]]) -> dict[str, float]:
    """Per service, the largest peak of its processes; `total` sums them all."""
    peaks: dict[str, float] = {}
    total = 0.0
    for name, group in pids.items():
        values = [v for v in map(peak_rss_mb, group) if v is not None]
        if values:
            peaks[name] = max(values)
            total += sum(values)
    if peaks:
        peaks["total"] = round(total, 1)
    return peaks


# --- one turn's timings -----------------------------------------------------------
def turn_result(client: ParleyClient, mark: int, end_of_speech_at: float) -> dict[str, Any]:
    """A turn's timings, words and errors from what came back since event
    `mark`: each client hop and the first answer audio in ms after
    end_of_speech_at (the monotonic moment the speech truly ended), the
    server's turn_metrics, transcript, answer text.

    Only the answered turn counts (the last utterance VAD ended since mark,
    and the answer to it): in a session that goes on, what is left of an
    earlier answer that was spoken over (its last deltas, its cancellation)
    arrives after mark too, and is not this turn's."""
    pairs = list(zip(client.events[mark:], client.arrivals[mark:], strict=True))
    ends = [e for e, _ in pairs if e["type"] == "user_speech_end"]
    turn_id = ends[-1].get("turn_id") if ends else None
    response_id = next(
        (
            e.get("response_id")
            for e, _ in reversed(pairs)
            if e["type"] == "response_start" and (turn_id is None or e.get("turn_id") == turn_id)
        ),
        None,
    )

    def of_turn(event: dict[str, Any]) -> bool:
        if "response_id" in event:
            return event.get("response_id") == response_id
        return turn_id is None or event.get("turn_id", turn_id) == turn_id

    mine = [(e, t) for e, t in pairs if e["type"] != "error" and of_turn(e)]
    hops: dict[str, float] = {}
    for hop, matches in HOP_EVENTS.items():
        at = next((t for e, t in mine if matches(e)), None)
        if at is not None:
            hops[hop] = round((at - end_of_speech_at) * 1000, 1)
    # Audio belongs to the response of the last tts_start: this answer's
    # audio is what came after its own.
    tts_at = next((t for e, t in mine if e["type"] == "tts_start"), None)
    first_audio = next((at for at, _ in client.frames if tts_at is not None and at >= tts_at), None)
    if first_audio is not None:
        hops["first_audio"] = round((first_audio - end_of_speech_at) * 1000, 1)
    events = [e for e, _ in mine]
    result: dict[str, Any] = {"hops_ms": hops, "turn_id": turn_id, "response_id": response_id}
    result["transcript"] = next(
        (e.get("text", "") for e in events if HOP_EVENTS["final_transcript"](e)), None
    )
    result["answer"] = "".join(e.get("delta", "") for e in events if e["type"] == "response_text")
    metrics = next((e for e in events if e["type"] == "turn_metrics"), None)
    if metrics is not None:
        result["server_hops_ms"] = metrics.get("hops", {})
        # Where the server's VAD put the end of speech, against where it is.
        result["server_end_of_speech_ms"] = metrics.get("end_of_speech_ms")
    result["errors"] = [describe_error(e) for e, _ in pairs if e["type"] == "error"]
    return result


# --- one question -----------------------------------------------------------------
async def one_turn(
    url: str,
    token: str | None,
    question: str,
    timeout: float,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ask one question in a fresh session (with these session settings);
    its timings, words and errors."""
    result: dict[str, Any] = {"question": question, "errors": []}
    client = await open_session(url, token)
    mic = Microphone(client.ws, client.input_rate, FRAME_MS, url)
    try:
        if settings:
            result["settings"] = settings
            await client.update_settings({"settings": settings})
        speech = synthesize_speech(question, client.input_rate)
        true_end_ms = LEAD_MS + last_voiced_ms(speech, client.input_rate)
        result["speech_ms"] = round(len(speech) / (client.input_rate * 2) * 1000, 1)
        result["true_end_of_speech_ms"] = true_end_ms
        pcm = silence(LEAD_MS, client.input_rate) + speech + silence(TAIL_MS, client.input_rate)
        mark = len(client.events)
        sent = await mic.play(pcm)
        end_of_speech_at = sent[end_of_speech_frame(true_end_ms)]
        # The microphone keeps sending silence while the answer plays.
        outcome = await answer(client, mark, timeout)
    finally:
        await mic.stop()
        await client.close()

    result.update(turn_result(client, mark, end_of_speech_at))
    result["answer_audio_ms"] = round(len(client.audio) / (client.output_rate * 2) * 1000, 1)
    if outcome.failed and outcome.reason not in result["errors"]:
        result["errors"].append(outcome.reason)
    return result


# --- the run ------------------------------------------------------------------------
def build_report(
    url: str, turns: list[dict[str, Any]], memory: dict[str, float], memory_scope: str
) -> dict[str, Any]:
    def values(key: str, hop: str) -> list[float]:
        return [t[key][hop] for t in turns if hop in t.get(key, {})]

    return {
        "questions": len(turns),
        "url": url,
        "hops_ms": {hop: summary(values("hops_ms", hop)) for hop in HOPS_WITH_AUDIO},
        "end_to_end_ms": summary(values("hops_ms", "first_audio")),
        "server_hops_ms": {hop: summary(values("server_hops_ms", hop)) for hop in SERVER_HOPS},
        "per_turn": turns,
        "errors": [
            {"turn": n, "question": t["question"], "error": error}
            for n, t in enumerate(turns, 1)
            for error in t.get("errors", [])
        ],
        "peak_memory_mb": memory,
        "peak_memory_scope": memory_scope,
    }


def early_answer_comparison(on: list[dict[str, Any]], off: list[dict[str, Any]]) -> dict[str, Any]:
    """The same questions with the early answer on and off, interleaved in one
    run: end of speech -> first audio for each, and what the early answer saves."""

    def first_audio(turns: list[dict[str, Any]]) -> list[float]:
        return [t["hops_ms"]["first_audio"] for t in turns if "first_audio" in t["hops_ms"]]

    with_it, without = first_audio(on), first_audio(off)
    result: dict[str, Any] = {
        "first_audio_ms_on": summary(with_it),
        "first_audio_ms_off": summary(without),
        "per_turn_off": off,
    }
    if with_it and without:
        result["median_saved_ms"] = round(
            statistics.median(without) - statistics.median(with_it), 1
        )
        result["median_ratio_on_to_off"] = round(
            statistics.median(with_it) / statistics.median(without), 3
        )
    return result


def format_table(report: dict[str, Any]) -> str:
    def cell(s: dict[str, float], key: str) -> str:
        return f"{s[key]:>7.0f}" if key in s else f"{'-':>7}"

    lines = [
        f"{'ms after true end of speech':<28}{'p50':>7}{'p95':>7}{'mean':>7}"
        f"   {'server p50':>10}{'p95':>7}",
    ]
    for hop in HOPS_WITH_AUDIO:
        mine = report["hops_ms"].get(hop, {})
        server_key = "first_audio_sent" if hop == "first_audio" else hop
        theirs = report["server_hops_ms"].get(server_key, {})
        lines.append(
            f"  {hop:<26}{cell(mine, 'p50')}{cell(mine, 'p95')}{cell(mine, 'mean')}"
            f"   {cell(theirs, 'p50'):>10}{cell(theirs, 'p95')}"
        )
    e2e = report["end_to_end_ms"]
    if e2e:
        lines.append(f"end to end (true end of speech -> first audio byte): {e2e}")
    memory = report["peak_memory_mb"]
    if memory:
        shown = "  ".join(f"{name} {mb:.0f}" for name, mb in memory.items())
        lines.append(f"peak memory (MB, VmHWM): {shown}")
    else:
        lines.append("peak memory: no Parley service processes found on this machine")
    early = report.get("early_answer")
    if early and "median_saved_ms" in early:
        lines.append(
            f"early answer: first audio p50 {early['first_audio_ms_on'].get('p50', 0):.0f} ms on, "
            f"{early['first_audio_ms_off'].get('p50', 0):.0f} ms off "
            f"(saves {early['median_saved_ms']:.0f} ms, ratio {early['median_ratio_on_to_off']})"
        )
    errors = report["errors"]
    lines.append(f"errors: {len(errors)}" + (f" (first: {errors[0]['error']})" if errors else ""))
    return "\n".join(lines)


async def bench(
    url: str,
    count: int,
    out: str,
    timeout: float,
    token: str | None = None,
    pids: dict[str, list[int]] | None = None,
    warmup: int = 0,
    compare_early_answer: bool = True,
) -> int:
    questions = pick_questions(count)
    started = time.monotonic()
    for question in {*questions, WARMUP_QUESTION}:
        # Synthesis is CPU work the stack would compete with: all of it first.
        synthesize_speech(question, RATE)
    print(f"synthesized {len(set(questions))} questions in {time.monotonic() - started:.1f} s")

    turns: list[dict[str, Any]] = []
    turns_off: list[dict[str, Any]] = []
    for n in range(-warmup, count):
        question = questions[n] if n >= 0 else WARMUP_QUESTION
        label = f"warm-up {n + warmup + 1}/{warmup}" if n < 0 else f"{n + 1}/{count}"
        # Each question is asked with the early answer on (the default) and,
        # when comparing, off; the order alternates so drift favours neither.
        variants: list[dict[str, Any] | None] = [None]
        if compare_early_answer and n >= 0:
            variants = [None, {"early_answer": False}][:: 1 if n % 2 == 0 else -1]
        for settings in variants:
            try:
                turn = await one_turn(url, token, question, timeout, settings)
            except GatewayError as exc:
                if not turns and n == -warmup:
                    print(f"parley: {exc}")
                    return 1
                turn = {"question": question, "hops_ms": {}, "errors": [str(exc)]}
            if n < 0:
                continue
            (turns if settings is None else turns_off).append(turn)
            hops = turn["hops_ms"]
            shown = "  ".join(f"{h} {hops[h]:.0f}" for h in HOPS_WITH_AUDIO if h in hops)
            tag = " (early answer off)" if settings else ""
            print(f"[{label}]{tag} {question!r} -> {turn.get('answer', '')!r}")
            print(f"        {shown or 'no timings'}")
            for error in turn["errors"]:
                print(f"        {error}")

    if pids:
        memory_pids, scope = pids, "--pids"
    else:
        memory_pids, scope = discover_services(url)
    report = build_report(url, turns, peak_memory_mb(memory_pids), scope)
    report["warmup_questions"] = warmup
    if compare_early_answer:
        report["early_answer"] = early_answer_comparison(turns, turns_off)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")  # noqa: ASYNC240 (once, at the end)
    print()
    print(format_table(report))
    print(f"report written to {out}")
    return 1 if report["errors"] else 0
