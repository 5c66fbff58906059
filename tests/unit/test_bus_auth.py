"""The closed bus: one permission table (parley/bus_auth.py) for the embedded
NATS `parley up` writes and the Kubernetes one, enforced by a real
nats-server running the generated configuration."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from parley import bus_auth
from parley.bus import Bus
from parley.config import NatsSettings, ParleySettings
from parley.stack import nats_passwords, write_nats_config
from tests.support.stack import NATS_READY, NATS_SERVER, base_env, free_port, start_process
from tests.support.tls import self_signed_cert

REPO = Path(__file__).resolve().parents[2]


def test_kubernetes_nats_conf_is_the_table() -> None:
    text = (REPO / "deploy/k8s/base/nats.conf").read_text()
    assert text.endswith(bus_auth.kubernetes_block()), (
        "deploy/k8s/base/nats.conf's authorization block differs from parley/bus_auth.py: "
        "paste kubernetes_block() there"
    )


def test_passwords_are_generated_once_and_private(tmp_path: Path) -> None:
    first = nats_passwords(tmp_path)
    assert set(first) == set(bus_auth.SERVICES) and len(set(first.values())) == len(first)
    assert nats_passwords(tmp_path) == first
    settings = ParleySettings(nats={"url": "nats://127.0.0.1:4999"})
    conf, _ = write_nats_config(settings, tmp_path)
    for path in (conf, tmp_path / "passwords.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "max_payload: 1048576" in conf.read_text()


@contextlib.asynccontextmanager
async def closed_bus(
    tmp_path: Path, tls: tuple[Path, Path] | None = None
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    url = f"nats://127.0.0.1:{free_port()}"
    conf, passwords = write_nats_config(ParleySettings(nats={"url": url}), tmp_path / "nats")
    if tls is not None:
        cert, key = tls
        with conf.open("a") as out:
            out.write(f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')
    argv = [str(NATS_SERVER), "-c", str(conf)]
    running = await start_process("nats", argv, base_env(), tmp_path)
    try:
        await running.wait_for(NATS_READY, 20.0)
        yield url, passwords
    finally:
        await running.stop()


class Client:
    """A NATS connection as one service, with the server's refusals kept."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NatsClient | None = None

    @classmethod
    async def as_service(cls, url: str, service: str, passwords: dict[str, str]) -> Client:
        client = cls()

        async def error_cb(exc: Exception) -> None:
            client.errors.append(str(exc))

        client.nc = await nats.connect(
            url,
            user=bus_auth.user_of(service),
            password=passwords[service],
            error_cb=error_cb,
            allow_reconnect=False,
        )
        return client

    async def refused(self, what: str) -> bool:
        assert self.nc is not None
        await self.nc.flush()
        for _ in range(50):
            if any(
                "permissions violation" in e.lower() and what.lower() in e.lower()
                for e in self.errors
            ):
                return True
            await asyncio.sleep(0.05)
        return False


async def test_each_service_reads_and_calls_only_what_it_needs(tmp_path: Path) -> None:
    async with closed_bus(tmp_path) as (url, passwords):
        gateway = await Client.as_service(url, "gateway", passwords)
        vad = await Client.as_service(url, "vad", passwords)
        tts = await Client.as_service(url, "tts", passwords)
        tools = await Client.as_service(url, "tools", passwords)
        assert gateway.nc and vad.nc and tts.nc and tools.nc
        try:
            audio = "parley.v1.s.victim.audio.in"
            heard_by_vad: list[bytes] = []
            heard_by_tts: list[bytes] = []
            calls: list[bytes] = []

            def keeper(into: list[bytes]) -> Callable[[Msg], Awaitable[None]]:
                async def keep(msg: Msg) -> None:
                    into.append(msg.data)

                return keep

            await vad.nc.subscribe(audio, cb=keeper(heard_by_vad))
            await tts.nc.subscribe(audio, cb=keeper(heard_by_tts))
            await tools.nc.subscribe("parley.v1.tools.call", cb=keeper(calls))
            await tts.nc.flush()
            await tools.nc.flush()
            await gateway.nc.publish(audio, b"someone's voice")
            # The vad user may call no tool; its publish goes nowhere.
            await vad.nc.publish("parley.v1.tools.call", b'{"name": "unlock_door"}')
            await gateway.nc.flush()
            await vad.nc.flush()
            await asyncio.sleep(0.3)

            assert heard_by_vad == [b"someone's voice"]
            assert heard_by_tts == [] and await tts.refused("Subscription")
            assert calls == [] and await vad.refused("Publish")
        finally:
            for client in (gateway, vad, tts, tools):
                if client.nc is not None:
                    await client.nc.close()


async def test_no_credentials_no_bus(tmp_path: Path) -> None:
    async with closed_bus(tmp_path) as (url, passwords):
        with pytest.raises(Exception, match="(?i)authorization"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        wrong = {**passwords, "vad": "guessed"}
        with pytest.raises(Exception, match="(?i)authorization"):
            await nats.connect(url, user="parley-vad", password=wrong["vad"], allow_reconnect=False)


async def test_a_service_connects_over_tls_as_its_own_user(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    async with closed_bus(tmp_path, (cert, key)) as (url, passwords):
        settings = NatsSettings(
            url=url, user="parley-vad", password=passwords["vad"], tls_ca=str(cert)
        )
        bus = await Bus.connect(settings, "vad")
        try:
            assert bus.connected
            assert bus.nc.connected_url is not None
            assert bus.nc._server_info.get("tls_required")  # noqa: SLF001 (what the server said)
        finally:
            await bus.close()
