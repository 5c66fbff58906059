"""The `parley` command line. Subcommands import their modules lazily, so
`parley --help` works without the models' heavy imports and `parley up` does
not pull in the client."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

DEFAULT_URL = "ws://127.0.0.1:8080/v1/ws"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="Parley voice agent")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole stack (nats-server and six services)")
    up.add_argument("--config", help="TOML configuration file (default parley.toml)")
    up.add_argument("--external-nats", action="store_true", help="do not start a nats-server")
    up.add_argument(
        "--replicas",
        help="instances per service, e.g. vad=2,asr=2,llm=2,tts=2 (default one each)",
    )

    talk = commands.add_parser(
        "talk",
        help="speak WAV files to a running stack",
        description="Streams each WAV in real time as one spoken turn, prints what comes "
        "back and writes the spoken answers to --out.",
    )
    talk.add_argument("wavs", nargs="*", help="WAV files, one question each, in order")
    talk.add_argument("--out", help="write the answers' audio to this WAV file")
    talk.add_argument("--url", default=DEFAULT_URL, help=f"gateway (default {DEFAULT_URL})")
    talk.add_argument("--token", help="bearer token, when the gateway asks for one")
    talk.add_argument("--text", help="a typed question, sent before the WAV files")
    talk.add_argument("--settings", help="session settings as JSON, e.g. '{\"silence_ms\": 600}'")
    talk.add_argument("--json", action="store_true", help="print each event as a JSON line")
    talk.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each answer (default 60)"
    )

    say = commands.add_parser("say", help="make a spoken WAV of a text, to talk with")
    say.add_argument("text")
    say.add_argument("out", help="WAV file to write (16 kHz mono PCM16)")

    bench = commands.add_parser(
        "bench",
        help="time spoken questions through a running stack",
        description="Asks N synthesized questions, one session each, and reports latency "
        "from the true end of speech and the services' peak memory.",
    )
    bench.add_argument("--url", default=DEFAULT_URL, help=f"gateway (default {DEFAULT_URL})")
    bench.add_argument("--token", help="bearer token, when the gateway asks for one")
    bench.add_argument("--questions", type=int, default=10, help="how many (default 10)")
    bench.add_argument("--out", default="bench-report.json", help="the JSON report")
    bench.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each answer (default 60)"
    )
    bench.add_argument(
        "--warmup", type=int, default=0, help="untimed questions asked first (default 0)"
    )
    bench.add_argument(
        "--compare-early-answer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask each question again with the early answer off and report what it saves "
        "(default on)",
    )
    bench.add_argument(
        "--pids",
        help="service=pid,... whose peak memory to report "
        "(default: found from /proc by their `-m services.<name>` command lines)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            _up(args)
        elif args.command == "talk":
            sys.exit(_talk(parser, args))
        elif args.command == "say":
            _say(args)
        elif args.command == "bench":
            sys.exit(_bench(parser, args))
    except KeyboardInterrupt:
        sys.exit(130)


def _up(args: argparse.Namespace) -> None:
    # Lazy: the stack module is the server side and not needed by the client.
    from parley.stack import run

    forwarded = (
        (["--config", args.config] if args.config else [])
        + (["--external-nats"] if args.external_nats else [])
        + (["--replicas", args.replicas] if args.replicas else [])
    )
    run(forwarded)


def _talk(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from parley.cli.talk import talk

    if not args.wavs and not args.text:
        parser.error("talk needs a WAV file or --text")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    settings: dict[str, Any] | None = None
    if args.settings:
        try:
            settings = json.loads(args.settings)
        except json.JSONDecodeError as exc:
            parser.error(f"--settings is not JSON: {exc}")
        if not isinstance(settings, dict):
            parser.error("--settings must be a JSON object")
    return asyncio.run(
        talk(
            args.url,
            args.wavs,
            args.out,
            args.token,
            args.text,
            settings,
            args.json,
            args.timeout,
        )
    )


def _say(args: argparse.Namespace) -> None:
    from parley.speech import synthesize_speech
    from parley.wavio import write_wav

    write_wav(args.out, synthesize_speech(args.text), 16000)
    print(f"wrote {args.out}")


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from parley.cli.bench import bench, parse_pids

    if args.questions < 1:
        parser.error("--questions must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup cannot be negative")
    pids = None
    if args.pids:
        try:
            pids = parse_pids(args.pids)
        except ValueError as exc:
            parser.error(str(exc))
    return asyncio.run(
        bench(
            args.url,
            args.questions,
            args.out,
            args.timeout,
            args.token,
            pids,
            args.warmup,
            args.compare_early_answer,
        )
    )


if __name__ == "__main__":
    main()
