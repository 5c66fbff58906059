"""The state store on a real nats-server with JetStream: buckets created or
bound, compare-and-set ownership of a key, bounded values, and a clear error
where JetStream is missing."""

from __future__ import annotations

import nats
import pytest

from parley.config import ConfigError, ParleySettings, StateSettings, load_settings
from parley.state import HISTORY, SESSIONS, CasRecord, StateUnavailable, open_bucket
from tests.support.stack import NATS_SERVER, free_port, start_nats, start_process


async def test_buckets_are_created_with_their_settings_then_bound(tmp_path) -> None:
    async with start_nats(tmp_path) as (_, url):
        nc = await nats.connect(url)
        try:
            settings = StateSettings(history_ttl_s=1800, session_ttl_s=900, max_value_bytes=4096)
            await open_bucket(nc, HISTORY, settings)
            await open_bucket(nc, SESSIONS, settings)
            js = nc.jetstream()
            history = await js.stream_info(f"KV_{HISTORY}")
            assert history.config.max_age == 1800
            assert history.config.max_msgs_per_subject == 1
            assert history.config.max_msg_size == 4096
            assert history.config.num_replicas == 1
            assert (await js.stream_info(f"KV_{SESSIONS}")).config.max_age == 900
            # Opened again, even with other settings (another version running
            # beside this one): bound as it is, not changed.
            kv = await open_bucket(nc, HISTORY, StateSettings(history_ttl_s=7200))
            await kv.put("k", b"v")
            assert (await js.stream_info(f"KV_{HISTORY}")).config.max_age == 1800
        finally:
            await nc.close()


async def test_a_key_is_written_by_its_owner_until_someone_else_writes_it(tmp_path) -> None:
    async with start_nats(tmp_path) as (_, url):
        nc = await nats.connect(url)
        try:
            kv = await open_bucket(nc, HISTORY, StateSettings())
            old = CasRecord(kv, "session-1", "llm", 1024)
            assert await old.load() is None
            assert await old.save(b"turn 1")
            new = CasRecord(kv, "session-1", "llm", 1024)
            assert await new.load() == b"turn 1"
            assert await new.save(b"turn 2")
            # The old owner, back from a stall, must not overwrite the new one.
            assert not await old.save(b"stale")
            assert old.lost
            old.save_soon(lambda: b"stale again")
            await old.flush(1.0)
            assert (await kv.get("session-1")).value == b"turn 2"
            # Too big a value is refused here, before the server would.
            assert not await new.save(b"x" * 2000)
            assert not new.lost
            # Many changes in a burst: the latest is what is stored.
            for n in range(20):
                new.save_soon(lambda n=n: f"change {n}".encode())
            await new.flush(2.0)
            assert (await kv.get("session-1")).value == b"change 19"
            # The session ended: its key goes, and a fresh owner finds nothing.
            new.save_soon(lambda: b"last words")
            await new.delete(2.0)
            new.save_soon(lambda: b"after the end")
            await new.flush(1.0)
            assert await CasRecord(kv, "session-1", "llm", 1024).load() is None
        finally:
            await nc.close()


async def test_no_jetstream_is_a_clear_error(tmp_path) -> None:
    port = free_port()
    plain = await start_process(
        "nats", [str(NATS_SERVER), "-a", "127.0.0.1", "-p", str(port)], {}, tmp_path
    )
    try:
        await plain.wait_for("Server is ready", 10)
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        try:
            with pytest.raises(StateUnavailable, match="state.enabled = false"):
                await open_bucket(nc, HISTORY, StateSettings(timeout_s=0.5, start_wait_s=0))
        finally:
            await nc.close()
    finally:
        await plain.stop()


def test_state_settings_are_checked_at_start() -> None:
    assert ParleySettings().state.enabled
    with pytest.raises(ConfigError, match="history_ttl_s"):
        load_settings(None, state={"history_ttl_s": 60})
    with pytest.raises(ConfigError, match="max_value_bytes"):
        load_settings(None, state={"max_value_bytes": 2_000_000})
    with pytest.raises(ConfigError, match="replicas"):
        load_settings(None, state={"replicas": 0})
