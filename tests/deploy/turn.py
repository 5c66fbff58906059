"""One spoken question through a gateway, as a device would ask it."""

from __future__ import annotations

from typing import Any

from parley.cli.client import ParleyClient
from parley.wavio import silence
from tests.support.speech import synthesize_speech


async def spoken_turn(url: str, token: str) -> dict[str, Any]:
    client = await ParleyClient.open(url, token=token)
    try:
        start = len(client.events)
        await client.stream(
            silence(300) + synthesize_speech("What is the capital of France?") + silence(1200)
        )
        final = await client.wait_for("transcription", after=start, final=True, timeout=90)
        started = await client.wait_for("response_start", after=start, timeout=90)
        rid = started["response_id"]
        ended = await client.wait_for("response_end", after=start, response_id=rid, timeout=120)
        await client.wait_for("tts_end", after=start, response_id=rid, timeout=120)
        rate = client.output_rate
        return {
            "transcript": final["text"],
            "status": ended["status"],
            "answer": "".join(e["delta"] for e in client.events if e["type"] == "response_text"),
            "audio_s": len(client.audio) / (rate * 2),
        }
    finally:
        await client.close()
