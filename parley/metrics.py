"""Prometheus metrics shared by every service; names are the dashboard's contract.

Labels stay low-cardinality: stage, stream, hop, code; never a session id.
"""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Voice latency lives between 10 ms and 10 s.
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)

TURN_HOP_SECONDS = Histogram(
    "parley_turn_hop_seconds",
    "Time from the end of the user's speech to each milestone of the turn",
    ["hop"],
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "parley_stage_seconds",
    "Time a stage spent on one unit of work (transcription, first token, synthesis)",
    ["stage", "step"],
    buckets=LATENCY_BUCKETS,
)
REAL_TIME_FACTOR = Histogram(
    "parley_real_time_factor",
    "Processing time divided by audio duration",
    ["stage"],
    buckets=RTF_BUCKETS,
)
BUS_LATENCY_SECONDS = Histogram(
    "parley_bus_latency_seconds",
    "Publish-to-receive latency of bus messages",
    ["stream"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
ACTIVE_SESSIONS = Gauge("parley_active_sessions", "Sessions owned by this instance", ["stage"])
FRAMES = Counter("parley_frames_total", "Frames handled", ["stage", "stream"])
DROPPED_FRAMES = Counter("parley_dropped_frames_total", "Frames dropped", ["stage", "reason"])
INTERRUPTS = Counter("parley_interrupts_total", "Responses interrupted by the user", ["stage"])
ERRORS = Counter("parley_errors_total", "Errors by stage and kind", ["stage", "code"])
TURNS = Counter("parley_turns_total", "User turns handled", ["stage"])
# Load and capacity (parley/load.py defines each): what placement and an
# autoscaler (HPA through Prometheus Adapter, KEDA) read.
STAGE_SESSIONS = Gauge("parley_stage_sessions", "Sessions placed on this instance", ["stage"])
STAGE_QUEUE_DEPTH = Gauge(
    "parley_stage_queue_depth", "Model steps waiting for a worker on this instance", ["stage"]
)
STAGE_STEP_SECONDS = Gauge(
    "parley_stage_step_seconds", "p95 duration of this instance's recent model steps", ["stage"]
)
STAGE_LOAD_RATIO = Gauge(
    "parley_stage_load_ratio",
    "Busy fraction of this instance: max(sessions / capacity, model steps in flight / workers)",
    ["stage"],
)
SESSIONS_REFUSED = Counter(
    "parley_sessions_refused_total", "Sessions refused because every instance was full", ["stage"]
)
AUDIO_THROTTLED = Counter(
    "parley_audio_throttled_seconds_total",
    "Client audio dropped for arriving faster than real time, in seconds of audio",
    ["stage"],
)


# Debug: asyncio tasks alive in the process's loop, read at scrape time (no
# task of its own to keep it fresh). A count that keeps growing is a leak;
# tests/fuzz compares it before and after each door's fuzzing.
ASYNCIO_TASKS = Gauge("parley_asyncio_tasks", "asyncio tasks alive in this process's event loop")


def count_tasks_of(loop: asyncio.AbstractEventLoop) -> None:
    """Have ASYNCIO_TASKS report the loop's live tasks. all_tasks is read from
    the metrics server's thread: it copies the loop's weak task set, retrying
    if the loop changes it meanwhile, so the read is safe off the loop."""
    ASYNCIO_TASKS.set_function(lambda: len(asyncio.all_tasks(loop)))


def start_metrics_server(port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics on host:port (0 picks one); returns the port bound."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_address[1])
