"""The Realtime session configuration: parsing session.update (beta and GA
shapes), mapping it onto Parley's session settings, and describing it back in
the client's dialect for session.created / session.updated.

The Parley settings it asks for pass the same validation as every protocol's
(core/settings.py); a value Parley refuses is a Realtime error naming the
Realtime field it came from."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from parley.session_settings import bounds
from parley.v1 import common_pb2, tools_pb2
from services.gateway.core.errors import ClientError
from services.gateway.core.settings import settings_from_json
from services.gateway.protocols.realtime.audio import PCM16, AudioFormat, parse_format
from services.gateway.protocols.realtime.events import RealtimeClientError, Wire

# semantic_vad's eagerness has no model behind it here: it picks a silence.
_EAGERNESS_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}

_BETA_KEYS = {
    "model",
    "modalities",
    "instructions",
    "voice",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "turn_detection",
    "tools",
    "tool_choice",
    "temperature",
    "max_response_output_tokens",
    "speed",
    "tracing",
}
_GA_KEYS = {
    "type",
    "model",
    "output_modalities",
    "instructions",
    "audio",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "tracing",
    "include",
    "prompt",
    "truncation",
    "reasoning",
    "parallel_tool_calls",
}


def _clamp(key: str, value: float) -> float:
    """Within Parley's range for the setting: Realtime values outside it are
    legal Realtime values, so they are clamped rather than refused. NaN stays
    NaN, and the validation refuses it."""
    lo, hi = bounds(key) or (-math.inf, math.inf)
    return min(max(value, lo), hi)


@dataclass
class TurnDetection:
    type: str = "server_vad"  # or "semantic_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    interrupt_response: bool = True
    eagerness: str | None = None
    idle_timeout_ms: int | None = None


@dataclass
class RealtimeConfig:
    model: str = "parley"
    instructions: str | None = None
    voice: str = "alloy"
    input_format: AudioFormat = PCM16
    output_format: AudioFormat = PCM16
    text_only: bool = False
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription: Wire | None = None
    tools: list[Wire] = field(default_factory=list)
    tool_choice: str = "auto"
    temperature: float | None = None
    max_output_tokens: int | str = "inf"
    speed: float | None = None
    # Where the client set turn detection, voice and transcription (beta and
    # GA name them differently), so an error names the field it sent.
    params: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    # --- session.update -------------------------------------------------------
    def updated(self, session: Any) -> RealtimeConfig:
        """A copy with the update applied; nothing is applied if any field is bad."""
        if not isinstance(session, dict):
            raise RealtimeClientError("invalid_value", "session must be an object", "session")
        new = copy.deepcopy(self)
        for key, value in session.items():
            if key not in _BETA_KEYS and key not in _GA_KEYS:
                raise RealtimeClientError(
                    "unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}"
                )
            new._apply(key, value)
        new.parley_settings()  # Parley's own validation, before anything applies
        return new

    def _apply(self, key: str, value: Any) -> None:
        p = f"session.{key}"
        if key == "type":
            if value != "realtime":
                raise RealtimeClientError(
                    "invalid_value",
                    f"session.type {value!r} is not supported; Parley serves 'realtime' sessions",
                    p,
                )
        elif key == "model":
            self.model = _string(value, p)
        elif key in ("modalities", "output_modalities"):
            # Strings first: set() of a list holding a list raised TypeError,
            # which closed the connection (found by tests/fuzz/test_realtime.py).
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(v, str) for v in value)
                or not set(value) <= {"text", "audio"}
            ):
                raise RealtimeClientError(
                    "invalid_value", f"{p} must list 'text' and/or 'audio'", p
                )
            self.text_only = "audio" not in value
        elif key == "instructions":
            self.instructions = _string(value, p)
        elif key == "voice":
            self.voice = _voice(value, p)
            self.params["voice"] = p
        elif key == "input_audio_format":
            self.input_format = parse_format(value, p)
        elif key == "output_audio_format":
            self.output_format = parse_format(value, p)
        elif key == "input_audio_transcription":
            self.transcription = _transcription(value, p)
            self.params["transcription"] = p
        elif key == "turn_detection":
            self.turn_detection = _turn_detection(value, p)
            self.params["turn_detection"] = p
        elif key == "tools":
            self.tools = _tools(value, p)
        elif key == "tool_choice":
            if value not in ("auto", "none"):
                raise RealtimeClientError(
                    "invalid_value",
                    f"{p}: only 'auto' and 'none' are supported (Parley's LLM chooses its tools)",
                    p,
                )
            self.tool_choice = value
        elif key == "temperature":
            self.temperature = _number(value, p)
        elif key in ("max_response_output_tokens", "max_output_tokens"):
            if value != "inf" and (not isinstance(value, int) or isinstance(value, bool)):
                raise RealtimeClientError("invalid_value", f"{p} must be an integer or 'inf'", p)
            self.max_output_tokens = value
        elif key == "speed":
            self.speed = _number(value, p)
        elif key == "audio":
            self._apply_audio(value)
        # The rest (tracing, include, prompt, noise reduction, ...) is accepted
        # and has no effect; docs/realtime.md lists them.

    def _apply_audio(self, audio: Any) -> None:
        if not isinstance(audio, dict):
            raise RealtimeClientError(
                "invalid_value", "session.audio must be an object", "session.audio"
            )
        inp = audio.get("input") or {}
        out = audio.get("output") or {}
        if not isinstance(inp, dict) or not isinstance(out, dict):
            raise RealtimeClientError(
                "invalid_value", "session.audio.input/output must be objects", "session.audio"
            )
        p = "session.audio.input"
        if "format" in inp:
            self.input_format = parse_format(inp["format"], f"{p}.format")
        if "transcription" in inp:
            self.transcription = _transcription(inp["transcription"], f"{p}.transcription")
            self.params["transcription"] = f"{p}.transcription"
        if "turn_detection" in inp:
            self.turn_detection = _turn_detection(inp["turn_detection"], f"{p}.turn_detection")
            self.params["turn_detection"] = f"{p}.turn_detection"
        p = "session.audio.output"
        if "format" in out:
            self.output_format = parse_format(out["format"], f"{p}.format")
        if "voice" in out:
            self.voice = _voice(out["voice"], f"{p}.voice")
            self.params["voice"] = f"{p}.voice"
        if "speed" in out:
            self.speed = _number(out["speed"], f"{p}.speed")

    # --- onto Parley ----------------------------------------------------------
    def parley_settings(self) -> common_pb2.Settings:
        """The Parley session settings, validated; RealtimeClientError names
        the Realtime field of a value Parley refuses."""
        out = common_pb2.Settings()
        for key, (value, param) in self._wanted_settings().items():
            try:
                out.MergeFrom(settings_from_json({key: value}))
            except ClientError as exc:
                raise RealtimeClientError(
                    "invalid_value", f"Invalid value for '{param}': {exc}", param
                ) from None
        return out

    def _wanted_settings(self) -> dict[str, tuple[object, str]]:
        """Parley setting -> (value, the Realtime field it comes from)."""
        td_param = self.params.get("turn_detection", "session.turn_detection")
        wanted: dict[str, tuple[object, str]] = {
            "voice": (self.voice, self.params.get("voice", "session.voice"))
        }
        if self.instructions is not None:
            wanted["system_prompt"] = (self.instructions, "session.instructions")
        td = self.turn_detection
        if td is None:
            # Push-to-talk: only commit ends a turn. Speech appended while the
            # agent talks is the user pressing the button: it interrupts.
            wanted["turn_detection"] = (False, td_param)
            wanted["barge_in"] = (True, td_param)
        else:
            wanted["turn_detection"] = (True, td_param)
            wanted["barge_in"] = (td.interrupt_response, f"{td_param}.interrupt_response")
            if td.threshold is not None:
                threshold = _clamp("vad_threshold", td.threshold)
                wanted["vad_threshold"] = (threshold, f"{td_param}.threshold")
            silence, param = td.silence_duration_ms, f"{td_param}.silence_duration_ms"
            if td.type == "semantic_vad":
                silence = _EAGERNESS_SILENCE_MS.get(td.eagerness or "auto", 800)
                param = f"{td_param}.eagerness"
            if silence is not None:
                wanted["silence_ms"] = (int(_clamp("silence_ms", silence)), param)
        if self.transcription and self.transcription.get("language"):
            where = self.params.get("transcription", "session.input_audio_transcription")
            wanted["language"] = (self.transcription["language"], f"{where}.language")
        return wanted

    def tool_protos(self) -> list[tools_pb2.Tool]:
        if self.tool_choice == "none":
            return []
        return [
            tools_pb2.Tool(
                name=t["name"],
                description=t.get("description", ""),
                parameters_json=json.dumps(t.get("parameters") or {"type": "object"}),
            )
            for t in self.tools
        ]

    # --- described back -------------------------------------------------------
    def describe(self, session_id: str, beta: bool, effective: Mapping[str, Any]) -> Wire:
        """The session object; `effective` is Parley's settings in force."""
        td = self._describe_turn_detection(effective)
        instructions = self.instructions
        if instructions is None:
            instructions = effective.get("system_prompt", "")
        modalities = ["text"] if self.text_only else (["text", "audio"] if beta else ["audio"])
        if beta:
            return {
                "id": session_id,
                "object": "realtime.session",
                "model": self.model,
                "modalities": modalities,
                "instructions": instructions,
                "voice": self.voice,
                "input_audio_format": self.input_format.describe(True),
                "output_audio_format": self.output_format.describe(True),
                "input_audio_transcription": self.transcription,
                "input_audio_noise_reduction": None,
                "turn_detection": td,
                "tools": self.tools,
                "tool_choice": self.tool_choice,
                "temperature": self.temperature if self.temperature is not None else 0.8,
                "max_response_output_tokens": self.max_output_tokens,
                "speed": self.speed if self.speed is not None else 1.0,
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": self.model,
            "output_modalities": modalities,
            "instructions": instructions,
            "audio": {
                "input": {
                    "format": self.input_format.describe(False),
                    "transcription": self.transcription,
                    "noise_reduction": None,
                    "turn_detection": td,
                },
                "output": {
                    "format": self.output_format.describe(False),
                    "voice": self.voice,
                    "speed": self.speed if self.speed is not None else 1.0,
                },
            },
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "max_output_tokens": self.max_output_tokens,
        }

    def _describe_turn_detection(self, effective: Mapping[str, Any]) -> Wire | None:
        td = self.turn_detection
        if td is None:
            return None
        out: Wire = {
            "type": td.type,
            "create_response": True,
            "interrupt_response": td.interrupt_response,
        }
        if td.type == "server_vad":
            out["threshold"] = effective.get("vad_threshold", td.threshold)
            out["prefix_padding_ms"] = (
                td.prefix_padding_ms if td.prefix_padding_ms is not None else 300
            )
            out["silence_duration_ms"] = effective.get("silence_ms", td.silence_duration_ms)
            out["idle_timeout_ms"] = td.idle_timeout_ms
        else:
            out["eagerness"] = td.eagerness or "auto"
        return out


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise RealtimeClientError("invalid_type", f"{param} must be a string", param)
    return value


