"""Translation between the session's event dicts (the WebSocket protocol's
events) and the typed messages of the gRPC Converse API (proto/parley/v1/gateway.proto)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict

from parley.v1 import common_pb2, gateway_pb2
from services.gateway.session import check_sample_rate, settings_from_json

log = logging.getLogger("parley.gateway.grpc")

Response = gateway_pb2.ConverseResponse

_STATUS = {
    "completed": Response.STATUS_COMPLETED,
    "cancelled": Response.STATUS_CANCELLED,
    "failed": Response.STATUS_FAILED,
}
_REASON = {
    "silence": Response.UserSpeechEnd.REASON_SILENCE,
    "max_utterance": Response.UserSpeechEnd.REASON_MAX_UTTERANCE,
    "commit": Response.UserSpeechEnd.REASON_COMMIT,
}
_SETTINGS_FIELDS = frozenset(f.name for f in common_pb2.Settings.DESCRIPTOR.fields)


def checked_settings(settings: common_pb2.Settings) -> common_pb2.Settings:
    """The client's settings, range-checked exactly as the WebSocket protocol
    checks its JSON ones (ClientError bad_field names the key)."""
    raw = MessageToDict(settings, preserving_proto_field_name=True)
    return settings_from_json(raw)


def check_rate(value: int, allowed: list[int], what: str) -> int | None:
    """None for 0 (keep the default), else the rate if the gateway accepts it."""
    if value == 0:
        return None
    check_sample_rate(value, allowed, what)
    return value


def _settings(values: dict[str, Any]) -> common_pb2.Settings:
    out = common_pb2.Settings()
    for key, value in values.items():
        # settings_to_json may know a key before this build's proto does.
        if key in _SETTINGS_FIELDS and value is not None:
            setattr(out, key, value)
    return out


def _session_info(e: dict[str, Any]) -> gateway_pb2.ConverseResponse.SessionInfo:
    return Response.SessionInfo(
        session_id=e["session_id"],
        input_sample_rate=e["input_sample_rate"],
        output_sample_rate=e["output_sample_rate"],
        settings=_settings(e.get("settings") or {}),
    )


def _int(e: dict[str, Any], key: str) -> int:
    return int(e.get(key) or 0)


def _str(e: dict[str, Any], key: str) -> str:
    return str(e.get(key) or "")


_BUILDERS: dict[str, Callable[[dict[str, Any]], gateway_pb2.ConverseResponse]] = {
    "session_started": lambda e: Response(session_started=_session_info(e)),
    "settings_updated": lambda e: Response(settings_updated=_session_info(e)),
    "user_speech_start": lambda e: Response(
        user_speech_start=Response.UserSpeechStart(
            turn_id=_int(e, "turn_id"), offset_ms=e.get("offset_ms", 0.0)
        )
    ),
    "user_speech_end": lambda e: Response(
        user_speech_end=Response.UserSpeechEnd(
            turn_id=_int(e, "turn_id"),
            start_ms=e.get("start_ms", 0.0),
            end_ms=e.get("end_ms", 0.0),
            reason=_REASON.get(_str(e, "reason"), Response.UserSpeechEnd.REASON_UNSPECIFIED),
        )
    ),
    "transcription": lambda e: Response(
        transcription=Response.Transcription(
            turn_id=_int(e, "turn_id"), text=_str(e, "text"), final=bool(e.get("final"))
        )
    ),
    "processing": lambda e: Response(
        processing=Response.Processing(
            stage=_str(e, "stage"), detail=_str(e, "detail"), turn_id=_int(e, "turn_id")
        )
    ),
    "response_start": lambda e: Response(
        response_start=Response.ResponseStart(
            response_id=_str(e, "response_id"), turn_id=_int(e, "turn_id")
        )
    ),
    "response_text": lambda e: Response(
        response_text=Response.ResponseText(
            response_id=_str(e, "response_id"), delta=_str(e, "delta")
        )
    ),
    "response_sentence": lambda e: Response(
        response_sentence=Response.ResponseSentence(
            response_id=_str(e, "response_id"), index=_int(e, "index"), text=_str(e, "text")
        )
    ),
    "response_end": lambda e: Response(
        response_end=Response.ResponseEnd(
            response_id=_str(e, "response_id"),
            status=_STATUS.get(_str(e, "status"), Response.STATUS_UNSPECIFIED),
            text=_str(e, "text"),
        )
    ),
    "tts_start": lambda e: Response(
        tts_start=Response.TtsStart(
            response_id=_str(e, "response_id"), sample_rate=_int(e, "sample_rate")
        )
    ),
    "tts_end": lambda e: Response(
        tts_end=Response.TtsEnd(
            response_id=_str(e, "response_id"),
            status=_STATUS.get(_str(e, "status"), Response.STATUS_UNSPECIFIED),
        )
    ),
    "playback_cleared": lambda e: Response(
        playback_cleared=Response.PlaybackCleared(
            response_id=_str(e, "response_id"), reason=_str(e, "reason")
        )
    ),
    "turn_metrics": lambda e: Response(
        turn_metrics=Response.TurnMetrics(
            turn_id=_int(e, "turn_id"),
            response_id=_str(e, "response_id"),
            end_of_speech_ms=e.get("end_of_speech_ms", 0.0),
            hops={k: float(v) for k, v in (e.get("hops") or {}).items()},
        )
    ),
    "vad_stats": lambda e: Response(
        vad_stats=Response.VadStats(
            probability=e.get("probability", 0.0),
            energy_db=e.get("energy_db", 0.0),
            speaking=bool(e.get("speaking")),
            offset_ms=e.get("offset_ms", 0.0),
        )
    ),
    "error": lambda e: Response(
        error=Response.Error(
            stage=_str(e, "stage"),
            code=_str(e, "code"),
            message=_str(e, "message"),
            recoverable=bool(e.get("recoverable", True)),
            turn_id=_int(e, "turn_id"),
            response_id=_str(e, "response_id"),
        )
    ),
    "session_end": lambda e: Response(session_end=Response.SessionEnd(reason=_str(e, "reason"))),
}


def event_to_response(event: dict[str, Any]) -> gateway_pb2.ConverseResponse | None:
    """The typed message for a session event; None for events gRPC has no use
    for (pong answers a WebSocket ping, which gRPC keepalive replaces)."""
    kind = event.get("type")
    build = _BUILDERS.get(kind) if isinstance(kind, str) else None
    if build is None:
        log.debug("event %r has no gRPC form; dropped", kind)
        return None
    return build(event)
