"""What the harness watches besides the devices: CPU and memory of every
process of the stack (from /proc: psutil is not among the dependencies),
the machine's own load (it is shared), the services' Prometheus counters,
and the harness's event-loop lag (a late loop delays every client-side
timestamp, so it is reported beside them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from parley.cli.bench import percentile
from parley.tasks import supervise

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_INTERVAL_S = 0.5
LAG_INTERVAL_S = 0.05
# The counters a step reports the growth of.
COUNTERS = ("parley_dropped_frames_total", "parley_errors_total")


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else None


def cpu_pressure_us() -> float | None:
    """Microseconds during which some runnable task waited for a CPU (Linux
    PSI, /proc/pressure/cpu `some total`), None where the kernel has none."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"total=(\d+)", line)
    return float(match.group(1)) if match else None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of every core together, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return float(sum(fields) - idle), float(sum(fields))


@dataclass
class Usage:
    """One stage's share over a step: CPU in percent of one core (summed over
    its instances), the largest resident set seen and their sum at peak."""

    cpu_percent: float
    rss_peak_mb: float
    instances: int


@dataclass
class ProcessWatch:
    """CPU and memory of the stack's processes (name -> pids) over one step,
    and the machine's: sampled every SAMPLE_INTERVAL_S from /proc."""

    pids: dict[str, list[int]]
    _cpu0: dict[int, float] = field(default_factory=dict)
    _rss_peak: dict[int, float] = field(default_factory=dict)
    _machine0: tuple[float, float] = (0.0, 0.0)
    _t0: float = 0.0
    _load0: tuple[float, float, float] = (0.0, 0.0, 0.0)
    _pressure0: float | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._load0 = os.getloadavg()
        self._machine0 = machine_cpu()
        self._pressure0 = cpu_pressure_us()
        for pid in self._all():
            self._cpu0[pid] = cpu_seconds(pid) or 0.0
        self._sample()
        self._task = supervise("load: memory sampler", self._run, service="load")

    def _all(self) -> Iterable[int]:
        return (pid for group in self.pids.values() for pid in group)

    def _sample(self) -> None:
        for pid in self._all():
            value = rss_mb(pid)
            if value is not None:
                self._rss_peak[pid] = max(self._rss_peak.get(pid, 0.0), value)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            self._sample()

    async def stop(self) -> dict[str, object]:
        self._sample()
        await _cancel(self._task)
        wall = max(time.monotonic() - self._t0, 1e-6)
        stages: dict[str, Usage] = {}
        for name, group in self.pids.items():
            cpu = sum(
                max((cpu_seconds(pid) or self._cpu0.get(pid, 0.0)) - self._cpu0.get(pid, 0.0), 0)
                for pid in group
            )
            peaks = [self._rss_peak.get(pid, 0.0) for pid in group]
            stages[name] = Usage(
                round(cpu / wall * 100, 1), round(max(peaks, default=0.0), 1), len(group)
            )
        busy0, total0 = self._machine0
        busy1, total1 = machine_cpu()
        cores = os.cpu_count() or 1
        pressure0, pressure1 = self._pressure0, cpu_pressure_us()
        waited = None
        if pressure0 is not None and pressure1 is not None:
            waited = round((pressure1 - pressure0) / 1e6 / wall * 100, 1)
        return {
            "seconds": round(wall, 1),
            "stages": {name: vars(usage) for name, usage in stages.items()},
            "machine": {
                "cores": cores,
                # All cores together, everyone's processes: the machine is shared.
                "busy_percent": round((busy1 - busy0) / max(total1 - total0, 1) * 100, 1),
                "load_average_start": [round(x, 2) for x in self._load0],
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                # Share of the step during which some task waited for a CPU.
                "cpu_pressure_percent": waited,
            },
        }


class LoopLag:
    """How late this process's event loop wakes: a sleeper of
    LAG_INTERVAL_S that records its overshoot, in ms."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = supervise("load: loop lag", self._run, service="load")

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_INTERVAL_S)
            self.samples.append((time.monotonic() - before - LAG_INTERVAL_S) * 1000)

    async def stop(self) -> dict[str, float]:
        await _cancel(self._task)
        if not self.samples:
            return {}
        return {
            "p50": round(percentile(self.samples, 0.5), 2),
            "p95": round(percentile(self.samples, 0.95), 2),
            "max": round(max(self.samples), 2),
        }


def metrics_port(log_text: str) -> int | None:
    """The metrics port a service bound, from its ready line (`metrics=:PORT`)."""
    match = re.search(r" ready: .*metrics=:(\d+)", log_text)
    return int(match.group(1)) if match else None


async def scrape(ports: dict[str, int]) -> dict[str, float]:
    """The COUNTERS of every service, summed over services by their labels:
    {'parley_dropped_frames_total{reason=...,stage=...}': value}. A service
    that does not answer is left out (a step then shows no growth from it)."""
    totals: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for port in ports.values():
            with contextlib.suppress(httpx.HTTPError):
                reply = await client.get(f"http://127.0.0.1:{port}/metrics")
                for family in text_string_to_metric_families(reply.text):
                    for sample in family.samples:
                        if sample.name not in COUNTERS:
                            continue
                        labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                        key = f"{sample.name}{{{labels}}}"
                        totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def growth(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counters that grew between two scrapes, by how much."""
    return {
        key: round(value - before.get(key, 0.0), 1)
        for key, value in sorted(after.items())
        if value - before.get(key, 0.0) > 0
    }
