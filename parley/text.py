"""Text helpers shared by the gateway and the llm service."""

from __future__ import annotations


def heard_text(sentences: list[str], durations_ms: list[float], played_ms: float) -> str:
    """What the listener heard of an answer: the sentences played in full, plus
    the share of the sentence in progress proportional to its played time, cut
    at a word boundary."""
    heard: list[str] = []
    remaining = played_ms
    for text, duration in zip(sentences, durations_ms, strict=False):
        if remaining <= 0 or not text:
            break
        if duration <= 0 or remaining >= duration:
            if duration <= 0:
                break
            heard.append(text)
            remaining -= duration
            continue
        words = text.split()
        keep = int(len(words) * remaining / duration)
        if keep:
            heard.append(" ".join(words[:keep]))
        break
    return " ".join(heard)
