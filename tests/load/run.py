"""The ramp: for each N, N devices at once against one stack, then the
numbers of that step; and the density mode, where only the gateway and one
vad run and the sessions only stream audio.

Both start the stack they measure (nats-server and the services as
processes on free ports, tests/e2e/harness.py) unless given one, and stop
it at the end. Every wait is bounded: a turn by turn_timeout_s, a step by
its devices' plans, the whole run by max_minutes (the steps that would not
fit are skipped and listed as such)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import os
import random
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley.cli.bench import QUESTIONS, percentile
from parley.cli.client import FRAME_MS, GatewayError, open_session, paced
from parley.wavio import silence
from tests.e2e.harness import STAGES, Stack, start_stack
from tests.load import report
from tests.load.devices import (
    FAILED,
    INTERRUPTED,
    OK,
    PROTOCOLS,
    REFUSED,
    Device,
    DevicePlan,
    Target,
    TurnPlan,
)
from tests.load.probes import LoopLag, ProcessWatch, growth, metrics_port, scrape
from tests.load.voices import DEFAULT_VOICES, RATE, Clip, check_voice, prepare

PIPELINE_N = (1, 2, 4, 8)
DENSITY_N = (1, 2, 4, 8, 16, 32, 64)
# Between steps: answers still playing out and the stages' last work finish.
SETTLE_S = 2.0
# A step's own bound beyond its devices' plans (session start, stragglers).
STEP_MARGIN_S = 30.0
# Silence between a density session's questions.
DENSITY_GAP_MS = 800


@dataclass
class LoadConfig:
    mode: str = "pipeline"  # or "density"
    ns: tuple[int, ...] = PIPELINE_N
    turns: int = 3
    # Small steps get more turns per device, so their p95 is not one turn's.
    min_step_turns: int = 12
    protocols: tuple[str, ...] = PROTOCOLS
    voices: tuple[str, ...] = DEFAULT_VOICES
    barge_in: float = 0.25  # share of the turns that can be spoken over
    stagger_s: float = 3.0
    turn_timeout_s: float = 60.0
    max_minutes: float = 30.0
    warmup: bool = True
    seed: int = 7
    replicas: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 1))
    out: Path = Path("var/load")
    density_seconds: float = 20.0
    target_ms: float = 10.0

    def check(self) -> None:
        if self.mode not in ("pipeline", "density"):
            raise ValueError(f"mode must be pipeline or density, not {self.mode!r}")
        if not self.ns or any(n < 1 or n > 256 for n in self.ns):
            raise ValueError(f"every N must be 1-256, got {self.ns}")
        if self.turns < 1 or self.min_step_turns < 0:
            raise ValueError("turns must be at least 1, min_step_turns at least 0")
        unknown = set(self.protocols) - set(PROTOCOLS)
        if not self.protocols or unknown:
            raise ValueError(f"protocols must be among {PROTOCOLS}, got {self.protocols}")
        if not 0 <= self.barge_in <= 1:
            raise ValueError("barge_in is a share of the turns, 0-1")
        if self.stagger_s < 0 or self.turn_timeout_s <= 0 or self.max_minutes <= 0:
            raise ValueError("stagger_s >= 0, turn_timeout_s > 0 and max_minutes > 0")
        if self.density_seconds < 2:
            raise ValueError("density_seconds must be at least 2")
        for voice in self.voices:
            check_voice(voice)


# --- the stack ------------------------------------------------------------------
@dataclass
class Watched:
    """The stack under load: where devices connect, which processes to watch
    (name -> pids, this harness as `harness`), each service's metrics port."""

    stack: Stack
    target: Target
    pids: dict[str, list[int]]
    ports: dict[str, int]


