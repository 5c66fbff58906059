"""The harness's reports: one JSON file with everything (every turn too), a
Markdown summary a person reads, and PNG plots (matplotlib, headless)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parley.cli.bench import percentile, summary

if TYPE_CHECKING:
    from tests.load.run import LoadConfig

PIPELINE_FILES = {
    "json": "load-report.json",
    "markdown": "load-report.md",
    "latency_plot": "load-latency.png",
    "cpu_plot": "load-cpu.png",
}
DENSITY_FILES = {
    "json": "density-report.json",
    "markdown": "density-report.md",
    "latency_plot": "density-latency.png",
}
# The gateway's turn_metrics hops, in the order they happen.
SERVER_HOPS = ("final_transcript", "first_token", "first_sentence", "first_tts_audio")
STAGE_ORDER = ("gateway", "vad", "asr", "llm", "tts", "tools", "nats", "harness")
RATIO_GOAL = 1.5
# The density ramp stops after a step whose p95 is this many times the target.
SATURATED = 3.0


def stats(values: list[float]) -> dict[str, float]:
    """p50, p95, p99, mean and how many (ms); {} for no values."""
    if not values:
        return {}
    return {**summary(values), "p99": round(percentile(values, 0.99), 1)}


def _config(cfg: LoadConfig) -> dict[str, Any]:
    out = asdict(cfg)
    out["out"] = str(cfg.out)
    return out


def _ms(s: dict[str, float], key: str) -> str:
    return f"{s[key]:.0f}" if key in s else "-"


def _stage_cpu(step: dict[str, Any]) -> dict[str, float]:
    stages = step["resources"]["stages"]
    return {name: stages[name]["cpu_percent"] for name in STAGE_ORDER if name in stages}


def waited(resources: dict[str, Any]) -> str:
    """The CPU pressure of a step (percent of its time something waited for
    a CPU), for the tables."""
    value = resources["machine"].get("cpu_pressure_percent")
    return "-" if value is None else f"{value:.0f}%"


def others_cpu(resources: dict[str, Any]) -> float:
    """CPU (percent of one core) that processes outside the stack and the
    harness took over a step: the machine is shared, and what they take the
    stack cannot have."""
    machine = resources["machine"]
    everyone = machine["busy_percent"] * machine["cores"]
    ours = sum(s["cpu_percent"] for s in resources["stages"].values())
    return round(max(everyone - ours, 0.0), 1)


# --- pipeline ----------------------------------------------------------------------
def step_line(step: dict[str, Any]) -> str:
    fa, o = step["first_audio_ms"], step["outcomes"]
    cpu = " ".join(f"{k} {v:.0f}%" for k, v in _stage_cpu(step).items())
    return (
        f"load: N={step['n']}: first audio p50 {_ms(fa, 'p50')} p95 {_ms(fa, 'p95')} "
        f"p99 {_ms(fa, 'p99')} ms; ok {o['ok']} cut {o['interrupted']} failed {o['failed']} "
        f"refused {o['refused']}; dropped {step['resources']['dropped_frames_total']:.0f}; {cpu}"
    )


def pipeline_report(
    cfg: LoadConfig, steps: list[dict[str, Any]], skipped: list[int], seconds: float
) -> dict[str, Any]:
    by_n = {s["n"]: s for s in steps}
    ratios: dict[str, Any] = {}
    if 1 in by_n and 4 in by_n:
        one, four = by_n[1]["first_audio_ms"].get("p95"), by_n[4]["first_audio_ms"].get("p95")
        if one and four:
            ratios = {"p95_first_audio_4_over_1": round(four / one, 3), "goal": RATIO_GOAL}
    return {
        "mode": "pipeline",
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": _config(cfg),
        "machine": {"cores": os.cpu_count(), "load_average_end": list(os.getloadavg())},
        "seconds": round(seconds, 1),
        "steps": steps,
        "skipped_n": skipped,
        "ratios": ratios,
        "failed_turns": sum(s["outcomes"]["failed"] for s in steps),
        "refused_turns": sum(s["outcomes"]["refused"] for s in steps),
        "files": PIPELINE_FILES,
    }


def pipeline_markdown(rep: dict[str, Any]) -> str:
    cfg, steps = rep["config"], rep["steps"]
    stages = [s for s in STAGE_ORDER if any(s in st["resources"]["stages"] for st in steps)]
    lines = [
        "# Parley load report",
        "",
        f"{rep['written_at']}: {', '.join(cfg['protocols'])} devices, voices "
        f"{', '.join(cfg['voices'])}, {cfg['turns']} turns each, barge-in share "
        f"{cfg['barge_in']}, start stagger up to {cfg['stagger_s']} s; "
        f"{rep['machine']['cores']} cores (shared: see the load average); {rep['seconds']:.0f} s.",
        "",
        "First audio: from the true end of the device's speech (the last voiced frame sent) "
        "to the first answer audio at the device. CPU: percent of one core over the step; "
        "others: what processes outside the stack and the harness took meanwhile; CPU wait: "
        "the share of the step during which some task waited for a CPU (Linux PSI).",
        "",
        "| N | turns | ok | cut | failed | refused | first audio p50 | p95 | p99 (ms) "
        "| worst session / median | dropped frames | "
        + " | ".join(f"{s} CPU" for s in stages)
        + " | others CPU | CPU wait | load avg |",
        "|" + "---|" * (14 + len(stages)),
    ]
    for st in steps:
        o, fa, fair = st["outcomes"], st["first_audio_ms"], st["fairness"]
        res = st["resources"]
        cpu = [
            f"{res['stages'][s]['cpu_percent']:.0f}%" if s in res["stages"] else "-" for s in stages
        ]
        ratio = fair.get("worst_over_median")
        lines.append(
            f"| {st['n']} | {st['turns']} | {o['ok']} | {o['interrupted']} | {o['failed']} "
            f"| {o['refused']} | {_ms(fa, 'p50')} | {_ms(fa, 'p95')} | {_ms(fa, 'p99')} "
            f"| {ratio if ratio is not None else '-'} | {res['dropped_frames_total']:.0f} | "
            + " | ".join(cpu)
            + f" | {others_cpu(res):.0f}% | {waited(res)} "
            f"| {res['machine']['load_average_start'][0]:.1f} → "
            f"{res['machine']['load_average_end'][0]:.1f} |"
        )
    ratios = rep["ratios"]
    if ratios:
        lines += [
            "",
            f"4-talker p95 / 1-talker p95: **{ratios['p95_first_audio_4_over_1']}** "
            f"(goal ≤ {ratios['goal']}).",
        ]
    hops = [h for h in SERVER_HOPS if any(h in st["server_hops_ms"] for st in steps)]
    lines += [
        "",
        "## Hops (ms after the end of speech, p50 / p95)",
        "",
        "The gateway's turn_metrics (Parley WebSocket sessions; from the end of speech as its "
        "VAD placed it), and at the device: VAD's decision (`vad_end`) and the first audio.",
        "",
        "| N | vad_end | " + " | ".join(hops) + " | first audio (parley) | first audio (xiaozhi) |",
        "|" + "---|" * (4 + len(hops)),
    ]
    for st in steps:
        cells = [st["hops_ms"].get("vad_end", {})] + [st["server_hops_ms"].get(h, {}) for h in hops]
        by_protocol = st["first_audio_ms_by_protocol"]
        cells += [by_protocol.get("parley", {}), by_protocol.get("xiaozhi", {})]
        lines.append(
            f"| {st['n']} | "
            + " | ".join(f"{_ms(c, 'p50')} / {_ms(c, 'p95')}" for c in cells)
            + " |"
        )
    lines += [
        "",
        "## Barge-ins, memory, the harness",
        "",
        "| N | barge-ins | cut | answer ended first | reaction p50 / p95 (ms): by voice (parley), "
        "by abort (xiaozhi) | peak RSS (MB) "
        "| harness loop lag p95 / max (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for st in steps:
        b, res = st["barge_ins"], st["resources"]
        rss = ", ".join(
            f"{s} {res['stages'][s]['rss_peak_mb']:.0f}" for s in stages if s in res["stages"]
        )
        lag = " / ".join(str(res["harness_loop_lag_ms"].get(k, "-")) for k in ("p95", "max"))
        by = b.get("reaction_ms_by_protocol", {})
        reaction = ", ".join(
            f"{_ms(by.get(p, {}), 'p50')} / {_ms(by.get(p, {}), 'p95')}"
            for p in ("parley", "xiaozhi")
        )
        lines.append(
            f"| {st['n']} | {b['planned']} | {b['cut']} | {b['answer_ended_first']} "
            f"| {reaction} | {rss} | {lag} |"
        )
    failures = [(st["n"], f) for st in steps for f in st["failures"]]
    if failures:
        lines += ["", "## Failed or refused turns (first 20)", ""]
        lines += [
            f"- N={n} {f['device']} turn {f['turn']}: {'; '.join(f['errors'])[:300]}"
            for n, f in failures[:20]
        ]
    dropped = {k: v for st in steps for k, v in st["resources"]["dropped_frames"].items()}
    if dropped:
        lines += [
            "",
            "Frames dropped, by reason: " + ", ".join(f"{k} {v:.0f}" for k, v in dropped.items()),
        ]
    if rep["skipped_n"]:
        lines += ["", f"Skipped (would not fit in max_minutes): N = {rep['skipped_n']}"]
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def pipeline_plots(rep: dict[str, Any], out: Path) -> None:
    plt = _pyplot()
    steps = rep["steps"]
    ns = [st["n"] for st in steps]
    series: dict[str, list[dict[str, float]]] = {
        "vad_end (device)": [st["hops_ms"].get("vad_end", {}) for st in steps],
        **{
            f"{hop} (gateway)": [st["server_hops_ms"].get(hop, {}) for st in steps]
            for hop in SERVER_HOPS
        },
        "first audio (device)": [st["first_audio_ms"] for st in steps],
    }
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, key in zip(axes, ("p50", "p95"), strict=True):
        for label, cells in series.items():
            ys = [c.get(key, math.nan) for c in cells]
            if not all(math.isnan(y) for y in ys):
                ax.plot(ns, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("devices at once (N)")
        ax.set_title(f"{key} latency after the end of speech")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PIPELINE_FILES["latency_plot"], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    stages = [s for s in STAGE_ORDER if any(s in st["resources"]["stages"] for st in steps)]
    for stage in stages:
        cpu = [
            st["resources"]["stages"].get(stage, {}).get("cpu_percent", math.nan) for st in steps
        ]
        rss = [
            st["resources"]["stages"].get(stage, {}).get("rss_peak_mb", math.nan) for st in steps
        ]
        axes[0].plot(ns, cpu, marker="o", label=stage)
        axes[1].plot(ns, rss, marker="o", label=stage)
    for ax, title, unit in (
        (axes[0], "CPU per stage", "% of one core"),
        (axes[1], "peak memory per stage", "MB (RSS)"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("devices at once (N)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / PIPELINE_FILES["cpu_plot"], dpi=100)
    plt.close(fig)


def _write(
    rep: dict[str, Any],
    out: Path,
    files: dict[str, str],
    markdown: Callable[[dict[str, Any]], str],
    plots: Callable[[dict[str, Any], Path], None],
) -> None:
    """One report's JSON, Markdown and (when a step ran) plots, in out."""
    out.mkdir(parents=True, exist_ok=True)
    (out / files["json"]).write_text(json.dumps(rep, indent=2) + "\n")
    (out / files["markdown"]).write_text(markdown(rep))
    if rep["steps"]:
        plots(rep, out)
    print(f"load: reports in {out}/ ({', '.join(files.values())})")


