"""Parley's WebSocket protocol (docs/protocol.md): the session's typed events
as JSON objects."""

from __future__ import annotations

from typing import Any

from services.gateway.core import events as ev
from services.gateway.core.settings import settings_to_json


def _info(info: ev.SessionInfo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "session_id": info.session_id,
        "input_sample_rate": info.input_sample_rate,
        "output_sample_rate": info.output_sample_rate,
        "settings": settings_to_json(info.settings),
    }
    if info.resume_token:
        out["resume_token"] = info.resume_token
    return out


def to_json(event: ev.SessionEvent) -> dict[str, Any]:
    """The protocol's JSON object for one event."""
    match event:
        case ev.SessionStarted(info=info, resumed=resumed):
            out = {"type": "session_started", **_info(info)}
            if resumed:
                out["resumed"] = True
            return out
        case ev.SettingsUpdated(info=info):
            return {"type": "settings_updated", **_info(info)}
        case ev.UserSpeechStarted():
            return {
                "type": "user_speech_start",
                "turn_id": event.turn_id,
                "offset_ms": event.offset_ms,
            }
        case ev.UserSpeechEnded():
            return {
                "type": "user_speech_end",
                "turn_id": event.turn_id,
                "start_ms": event.start_ms,
                "end_ms": event.end_ms,
                "reason": event.reason.value,
            }
        case ev.Transcription():
            return {
                "type": "transcription",
                "turn_id": event.turn_id,
                "text": event.text,
                "final": event.final,
            }
        case ev.Processing():
            return {
                "type": "processing",
                "stage": event.stage,
                "detail": event.detail,
                "turn_id": event.turn_id,
            }
        case ev.ResponseStarted():
            return {
                "type": "response_start",
                "response_id": event.response_id,
                "turn_id": event.turn_id,
            }
        case ev.ResponseTextDelta():
            return {"type": "response_text", "response_id": event.response_id, "delta": event.delta}
        case ev.ResponseSentence():
            return {
                "type": "response_sentence",
                "response_id": event.response_id,
                "index": event.index,
                "text": event.text,
            }
        case ev.ResponseEnded():
            return {
                "type": "response_end",
                "response_id": event.response_id,
                "status": event.status.value,
                "text": event.text,
            }
        case ev.TtsStarted():
            return {
                "type": "tts_start",
                "response_id": event.response_id,
                "sample_rate": event.sample_rate,
            }
        case ev.TtsEnded():
            return {
                "type": "tts_end",
                "response_id": event.response_id,
                "status": event.status.value,
            }
        case ev.PlaybackCleared():
            return {
                "type": "playback_cleared",
                "response_id": event.response_id,
                "reason": event.reason,
            }
        case ev.TurnMetrics():
            return {
                "type": "turn_metrics",
                "turn_id": event.turn_id,
                "response_id": event.response_id,
                "end_of_speech_ms": event.end_of_speech_ms,
                "hops": dict(event.hops),
            }
        case ev.VadStats():
            return {
                "type": "vad_stats",
                "probability": event.probability,
                "energy_db": event.energy_db,
                "speaking": event.speaking,
                "offset_ms": event.offset_ms,
            }
        case ev.Error():
            return {
                "type": "error",
                "stage": event.stage,
                "code": event.code,
                "message": event.message,
                "recoverable": event.recoverable,
                "turn_id": event.turn_id,
                "response_id": event.response_id,
            }
        case ev.SessionEnded():
            return {"type": "session_end", "reason": event.reason}
    raise TypeError(f"no Parley WebSocket form for {type(event).__name__}")