def watched(stack: Stack) -> Watched:
    pids: dict[str, list[int]] = {}
    ports: dict[str, int] = {}
    for process in stack.processes:
        # Second instances log as vad-1, vad-2...: one stage, summed.
        name = process.name.split("-")[0]
        pids.setdefault(name, []).append(process.pid)
        port = metrics_port(process.text())
        if port is not None:
            ports[f"{name}:{process.pid}"] = port
    pids["harness"] = [os.getpid()]
    return Watched(stack, Target(stack.gateway_port, stack.http_port), pids, ports)


@contextlib.asynccontextmanager
async def own_stack(cfg: LoadConfig, services: dict[str, int]) -> AsyncIterator[Stack]:
    logs = cfg.out / f"{cfg.mode}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    async with start_stack(logs, services=services) as stack:
        yield stack


# --- planning ----------------------------------------------------------------------
def plan_devices(n: int, cfg: LoadConfig, rng: random.Random) -> list[DevicePlan]:
    """N devices: protocols and voices taken in turn (device i speaks
    protocols[i % P] in voices[i % V], so both vary), questions drawn at
    random, start times spread over stagger_s, and a barge_in share of each
    protocol's turns that have a next question to barge in with, drawn at
    random among them. Each device asks cfg.turns
    questions, more where N is small, up to min_step_turns in the step."""
    plans = []
    count = max(cfg.turns, math.ceil(cfg.min_step_turns / n))
    for i in range(n):
        drawn = rng.sample(QUESTIONS, k=min(count, len(QUESTIONS)))
        questions = [drawn[j % len(drawn)] for j in range(count)]
        turns = [TurnPlan(q, None, round(rng.uniform(0.5, 2.0), 2)) for q in questions]
        plans.append(
            DevicePlan(
                i,
                cfg.protocols[i % len(cfg.protocols)],
                cfg.voices[i % len(cfg.voices)],
                round(rng.uniform(0, cfg.stagger_s), 2),
                turns,
            )
        )
    for protocol in cfg.protocols:
        eligible = [t for p in plans if p.protocol == protocol for t in p.turns[:-1]]
        for turn in rng.sample(eligible, k=round(cfg.barge_in * len(eligible))):
            turn.barge_after_s = round(rng.uniform(0.3, 1.0), 2)
    return plans


def plan_bound_s(plans: list[DevicePlan], cfg: LoadConfig) -> float:
    """The longest a step of these plans may take: every turn may use its
    whole timeout."""
    return STEP_MARGIN_S + max(
        p.start_delay_s + sum(cfg.turn_timeout_s + t.pause_s + 10.0 for t in p.turns) for p in plans
    )


# --- the pipeline ramp ------------------------------------------------------------
async def run_devices(
    plans: list[DevicePlan], clips: dict[tuple[str, str], Clip], target: Target, cfg: LoadConfig
) -> list[dict[str, Any]]:
    """Every device at once, within the plans' bound; a turn that did not get
    its record (the step ran out of time, or the device broke) is failed."""
    devices = [Device(p, clips, target, cfg.turn_timeout_s) for p in plans]
    tasks = [asyncio.create_task(d.run()) for d in devices]
    _, late = await asyncio.wait(tasks, timeout=plan_bound_s(plans, cfg))
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    records: list[dict[str, Any]] = []
    for device, task in zip(devices, tasks, strict=True):
        why = "the step ran out of time"
        if not task.cancelled() and task.exception() is not None:
            why = f"the device failed: {task.exception()!r}"
        for n, turn in enumerate(device.plan.turns[len(device.records) :], len(device.records) + 1):
            device.record(n, turn.question, FAILED, errors=[why])
        records += device.records
    return records


