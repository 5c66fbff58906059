"""`python -m tests.load` (`make load`): the ramp, or the density mode; starts
its own stack on free loopback ports and stops it at the end."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from parley.stack import parse_replicas
from tests.load.devices import PROTOCOLS
from tests.load.run import DENSITY_N, PIPELINE_N, LoadConfig, run_density, run_pipeline
from tests.load.voices import DEFAULT_VOICES, VoiceError


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("at least one N")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.load",
        description="Many simulated devices against one Parley stack, ramped; writes a JSON "
        "report, a Markdown summary and PNG plots.",
    )
    parser.add_argument("--mode", choices=("pipeline", "density"), default="pipeline")
    parser.add_argument(
        "--n",
        type=_ints,
        help="devices (sessions) at once per step, e.g. 1,2,4,8,16,32 "
        f"(default {','.join(map(str, PIPELINE_N))}; density {','.join(map(str, DENSITY_N))})",
    )
    parser.add_argument("--turns", type=int, default=3, help="questions per device (default 3)")
    parser.add_argument(
        "--min-step-turns",
        type=int,
        default=12,
        help="a step of few devices gives each more turns, up to this many in all (default 12)",
    )
    parser.add_argument(
        "--protocols", type=_names, default=PROTOCOLS, help="parley,xiaozhi (taken in turn)"
    )
    parser.add_argument(
        "--voices",
        type=_names,
        default=DEFAULT_VOICES,
        help=f"piper and espeak:<voice> (default {','.join(DEFAULT_VOICES)})",
    )
    parser.add_argument(
        "--barge-in", type=float, default=0.25, help="share of turns spoken over (default 0.25)"
    )
    parser.add_argument(
        "--stagger", type=float, default=3.0, help="devices start within this many s (default 3)"
    )
    parser.add_argument(
        "--turn-timeout", type=float, default=60.0, help="s to wait for an answer (default 60)"
    )
    parser.add_argument(
        "--max-minutes", type=float, default=30.0, help="the whole run's bound (default 30)"
    )
    parser.add_argument("--no-warmup", action="store_true", help="no untimed first turns")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--replicas", type=parse_replicas, help="instances per stage, e.g. vad=2,asr=2"
    )
    parser.add_argument("--out", type=Path, default=Path("var/load"), help="report folder")
    parser.add_argument(
        "--density-seconds", type=float, default=20.0, help="density: s per step (default 20)"
    )
    parser.add_argument(
        "--target-ms", type=float, default=10.0, help="density: decision p95 goal (default 10)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = LoadConfig(
        mode=args.mode,
        ns=args.n or (DENSITY_N if args.mode == "density" else PIPELINE_N),
        turns=args.turns,
        min_step_turns=args.min_step_turns,
        protocols=args.protocols,
        voices=args.voices,
        barge_in=args.barge_in,
        stagger_s=args.stagger,
        turn_timeout_s=args.turn_timeout,
        max_minutes=args.max_minutes,
        warmup=not args.no_warmup,
        seed=args.seed,
        out=args.out,
        density_seconds=args.density_seconds,
        target_ms=args.target_ms,
    )
    if args.replicas:
        cfg.replicas = {k: v for k, v in args.replicas.items() if k != "gateway"}
    try:
        cfg.check()
    except (ValueError, VoiceError) as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    if cfg.mode == "density":
        result = asyncio.run(run_density(cfg))
        return 0 if result["steps"] and not any(s["errors"] for s in result["steps"]) else 1
    result = asyncio.run(run_pipeline(cfg))
    return 1 if result["failed_turns"] else 0


if __name__ == "__main__":
    sys.exit(main())
