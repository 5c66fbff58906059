"""`parley bench`: spoken questions through the gateway one after another,
timed from the true end of speech in the input audio, into a JSON report."""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from parley.cli.speech import synthesize_speech
from parley.cli.wavio import last_voiced_ms

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky?",
    "Can you tell me a joke?",
    "What is the tallest mountain in the world?",
    "How far away is the moon?",
    "What do bees make?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Why do cats purr?",
    "What is the largest ocean on Earth?",
    "How many days are in a year?",
]
HOPS = ["final_transcript", "first_token", "first_sentence", "first_tts_audio", "first_audio"]
SERVICES = ["gateway", "vad", "asr", "llm", "tts", "tools"]
RATE = 16000
FRAME_MS = 20
LEAD_MS = 300
TAIL_MS = 1500


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 0.5), 1),
        "p95": round(percentile(values, 0.95), 1),
        "mean": round(statistics.fmean(values), 1),
        "n": len(values),
    }


def peak_memory_mb() -> dict[str, float]:
    """VmHWM (peak resident set) of each running Parley service, in MB."""
    peaks: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (proc / "status").read_text()
        except OSError:
            continue
        match = re.search(r"-m services\.(\w+)", cmdline)
        hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match and hwm and match.group(1) in SERVICES:
            name = match.group(1)
            peaks[name] = max(peaks.get(name, 0.0), round(int(hwm.group(1)) / 1024, 1))
    return peaks


async def one_turn(url: str, question: str, timeout: float) -> dict[str, Any]:
    speech = synthesize_speech(question)
    pcm = bytes(RATE * 2 * LEAD_MS // 1000) + speech + bytes(RATE * 2 * TAIL_MS // 1000)
    eos_offset_ms = LEAD_MS + last_voiced_ms(speech)
    marks: dict[str, float] = {}
    result: dict[str, Any] = {"question": question}
    async with connect(url, max_size=None) as ws:
        done = asyncio.Event()

        async def read() -> None:
            async for message in ws:
                now = time.monotonic()
                if isinstance(message, bytes):
                    marks.setdefault("first_audio", now)
                    continue
                event = json.loads(message)
                kind = event["type"]
                if kind == "transcription" and event.get("final"):
                    marks.setdefault("final_transcript", now)
                    result["transcript"] = event["text"]
                elif kind == "response_text":
                    marks.setdefault("first_token", now)
                    result["answer"] = result.get("answer", "") + event["delta"]
                elif kind == "response_sentence":
                    marks.setdefault("first_sentence", now)
                elif kind == "tts_start":
                    marks.setdefault("first_tts_audio", now)
                elif kind == "turn_metrics":
                    result["server_hops_ms"] = event["hops"]
                elif kind == "error":
                    result.setdefault("errors", []).append(event)
                    if not event.get("recoverable", True) or event["stage"] != "gateway":
                        done.set()
                elif kind in ("tts_end", "response_end") and event.get("status") != "completed":
                    done.set()
                elif kind == "tts_end":
                    done.set()

        reader = asyncio.create_task(read())
        step = RATE * 2 * FRAME_MS // 1000
        eos_at = None
        began = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), step)):
            await ws.send(pcm[i : i + step])
            if eos_at is None and (i + step) / (RATE * 2) * 1000 >= eos_offset_ms:
                eos_at = time.monotonic()
            delay = began + (n + 1) * FRAME_MS / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            result.setdefault("errors", []).append({"code": "timeout"})
        reader.cancel()
    assert eos_at is not None
    result["hops_ms"] = {h: round((marks[h] - eos_at) * 1000, 1) for h in HOPS if h in marks}
    return result


async def bench(url: str, count: int, out: str, timeout: float) -> int:
    turns = []
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    for question in questions:
        synthesize_speech(question)  # before timing anything
    for n, question in enumerate(questions, 1):
        turn = await one_turn(url, question, timeout)
        turns.append(turn)
        hops = turn["hops_ms"]
        shown = " ".join(f"{h}={hops[h]:.0f}" for h in HOPS if h in hops)
        print(f"[{n}/{count}] {question!r} -> {turn.get('answer', '')!r}\n        {shown}")
    report: dict[str, Any] = {
        "questions": count,
        "url": url,
        "hops_ms": {
            h: summary([t["hops_ms"][h] for t in turns if h in t["hops_ms"]]) for h in HOPS
        },
        "end_to_end_ms": summary(
            [t["hops_ms"]["first_audio"] for t in turns if "first_audio" in t["hops_ms"]]
        ),
        "server_hops_ms": {
            h: summary([t["server_hops_ms"][h] for t in turns if h in t.get("server_hops_ms", {})])
            for h in [
                "final_transcript",
                "first_token",
                "first_sentence",
                "first_tts_audio",
                "first_audio_sent",
            ]
        },
        "peak_memory_mb": peak_memory_mb(),
        "errors": [e for t in turns for e in t.get("errors", [])],
        "per_turn": turns,
    }
    Path(out).write_text(json.dumps(report, indent=2))  # noqa: ASYNC240 (a CLI, once)
    print("\nhop (ms from true end of speech)      p50      p95")
    for hop in HOPS:
        s = report["hops_ms"][hop]
        if s:
            print(f"  {hop:<34} {s['p50']:>7.0f}  {s['p95']:>7.0f}")
    print(f"peak memory (MB): {report['peak_memory_mb']}")
    print(f"report written to {out}")
    return 1 if report["errors"] else 0
