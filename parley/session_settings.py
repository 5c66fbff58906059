"""Per-session settings: one schema for every service.

A client sends some settings (the proto `Settings`, unset fields keep the
defaults); `resolve` gives the settings in force as typed values, the
session's own where set, else the configured defaults (`[session]` and the
vad/asr/llm sections of parley.toml). The gateway validates what clients
send (`from_json`, `check`), vad, asr, llm and tts read `resolve(...)`, so no
default is spelled twice."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from parley.config import ParleySettings
from parley.v1 import common_pb2


class SettingsError(ValueError):
    """A bad setting from a client; the message names the key."""


class TurnDetector(enum.StrEnum):
    SILENCE = "silence"
    TRANSCRIPT = "transcript"


_DETECTOR_TO_PROTO = {
    TurnDetector.SILENCE: common_pb2.TURN_DETECTOR_SILENCE,
    TurnDetector.TRANSCRIPT: common_pb2.TURN_DETECTOR_TRANSCRIPT,
}
_DETECTOR_FROM_PROTO = {v: k for k, v in _DETECTOR_TO_PROTO.items()}


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """The settings in force for one session."""

    vad_threshold: float
    min_speech_ms: int
    silence_ms: int
    max_utterance_ms: int
    language: str
    barge_in: bool
    min_interrupt_ms: int
    system_prompt: str
    voice: str
    vad_stats: bool
    early_answer: bool
    turn_detection: bool
    backchannels: tuple[str, ...]
    turn_detector: TurnDetector


# Key -> (JSON type, inclusive range or None). Order is the order clients see.
_SCALARS: dict[str, tuple[type, tuple[float, float] | None]] = {
    "vad_threshold": (float, (0.01, 0.99)),
    "min_speech_ms": (int, (0, 5000)),
    "silence_ms": (int, (200, 3000)),
    "max_utterance_ms": (int, (1000, 120000)),
    "language": (str, None),
    "barge_in": (bool, None),
    "min_interrupt_ms": (int, (0, 5000)),
    "system_prompt": (str, None),
    "voice": (str, None),
    "vad_stats": (bool, None),
    "early_answer": (bool, None),
    "turn_detection": (bool, None),
}
KEYS = (*_SCALARS, "backchannels", "turn_detector")
# Bounds on what a client may make the services hold per session.
MAX_TEXT_CHARS = {"language": 16, "system_prompt": 8000, "voice": 200}
MAX_BACKCHANNELS = 64
MAX_BACKCHANNEL_CHARS = 40


def bounds(key: str) -> tuple[float, float] | None:
    """A setting's inclusive range, None if it has none (a protocol whose own
    legal values are wider clamps to it: a Realtime threshold of 1.0)."""
    return _SCALARS[key][1]


def resolve(settings: common_pb2.Settings, defaults: ParleySettings) -> SessionSettings:
    s, d = settings, defaults

    def pick(name: str, default: Any) -> Any:
        return getattr(s, name) if s.HasField(name) else default

    return SessionSettings(
        vad_threshold=pick("vad_threshold", d.vad.threshold),
        min_speech_ms=pick("min_speech_ms", d.vad.min_speech_ms),
        silence_ms=pick("silence_ms", d.vad.silence_ms),
        max_utterance_ms=pick("max_utterance_ms", d.vad.max_utterance_ms),
        language=pick("language", d.asr.language or ""),
        barge_in=pick("barge_in", d.session.barge_in),
        min_interrupt_ms=pick("min_interrupt_ms", d.session.min_interrupt_ms),
        system_prompt=pick("system_prompt", d.llm.system_prompt),
        voice=pick("voice", d.session.voice),
        vad_stats=pick("vad_stats", d.session.vad_stats),
        early_answer=pick("early_answer", d.session.early_answer),
        turn_detection=pick("turn_detection", d.session.turn_detection),
        backchannels=(
            tuple(s.backchannels.words)
            if s.HasField("backchannels")
            else tuple(d.session.backchannels)
        ),
        turn_detector=(
            _DETECTOR_FROM_PROTO.get(s.turn_detector, TurnDetector(d.session.turn_detector))
            if s.HasField("turn_detector")
            else TurnDetector(d.session.turn_detector)
        ),
    )


def to_proto(settings: SessionSettings) -> common_pb2.Settings:
    """Every field set (what the gateway echoes to clients)."""
    out = common_pb2.Settings(
        **{key: getattr(settings, key) for key in _SCALARS},
        turn_detector=_DETECTOR_TO_PROTO[settings.turn_detector],
    )
    out.backchannels.SetInParent()
    out.backchannels.words.extend(settings.backchannels)
    return out


def to_json(settings: common_pb2.Settings) -> dict[str, Any]:
    """The set fields as the WebSocket protocols show them."""
    out: dict[str, Any] = {}
    for key in _SCALARS:
        if settings.HasField(key):
            value = getattr(settings, key)
            out[key] = round(value, 3) if isinstance(value, float) else value
    if settings.HasField("backchannels"):
        out["backchannels"] = list(settings.backchannels.words)
    if settings.HasField("turn_detector"):
        detector = _DETECTOR_FROM_PROTO.get(settings.turn_detector)
        if detector is not None:
            out["turn_detector"] = detector.value
    return out


def _check_scalar(key: str, value: Any) -> None:
    kind, bounds = _SCALARS[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise SettingsError(f"settings.{key} must be a {kind.__name__}")
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        raise SettingsError(f"settings.{key} must be within {bounds[0]}..{bounds[1]}")
    limit = MAX_TEXT_CHARS.get(key)
    if limit is not None and len(value) > limit:
        raise SettingsError(f"settings.{key} must be at most {limit} characters")


def _backchannels(value: Any) -> list[str]:
    # A comma-separated string is what clients sent before the list form.
    words = value.split(",") if isinstance(value, str) else value
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise SettingsError("settings.backchannels must be a list of strings")
    words = [w.strip() for w in words if w.strip()]
    if len(words) > MAX_BACKCHANNELS or any(len(w) > MAX_BACKCHANNEL_CHARS for w in words):
        raise SettingsError(
            f"settings.backchannels: at most {MAX_BACKCHANNELS} phrases "
            f"of {MAX_BACKCHANNEL_CHARS} characters"
        )
    return words


def from_json(raw: Any) -> common_pb2.Settings:
    """A client's settings object, validated; SettingsError names the bad key."""
    if not isinstance(raw, dict):
        raise SettingsError("settings must be an object")
    out = common_pb2.Settings()
    for key, value in raw.items():
        if key == "backchannels":
            out.backchannels.SetInParent()  # set even when empty: [] clears the list
            out.backchannels.words.extend(_backchannels(value))
        elif key == "turn_detector":
            try:
                out.turn_detector = _DETECTOR_TO_PROTO[TurnDetector(value)]
            except (ValueError, TypeError):
                choices = [d.value for d in TurnDetector]
                raise SettingsError(f"settings.turn_detector must be one of {choices}") from None
        elif key in _SCALARS:
            _check_scalar(key, value)
            setattr(out, key, value)
        else:
            raise SettingsError(f"unknown setting: {key}")
    return out


def check(settings: common_pb2.Settings) -> common_pb2.Settings:
    """The same checks for settings that arrive as a proto (gRPC)."""
    for field, value in settings.ListFields():
        if field.name in _SCALARS:
            _check_scalar(field.name, value)
        elif field.name == "backchannels":
            _backchannels(list(value.words))
        elif field.name == "turn_detector" and value not in _DETECTOR_FROM_PROTO:
            raise SettingsError("settings.turn_detector must be SILENCE or TRANSCRIPT")
    return settings