def write_pipeline(rep: dict[str, Any], out: Path) -> None:
    _write(rep, out, PIPELINE_FILES, pipeline_markdown, pipeline_plots)


# --- density -----------------------------------------------------------------------
def density_line(step: dict[str, Any]) -> str:
    d = step["decision_latency_ms"]
    return (
        f"load: density N={step['n']}: frame -> VAD decision p50 {_ms(d, 'p50')} "
        f"p95 {_ms(d, 'p95')} p99 {_ms(d, 'p99')} ms over {d.get('n', 0)} decisions; "
        f"gateway+vad {step['gateway_vad_cores']:.2f} cores"
        + ("" if step["within_target"] else " (over the target)")
    )


def density_report(
    cfg: LoadConfig, steps: list[dict[str, Any]], skipped: list[int], seconds: float
) -> dict[str, Any]:
    passing = [s for s in steps if s["within_target"]]
    best = max(passing, key=lambda s: s["n"]) if passing else None
    headline: dict[str, Any] = {"target_p95_ms": cfg.target_ms}
    unsaturated = [s for s in steps if not s["saturated"]]
    if unsaturated:
        # What the CPU alone would allow, whatever the latency: the cost per
        # session at the largest N where the fixed overhead weighs least,
        # but not a saturated one, whose stages got less CPU than they
        # wanted (measured: vad 51% of a core for 32 sessions, 41% for 16,
        # with a 1.7 s p95 at 32).
        largest = max(unsaturated, key=lambda s: s["n"])
        headline["cpu_bound"] = {
            "sessions": largest["n"],
            "gateway_vad_cores": largest["gateway_vad_cores"],
            "sessions_per_core": largest["sessions_per_core"],
        }
    if best is not None:
        headline.update(
            sessions=best["n"],
            gateway_vad_cores=best["gateway_vad_cores"],
            sessions_per_core=best["sessions_per_core"],
            # Did a larger N fail the target, or did the ramp end first?
            limit_found=any(not s["within_target"] for s in steps if s["n"] > best["n"]),
            # Noise can pass a step after a failed one: were all below it in?
            all_smaller_within=all(s["within_target"] for s in steps if s["n"] < best["n"]),
        )
    return {
        "mode": "density",
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": _config(cfg),
        "machine": {"cores": os.cpu_count(), "load_average_end": list(os.getloadavg())},
        "seconds": round(seconds, 1),
        "steps": steps,
        "skipped_n": skipped,
        "headline": headline,
        "files": DENSITY_FILES,
    }


