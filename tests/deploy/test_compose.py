"""deploy/compose comes up on one host from the image `make image` builds
(three NATS servers with JetStream, every stage, the gateway's ports
published) and answers a spoken turn; only the gateway is published and the
bus has no way out."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy.conftest import REPORT_DIR
from tests.deploy.render import ROOT
from tests.deploy.turn import spoken_turn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

COMPOSE_FILE = ROOT / "deploy" / "compose" / "docker-compose.yml"
SERVICES = {"nats-0", "nats-1", "nats-2", "vad", "asr", "llm", "tts", "tools", "gateway"}


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode == 0:
        return ["docker", "compose"]
    raise AssertionError(
        "neither `docker compose` nor docker-compose is installed"
        " (apt-get install docker-compose); this test is never skipped"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_env(path: Path) -> None:
    subprocess.run([str(COMPOSE_FILE.parent / "make-env.sh"), str(path)], check=True, timeout=60)


def network(name: str) -> dict[str, Any]:
    raw = subprocess.run(
        ["docker", "network", "inspect", name], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(raw)[0]  # type: ignore[no-any-return]


class Compose:
    def __init__(self, env_file: Path) -> None:
        self.project = f"parley-compose-{uuid.uuid4().hex[:8]}"
        self.ports = {"ws": free_port(), "http": free_port(), "grpc": free_port()}
        self.env = {
            **os.environ,
            # Loopback only: the test's published ports reach nothing else.
            "PARLEY_BIND": "127.0.0.1",
            "PARLEY_WS_PORT": str(self.ports["ws"]),
            "PARLEY_HTTP_PORT": str(self.ports["http"]),
            "PARLEY_GRPC_PORT": str(self.ports["grpc"]),
        }
        self.base = [
            *compose_command(),
            "-p",
            self.project,
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env_file),
        ]

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        result = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check:
            assert result.returncode == 0, f"compose {args[0]}: {result.stderr[-3000:]}"
        return result.stdout + result.stderr

    def containers(self) -> dict[str, dict[str, Any]]:
        ids = self.run("ps", "-q").split()
        raw = subprocess.run(
            ["docker", "inspect", *ids], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in json.loads(raw)}


async def test_compose_comes_up_and_answers_a_spoken_turn(image: str, tmp_path: Path) -> None:
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    assert set(spec["services"]) == SERVICES
    for name, service in spec["services"].items():
        # The image make image builds, pinned to pyproject's version.
        assert service["image"].replace("${PARLEY_VERSION:-", "").rstrip("}") == image, name
        assert service["read_only"] and service["cap_drop"] == ["ALL"], name
        assert service["user"] == "10001:10001", name
    env_file = tmp_path / "parley.env"
    make_env(env_file)
    token = next(
        line.split("=", 1)[1]
        for line in env_file.read_text().splitlines()
        if line.startswith("GATEWAY_AUTH_TOKEN=")
    )
    compose = Compose(env_file)
    report: dict[str, Any] = {"project": compose.project}
    started = time.monotonic()
    try:
        compose.run("up", "-d", timeout=600)
        # Healthy: NATS' JetStream, each stage's gRPC health, the gateway's /readyz.
        while True:
            states = {
                name: c["State"].get("Health", {}).get("Status", c["State"]["Status"])
                for name, c in compose.containers().items()
            }
            if set(states) == SERVICES and all(s == "healthy" for s in states.values()):
                break
            assert time.monotonic() - started < 420, f"not healthy in time: {states}"
            assert "unhealthy" not in states.values() and "exited" not in states.values(), states
            await asyncio.sleep(2)
        report["healthy_s"] = round(time.monotonic() - started, 1)

        base = f"127.0.0.1:{compose.ports['ws']}"
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://{base}/readyz")).status_code == 200
            ota = await client.post(
                f"http://127.0.0.1:{compose.ports['http']}/xiaozhi/ota/",
                headers={"Device-Id": "aa:bb:cc:dd:ee:ff", "Client-Id": "compose-test"},
                json={"application": {"version": "1.0.0"}},
            )
            report["ota_status"] = ota.status_code
        turn = await spoken_turn(f"ws://{base}/v1/ws", token)
        report["turn"] = turn
        assert {"capital", "france"} <= set(turn["transcript"].lower().replace("?", "").split())
        assert turn["status"] == "completed" and turn["answer"].strip(), turn
        assert turn["audio_s"] > 0.5, turn

        running = compose.containers()
        published = {
            name
            for name, c in running.items()
            if any(v for v in (c["NetworkSettings"]["Ports"] or {}).values())
        }
        assert published == {"gateway"}, published
        bus = next(n for n in running["vad"]["NetworkSettings"]["Networks"] if n.endswith("_bus"))
        assert network(bus)["Internal"], "the bus network has a way out"
        logs = compose.run("logs", "--no-color", timeout=120)
        for bad in ("Traceback", "Read-only file system", "Permissions Violation"):
            assert bad not in logs, bad
        report["seconds"] = round(time.monotonic() - started, 1)
    finally:
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        (REPORT_DIR / "compose.log").write_text(
            compose.run("logs", "--no-color", timeout=120, check=False)
        )
        (REPORT_DIR / "compose-report.json").write_text(json.dumps(report, indent=2))
        compose.run("kill", timeout=120, check=False)
        compose.run("down", "-v", "--remove-orphans", timeout=300, check=False)
    print(json.dumps(report, indent=2))
