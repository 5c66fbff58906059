"""WAV handling and the pure helpers of `parley talk` / `parley bench`: no
network, no running stack."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from parley.cli.bench import (
    build_report,
    end_of_speech_frame,
    format_table,
    parse_pids,
    peak_memory_mb,
    percentile,
    pick_questions,
    summary,
)
from parley.cli.client import stalled_at, turn_outcome
from parley.cli.main import build_parser
from parley.cli.talk import _settings_message
from parley.speech import synthesize_speech
from parley.wavio import WavError, last_voiced_ms, read_wav, silence, write_wav


def tone(seconds: float, rate: int, hz: float = 440.0, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype("<i2")


def write_raw(path: Path, samples: np.ndarray, rate: int, channels: int, width: int = 2) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


# --- wavio ----------------------------------------------------------------------
def test_round_trip_at_16k_is_exact(tmp_path: Path) -> None:
    pcm = tone(0.5, 16000).tobytes()
    write_wav(tmp_path / "a.wav", pcm, 16000)
    with wave.open(str(tmp_path / "a.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
    assert read_wav(tmp_path / "a.wav") == pcm


def test_stereo_is_downmixed_to_the_mean_of_the_channels(tmp_path: Path) -> None:
    left = np.array([1000, -2000, 3000, 0], dtype="<i2")
    right = np.array([3000, 2000, -3000, 0], dtype="<i2")
    write_raw(tmp_path / "s.wav", np.stack([left, right], axis=1).reshape(-1), 16000, 2)
    mono = np.frombuffer(read_wav(tmp_path / "s.wav"), dtype="<i2")
    assert mono.tolist() == [2000, 0, 0, 0]


def test_voice_on_one_channel_survives_downmix(tmp_path: Path) -> None:
    voice = tone(0.2, 16000)
    stereo = np.stack([voice, np.zeros_like(voice)], axis=1).reshape(-1)
    write_raw(tmp_path / "s.wav", stereo, 16000, 2)
    mono = np.frombuffer(read_wav(tmp_path / "s.wav"), dtype="<i2")
    assert len(mono) == len(voice)
    assert np.abs(mono.astype(int) - voice // 2).max() <= 1


def test_44k1_is_resampled_to_16k_with_the_same_duration(tmp_path: Path) -> None:
    write_wav(tmp_path / "cd.wav", tone(1.5, 44100).tobytes(), 44100)
    out = np.frombuffer(read_wav(tmp_path / "cd.wav"), dtype="<i2")
    assert len(out) == pytest.approx(24000, abs=2)
    # Still a 440 Hz tone of about the same loudness, not noise.
    spectrum = np.abs(np.fft.rfft(out.astype(np.float32)))
    assert np.argmax(spectrum) * 16000 / len(out) == pytest.approx(440, abs=2)
    assert np.abs(out).max() == pytest.approx(8000, rel=0.05)


def test_stereo_48k_is_downmixed_and_resampled(tmp_path: Path) -> None:
    voice = tone(1.0, 48000)
    write_raw(tmp_path / "s.wav", np.stack([voice, voice], axis=1).reshape(-1), 48000, 2)
    assert len(read_wav(tmp_path / "s.wav")) // 2 == pytest.approx(16000, abs=2)


def test_unusable_files_are_refused_by_name(tmp_path: Path) -> None:
    write_raw(tmp_path / "u8.wav", np.zeros(100, dtype=np.uint8), 16000, 1, width=1)
    with pytest.raises(WavError, match="u8.wav: 8-bit"):
        read_wav(tmp_path / "u8.wav")
    (tmp_path / "x.wav").write_bytes(b"ID3\x03not a wav at all")
    with pytest.raises(WavError, match="x.wav: not a PCM WAV"):
        read_wav(tmp_path / "x.wav")


def test_silence_length() -> None:
    assert silence(300) == bytes(9600)
    assert silence(20, 48000) == bytes(1920)


# --- true end of speech ---------------------------------------------------------
# Real speech needs Piper: the tests that use it are marked slow.
@pytest.fixture(scope="module")
def speech() -> bytes:
    return synthesize_speech("How many legs does a spider have?")


@pytest.mark.slow
def test_true_end_of_speech_in_piper_speech_with_silence_padding(speech: bytes) -> None:
    speech_ms = len(speech) / 32
    end_in_clip = last_voiced_ms(speech)
    # Piper ends its clip with a short fade, not seconds of silence.
    assert speech_ms - 300 < end_in_clip <= speech_ms
    padded = silence(300) + speech + silence(1500)
    assert last_voiced_ms(padded) == pytest.approx(300 + end_in_clip, abs=10)


@pytest.mark.slow
def test_true_end_of_speech_ignores_quiet_noise_after_the_speech(speech: bytes) -> None:
    rng = np.random.default_rng(1)
    hiss = (rng.standard_normal(16000) * 60).astype("<i2").tobytes()  # about -55 dBFS
    assert last_voiced_ms(speech + hiss) == pytest.approx(last_voiced_ms(speech), abs=10)


def test_true_end_of_speech_of_silence_is_zero() -> None:
    assert last_voiced_ms(silence(1000)) == 0.0
    assert last_voiced_ms(b"") == 0.0


def test_end_of_speech_frame_is_the_frame_with_the_last_voiced_sample() -> None:
    assert end_of_speech_frame(20) == 0
    assert end_of_speech_frame(21) == 1
    assert end_of_speech_frame(40) == 1
    assert end_of_speech_frame(1290, 20) == 64
    assert end_of_speech_frame(0) == 0


# --- statistics and report ----------------------------------------------------------
def test_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.95) == pytest.approx(95.05)
    assert percentile([7.0], 0.95) == 7.0
    assert np.isnan(percentile([], 0.5))


def test_summary() -> None:
    assert summary([]) == {}
    assert summary([100.0, 200.0, 300.0, 400.0]) == {
        "p50": 250.0,
        "p95": 385.0,
        "mean": 250.0,
        "n": 4,
    }


def test_questions_are_distinct_while_the_list_lasts() -> None:
    assert len(set(pick_questions(10))) == 10
    assert len(pick_questions(25)) == 25


def test_parse_pids() -> None:
    assert parse_pids("gateway=12, asr=34,asr=35") == {"gateway": [12], "asr": [34, 35]}
    with pytest.raises(ValueError, match="service=pid"):
        parse_pids("gateway")


def test_peak_memory_of_this_process() -> None:
    import os

    peaks = peak_memory_mb({"gateway": [os.getpid()], "asr": [2**22 + 1]})
    assert peaks["gateway"] > 10
    assert "asr" not in peaks
    assert peaks["total"] == peaks["gateway"]


def test_report_and_table() -> None:
    turns = [
        {
            "question": "q",
            "hops_ms": {"final_transcript": 300.0 + i, "first_audio": 900.0 + i},
            "server_hops_ms": {"first_audio_sent": 500.0},
            "errors": [],
        }
        for i in range(3)
    ]
    turns.append({"question": "bad", "hops_ms": {}, "errors": ["error [asr] timeout: slow"]})
    report = build_report("ws://x/v1/ws", turns, {"asr": 800.0, "total": 800.0}, "--pids")
    assert report["questions"] == 4
    assert report["end_to_end_ms"]["p50"] == 901.0
    assert report["hops_ms"]["final_transcript"]["n"] == 3
    assert report["hops_ms"]["first_token"] == {}
    assert report["server_hops_ms"]["first_audio_sent"]["mean"] == 500.0
    assert report["errors"] == [
        {"turn": 4, "question": "bad", "error": "error [asr] timeout: slow"}
    ]
    table = format_table(report)
    assert "first_audio" in table and "asr 800" in table and "errors: 1" in table


# --- turn tracking ----------------------------------------------------------------
def spoken_turn(turn: int = 1, rid: str = "r1", text: str = "hi") -> list[dict]:
    return [
        {"type": "user_speech_start", "turn_id": turn},
        {"type": "user_speech_end", "turn_id": turn},
        {"type": "transcription", "turn_id": turn, "text": text, "final": True},
        {"type": "response_start", "turn_id": turn, "response_id": rid},
        {"type": "response_text", "response_id": rid, "delta": "Hello."},
        {"type": "tts_start", "response_id": rid},
    ]


def test_turn_needs_both_response_end_and_tts_end() -> None:
    events = spoken_turn()
    assert turn_outcome(events) is None
    events.append({"type": "response_end", "response_id": "r1", "status": "completed"})
    assert turn_outcome(events) is None
    assert "did not finish" in stalled_at(events)
    events.append({"type": "tts_end", "response_id": "r1", "status": "completed"})
    outcome = turn_outcome(events)
    assert outcome is not None and not outcome.failed


def test_turn_waits_for_a_second_utterance_in_the_same_clip() -> None:
    events = spoken_turn()
    events += [
        {"type": "user_speech_start", "turn_id": 2},
        {"type": "response_end", "response_id": "r1", "status": "cancelled"},
    ]
    assert turn_outcome(events) is None  # still speaking
    events.append({"type": "user_speech_end", "turn_id": 2})
    assert turn_outcome(events) is None  # its transcript and answer are to come
    events += spoken_turn(2, "r2")[2:]
    events += [
        {"type": "response_end", "response_id": "r2", "status": "completed"},
        {"type": "tts_end", "response_id": "r2", "status": "completed"},
    ]
    outcome = turn_outcome(events)
    assert outcome is not None and not outcome.failed


def test_turn_with_no_words_or_an_asr_error_ends_failed() -> None:
    empty = spoken_turn(text="")[:3]
    outcome = turn_outcome(empty)
    assert outcome is not None and outcome.failed and "no words" in outcome.reason
    asr_error = [
        *spoken_turn()[:2],
        {"type": "error", "stage": "asr", "code": "timeout", "message": "slow"},
    ]
    outcome = turn_outcome(asr_error)
    assert outcome is not None and outcome.failed
    assert outcome.reason == "error [asr] timeout: slow"


def test_failed_answer_ends_the_turn_without_waiting_for_audio() -> None:
    events = [
        *spoken_turn(),
        {"type": "error", "stage": "llm", "code": "provider_error", "message": "500"},
        {"type": "response_end", "response_id": "r1", "status": "failed"},
    ]
    outcome = turn_outcome(events)
    assert outcome is not None and outcome.failed and "llm" in outcome.reason


def test_stalled_at_names_the_missing_step() -> None:
    assert stalled_at([]) == "the gateway heard no speech"
    assert "end of speech" in stalled_at(spoken_turn()[:1])
    assert "transcript" in stalled_at(spoken_turn()[:2])
    assert "no answer started" in stalled_at(spoken_turn()[:3])


def test_settings_flag_lifts_sample_rates_out_of_settings() -> None:
    assert _settings_message({"silence_ms": 600, "output_sample_rate": 24000}) == {
        "type": "settings_update",
        "settings": {"silence_ms": 600},
        "output_sample_rate": 24000,
    }


def test_command_line() -> None:
    parser = build_parser()
    args = parser.parse_args(["talk", "q.wav", "--out", "a.wav", "--settings", "{}"])
    assert args.wavs == ["q.wav"] and args.url == "ws://127.0.0.1:8080/v1/ws"
    args = parser.parse_args(["bench", "--questions", "3", "--pids", "asr=1"])
    assert args.questions == 3 and args.out == "bench-report.json"
