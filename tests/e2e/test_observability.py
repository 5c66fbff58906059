"""One spoken turn is one trace across all six services, and every service's
/metrics shows the turn, consistent with what the client was told."""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from parley.cli.client import ParleyClient
from tests.e2e.harness import start_scripted_stack
from tests.e2e.test_pipeline import ask
from tests.support.openai_chat_stub import ChatReply, tool_call_deltas

pytestmark = pytest.mark.slow

SERVICES = ("gateway", "vad", "asr", "llm", "tts", "tools")
HOPS = ("final_transcript", "first_token", "first_sentence", "first_tts_audio", "first_audio_sent")


@pytest.fixture(scope="module")
async def traced(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("traced")
    # A model that calls a tool, so the tools service is in the turn.
    async with start_scripted_stack(
        work,
        env={
            "PARLEY_TELEMETRY__TRACES_EXPORTER": "file",
            "PARLEY_TELEMETRY__TRACES_FILE": str(work / "traces-{service}.jsonl"),
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    ) as (running, stub):
        stub.replies = [
            ChatReply(
                tool_call_deltas([("call_t", "get_current_time", '{"timezone": "Europe/Paris"}')])
            ),
            ChatReply(["It is morning in Paris.", " Have a nice day."]),
        ]
        client = await ParleyClient.open(running.gateway_url)
        turn = await ask(client, "What time is it in Paris?")
        metrics = await client.wait_for("turn_metrics", timeout=10)
        await client.close()
        await asyncio.sleep(1.0)  # let each batch exporter write
        yield running, work, turn, metrics


def load_spans(work: Path) -> list[dict]:
    spans = []
    for path in work.glob("traces-*.jsonl"):
        for line in path.read_text().splitlines():
            span = json.loads(line)
            span["service"] = span["resource"]["attributes"]["service.name"].removeprefix("parley-")
            spans.append(span)
    return spans


async def test_one_turn_is_one_trace_across_all_services(traced) -> None:
    _, work, turn, _ = traced
    spans = load_spans(work)
    transcribe = [s for s in spans if s["name"] == "asr.transcribe"]
    assert len(transcribe) == 1
    trace_id = transcribe[0]["context"]["trace_id"]
    in_trace = [s for s in spans if s["context"]["trace_id"] == trace_id]
    assert {s["service"] for s in in_trace} == set(SERVICES), sorted(
        (s["service"], s["name"]) for s in in_trace
    )
    by_name = defaultdict(list)
    for span in in_trace:
        by_name[span["name"]].append(span)

    def parent_of(name: str) -> str:
        parent_id = by_name[name][0]["parent_id"]
        parents = [s["name"] for s in in_trace if s["context"]["span_id"] == parent_id]
        assert parents, f"{name} has no parent in the trace"
        return parents[0]

    roots = [s for s in in_trace if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["gateway.turn"]
    assert parent_of("vad.end_of_turn") == "gateway.turn"
    # Transcribed at the pause before the turn ended (early answer), or at its end.
    assert parent_of("asr.transcribe") in ("vad.pause", "vad.end_of_turn")
    if parent_of("asr.transcribe") == "vad.pause":
        assert parent_of("vad.pause") == "gateway.turn"
    assert parent_of("llm.generate") == "asr.transcribe"
    assert parent_of("llm.tool_call") == "llm.generate"
    assert parent_of("tools.call") == "llm.tool_call"
    assert parent_of("tts.synthesize") == "llm.generate"
    assert parent_of("gateway.first_audio_sent") == "tts.synthesize"
    generate = by_name["llm.generate"][0]
    assert {e["name"] for e in generate["events"]} >= {"first_token", "first_sentence"}
    assert [e["name"] for e in generate["events"]].count("sentence") == 2
    attributes = transcribe[0]["attributes"]
    assert attributes["parley.turn_id"] == 1 and attributes["parley.audio_ms"] > 500
    assert attributes["parley.session_id"] and attributes["parley.model"]
    assert len(by_name["tts.synthesize"]) == 2  # one span per sentence
    assert turn["ended"]["status"] == "completed"


def metrics_ports(stack) -> dict[str, int]:
    ports = {}
    for process in stack.processes:
        match = re.search(r"(\w+) ready: .*metrics=:(\d+)", process.log.read_text())
        if match:
            ports[match.group(1)] = int(match.group(2))
    return ports


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not exported")


async def test_every_service_exports_the_turn(traced) -> None:
    stack, _, _, metrics = traced
    ports = metrics_ports(stack)
    assert set(ports) == set(SERVICES)
    async with httpx.AsyncClient() as http:
        pages = {
            name: (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            for name, port in ports.items()
        }
    gateway = pages["gateway"]
    for hop in HOPS:
        assert sample(gateway, "parley_turn_hop_seconds_count", hop=hop) == 1
        seen = sample(gateway, "parley_turn_hop_seconds_sum", hop=hop) * 1000
        assert abs(seen - metrics["hops"][hop]) <= 20, (hop, seen, metrics["hops"][hop])
    assert sample(pages["asr"], "parley_real_time_factor_count", stage="asr") == 1
    assert sample(pages["tts"], "parley_real_time_factor_count", stage="tts") == 2
    assert sample(pages["llm"], "parley_stage_seconds_count", stage="llm", step="first_token") == 1
    assert sample(pages["tools"], "parley_stage_seconds_count", stage="tools", step="call") == 1
    for name in ("vad", "asr", "llm", "tts"):
        assert sample(pages[name], "parley_active_sessions", stage=name) == 0
        assert sample(pages[name], "parley_bus_latency_seconds_count", stream="control") >= 1
    assert sample(pages["vad"], "parley_frames_total", stage="vad", stream="audio.in") > 50
    for page in pages.values():
        # Bounded label sets: no session id ever becomes a label.
        assert not re.search(r'session(_id)?="', page)
