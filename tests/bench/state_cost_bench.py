"""What storing the conversation costs the user: end of speech -> first audio
sent (the gateway's turn_metrics), with state.enabled on and off, in one run.

    .venv/bin/python -m tests.bench.state_cost_bench [--turns 5] [--out state-cost.json]

One whole stack per setting (real VAD, ASR and TTS; the llm on the OpenAI
stand-in, so the model's own time does not drown the difference), the same
spoken questions in one session each. Not a test: the figures depend on the
machine and its load. Writes JSON to --out and prints the medians."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from parley.cli.client import ParleyClient
from tests.e2e.harness import start_stack
from tests.e2e.test_pipeline import ask
from tests.support.openai_chat_stub import OpenAIChatStub, count_user_messages

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is a banana?",
    "Why is the ocean salty?",
    "Who wrote Romeo and Juliet?",
    "How do airplanes fly?",
]


async def turns(state: bool, count: int) -> list[dict[str, Any]]:
    async with OpenAIChatStub(answer=count_user_messages) as stub:
        env = {
            "PARLEY_LLM__PROVIDER": "openai",
            "PARLEY_LLM__BASE_URL": stub.base_url,
            "PARLEY_STATE__ENABLED": "true" if state else "false",
        }
        workdir = Path(tempfile.mkdtemp(prefix="parley-state-cost-"))
        async with start_stack(workdir, env=env) as stack:
            client = await ParleyClient.open(stack.gateway_url)
            results = []
            try:
                # The first turn warms every model up; it is not counted.
                for question in (QUESTIONS * 2)[: count + 1]:
                    mark = len(client.events)
                    turn = await ask(client, question)
                    metrics = await client.wait_for(
                        "turn_metrics", after=mark, response_id=turn["response_id"], timeout=10
                    )
                    results.append({"question": question, "answer": turn["text"], **metrics})
            finally:
                await client.close()
    return results[1:]


async def bench(count: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for state in (True, False):
        measured = await turns(state, count)
        first_audio = [t["hops"]["first_audio_sent"] for t in measured]
        first_token = [t["hops"]["first_token"] for t in measured]
        # The llm's own hop, where a store on the way would show: the rest
        # (transcription above all) varies far more from turn to turn.
        llm_hop = [t["hops"]["first_token"] - t["hops"]["final_transcript"] for t in measured]
        report["on" if state else "off"] = {
            "first_audio_sent_ms_p50": round(statistics.median(first_audio), 1),
            "first_token_ms_p50": round(statistics.median(first_token), 1),
            "transcript_to_first_token_ms_p50": round(statistics.median(llm_hop), 1),
            "turns": measured,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--out", default="state-cost.json")
    args = parser.parse_args()
    report = asyncio.run(bench(args.turns))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for key in ("on", "off"):
        r = report[key]
        print(
            f"state {key}: first audio p50 {r['first_audio_sent_ms_p50']} ms, "
            f"first token p50 {r['first_token_ms_p50']} ms, final transcript -> first "
            f"token p50 {r['transcript_to_first_token_ms_p50']} ms"
        )


if __name__ == "__main__":
    main()
