"""The `parley` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

DEFAULT_URL = "ws://127.0.0.1:8080/v1/ws"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="parley", description="Parley voice agent")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole stack (nats-server and six services)")
    up.add_argument("--config", help="TOML configuration file")
    up.add_argument("--external-nats", action="store_true", help="do not start a nats-server")

    talk = commands.add_parser("talk", help="speak WAV files to a running stack")
    talk.add_argument("wavs", nargs="*", help="WAV files, one question each, in order")
    talk.add_argument("--out", help="write the spoken answers to this WAV file")
    talk.add_argument("--url", default=DEFAULT_URL)
    talk.add_argument("--token", help="bearer token, when the gateway asks for one")
    talk.add_argument("--text", help="a typed question, sent before the WAV files")
    talk.add_argument("--settings", help="session settings as JSON, e.g. '{\"silence_ms\": 700}'")
    talk.add_argument("--json", action="store_true", help="print each event as a JSON line")
    talk.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")

    say = commands.add_parser("say", help="make a spoken WAV of a text, to talk with")
    say.add_argument("text")
    say.add_argument("out", help="WAV file to write (16 kHz mono PCM16)")

    bench = commands.add_parser("bench", help="time spoken questions through a running stack")
    bench.add_argument("--url", default=DEFAULT_URL)
    bench.add_argument("--questions", type=int, default=10)
    bench.add_argument("--out", default="bench-report.json")
    bench.add_argument("--timeout", type=float, default=60.0)

    args = parser.parse_args(argv)
    if args.command == "up":
        from parley.stack import run

        forwarded = (["--config", args.config] if args.config else []) + (
            ["--external-nats"] if args.external_nats else []
        )
        run(forwarded)
    elif args.command == "talk":
        from parley.cli.talk import talk as run_talk

        if not args.wavs and not args.text:
            parser.error("talk needs a WAV file or --text")
        settings = None
        if args.settings:
            try:
                settings = json.loads(args.settings)
            except json.JSONDecodeError as exc:
                parser.error(f"--settings is not JSON: {exc}")
        code = asyncio.run(
            run_talk(
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
        sys.exit(code)
    elif args.command == "say":
        from parley.cli.speech import synthesize_speech
        from parley.cli.wavio import write_wav

        write_wav(args.out, synthesize_speech(args.text), 16000)
        print(f"wrote {args.out}")
    elif args.command == "bench":
        from parley.cli.bench import bench as run_bench

        if args.questions < 1:
            parser.error("--questions must be at least 1")
        sys.exit(asyncio.run(run_bench(args.url, args.questions, args.out, args.timeout)))


if __name__ == "__main__":
    main()
