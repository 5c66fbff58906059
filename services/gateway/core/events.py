"""What a session tells its client, as typed events.

The session core emits these and nothing else; each protocol adapter renders
them in its own wire form (Parley's WebSocket JSON is one serializer among
several: protocols/parley_ws/serializer.py). Answer audio is not an event: it
reaches the sink as an `AudioOut` through `ClientSink.send_audio`, paced in
real time, carrying the response it belongs to.

Every adapter handles every event type, even if only by ignoring it on
purpose; tests/unit/test_protocol_serializers.py fails when one does not."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from parley.v1 import common_pb2


class Status(enum.StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class EndReason(enum.StrEnum):
    """Why the VAD ended the user's turn."""

    SILENCE = "silence"
    MAX_UTTERANCE = "max_utterance"
    COMMIT = "commit"
    TRANSCRIPT = "transcript"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    input_sample_rate: int
    output_sample_rate: int
    # Every field set: the session's own values, else the services' defaults.
    settings: common_pb2.Settings
    # Presented by a new connection to take the session over within the grace
    # period (docs/protocol.md, session_resume); empty where not offered.
    resume_token: str = ""


@dataclass(frozen=True, slots=True)
class SessionStarted:
    info: SessionInfo
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class SettingsUpdated:
    info: SessionInfo


@dataclass(frozen=True, slots=True)
class UserSpeechStarted:
    turn_id: int
    offset_ms: float  # input-stream offset, from the session's first audio byte


@dataclass(frozen=True, slots=True)
class UserSpeechEnded:
    turn_id: int
    start_ms: float
    end_ms: float
    reason: EndReason


@dataclass(frozen=True, slots=True)
class Transcription:
    turn_id: int
    text: str
    final: bool  # False: a partial, or the transcript at a pause


@dataclass(frozen=True, slots=True)
class Processing:
    """A stage is working on something the client may want to show (a tool call)."""

    stage: str
    detail: str
    turn_id: int = 0


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    response_id: str
    turn_id: int  # 0 for typed input


@dataclass(frozen=True, slots=True)
class ResponseTextDelta:
    response_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class ResponseSentence:
    response_id: str
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ResponseEnded:
    response_id: str
    status: Status
    text: str  # the answer; after an interruption, what the user heard


@dataclass(frozen=True, slots=True)
class TtsStarted:
    response_id: str
    sample_rate: int


@dataclass(frozen=True, slots=True)
class TtsEnded:
    """The listener has heard the response's audio (completed), or it was cut."""

    response_id: str
    status: Status


@dataclass(frozen=True, slots=True)
class PlaybackCleared:
    """Barge-in: drop whatever audio of this response is still buffered."""

    response_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class TurnMetrics:
    turn_id: int
    response_id: str
    end_of_speech_ms: float
    # Milliseconds from the end of the user's speech to each hop.
    hops: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VadStats:
    probability: float
    energy_db: float
    speaking: bool
    offset_ms: float


@dataclass(frozen=True, slots=True)
class Error:
    stage: str
    code: str
    message: str
    recoverable: bool = True
    turn_id: int = 0
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The agent ended the conversation (its goodbye has been heard)."""

    reason: str


SessionEvent = (
    SessionStarted
    | SettingsUpdated
    | UserSpeechStarted
    | UserSpeechEnded
    | Transcription
    | Processing
    | ResponseStarted
    | ResponseTextDelta
    | ResponseSentence
    | ResponseEnded
    | TtsStarted
    | TtsEnded
    | PlaybackCleared
    | TurnMetrics
    | VadStats
    | Error
    | SessionEnded
)

# Every event type, for the test that each adapter handles them all.
EVENT_TYPES: tuple[type, ...] = SessionEvent.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class AudioOut:
    """A frame of answer audio, PCM16 LE mono, sent when the listener needs it."""

    response_id: str
    pcm: bytes
    sample_rate: int