def summarize_turns(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A step's turns: first audio p50/p95/p99 (all, and per protocol), each
    hop's p50/p95 (the device's and the gateway's turn_metrics), outcomes,
    barge-ins, and the fairness across sessions."""
    answered = [r for r in records if "first_audio" in r.get("hops_ms", {})]

    def first_audio(rs: list[dict[str, Any]]) -> list[float]:
        return [r["hops_ms"]["first_audio"] for r in rs]

    by_protocol = {
        protocol: report.stats(first_audio([r for r in answered if r["protocol"] == protocol]))
        for protocol in sorted({r["protocol"] for r in records})
    }
    client_hops = sorted({h for r in answered for h in r["hops_ms"]})
    server_hops = sorted({h for r in answered for h in r.get("server_hops_ms", {})})
    per_session: dict[str, list[float]] = {}
    for r in answered:
        per_session.setdefault(r["device"], []).append(r["hops_ms"]["first_audio"])
    medians = {device: statistics.median(v) for device, v in sorted(per_session.items())}
    fairness: dict[str, Any] = {"session_median_ms": {k: round(v, 1) for k, v in medians.items()}}
    if medians:
        middle = statistics.median(medians.values())
        worst = max(medians, key=lambda k: medians[k])
        fairness.update(
            median_of_medians_ms=round(middle, 1),
            worst_session=worst,
            worst_median_ms=round(medians[worst], 1),
            worst_over_median=round(medians[worst] / middle, 3) if middle > 0 else None,
        )
    barges = [r for r in records if r.get("barge_in")]
    outcomes = {k: sum(r["outcome"] == k for r in records) for k in (OK, INTERRUPTED, FAILED)}
    outcomes[REFUSED] = sum(r["outcome"] == REFUSED for r in records)
    return {
        "turns": len(records),
        "outcomes": outcomes,
        "first_audio_ms": report.stats(first_audio(answered)),
        "first_audio_ms_by_protocol": by_protocol,
        "hops_ms": {
            hop: report.stats([r["hops_ms"][hop] for r in answered if hop in r["hops_ms"]])
            for hop in client_hops
        },
        "server_hops_ms": {
            hop: report.stats(
                [r["server_hops_ms"][hop] for r in answered if hop in r.get("server_hops_ms", {})]
            )
            for hop in server_hops
        },
        "barge_ins": {
            "planned": len(barges),
            "cut": sum(r["outcome"] == INTERRUPTED for r in barges),
            "answer_ended_first": sum(bool(r.get("barge_in_missed")) for r in barges),
            "reaction_ms": report.stats([r["barge_in_ms"] for r in barges if "barge_in_ms" in r]),
            # Two ways of cutting in: the server's VAD hearing speech over the
            # answer (parley) and the board's abort (xiaozhi), far quicker.
            "reaction_ms_by_protocol": {
                protocol: report.stats(
                    [
                        r["barge_in_ms"]
                        for r in barges
                        if r["protocol"] == protocol and "barge_in_ms" in r
                    ]
                )
                for protocol in sorted({r["protocol"] for r in barges})
            },
        },
        "fairness": fairness,
        "failures": [
            {"device": r["device"], "turn": r["turn"], "errors": r["errors"]}
            for r in records
            if r["outcome"] in (FAILED, REFUSED)
        ][:20],
    }


async def measured(watch: Watched, body: Any) -> tuple[Any, dict[str, Any]]:
    """Run `body` (a coroutine) with the processes, the loop lag and the
    services' counters watched; its result and what was seen."""
    before = await scrape(watch.ports)
    processes, lag = ProcessWatch(watch.pids), LoopLag()
    processes.start()
    lag.start()
    try:
        result = await body
    finally:
        usage = await processes.stop()
        lag_ms = await lag.stop()
    counters = growth(before, await scrape(watch.ports))
    dropped = {k: v for k, v in counters.items() if k.startswith("parley_dropped_frames_total")}
    errors = {k: v for k, v in counters.items() if k.startswith("parley_errors_total")}
    return result, {
        **usage,
        "harness_loop_lag_ms": lag_ms,
        "dropped_frames": dropped,
        "dropped_frames_total": round(sum(dropped.values()), 1),
        "errors_counted": errors,
    }


async def run_pipeline(cfg: LoadConfig, stack: Stack | None = None) -> dict[str, Any]:
    """The ramp; the report (also written to cfg.out)."""
    cfg.check()
    began = time.monotonic()
    deadline = began + cfg.max_minutes * 60
    rngs = {n: random.Random(cfg.seed * 1000 + n) for n in cfg.ns}
    plans = {n: plan_devices(n, cfg, rngs[n]) for n in cfg.ns}
    warmup = plan_devices(len(cfg.protocols), cfg, random.Random(cfg.seed))
    for plan in warmup:
        del plan.turns[1:]
        plan.turns[0].barge_after_s, plan.start_delay_s = None, 0.0
    wanted = {
        (p.voice, t.question) for ps in [*plans.values(), warmup] for p in ps for t in p.turns
    }
    started = time.monotonic()
    clips = await asyncio.to_thread(prepare, wanted)
    print(f"load: {len(clips)} clips synthesized in {time.monotonic() - started:.1f} s")

    steps: list[dict[str, Any]] = []
    skipped: list[int] = []
    context = own_stack(cfg, cfg.replicas) if stack is None else contextlib.nullcontext(stack)
    async with context as running:
        watch = watched(running)
        if cfg.warmup:
            # Not counted: a fresh stack's first turns load and compile things.
            records = await run_devices(warmup, clips, watch.target, cfg)
            bad = [r for r in records if r["outcome"] == FAILED]
            print(f"load: warm-up, {len(records) - len(bad)}/{len(records)} turns answered")
        for n in cfg.ns:
            if time.monotonic() + plan_bound_s(plans[n], cfg) > deadline:
                print(f"load: N={n} skipped: its worst case would end past max_minutes")
                skipped.append(n)
                continue
            turns = sum(len(p.turns) for p in plans[n])
            print(f"load: N={n}, {turns} turns ...", flush=True)
            records, seen = await measured(watch, run_devices(plans[n], clips, watch.target, cfg))
            step = {"n": n, **summarize_turns(records), "resources": seen, "per_turn": records}
            steps.append(step)
            print(report.step_line(step), flush=True)
            await asyncio.sleep(SETTLE_S)
    result = report.pipeline_report(cfg, steps, skipped, time.monotonic() - began)
    report.write_pipeline(result, cfg.out)
    return result


# --- density ----------------------------------------------------------------------
def looped_audio(clips: list[Clip], offset: int) -> bytes:
    """A session's audio: its questions one after another with a gap, as a
    whole number of frames (so it loops on a frame boundary)."""
    gap = silence(DENSITY_GAP_MS, RATE)
    ordered = clips[offset % len(clips) :] + clips[: offset % len(clips)]
    pcm = b"".join(c.pcm + gap for c in ordered)
    step = RATE * 2 * FRAME_MS // 1000
    return pcm + bytes(-len(pcm) % step)


async def density_session(url: str, audio: bytes, seconds: float, delay: float) -> dict[str, Any]:
    """One session streaming `audio` in real time for `seconds`, with the
    VAD's stats on: the decision latency of each stats event is its arrival
    minus the moment the frame holding the audio at its offset was sent."""
    await asyncio.sleep(delay)
    try:
        client = await open_session(url)
    except GatewayError as exc:
        return {"latencies_ms": [], "errors": [str(exc)], "refused": True}
    errors: list[str] = []
    latencies: list[float] = []
    try:
        await client.update_settings({"settings": {"vad_stats": True}})
        step = RATE * 2 * FRAME_MS // 1000
        count = int(seconds * 1000 / FRAME_MS)
        frames = (audio[o : o + step] for o in ((i * step) % len(audio) for i in range(count)))
        ends: list[float] = []
        sent_at: list[float] = []
        mark = len(client.events)
        async with contextlib.aclosing(paced(frames, FRAME_MS)) as schedule:
            async for frame in schedule:
                await client.ws.send(frame)
                sent_at.append(time.monotonic())
                ends.append(len(sent_at) * FRAME_MS)
        await asyncio.sleep(0.5)  # the last decisions
        for event, at in zip(client.events[mark:], client.arrivals[mark:], strict=True):
            if event["type"] == "vad_stats":
                # The frame that completed the window ending at offset_ms.
                k = bisect.bisect_left(ends, float(event["offset_ms"]) - 1e-6)
                if k < len(ends):
                    latencies.append((at - sent_at[k]) * 1000)
            elif event["type"] == "error" and event.get("code") != "stage_unavailable":
                errors.append(f"{event.get('stage')} {event.get('code')}: {event.get('message')}")
    except GatewayError as exc:
        errors.append(str(exc))
    finally:
        await client.close()
    return {"latencies_ms": latencies, "errors": errors, "refused": False}


async def run_density(cfg: LoadConfig, stack: Stack | None = None) -> dict[str, Any]:
    """Sessions that only stream, through one gateway and cfg.replicas['vad']
    vad instances (and nothing else: no answers), ramped until the frame ->
    VAD decision p95 is over target_ms; the report (also written)."""
    cfg.check()
    began = time.monotonic()
    deadline = began + cfg.max_minutes * 60
    rng = random.Random(cfg.seed)
    questions = rng.sample(QUESTIONS, k=6)
    clips = await asyncio.to_thread(prepare, [(v, q) for v in cfg.voices for q in questions])
    by_voice = {v: [clips[(v, q)] for q in questions] for v in cfg.voices}
    services = {"vad": cfg.replicas.get("vad", 1)}
    steps: list[dict[str, Any]] = []
    skipped: list[int] = []
    context = own_stack(cfg, services) if stack is None else contextlib.nullcontext(stack)
    async with context as running:
        watch = watched(running)
        url = watch.target.parley_url
        if cfg.warmup:
            # Not counted: a fresh vad's first windows (onnxruntime's first
            # runs) and the gateway's first session are slow.
            await density_session(url, looped_audio(by_voice[cfg.voices[0]], 0), 2.0, 0.0)
        for index, n in enumerate(cfg.ns):
            if time.monotonic() + cfg.density_seconds + STEP_MARGIN_S > deadline:
                skipped += list(cfg.ns[index:])
                break
            print(f"load: density, {n} sessions streaming ...", flush=True)
            sessions = [
                density_session(
                    url,
                    looped_audio(by_voice[cfg.voices[i % len(cfg.voices)]], i),
                    cfg.density_seconds,
                    rng.uniform(0, 1.0),
                )
                for i in range(n)
            ]
            results, seen = await measured(watch, asyncio.gather(*sessions))
            step = density_step(n, results, seen, cfg.target_ms)
            steps.append(step)
            print(report.density_line(step), flush=True)
            if step["saturated"]:
                skipped += list(cfg.ns[index + 1 :])
                break
            await asyncio.sleep(SETTLE_S)
    result = report.density_report(cfg, steps, skipped, time.monotonic() - began)
    report.write_density(result, cfg.out)
    return result


def density_step(
    n: int, results: list[dict[str, Any]], seen: dict[str, Any], target_ms: float
) -> dict[str, Any]:
    latencies = [x for r in results for x in r["latencies_ms"]]
    stages = seen["stages"]
    cores = sum(stages.get(s, {}).get("cpu_percent", 0.0) for s in ("gateway", "vad")) / 100
    decided = report.stats(latencies)
    p95 = percentile(latencies, 0.95) if latencies else math.inf
    errors = [e for r in results for e in r["errors"]]
    return {
        "n": n,
        "decision_latency_ms": decided,
        "within_target": bool(latencies) and p95 <= target_ms and not errors,
        # Far past the target: larger steps would only say so again. One
        # step just over it goes on, since a shared machine's noise moves a
        # p95 by a few ms.
        "saturated": not latencies or p95 > report.SATURATED * target_ms or bool(errors),
        "sessions_without_decisions": sum(not r["latencies_ms"] for r in results),
        "refused": sum(bool(r["refused"]) for r in results),
        "errors": errors[:20],
        "gateway_vad_cores": round(cores, 3),
        "sessions_per_core": round(n / cores, 1) if cores > 0 else None,
        "resources": seen,
    }
