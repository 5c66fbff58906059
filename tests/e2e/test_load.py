"""`make load` at a small N, so the harness never rots: two devices (one on
the Parley WebSocket in the Piper voice, one a Xiaozhi board speaking Opus
in an espeak-ng voice), two turns each, the first of each spoken over;
then the density mode for a few seconds. No failed turn, and the reports
hold what they should. The latencies are the benchmark's to report, not
this test's to judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.harness import Stack
from tests.load import report
from tests.load.run import LoadConfig, run_density, run_pipeline

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG), path
    assert len(data) > 10_000, f"{path}: {len(data)} bytes, too small for a plot"


async def test_load_ramp_at_n2_over_both_protocols(stack: Stack, tmp_path: Path) -> None:
    cfg = LoadConfig(
        ns=(2,),
        turns=2,
        min_step_turns=0,
        protocols=("parley", "xiaozhi"),
        voices=("piper", "espeak:en-us"),
        barge_in=1.0,  # each device's first answer is spoken over
        stagger_s=1.0,
        turn_timeout_s=90.0,  # a bound, not a target: the machine may be busy
        max_minutes=6.0,  # a bound: over the step's worst case (every turn timing out)
        warmup=False,
        out=tmp_path,
    )
    result = await run_pipeline(cfg, stack)

    (step,) = result["steps"]
    failures = step["failures"]
    assert result["failed_turns"] == 0 and result["refused_turns"] == 0, failures
    assert step["n"] == 2 and step["turns"] == 4
    turns = step["per_turn"]
    assert {t["protocol"] for t in turns} == {"parley", "xiaozhi"}
    assert {t["voice"] for t in turns} == {"piper", "espeak:en-us"}
    assert all(t["transcript"] and t["answer"] for t in turns), turns
    # Every turn's answer was heard, the spoken-over ones too.
    assert step["first_audio_ms"]["n"] == 4
    assert {"p50", "p95", "p99"} <= set(step["first_audio_ms"])
    assert set(step["first_audio_ms_by_protocol"]) == {"parley", "xiaozhi"}
    assert set(report.SERVER_HOPS) <= set(step["server_hops_ms"])
    assert {"vad_end", "first_audio"} <= set(step["hops_ms"])
    barges = step["barge_ins"]
    assert barges["planned"] == 2
    assert barges["cut"] + barges["answer_ended_first"] == 2 and barges["cut"] >= 1
    fairness = step["fairness"]
    assert set(fairness["session_median_ms"]) == {"parley-0", "xiaozhi-1"}
    assert fairness["worst_over_median"] >= 1.0

    resources = step["resources"]
    stages = resources["stages"]
    assert {"gateway", "vad", "asr", "llm", "tts", "tools", "nats", "harness"} <= set(stages)
    for name in ("gateway", "vad", "asr", "llm", "tts", "harness"):
        assert stages[name]["cpu_percent"] > 0 and stages[name]["rss_peak_mb"] > 0, name
    assert resources["dropped_frames_total"] >= 0
    assert resources["machine"]["cores"] >= 1 and resources["machine"]["load_average_start"]

    saved = json.loads((tmp_path / report.PIPELINE_FILES["json"]).read_text())
    assert saved["steps"][0]["outcomes"] == step["outcomes"]
    markdown = (tmp_path / report.PIPELINE_FILES["markdown"]).read_text()
    assert "# Parley load report" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 2 | 4 |"))
    assert f"| {step['first_audio_ms']['p50']:.0f} |" in row
    check_png(tmp_path / report.PIPELINE_FILES["latency_plot"])
    check_png(tmp_path / report.PIPELINE_FILES["cpu_plot"])


async def test_density_mode_streams_through_gateway_and_vad_only(tmp_path: Path) -> None:
    cfg = LoadConfig(
        mode="density",
        ns=(1, 2),
        voices=("piper", "espeak:en-gb"),
        density_seconds=5.0,
        max_minutes=2.0,
        # The harness is under test, not the latency: a target no shared
        # machine misses, so the ramp never stops early.
        target_ms=1000.0,
        out=tmp_path,
    )
    result = await run_density(cfg)

    steps = result["steps"]
    assert [s["n"] for s in steps] == [1, 2], result["skipped_n"]
    for step in steps:
        assert step["errors"] == [] and step["refused"] == 0, step["errors"]
        assert step["sessions_without_decisions"] == 0
        # About ten stats events a second per session.
        assert step["decision_latency_ms"]["n"] >= 20 * step["n"]
        assert step["decision_latency_ms"]["p95"] > 0
        assert step["gateway_vad_cores"] > 0
        stages = step["resources"]["stages"]
        # Only what the density mode runs: nats, one gateway, one vad.
        assert set(stages) == {"nats", "vad", "gateway", "harness"}
    assert result["headline"]["target_p95_ms"] == 1000.0
    assert result["headline"]["cpu_bound"]["sessions"] == 2
    markdown = (tmp_path / report.DENSITY_FILES["markdown"]).read_text()
    assert "# Parley density report" in markdown and "| 2 |" in markdown
    assert json.loads((tmp_path / report.DENSITY_FILES["json"]).read_text())["steps"]
    check_png(tmp_path / report.DENSITY_FILES["latency_plot"])
