"""The gateway's doors (docs/security.md), on a real nats-server and a real
gateway in this process: no stages are needed, every refusal here happens
before a session would be placed."""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from parley.bus import Bus
from parley.config import ParleySettings
from parley.errors import StartRefused
from services.gateway.protocols.endpoint import device_secret, device_token
from services.gateway.service import Gateway, check_secure
from tests.support.stack import start_nats
from tests.support.tls import self_signed_cert


@contextlib.asynccontextmanager
async def gateway(**options: Any) -> AsyncIterator[Gateway]:
    async with start_nats() as (_nats, url):
        settings = ParleySettings(
            nats={"url": url},
            gateway={"port": 0, "http_port": 0, "grpc_port": 0, "metrics_port": 0, **options},
        )
        bus = await Bus.connect(settings.nats, "gateway")
        gw = Gateway(settings, bus)
        try:
            await gw.start()
            yield gw
        finally:
            await gw.drain()
            await bus.close()


async def status_of(url: str, **kwargs: Any) -> int:
    """The HTTP status a WebSocket upgrade gets (101 when accepted)."""
    try:
        async with connect(url, open_timeout=5, **kwargs):
            return 101
    except InvalidStatus as exc:
        return int(exc.response.status_code)


def test_reachable_without_a_token_refuses_to_start() -> None:
    for host in ("0.0.0.0", "192.168.1.10", "::", "gateway.example"):
        with pytest.raises(StartRefused, match="auth_token"):
            check_secure(ParleySettings(gateway={"host": host}))
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        check_secure(ParleySettings(gateway={"host": host}))
    check_secure(ParleySettings(gateway={"host": "0.0.0.0", "auth_token": "t"}))


async def test_a_page_from_another_origin_is_refused() -> None:
    async with gateway(allowed_origins=["https://app.example"]) as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/ws"
        # Another site open in the user's browser: 403 before any session.
        assert await status_of(url, origin="https://evil.example") == 403
        assert await status_of(f"ws://127.0.0.1:{gw.port}/v1/realtime", origin="http://x.y") == 403
        # The gateway's own page, an allowed one, and no browser at all.
        assert await status_of(url, origin=f"http://127.0.0.1:{gw.port}") == 101
        assert await status_of(url, origin="https://app.example") == 101
        assert await status_of(url) == 101


async def test_tokens_are_required_when_set() -> None:
    async with gateway(auth_token="s3cret") as gw:
        url = f"ws://127.0.0.1:{gw.port}/v1/ws"
        assert await status_of(url) == 401
        assert await status_of(url + "?token=wrong") == 401
        assert await status_of(url, additional_headers={"Authorization": "Bearer s3cret"}) == 101


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


async def test_websocket_over_tls(self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    async with gateway(tls_cert=str(cert), tls_key=str(key), auth_token="s3cret") as gw:
        trust = ssl.create_default_context(cafile=str(cert))
        url = f"wss://127.0.0.1:{gw.port}/v1/ws"
        bearer = {"Authorization": "Bearer s3cret"}
        async with connect(url, ssl=trust, additional_headers=bearer) as ws:
            started = json.loads(await ws.recv())
            # No stages on this bus: the session cannot be placed, but it was
            # answered over TLS.
            assert started["type"] in ("session_started", "error")
        # Plain text to the TLS port gets no WebSocket.
        with pytest.raises(Exception):  # noqa: B017 (whatever the handshake breaks with)
            async with connect(f"ws://127.0.0.1:{gw.port}/v1/ws", open_timeout=3):
                pass
        # gRPC with the same certificate: the health service answers over TLS.
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(f"127.0.0.1:{gw.grpc_port}", credentials) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert answer.status in (
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.NOT_SERVING,
            )
        # The OTA's HTTP port is TLS too.
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"https://127.0.0.1:{gw.http_port}/xiaozhi/ota/",
                headers={"Device-Id": "aa:bb"},
                ssl=trust,
            ) as resp:
                assert resp.status == 200


async def test_ota_gives_each_board_its_own_token() -> None:
    shared = "shared-board-token"
    async with gateway(auth_token="s3cret", xiaozhi={"auth_token": shared}) as gw:
        async with aiohttp.ClientSession() as http:
            tokens = {}
            for device in ("aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"):
                async with http.post(
                    f"http://127.0.0.1:{gw.http_port}/xiaozhi/ota/",
                    headers={"Device-Id": device},
                    json={"application": {"version": "1.0.0"}},
                ) as resp:
                    body = await resp.json()
                tokens[device] = body["websocket"]["token"]
                assert shared not in json.dumps(body)
                assert "s3cret" not in json.dumps(body)
        one, two = tokens.values()
        assert one and two and one != two
        secret = device_secret(gw.settings)
        assert secret is not None
        assert one == device_token(secret, "xiaozhi", "aa:bb:cc:00:00:01")

        url = f"ws://127.0.0.1:{gw.port}/xiaozhi/v1/"

        def board(device: str, token: str) -> dict[str, Any]:
            headers = {"Device-Id": device, "Client-Id": "c", "Protocol-Version": "1"}
            return {"additional_headers": {**headers, "Authorization": f"Bearer {token}"}}

        # Its own token opens its door; another board's, or none, does not.
        assert await status_of(url, **board("aa:bb:cc:00:00:01", one)) == 101
        assert await status_of(url, **board("aa:bb:cc:00:00:01", two)) == 401
        assert await status_of(url, **board("aa:bb:cc:00:00:01", "")) == 401
        assert await status_of(url, **board("aa:bb:cc:00:00:03", one)) == 401


async def test_reachable_gateways_serve_boards_from_their_allow_list_only() -> None:
    # Board firmware proves nothing on first contact: beyond loopback the OTA
    # gives no token, and EchoKit no session, to a board nobody listed.
    listed = "aa:bb:cc:00:00:09"
    async with gateway(
        host="0.0.0.0", auth_token="s3cret", xiaozhi={"device_allowlist": [listed]}
    ) as gw:
        async with aiohttp.ClientSession() as http:
            for device, status in ((listed, 200), ("aa:bb:cc:00:00:10", 403)):
                async with http.post(
                    f"http://127.0.0.1:{gw.http_port}/xiaozhi/ota/", headers={"Device-Id": device}
                ) as resp:
                    assert resp.status == status, device
        assert await status_of(f"ws://127.0.0.1:{gw.port}/ws/a1b2c3d4e5f6") == 403
    async with gateway(host="0.0.0.0", auth_token="s3cret") as gw:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{gw.http_port}/xiaozhi/ota/", headers={"Device-Id": listed}
            ) as resp:
                assert resp.status == 403
                assert "device_allowlist" in (await resp.json())["error"]
