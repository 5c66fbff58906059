"""The same typed session events for every protocol's serializer test: a full
turn, a barge-in, an error and a tool call, plus one event of every type (a
serializer that has no case for one fails the coverage test)."""

from __future__ import annotations

from parley.v1 import common_pb2
from services.gateway.core import events as ev

SETTINGS = common_pb2.Settings(
    vad_threshold=0.5,
    min_speech_ms=250,
    silence_ms=500,
    max_utterance_ms=30000,
    language="en",
    barge_in=True,
    min_interrupt_ms=0,
    system_prompt="Be brief.",
    voice="",
    vad_stats=False,
    early_answer=True,
    turn_detection=True,
    backchannels=common_pb2.WordList(words=["mm-hmm"]),
    turn_detector=common_pb2.TURN_DETECTOR_SILENCE,
)
INFO = ev.SessionInfo("s1", 16000, 16000, SETTINGS, resume_token="tok")

FULL_TURN: list[ev.SessionEvent] = [
    ev.SessionStarted(INFO),
    ev.UserSpeechStarted(1, 120.0),
    ev.Transcription(1, "What is the capital", False),
    ev.UserSpeechEnded(1, 120.0, 1800.0, ev.EndReason.TRANSCRIPT),
    ev.Transcription(1, "What is the capital of France?", True),
    ev.ResponseStarted("r1", 1),
    ev.ResponseTextDelta("r1", "Paris is"),
    ev.ResponseTextDelta("r1", " the capital."),
    ev.ResponseSentence("r1", 0, "Paris is the capital."),
    ev.TtsStarted("r1", 16000),
    ev.ResponseEnded("r1", ev.Status.COMPLETED, "Paris is the capital."),
    ev.TurnMetrics(1, "r1", 1800.0, {"final_transcript": 310.0, "first_audio_sent": 900.0}),
    ev.TtsEnded("r1", ev.Status.COMPLETED),
]
# Audio frames the full turn sends between TtsStarted and ResponseEnded.
FULL_TURN_AUDIO = [ev.AudioOut("r1", b"\x00\x01" * 320, 16000)]

BARGE_IN: list[ev.SessionEvent] = [
    ev.ResponseStarted("r2", 2),
    ev.ResponseSentence("r2", 0, "Let me tell you a long story about it."),
    ev.TtsStarted("r2", 16000),
    ev.UserSpeechStarted(3, 5200.0),
    ev.PlaybackCleared("r2", "user speech"),
    ev.TtsEnded("r2", ev.Status.CANCELLED),
    ev.ResponseEnded("r2", ev.Status.CANCELLED, "Let me tell"),
    ev.UserSpeechEnded(3, 5200.0, 6100.0, ev.EndReason.SILENCE),
]

ERROR: list[ev.SessionEvent] = [
    ev.UserSpeechStarted(4, 9000.0),
    ev.UserSpeechEnded(4, 9000.0, 9900.0, ev.EndReason.SILENCE),
    ev.Error("asr", "asr_failed", "transcription failed", True, 4, ""),
]

TOOL_CALL: list[ev.SessionEvent] = [
    ev.Transcription(5, "What time is it?", True),
    ev.ResponseStarted("r5", 5),
    ev.Processing("tools", "get_current_time", 5),
    ev.ResponseSentence("r5", 0, "It is noon."),
    ev.TtsStarted("r5", 16000),
    ev.ResponseEnded("r5", ev.Status.COMPLETED, "It is noon."),
    ev.TtsEnded("r5", ev.Status.COMPLETED),
]

ONE_OF_EACH: list[ev.SessionEvent] = [
    ev.SessionStarted(INFO),
    ev.SettingsUpdated(INFO),
    ev.UserSpeechStarted(1, 0.0),
    ev.UserSpeechEnded(1, 0.0, 900.0, ev.EndReason.SILENCE),
    ev.Transcription(1, "hello", True),
    ev.Processing("tools", "get_current_time", 1),
    ev.ResponseStarted("r1", 1),
    ev.ResponseTextDelta("r1", "Hi"),
    ev.ResponseSentence("r1", 0, "Hi."),
    ev.ResponseEnded("r1", ev.Status.COMPLETED, "Hi."),
    ev.TtsStarted("r1", 16000),
    ev.TtsEnded("r1", ev.Status.COMPLETED),
    ev.PlaybackCleared("r1", "client"),
    ev.TurnMetrics(1, "r1", 900.0, {"first_audio_sent": 800.0}),
    ev.VadStats(0.9, -20.0, True, 100.0),
    ev.Error("gateway", "bad_json", "not JSON"),
    ev.SessionEnded("the agent said goodbye"),
]
