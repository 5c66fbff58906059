"""Silero on real (Piper-synthesized) speech, through the segmenter."""

import numpy as np
import pytest

from services.vad.segmenter import Paused, Segmenter, SegmenterConfig, Started, Stopped
from services.vad.silero import WINDOW_MS, SileroModel
from tests.support.speech import synthesize_speech, with_silence

RATE = 16000


# Silero loads in about 0.1 s and stays in the fast tests; a test that also
# synthesizes speech loads Piper and is marked slow.
@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


def run(
    model: SileroModel, pcm: bytes, config: SegmenterConfig, pauses: bool = False
) -> list[Started | Stopped | Paused]:
    stream = model.stream()
    segmenter = Segmenter(config, WINDOW_MS)
    decisions = []
    # Feed in 20 ms frames, as a device would.
    for i in range(0, len(pcm), 640):
        for probability, _ in stream.push(pcm[i : i + 640]):
            decision = segmenter.push(probability)
            if decision is not None and (pauses or not isinstance(decision, Paused)):
                decisions.append(decision)
    return decisions


@pytest.mark.slow
def test_one_utterance_gives_one_start_and_one_stop(model: SileroModel) -> None:
    speech = synthesize_speech("What is the capital of France?")
    pcm = with_silence(speech, RATE, 500, 1500)
    decisions = run(model, pcm, SegmenterConfig(silence_ms=500))
    assert [type(d) for d in decisions] == [Started, Stopped]
    start, stop = decisions
    speech_ms = len(speech) / (RATE * 2) * 1000
    assert 300 <= start.start_ms <= 900
    assert stop.reason == "silence"
    # The stop offset is where speech ended, not where VAD noticed.
    assert abs(stop.end_ms - (500 + speech_ms)) < 400


def test_silence_and_a_click_never_start_a_turn(model: SileroModel) -> None:
    silence = bytes(RATE * 2)
    click = np.zeros(RATE, dtype="<i2")
    click[8000:8080] = 20000  # a 5 ms click
    pcm = silence + click.tobytes() + silence
    assert run(model, pcm, SegmenterConfig(min_speech_ms=250)) == []


@pytest.mark.slow
def test_pause_shorter_than_silence_duration_keeps_the_turn(model: SileroModel) -> None:
    a = synthesize_speech("I would like to know")
    b = synthesize_speech("the time in Tokyo please.")
    pause = bytes(int(RATE * 2 * 0.35))
    pcm = with_silence(a + pause + b, RATE, 300, 1500)
    decisions = run(model, pcm, SegmenterConfig(silence_ms=800))
    assert [type(d) for d in decisions] == [Started, Stopped]
    # With a short silence duration the same audio is two turns.
    decisions = run(model, pcm, SegmenterConfig(silence_ms=200))
    assert [type(d) for d in decisions] == [Started, Stopped, Started, Stopped]


@pytest.mark.slow
def test_max_utterance_forces_the_end(model: SileroModel) -> None:
    speech = synthesize_speech(
        "This is a long sentence that keeps going on and on so that the limit is reached."
    )
    decisions = run(
        model, with_silence(speech, RATE, 200, 800), SegmenterConfig(max_utterance_ms=1500)
    )
    stops = [d for d in decisions if isinstance(d, Stopped)]
    assert stops[0].reason == "max_utterance"
    assert stops[0].end_ms - stops[0].start_ms <= 1600


@pytest.mark.slow
def test_a_pause_is_announced_before_the_turn_ends(model: SileroModel) -> None:
    a = synthesize_speech("I would like to know")
    b = synthesize_speech("the time in Tokyo please.")
    pcm = with_silence(a + bytes(int(RATE * 2 * 0.4)) + b, RATE, 300, 1500)
    config = SegmenterConfig(silence_ms=800, early_pause_ms=250)
    decisions = run(model, pcm, config, pauses=True)
    assert [type(d) for d in decisions] == [Started, Paused, Paused, Stopped]
    mid, last, stop = decisions[1], decisions[2], decisions[3]
    assert mid.end_ms < last.end_ms
    # The last pause and the end of the turn agree on where speech ended.
    assert last.end_ms == stop.end_ms and last.start_ms == stop.start_ms
    assert run(model, pcm, SegmenterConfig(silence_ms=800, early_pause_ms=0), pauses=True) == [
        d for d in decisions if not isinstance(d, Paused)
    ]


def test_a_voice_onset_is_visible_before_it_is_speech_and_forgotten_when_it_fades() -> None:
    segmenter = Segmenter(SegmenterConfig(min_speech_ms=250, silence_ms=500), WINDOW_MS)
    assert segmenter.voice_onset_ms is None
    for _ in range(3):  # ~100 ms of voice: a cough
        assert segmenter.push(0.9) is None
    assert segmenter.voice_onset_ms == 0.0
    for _ in range(12):
        assert segmenter.push(0.0) is None
    assert segmenter.voice_onset_ms is None
    # Long enough: a turn starts where the voice began, and is no longer an onset.
    decisions = [segmenter.push(0.9) for _ in range(10)]
    started = [d for d in decisions if isinstance(d, Started)]
    assert started and started[0].start_ms == 15 * WINDOW_MS
    assert segmenter.voice_onset_ms is None