def _number(value: Any, param: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise RealtimeClientError("invalid_type", f"{param} must be a number", param)
    return float(value)


def _voice(value: Any, param: str) -> str:
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return str(value["id"])
    return _string(value, param)


def _ms(value: Any, param: str) -> int:
    number = _number(value, param)
    if not math.isfinite(number):
        raise RealtimeClientError("invalid_value", f"{param} must be a finite number", param)
    return int(number)


def _transcription(value: Any, param: str) -> Wire | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RealtimeClientError("invalid_type", f"{param} must be an object or null", param)
    out: Wire = {"model": value.get("model") or "whisper-1"}
    for key in ("language", "prompt"):
        if key in value:
            out[key] = _string(value[key], f"{param}.{key}")
    return out


def _turn_detection(value: Any, param: str) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RealtimeClientError("invalid_type", f"{param} must be an object or null", param)
    kind = value.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise RealtimeClientError(
            "invalid_value", f"{param}.type must be 'server_vad' or 'semantic_vad'", f"{param}.type"
        )
    if value.get("create_response") is False:
        raise RealtimeClientError(
            "unsupported",
            "create_response false is not supported: Parley answers every turn its VAD "
            "ends; use turn_detection null (push-to-talk) to decide turns yourself",
            f"{param}.create_response",
        )
    td = TurnDetection(type=kind)
    if "threshold" in value:
        td.threshold = _number(value["threshold"], f"{param}.threshold")
    for key in ("prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"):
        if value.get(key) is not None:
            setattr(td, key, _ms(value[key], f"{param}.{key}"))
    if "interrupt_response" in value:
        if not isinstance(value["interrupt_response"], bool):
            raise RealtimeClientError(
                "invalid_type",
                f"{param}.interrupt_response must be a boolean",
                f"{param}.interrupt_response",
            )
        td.interrupt_response = value["interrupt_response"]
    if "eagerness" in value:
        td.eagerness = _string(value["eagerness"], f"{param}.eagerness")
    return td


def _tools(value: Any, param: str) -> list[Wire]:
    if not isinstance(value, list):
        raise RealtimeClientError("invalid_type", f"{param} must be a list", param)
    out = []
    for i, tool in enumerate(value):
        p = f"{param}[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise RealtimeClientError(
                "unsupported", f"{p}: only function tools are supported (no MCP tools)", p
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise RealtimeClientError(
                "missing_required_parameter", f"{p}.name is required", f"{p}.name"
            )
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise RealtimeClientError(
                "invalid_type", f"{p}.parameters must be a JSON schema object", f"{p}.parameters"
            )
        entry: Wire = {"type": "function", "name": name}
        if isinstance(tool.get("description"), str):
            entry["description"] = tool["description"]
        entry["parameters"] = params or {"type": "object", "properties": {}}
        out.append(entry)
    return out
