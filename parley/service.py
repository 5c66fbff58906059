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
from typing import ClassVar

from parley.bus import Bus, now_ms, session_subject, split_session_subject
from parley.config import ParleySettings, StageSettings, load_settings_or_exit
from parley.health import HealthServer
from parley.logs import setup_logging
from parley.metrics import start_metrics_server
from parley.placement import PlacementServer
from parley.session import StageSession
from parley.tracing import setup_tracing
from parley.v1 import common_pb2, events_pb2

log = logging.getLogger("parley.service")


class Stage(ABC):
    """A stage's process-wide part: models, shared clients, its session type."""

    name: ClassVar[str]

    def __init__(self, settings: ParleySettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus

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


async def run_stage(stage_cls: type[Stage], *, placed: bool = True) -> None:
    args = parse_args(stage_cls.name)
    settings = load_settings_or_exit(args.config)
    name = stage_cls.name
    stage_settings: StageSettings = getattr(settings, name)
    setup_logging(name, settings.log.level, settings.log.format)
    tracer_provider = setup_tracing(name, settings.telemetry)
    instance_id = f"{name}-{uuid.uuid4().hex[:8]}"

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics_port = start_metrics_server(stage_settings.metrics_port)
    health = HealthServer(name)
    health_port = await health.start(stage_settings.health_port)
    bus = await Bus.connect(settings.nats, name)
    bus.on_decode_error = _report_decode_error(bus, name)
    stage = stage_cls(settings, bus)
    await stage.load()
    await stage.start()
    placement: PlacementServer | None = None
    if placed:
        placement = PlacementServer(
            bus,
            name,
            instance_id,
            stage.open_session,
            stage_settings.heartbeat_interval_s,
            stage_settings.session_idle_timeout_s,
        )
        await placement.start()
    await health.set_serving(True)
    log.info(
        "%s ready: instance=%s metrics=:%d health=:%d", name, instance_id, metrics_port, health_port
    )

    await stop.wait()
    log.info("%s draining", name)
    await health.set_serving(False)
    if placement is not None:
        await placement.drain(stage_settings.drain_timeout_s)
    await stage.close()
    await bus.close()
    await health.stop()
    tracer_provider.shutdown()
    log.info("%s stopped", name)


def main(stage_cls: type[Stage], *, placed: bool = True) -> None:
    try:
        asyncio.run(run_stage(stage_cls, placed=placed))
    except KeyboardInterrupt:
        pass
