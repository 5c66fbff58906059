"""Failover time: SIGKILL the instance that owns a session's stage, again and
again, and time how long until another instance has taken the session (its
PlaceReply ok, the session opened there: for the llm, its history read), and
until a question typed then is answered with the history whole.

    .venv/bin/python -m tests.bench.failover_bench [--stage llm] [--kills 10]
        [--interval 0.25 --misses 3] [--out failover-report.json]

Two instances of the stage (the llm on the OpenAI stand-in that answers with
the number of user messages it was given), one gateway; after each kill the
killed instance is replaced by a fresh one, so there are always two. kill ->
serving is read off the bus: the PlaceRequest for the session and its ok
reply (to the gateway's inbox). Not a test: the figures depend on the
machine and its load. Writes JSON to --out and prints p50/p95."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
from nats.aio.msg import Msg

from parley.cli.client import ParleyClient
from parley.v1 import placement_pb2
from tests.e2e.harness import start_stack
from tests.support.openai_chat_stub import OpenAIChatStub, count_user_messages
from tests.support.stack import Running, start_service


class PlacementWatch:
    """PlaceRequests for one session on the bus, and the ok replies to them."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.inboxes: dict[str, str] = {}  # reply subject -> stage
        self.placed: list[tuple[float, str, str]] = []  # (when, stage, instance)
        self.changed = asyncio.Event()

    async def on_request(self, msg: Msg) -> None:
        req = placement_pb2.PlaceRequest()
        req.ParseFromString(msg.data)
        if req.session_id == self.session_id and msg.reply:
            self.inboxes[msg.reply] = msg.subject.split(".")[3]

    async def on_inbox(self, msg: Msg) -> None:
        stage = self.inboxes.pop(msg.subject, None)
        if stage is None:
            return
        reply = placement_pb2.PlaceReply()
        reply.ParseFromString(msg.data)
        if reply.ok:
            self.placed.append((time.monotonic(), stage, reply.instance_id))
            self.changed.set()

    def owner(self, stage: str) -> str | None:
        owners = [instance for _, s, instance in self.placed if s == stage]
        return owners[-1] if owners else None

    async def placed_after(self, stage: str, since: float, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            for when, s, _ in self.placed:
                if s == stage and when > since:
                    return when
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{stage} not placed again within {timeout_s} s")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass


def instance_process(processes: list[Running], instance: str) -> Running:
    for process in processes:
        if process.returncode is None and f"instance={instance}" in process.text():
            return process
    raise LookupError(instance)


async def ask(client: ParleyClient, text: str) -> dict[str, Any]:
    mark = len(client.events)
    await client.send_json({"type": "text_input", "text": text})
    return await client.wait_for("response_end", after=mark, timeout=30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "PARLEY_GATEWAY__HEARTBEAT_INTERVAL_S": str(args.interval),
        "PARLEY_GATEWAY__HEARTBEAT_MISSES": str(args.misses),
        f"PARLEY_{args.stage.upper()}__HEARTBEAT_INTERVAL_S": str(args.interval),
    }
    if not args.state:
        env["PARLEY_STATE__ENABLED"] = "false"
    stub = OpenAIChatStub(answer=count_user_messages)
    workdir = Path(tempfile.mkdtemp(prefix="parley-failover-"))
    async with stub:
        env |= {"PARLEY_LLM__PROVIDER": "openai", "PARLEY_LLM__BASE_URL": stub.base_url}
        async with start_stack(workdir, services={args.stage: 2}, env=env) as stack:
            nc = await nats.connect(stack.nats_url)
            client = await ParleyClient.open(stack.gateway_url)
            watch = PlacementWatch(client.session["session_id"])
            # Only the stage under test: a listener on another stage's subject
            # would take its "no responders" away and slow the gateway's retries.
            await nc.subscribe(f"parley.v1.place.{args.stage}", cb=watch.on_request)
            await nc.subscribe(f"parley.v1.place.{args.stage}.*", cb=watch.on_request)
            await nc.subscribe("_INBOX.>", cb=watch.on_inbox)
            service_env = {"PARLEY_NATS__URL": stack.nats_url, **env}
            kills: list[dict[str, Any]] = []
            extra: list[Running] = []
            try:
                asked = 0
                if args.stage == "llm":
                    await ask(client, "Hello.")
                    asked = 1
                # The first placement happened before the watch: learn the
                # owner from its heartbeat's log line instead.
                owner = await first_owner(nc, args.stage, watch.session_id)
                for n in range(args.kills):
                    victim = instance_process([*stack.processes, *extra], owner)
                    killed_at = time.monotonic()
                    os.kill(victim.pid, signal.SIGKILL)
                    await victim.proc.wait()
                    placed_at = await watch.placed_after(args.stage, killed_at, 30)
                    new_owner = watch.owner(args.stage)
                    assert new_owner and new_owner != owner, (owner, new_owner)
                    record: dict[str, Any] = {
                        "kill": n + 1,
                        "kill_to_serving_s": round(placed_at - killed_at, 3),
                    }
                    if args.stage == "llm":
                        end = await ask(client, "And now?")
                        asked += 1
                        record["answer"] = end["text"]
                        record["history_whole"] = f"asked {asked} questions" in end["text"]
                    kills.append(record)
                    print(record, flush=True)
                    owner = new_owner
                    # Two instances again for the next kill.
                    extra.append(await start_service(args.stage, service_env, workdir))
                    await asyncio.sleep(args.interval * (args.misses + 1))
            finally:
                await client.close()
                await nc.close()
                for process in extra:
                    await process.stop()
    times = [k["kill_to_serving_s"] for k in kills]
    return {
        "stage": args.stage,
        "state": args.state,
        "heartbeat_interval_s": args.interval,
        "heartbeat_misses": args.misses,
        "kills": kills,
        "kill_to_serving_s": {
            "p50": round(statistics.median(times), 3),
            "p95": round(percentile(times, 0.95), 3),
            "max": max(times),
        },
        "history_whole": all(k.get("history_whole", True) for k in kills),
    }


async def first_owner(nc: nats.NATS, stage: str, session_id: str) -> str:
    found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_beat(msg: Msg) -> None:
        beat = placement_pb2.Heartbeat()
        beat.ParseFromString(msg.data)
        if session_id in beat.session_ids and not found.done():
            found.set_result(beat.instance_id)

    sub = await nc.subscribe(f"parley.v1.heartbeat.{stage}", cb=on_beat)
    try:
        return await asyncio.wait_for(found, 10)
    finally:
        await sub.unsubscribe()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="llm", choices=["vad", "asr", "llm", "tts"])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.25, help="heartbeat interval (s)")
    parser.add_argument("--misses", type=int, default=3)
    parser.add_argument("--no-state", dest="state", action="store_false")
    parser.add_argument("--out", default="failover-report.json")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["kill_to_serving_s"]), "history whole:", report["history_whole"])


if __name__ == "__main__":
    main()
