"""The gRPC Converse API (proto/parley/v1/gateway.proto, docs/grpc.md): the
session's typed events as ConverseResponse messages, and the check on the
rates a client sends."""

from __future__ import annotations

from parley.v1 import gateway_pb2
from services.gateway.core import events as ev
from services.gateway.core.settings import check_sample_rate

Response = gateway_pb2.ConverseResponse
_STATUS: dict[ev.Status, Response.Status] = {
    ev.Status.COMPLETED: Response.STATUS_COMPLETED,
    ev.Status.CANCELLED: Response.STATUS_CANCELLED,
    ev.Status.FAILED: Response.STATUS_FAILED,
}
_REASON: dict[ev.EndReason, Response.UserSpeechEnd.Reason] = {
    ev.EndReason.SILENCE: Response.UserSpeechEnd.REASON_SILENCE,
    ev.EndReason.MAX_UTTERANCE: Response.UserSpeechEnd.REASON_MAX_UTTERANCE,
    ev.EndReason.COMMIT: Response.UserSpeechEnd.REASON_COMMIT,
    ev.EndReason.TRANSCRIPT: Response.UserSpeechEnd.REASON_TRANSCRIPT,
}


def check_rate(value: int, allowed: list[int], what: str) -> int | None:
    """None for 0 (keep what is in force), else the rate if the gateway accepts it."""
    if value == 0:
        return None
    check_sample_rate(value, allowed, what)
    return value


def _info(info: ev.SessionInfo, resumed: bool = False) -> Response.SessionInfo:
    return Response.SessionInfo(
        session_id=info.session_id,
        input_sample_rate=info.input_sample_rate,
        output_sample_rate=info.output_sample_rate,
        settings=info.settings,
        resume_token=info.resume_token,
        resumed=resumed,
    )


def to_audio(frame: ev.AudioOut) -> Response:
    return Response(
        audio=Response.Audio(
            pcm=frame.pcm, response_id=frame.response_id, sample_rate=frame.sample_rate
        )
    )


def to_response(event: ev.SessionEvent) -> Response | None:
    """The ConverseResponse for one event; None for an event gRPC clients get
    no message for (today every event has one)."""
    match event:
        case ev.SessionStarted(info=info, resumed=resumed):
            return Response(session_started=_info(info, resumed))
        case ev.SettingsUpdated(info=info):
            return Response(settings_updated=_info(info))
        case ev.UserSpeechStarted():
            return Response(
                user_speech_start=Response.UserSpeechStart(
                    turn_id=event.turn_id, offset_ms=event.offset_ms
                )
            )
        case ev.UserSpeechEnded():
            return Response(
                user_speech_end=Response.UserSpeechEnd(
                    turn_id=event.turn_id,
                    start_ms=event.start_ms,
                    end_ms=event.end_ms,
                    reason=_REASON[event.reason],
                )
            )
        case ev.Transcription():
            return Response(
                transcription=Response.Transcription(
                    turn_id=event.turn_id, text=event.text, final=event.final
                )
            )
        case ev.Processing():
            return Response(
                processing=Response.Processing(
                    stage=event.stage, detail=event.detail, turn_id=event.turn_id
                )
            )
        case ev.ResponseStarted():
            return Response(
                response_start=Response.ResponseStart(
                    response_id=event.response_id, turn_id=event.turn_id
                )
            )
        case ev.ResponseTextDelta():
            return Response(
                response_text=Response.ResponseText(
                    response_id=event.response_id, delta=event.delta
                )
            )
        case ev.ResponseSentence():
            return Response(
                response_sentence=Response.ResponseSentence(
                    response_id=event.response_id, index=event.index, text=event.text
                )
            )
        case ev.ResponseEnded():
            return Response(
                response_end=Response.ResponseEnd(
                    response_id=event.response_id, status=_STATUS[event.status], text=event.text
                )
            )
        case ev.TtsStarted():
            return Response(
                tts_start=Response.TtsStart(
                    response_id=event.response_id, sample_rate=event.sample_rate
                )
            )
        case ev.TtsEnded():
            return Response(
                tts_end=Response.TtsEnd(response_id=event.response_id, status=_STATUS[event.status])
            )
        case ev.PlaybackCleared():
            return Response(
                playback_cleared=Response.PlaybackCleared(
                    response_id=event.response_id, reason=event.reason
                )
            )
        case ev.TurnMetrics():
            return Response(
                turn_metrics=Response.TurnMetrics(
                    turn_id=event.turn_id,
                    response_id=event.response_id,
                    end_of_speech_ms=event.end_of_speech_ms,
                    hops=event.hops,
                )
            )
        case ev.VadStats():
            return Response(
                vad_stats=Response.VadStats(
                    probability=event.probability,
                    energy_db=event.energy_db,
                    speaking=event.speaking,
                    offset_ms=event.offset_ms,
                )
            )
        case ev.Error():
            return Response(
                error=Response.Error(
                    stage=event.stage,
                    code=event.code,
                    message=event.message,
                    recoverable=event.recoverable,
                    turn_id=event.turn_id,
                    response_id=event.response_id,
                )
            )
        case ev.SessionEnded():
            return Response(session_end=Response.SessionEnd(reason=event.reason))
    raise TypeError(f"no gRPC form for {type(event).__name__}")
