"""The Realtime endpoint's pure parts: session.update in both shapes and its
mapping onto Parley settings, G.711 through PyAV, and push-to-talk in the VAD
segmenter (no silence ends a turn, only commit)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.gateway.protocols.realtime.audio import ALAW, PCM16, ULAW, AudioCodec, parse_format
from services.gateway.protocols.realtime.config import RealtimeConfig
from services.gateway.protocols.realtime.events import RealtimeClientError
from services.vad.segmenter import Paused, Segmenter, SegmenterConfig, Started, Stopped
from services.vad.silero import WINDOW_MS, SileroModel
from tests.support.speech import synthesize_speech, with_silence


def test_beta_and_ga_session_shapes_map_to_the_same_settings() -> None:
    beta = RealtimeConfig().updated(
        {
            "instructions": "Be brief.",
            "voice": "verse",
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_alaw",
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.6,
                "silence_duration_ms": 700,
                "interrupt_response": False,
            },
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        }
    )
    ga = RealtimeConfig().updated(
        {
            "type": "realtime",
            "instructions": "Be brief.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.6,
                        "silence_duration_ms": 700,
                        "interrupt_response": False,
                    },
                },
                "output": {"format": {"type": "audio/pcma"}, "voice": "verse"},
            },
        }
    )
    assert beta.parley_settings() == ga.parley_settings()
    s = ga.parley_settings()
    assert s.system_prompt == "Be brief." and s.voice == "verse" and s.language == "en"
    assert s.silence_ms == 700 and abs(s.vad_threshold - 0.6) < 1e-6
    assert s.turn_detection and not s.barge_in
    assert (ga.input_format, ga.output_format) == (ULAW, ALAW)
    effective = {"vad_threshold": 0.6, "silence_ms": 700, "system_prompt": "x"}
    described = beta.describe("sess", True, effective)
    assert described["input_audio_format"] == "g711_ulaw"
    assert described["turn_detection"]["silence_duration_ms"] == 700
    described = ga.describe("sess", False, effective)
    assert described["audio"]["output"]["format"] == {"type": "audio/pcma"}


def test_turn_detection_null_is_push_to_talk_and_values_are_clamped() -> None:
    ptt = RealtimeConfig().updated({"turn_detection": None}).parley_settings()
    assert ptt.HasField("turn_detection") and not ptt.turn_detection and ptt.barge_in
    wide = RealtimeConfig().updated(
        {"turn_detection": {"type": "server_vad", "silence_duration_ms": 9000, "threshold": 1.0}}
    )
    assert wide.parley_settings().silence_ms == 3000
    assert wide.parley_settings().vad_threshold == pytest.approx(0.99)


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"bogus": 1}, "session.bogus"),
        ({"input_audio_format": "mp3"}, "session.input_audio_format"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, None),
        ({"turn_detection": {"type": "server_vad", "create_response": False}}, None),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "session.tools[0]"),
        ({"instructions": 5}, "session.instructions"),
    ],
)
def test_bad_session_updates_name_the_parameter(session: dict, param: str | None) -> None:
    config = RealtimeConfig()
    with pytest.raises(RealtimeClientError) as caught:
        config.updated(session)
    if param is not None:
        assert caught.value.param == param
    assert config.input_format is PCM16  # nothing applied


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"turn_detection": {"threshold": math.nan}}, "session.turn_detection.threshold"),
        (
            {"audio": {"input": {"turn_detection": {"threshold": math.nan}}}},
            "session.audio.input.turn_detection.threshold",
        ),
        ({"instructions": "x" * 8001}, "session.instructions"),
        ({"voice": "v" * 201}, "session.voice"),
        ({"audio": {"output": {"voice": "v" * 201}}}, "session.audio.output.voice"),
        (
            {"input_audio_transcription": {"language": "l" * 17}},
            "session.input_audio_transcription.language",
        ),
        (
            {"turn_detection": {"silence_duration_ms": math.inf}},
            "session.turn_detection.silence_duration_ms",
        ),
    ],
)
def test_values_parley_refuses_name_the_realtime_field(session: dict, param: str) -> None:
    """The settings a session.update asks of Parley pass the validation every
    protocol's do (core/settings.py); a refusal names the Realtime field."""
    config = RealtimeConfig()
    with pytest.raises(RealtimeClientError) as caught:
        config.updated(session)
    assert caught.value.code == "invalid_value"
    assert caught.value.param == param
    assert config.parley_settings().voice == "alloy"  # nothing applied


def test_g711_round_trip_keeps_the_signal() -> None:
    assert parse_format({"type": "audio/pcm", "rate": 24000}, "p") is PCM16
    assert parse_format("audio/pcmu", "p") is ULAW and parse_format("g711_alaw", "p") is ALAW
    t = np.arange(8000) / 8000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    for fmt in (ULAW, ALAW):
        coded = AudioCodec(fmt, encode=True).from_pcm(pcm.tobytes())
        assert len(coded) == len(pcm)  # one byte a sample
        back = np.frombuffer(AudioCodec(fmt, encode=False).to_pcm(coded), dtype="<i2")
        assert len(back) == len(pcm)
        error = np.abs(back.astype(int) - pcm.astype(int)).max()
        assert error < 300, (fmt, error)  # G.711 step at this level


# Real speech (Piper) through Silero: slow.
@pytest.mark.slow
def test_push_to_talk_segmenter_ends_turns_only_on_commit() -> None:
    model = SileroModel()
    pcm = with_silence(synthesize_speech("Hello there, how are you?"), 16000, 300, 2500)
    stream = model.stream()
    segmenter = Segmenter(SegmenterConfig(end_on_silence=False), WINDOW_MS)
    decisions = []
    for i in range(0, len(pcm), 640):
        for probability, _ in stream.push(pcm[i : i + 640]):
            decision = segmenter.push(probability)
            if decision is not None:
                decisions.append(decision)
    assert [type(d) for d in decisions] == [Started], decisions
    assert not any(isinstance(d, Paused) for d in decisions)
    stopped = segmenter.commit()
    assert isinstance(stopped, Stopped) and stopped.reason == "commit"
    # The end is where the speech stopped, not where the commit came.
    assert stopped.end_ms < segmenter.position_ms - 1500
    # A cleared input buffer drops the turn in progress without ending it.
    for _ in range(10):
        segmenter.push(0.9)
    assert segmenter.speaking
    segmenter.discard()
    assert not segmenter.speaking and segmenter.commit() is None