def density_markdown(rep: dict[str, Any]) -> str:
    cfg, head = rep["config"], rep["headline"]
    lines = [
        "# Parley density report: gateway + VAD only",
        "",
        f"{rep['written_at']}: sessions streaming speech ({', '.join(cfg['voices'])}) in real "
        f"time for {cfg['density_seconds']} s each over the Parley WebSocket, VAD stats on, no "
        f"answers (only nats, one gateway and {cfg['replicas'].get('vad', 1)} vad running); "
        f"{rep['machine']['cores']} cores, shared.",
        "",
        "Decision latency: a vad_stats event's arrival at the client minus the moment the "
        "frame holding the audio at its offset was sent.",
        "",
    ]
    if "sessions" in head:
        lines += [
            f"**{head['sessions']} sessions** held with p95 ≤ {head['target_p95_ms']:g} ms, "
            f"gateway + vad using {head['gateway_vad_cores']:.2f} cores: "
            f"**{head['sessions_per_core']} sessions per core**"
            + ("" if head["limit_found"] else " (the ramp ended before the limit)")
            + ".",
            "",
        ]
    else:
        lines += [f"No step held p95 ≤ {head['target_p95_ms']:g} ms.", ""]
    bound = head.get("cpu_bound")
    if bound and bound["sessions_per_core"] is not None:
        lines += [
            f"CPU alone: at {bound['sessions']} sessions gateway + vad used "
            f"{bound['gateway_vad_cores']:.2f} cores, so the CPU would allow "
            f"{bound['sessions_per_core']} sessions per core if the latency held (on a machine "
            "of its own).",
            "",
        ]
    lines += [
        "| sessions | p50 | p95 | p99 (ms) | decisions | within target | gateway CPU | vad CPU "
        "| sessions per core | harness lag p95 (ms) | others CPU | CPU wait | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in rep["steps"]:
        d, res = st["decision_latency_ms"], st["resources"]
        stages = res["stages"]
        lines.append(
            f"| {st['n']} | {_ms(d, 'p50')} | {_ms(d, 'p95')} | {_ms(d, 'p99')} "
            f"| {d.get('n', 0)} | {'yes' if st['within_target'] else 'no'} "
            f"| {stages.get('gateway', {}).get('cpu_percent', 0):.0f}% "
            f"| {stages.get('vad', {}).get('cpu_percent', 0):.0f}% "
            f"| {st['sessions_per_core'] if st['sessions_per_core'] is not None else '-'} "
            f"| {res['harness_loop_lag_ms'].get('p95', '-')} | {others_cpu(res):.0f}% "
            f"| {waited(res)} "
            f"| {res['machine']['load_average_start'][0]:.1f} → "
            f"{res['machine']['load_average_end'][0]:.1f} |"
        )
    errors = [(st["n"], e) for st in rep["steps"] for e in st["errors"]]
    if errors:
        lines += ["", "## Errors (first 20)", ""] + [f"- N={n}: {e}" for n, e in errors[:20]]
    if rep["skipped_n"]:
        lines += [
            "",
            f"Not run (a p95 over {SATURATED:g} times the target before, or past max_minutes): "
            f"N = {rep['skipped_n']}",
        ]
    return "\n".join(lines) + "\n"


def density_plot(rep: dict[str, Any], out: Path) -> None:
    plt = _pyplot()
    steps = rep["steps"]
    ns = [st["n"] for st in steps]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in ("p50", "p95", "p99"):
        ax.plot(
            ns,
            [st["decision_latency_ms"].get(key, math.nan) for st in steps],
            marker="o",
            label=key,
        )
    ax.axhline(rep["config"]["target_ms"], color="red", linestyle="--", label="target p95")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("sessions streaming at once")
    ax.set_ylabel("frame -> VAD decision (ms)")
    cpu = ax.twinx()
    cpu.plot(
        ns,
        [st["gateway_vad_cores"] * 100 for st in steps],
        color="gray",
        marker="s",
        label="gateway+vad CPU",
    )
    cpu.set_ylabel("gateway + vad CPU (% of one core)")
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = cpu.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / DENSITY_FILES["latency_plot"], dpi=100)
    plt.close(fig)


def write_density(rep: dict[str, Any], out: Path) -> None:
    _write(rep, out, DENSITY_FILES, density_markdown, density_plot)
