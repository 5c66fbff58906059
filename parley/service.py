"""Runs one stage service: config, logs, tracing, metrics, health, bus,
placement, and a graceful drain on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import uuid
from abc import ABC
from collections.abc import Awaitable, Callable
from typing import ClassVar, Protocol

from parley.bus import Bus, now_ms, session_subject, split_session_subject
from parley.config import ParleySettings, StageSettings, load_settings_or_exit
from parley.errors import StartRefused
from parley.health import HealthServer
from parley.load import LoadMeter
from parley.logs import setup_logging
from parley.metrics import count_tasks_of, start_metrics_server
from parley.placement import PlacementServer
from parley.session import StageSession
from parley.state import StateUnavailable
from parley.tracing import setup_tracing
from parley.v1 import common_pb2, events_pb2

log = logging.getLogger("parley.service")


class Stage(ABC):
    """A stage's process-wide part: models, shared clients, its session type."""

    name: ClassVar[str]

    def __init__(self, settings: ParleySettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        # Sessions, model steps and their latency (parley/load.py): sessions
        # wrap each model call in `self.meter.step()`.
        self.meter = LoadMeter(self.name, self.stage_settings.max_sessions, self.model_workers)

    @property
    def model_workers(self) -> int:
        """Model steps this instance runs at once (beyond them, work queues)."""
        return 1

    @property
    def stage_settings(self) -> StageSettings:
        return getattr(self.settings, self.name)  # type: ignore[no-any-return]

    async def load(self) -> None:
        """Load models; the instance is not ready before this returns."""

    async def start(self) -> None:
        """Start anything beyond placement (request/reply subscriptions)."""

    # Built as session_class(session_id, stage, settings, on_closed) for each
    # session placed here; None for a stage that is not placed (tools).
    session_class: ClassVar[Callable[..., StageSession] | None] = None

    def open_session(
        self,
        session_id: str,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]],
    ) -> StageSession:
        if self.session_class is None:
            raise NotImplementedError(f"the {self.name} service is not placed per session")
        return self.session_class(session_id, self, settings, on_closed)

    async def close(self) -> None:
        pass


def _report_decode_error(bus: Bus, stage: str) -> Callable[[str, str], Awaitable[None]]:
    """Tell the session's client that a message for it could not be read."""

    async def report(subject: str, reason: str) -> None:
        target = split_session_subject(subject)
        if target is None or target[1] == "events":
            return
        event = events_pb2.Event(
            error=events_pb2.Error(
                stage=stage, code="bad_bus_message", message=reason, recoverable=True
            )
        )
        event.meta.session_id = target[0]
        event.meta.ts_ms = now_ms()
        await bus.publish(session_subject(target[0], "events"), event)

    return report


def parse_args(name: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"parley-{name}", description=f"Parley {name} service")
    parser.add_argument("--config", help="TOML configuration file (default parley.toml)")
    return parser.parse_args()


class Service(Protocol):
    """A process's own part, between the shared start-up and shutdown."""

    async def start(self) -> str:
        """Start serving; returns what the ready line should say."""
        ...

    async def drain(self) -> None:
        """SIGTERM: finish what is under way, hand over, stop taking work."""
        ...


async def run_service(
    name: str,
    metrics_port: Callable[[ParleySettings], int],
    make: Callable[[ParleySettings, Bus], Service],
) -> None:
    """Every Parley process: configuration (validated, or exit with the bad
    key), logs, tracing, metrics, the bus, then `make`'s service until
    SIGTERM or SIGINT, which drains it before the bus closes."""
    args = parse_args(name)
    settings = load_settings_or_exit(args.config)
    setup_logging(name, settings.log.level, settings.log.format, settings.log.content)
    tracer_provider = setup_tracing(name, settings.telemetry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The section's own host (gateway.host, <stage>.host): loopback unless told.
    port = start_metrics_server(metrics_port(settings), getattr(settings, name).host)
    count_tasks_of(loop)
    bus = await Bus.connect(settings.nats, name)
    bus.on_decode_error = _report_decode_error(bus, name)
    service = make(settings, bus)
    ready = await service.start()
    # Ready means reachable: every subscription made in start() is known to
    # the server before anyone is told (a request sent right after the ready
    # line otherwise races the SUB and gets "no responders").
    await bus.nc.flush()
    log.info("%s ready: %s metrics=:%d", name, ready, port)
    await stop.wait()
    log.info("%s draining", name)
    await service.drain()
    await bus.close()
    tracer_provider.shutdown()
    log.info("%s stopped", name)


class StageService:
    """A stage's process: its models, the gRPC health service, placement."""

    def __init__(
        self, stage_cls: type[Stage], settings: ParleySettings, bus: Bus, placed: bool
    ) -> None:
        self.stage = stage_cls(settings, bus)
        self.settings: StageSettings = getattr(settings, stage_cls.name)
        self.bus = bus
        self.placed = placed
        self.instance_id = f"{stage_cls.name}-{uuid.uuid4().hex[:8]}"
        self.health = HealthServer(stage_cls.name)
        self.placement: PlacementServer | None = None

    async def start(self) -> str:
        health_port = await self.health.start(self.settings.health_port, self.settings.host)
        await self.stage.load()
        await self.stage.start()
        if self.placed:
            self.placement = PlacementServer(
                self.bus,
                self.stage.name,
                self.instance_id,
                self.stage.open_session,
                self.settings.heartbeat_interval_s,
                self.settings.session_idle_timeout_s,
                self.stage.meter,
            )
            await self.placement.start()
        await self.health.set_serving(True)
        return f"instance={self.instance_id} health=:{health_port}"

    async def drain(self) -> None:
        await self.health.set_serving(False)
        if self.placement is not None:
            await self.placement.drain(self.settings.drain_timeout_s)
        await self.stage.close()
        await self.health.stop()


def main(stage_cls: type[Stage], *, placed: bool = True) -> None:
    def make(settings: ParleySettings, bus: Bus) -> Service:
        return StageService(stage_cls, settings, bus, placed)

    run(stage_cls.name, lambda settings: getattr(settings, stage_cls.name).metrics_port, make)


def run(
    name: str,
    metrics_port: Callable[[ParleySettings], int],
    make: Callable[[ParleySettings, Bus], Service],
) -> None:
    """The entry point of a service's __main__."""

    try:
        asyncio.run(run_service(name, metrics_port, make))
    except KeyboardInterrupt:
        pass
    except (StateUnavailable, StartRefused) as exc:  # say what to do, no traceback
        log.error("%s cannot start: %s", name, exc)
        raise SystemExit(2) from None
