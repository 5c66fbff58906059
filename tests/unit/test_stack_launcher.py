"""`parley up`: replica counts, and the order in which it stops what it
started (real processes that record when SIGTERM reached them)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest

from parley import stack

# Records the SIGTERM's arrival, then takes a moment to "drain".
CHILD = """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "a").write(f"{sys.argv[2]} {time.monotonic()}\\n")
    time.sleep(0.2)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(sys.argv[2], "ready", flush=True)
while True:
    time.sleep(1)
"""


def test_replicas_parse_and_refuse_nonsense() -> None:
    counts = stack.parse_replicas("vad=2, asr=3")
    assert counts["vad"] == 2 and counts["asr"] == 3 and counts["llm"] == 1
    for bad in ("vad", "vad=0", "dancer=2", "gateway=2", "vad=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            stack.parse_replicas(bad)


def test_a_second_replica_gets_free_ports() -> None:
    assert stack._replica_env({"A": "1"}, "vad", 1) == {"A": "1"}
    env = stack._replica_env({}, "vad", 2)
    assert env == {"PARLEY_VAD__METRICS_PORT": "0", "PARLEY_VAD__HEALTH_PORT": "0"}


async def test_stops_the_gateway_first_the_stages_then_tools_and_nats_last(
    tmp_path: Path,
) -> None:
    record = tmp_path / "stopped.txt"
    names = [("gateway", "gateway"), ("vad", "vad"), ("vad-2", "vad"), ("llm", "llm")]
    names += [("tools", "tools")]
    children = []
    for name, service in names:
        argv = [sys.executable, "-c", CHILD, str(record), name]
        children.append(await stack._start(name, service, argv, {}))
    nats = await stack._start(
        "nats-stand-in", "nats", [sys.executable, "-c", CHILD, str(record), "nats"], {}
    )
    for child in [*children, nats]:
        await stack._wait_ready(child)
    started = time.monotonic()
    await stack._stop_all(children, nats)
    assert time.monotonic() - started < stack.STOP_TIMEOUT_S
    order = [line.split()[0] for line in record.read_text().splitlines()]
    assert order[0] == "gateway"
    assert set(order[1:4]) == {"vad", "vad-2", "llm"}
    assert order[4:] == ["tools", "nats"]
