"""What each door's fuzzing must leave as it found it: the stack answers a
real spoken turn, the gateway's asyncio tasks and resident memory are back
within a bound, no service logged a traceback, and the logs did not flood."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import httpx

from parley.cli.client import ParleyClient, answer
from tests.e2e.harness import Stack
from tests.load.probes import rss_mb
from tests.support.speech import silence

# Settling: sessions the fuzzing left behind end within the resume grace the
# fuzz stack sets (1 s), then their tasks finish.
SETTLE_S = 20.0
# A session holds a handful of tasks in the gateway (reader, writer, bus
# subscriptions); more than this many left over is a leak, not timing.
TASK_SLACK = 8
# Python's allocator keeps freed arenas and fuzzing sends frames up to the
# 1 MiB message limit; what the gateway holds beyond this was not let go.
RSS_SLACK_MB = 48.0
# Bad input is logged at a bounded rate; a module's cases together may add
# this much to any one log, well under what one line per bad frame would be.
LOG_GROWTH_BYTES = 1_000_000
TURN_TIMEOUT_S = 60.0


@dataclass
class Snapshot:
    tasks: int
    rss_mb: float
    log_sizes: dict[str, int]


def gateway_of(stack: Stack):  # type: ignore[no-untyped-def]
    return next(p for p in stack.processes if p.name == "gateway")


def metrics_port(stack: Stack) -> int:
    found = re.search(r"gateway ready: .*metrics=:(\d+)", gateway_of(stack).text())
    assert found, "the gateway's ready line names no metrics port"
    return int(found.group(1))


async def gateway_tasks(stack: Stack) -> int:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{metrics_port(stack)}/metrics")
    found = re.search(r"^parley_asyncio_tasks ([0-9.e+]+)$", reply.text, re.M)
    assert found, "no parley_asyncio_tasks in the gateway's metrics"
    return int(float(found.group(1)))


async def snapshot(stack: Stack) -> Snapshot:
    gateway = gateway_of(stack)
    rss = rss_mb(gateway.pid)
    assert rss is not None
    sizes = {p.log.name: p.log.stat().st_size for p in stack.processes}
    return Snapshot(await gateway_tasks(stack), rss, sizes)


async def spoken_turn(stack: Stack, question: bytes) -> None:
    client = await ParleyClient.open(stack.gateway_url)
    try:
        mark = len(client.events)
        await client.stream(silence(300) + question + silence(1200))
        outcome = await answer(client, mark, TURN_TIMEOUT_S)
        assert not outcome.failed, outcome.reason
    finally:
        await client.close()


async def still_serving(stack: Stack, question: bytes, before: Snapshot) -> Snapshot:
    """Every check after a door's fuzzing; returns what it measured."""
    for p in stack.processes:
        assert p.returncode is None, p.failure("died during the fuzzing")
    await spoken_turn(stack, question)
    deadline = time.monotonic() + SETTLE_S
    while True:
        after = await snapshot(stack)
        if after.tasks <= before.tasks + TASK_SLACK or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert after.tasks <= before.tasks + TASK_SLACK, (before.tasks, after.tasks)
    assert after.rss_mb <= before.rss_mb + RSS_SLACK_MB, (before.rss_mb, after.rss_mb)
    for p in stack.processes:
        text = p.text()
        assert "Traceback" not in text, p.failure("logged a traceback")
        grown = after.log_sizes[p.log.name] - before.log_sizes.get(p.log.name, 0)
        assert grown <= LOG_GROWTH_BYTES, p.failure(f"log grew {grown} bytes")
    print(
        f"gateway tasks {before.tasks} -> {after.tasks}, RSS {before.rss_mb:.0f} -> "
        f"{after.rss_mb:.0f} MB, log growth "
        + ", ".join(
            f"{name} {after.log_sizes[name] - before.log_sizes.get(name, 0)} B"
            for name in after.log_sizes
        )
    )
    return after
