"""The local LLM runtimes side by side, on the bundled Gemma 3 270M: first
token and decoding speed for one session, and for several at once.

    .venv/bin/python -m tests.bench.llm_bench [--rounds 5] [--sessions 1,4]

Measures each runtime installed (xllamacpp; llama_cpp where the `llama-cpp`
extra is), one after the other in this process, with the stage's defaults
(temperature 0.6, 60 tokens asked, half the cores unless --threads), after a
warm-up that gives each slot the prompt's shared start: each round
asks `sessions` different first questions at once, the way that many
sessions' answers start together. Per answer: first token as its consumer
sees it (queueing for a free slot included), decoding tokens/s (prompt
reading left out); per round: all answers' tokens over the round's wall time.
Not a test: the figures depend on the machine and its load. Writes JSON to
--out and prints a table."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from services.llm.providers import make_chat_model
from services.llm.providers.answer_stream import GenerationStats
from services.llm.providers.base import Message

SYSTEM = (
    "You are Parley, a friendly voice assistant. Answer in one or two short "
    "spoken sentences, without lists or markdown."
)
QUESTIONS = [
    "What is the capital of France?",
    "Tell me a fun fact about cats.",
    "Why is the ocean salty?",
    "How do airplanes fly?",
    "What should I cook for dinner?",
    "Who wrote Romeo and Juliet?",
    "Can you recommend a good book?",
    "What is the weather like on Mars?",
]


async def answer(model: Any, question: str) -> float | None:
    """Seconds to the first text of the answer (None if there was none)."""
    messages: list[Message] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": question},
    ]
    started = time.monotonic()
    first: float | None = None
    async for _ in model.stream(messages, max_tokens=60, temperature=0.6):
        if first is None:
            first = time.monotonic() - started
    return first


async def measure(
    runtime: str, sessions: list[int], rounds: int, threads: int | None
) -> dict[str, Any]:
    stats: list[GenerationStats] = []
    model = make_chat_model(
        runtime, parallel=max(sessions), n_threads=threads, on_stats=stats.append
    )
    started = time.monotonic()
    await model.load()
    report: dict[str, Any] = {"load_s": round(time.monotonic() - started, 3)}
    # Warm-up, as many answers at once as the most sessions measured: each of
    # xllamacpp's slots reads the prompt's shared start (system prompt and
    # examples) once, then keeps it; a cold slot's first answer reads it all.
    await asyncio.gather(*(answer(model, "Hello!") for _ in range(max(sessions))))
    for n in sessions:
        firsts: list[float] = []
        rates: list[float] = []
        throughput: list[float] = []
        for r in range(rounds):
            stats.clear()
            questions = [QUESTIONS[(r * n + i) % len(QUESTIONS)] for i in range(n)]
            began = time.monotonic()
            got = await asyncio.gather(*(answer(model, q) for q in questions))
            wall = time.monotonic() - began
            firsts += [f for f in got if f is not None]
            rates += [s.tokens_per_s for s in stats if s.tokens_per_s > 0]
            throughput.append(sum(s.completion_tokens for s in stats) / wall)
        report[f"{n}_sessions"] = {
            "first_token_p50_s": round(statistics.median(firsts), 3),
            "first_token_max_s": round(max(firsts), 3),
            "decode_tokens_per_s_p50": round(statistics.median(rates), 1),
            "total_tokens_per_s_p50": round(statistics.median(throughput), 1),
            "answers": len(firsts),
        }
    await model.aclose()
    return report


def installed_runtimes() -> list[str]:
    runtimes = ["xllamacpp"]
    if importlib.util.find_spec("llama_cpp") is not None:
        runtimes.append("llama_cpp")
    return runtimes


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", default="1,4", help="sessions at once, e.g. 1,4")
    parser.add_argument("--threads", type=int, help="generation threads (default: the stage's)")
    parser.add_argument("--runtimes", help="e.g. xllamacpp,llama_cpp (default: all installed)")
    parser.add_argument("--out", default="var/llm-bench.json")
    args = parser.parse_args(argv)
    sessions = [int(n) for n in args.sessions.split(",")]
    runtimes = args.runtimes.split(",") if args.runtimes else installed_runtimes()
    results = {rt: await measure(rt, sessions, args.rounds, args.threads) for rt in runtimes}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"{'runtime':<10} {'sessions':>8} {'first p50':>10} {'first max':>10} "
        f"{'decode/s':>9} {'total/s':>8}"
    )
    for rt, report in results.items():
        for n in sessions:
            row = report[f"{n}_sessions"]
            print(
                f"{rt:<10} {n:>8} {row['first_token_p50_s']:>9.3f}s "
                f"{row['first_token_max_s']:>9.3f}s {row['decode_tokens_per_s_p50']:>9.1f} "
                f"{row['total_tokens_per_s_p50']:>8.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
