"""One TOML file with environment overrides, validated at start.

The file is `parley.toml` in the working directory, or the path in
PARLEY_CONFIG / `--config`. Any key can be overridden from the environment as
PARLEY_<SECTION>__<KEY>, e.g. PARLEY_LLM__PROVIDER=openai.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_FILE = "parley.toml"


class Section(BaseModel):
    # Unknown keys are typos more often than not: refuse them by name.
    model_config = ConfigDict(extra="forbid")


class NatsSettings(Section):
    url: str = "nats://127.0.0.1:4222"
    connect_timeout_s: float = Field(5.0, gt=0)
    reconnect_wait_s: float = Field(1.0, gt=0)
    # -1: keep trying for ever; a voice agent should ride out a bus restart.
    max_reconnect_attempts: int = -1
    max_payload_bytes: int = Field(1_048_576, gt=0)
    # This service's own credentials (docs/security.md): a user and password,
    # or a .creds file (nkey/JWT). `parley up` sets both for each service from
    # what it generated under var/nats/; Kubernetes from parley-secrets.
    user: str | None = None
    password: str | None = None
    creds: str | None = None
    # TLS to the NATS server: a CA bundle to verify it (tls:// URLs, or any
    # of these set, turn TLS on), and a client certificate if it asks for one.
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class LogSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    # What people said and heard (transcripts, answers) is personal data:
    # logged at DEBUG only, unless this is on (then at INFO, for local debugging).
    content: bool = False


class TelemetrySettings(Section):
    # none: no spans recorded; console / file: local inspection; otlp: a collector.
    traces_exporter: Literal["none", "console", "file", "otlp"] = "none"
    # {service} becomes the service name, so processes never share a file.
    traces_file: str = "var/traces-{service}.jsonl"
    otlp_endpoint: str | None = None


class StageSettings(Section):
    """What every service has: its ports and its placement rhythm."""

    # Where the metrics and gRPC health servers listen: loopback unless told
    # (the Kubernetes config sets 0.0.0.0, for the probes and Prometheus).
    host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535)
    health_port: int = Field(0, ge=0, le=65535)
    # Four a second: with the gateway's 3 misses a dead owner is replaced
    # 0.8 s after it died (p50 over 10 SIGKILLs, 0.9 s p95; 3.1 s at 1 s).
    heartbeat_interval_s: float = Field(0.25, gt=0)
    drain_timeout_s: float = Field(10.0, ge=0)
    # A session nobody has spoken to for this long is closed (the gateway died).
    session_idle_timeout_s: float = Field(900.0, gt=0)
    # Sessions this instance accepts (placement sends the next one elsewhere,
    # and when every instance is full the gateway refuses it: server_busy);
    # 0: no limit. Each stage sets its own default below.
    max_sessions: int = Field(0, ge=0)


class VadSettings(StageSettings):
    metrics_port: int = Field(9102, ge=0, le=65535)
    health_port: int = Field(50102, ge=0, le=65535)
    # A session's VAD costs ~2% of a core (32 ms windows, sub-ms each).
    max_sessions: int = Field(64, ge=0)
    model_path: str | None = None
    threshold: float = Field(0.5, gt=0, lt=1)
    # Hysteresis: speech goes on until the probability falls below this.
    neg_threshold_offset: float = Field(0.15, ge=0, lt=1)
    min_speech_ms: int = Field(250, ge=0, le=5000)
    silence_ms: int = Field(500, ge=200, le=3000)
    max_utterance_ms: int = Field(30000, ge=1000, le=120000)
    speech_pad_ms: int = Field(300, ge=0, le=2000)
    # A pause this long is announced so the answer can start early (0: off).
    early_pause_ms: int = Field(250, ge=0, le=2000)
    stats_interval_ms: int = Field(100, ge=20, le=5000)


class AsrSettings(StageSettings):
    metrics_port: int = Field(9103, ge=0, le=65535)
    health_port: int = Field(50103, ge=0, le=65535)
    # Sessions mostly listen: 16 keeps a final's wait for the recognizer
    # short when a few of them end their turns together.
    max_sessions: int = Field(16, ge=0)
    provider: Literal["faster_whisper", "openai"] = "faster_whisper"
    # faster_whisper: None is the bundled tiny.en; else a path or model name.
    model: str | None = None
    device: str = "cpu"
    compute_type: str = "int8"
    beam_size: int = Field(1, ge=1, le=10)
    language: str | None = "en"
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    remote_model: str = "whisper-1"
    timeout_s: float = Field(30.0, gt=0)
    # Audio kept before the VAD's start offset, so the first phoneme is not cut.
    pre_roll_ms: int = Field(300, ge=0, le=2000)
    # Partial transcripts while the user speaks, at most this often (and never
    # more than half the time: a partial waits as long as the last one took,
    # so the final is not starved); 0 turns them off.
    partial_interval_ms: int = Field(500, ge=0, le=10000)


class LlmSettings(StageSettings):
    metrics_port: int = Field(9104, ge=0, le=65535)
    health_port: int = Field(50104, ge=0, le=65535)
    # Four sessions per generation slot (llm.parallel, 4): a session is
    # answered a fraction of the time it is connected.
    max_sessions: int = Field(16, ge=0)
    # xllamacpp: a local GGUF (prebuilt llama.cpp server, in process);
    # llama_cpp: the same on llama-cpp-python (the `llama-cpp` extra);
    # openai: any OpenAI-compatible /v1/chat/completions.
    provider: Literal["xllamacpp", "llama_cpp", "openai"] = "xllamacpp"
    # None: the bundled Gemma 3 270M.
    model_path: str | None = None
    # Context of one answer, in tokens.
    n_ctx: int = Field(2048, ge=256)
    # Generation threads (shared by all answers); None: half the cores.
    n_threads: int | None = Field(None, ge=1)
    # xllamacpp: answers generated at once (continuous batching); sessions
    # beyond this wait for one. llama_cpp answers one at a time.
    parallel: int = Field(4, ge=1, le=64)
    repeat_penalty: float = Field(1.3, ge=1.0)
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    model: str = "gpt-4o-mini"
    timeout_s: float = Field(30.0, gt=0)
    system_prompt: str = (
        "You are Parley, a friendly voice assistant. Answer in one or two short "
        "spoken sentences, without lists or markdown."
    )
    max_tokens: int = Field(60, ge=1, le=4096)
    temperature: float = Field(0.6, ge=0, le=2)
    max_history_turns: int = Field(20, ge=1)
    # Tool calling (OpenAI-compatible models): rounds of calls before the
    # model must answer in words, and what the user hears while a tool runs.
    max_tool_rounds: int = Field(4, ge=0, le=16)
    tool_timeout_s: float = Field(10.0, gt=0)
    tools_allow: list[str] | None = None
    filler_delay_s: float = Field(1.5, ge=0)
    filler_text: str = "One moment."


class TtsSettings(StageSettings):
    metrics_port: int = Field(9105, ge=0, le=65535)
    health_port: int = Field(50105, ge=0, le=65535)
    max_sessions: int = Field(16, ge=0)
    provider: Literal["piper", "openai"] = "piper"
    model_path: str | None = None
    config_path: str | None = None
    length_scale: float | None = Field(None, gt=0)
    base_url: str = "https://api.openai.com/v1"
    api_key: str | None = None
    model: str = "tts-1"
    voice: str = "alloy"
    timeout_s: float = Field(30.0, gt=0)
    chunk_ms: int = Field(100, ge=10, le=1000)


class McpServerSettings(Section):
    """One MCP server whose tools the tools service offers."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    transport: Literal["streamable_http", "sse", "stdio"] = "streamable_http"
    url: str | None = None
    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _target(self) -> McpServerSettings:
        if self.transport == "stdio" and not self.command:
            raise ValueError(f"mcp server {self.name}: stdio needs a command")
        if self.transport != "stdio" and not self.url:
            raise ValueError(f"mcp server {self.name}: {self.transport} needs a url")
        return self


class ToolsSettings(StageSettings):
    metrics_port: int = Field(9106, ge=0, le=65535)
    health_port: int = Field(50106, ge=0, le=65535)
    timezone: str = "UTC"
    call_timeout_s: float = Field(10.0, gt=0)
    mcp_servers: list[McpServerSettings] = []
    # How often an idle MCP connection is checked, so a restarted server is
    # found again before anyone needs it.
    mcp_ping_interval_s: float = Field(5.0, gt=0)
    # Tools this service runs, by name or prefix ending in "*" (e.g. "time",
    # "home_*"); a call for any other gets ok=false "tool X is not allowed".
    # None runs every tool it has. Enforced here whatever the llm offers.
    allow: list[str] | None = None


class XiaozhiSettings(Section):
    """Xiaozhi ESP32 firmware: WebSocket at /xiaozhi/v1/, OTA at /xiaozhi/ota/."""

    # Each board's token is HMAC-SHA256(gateway.device_secret, device id),
    # handed out by the OTA and checked on connect: never a shared one.
    # Set, this older shared token is still accepted from boards configured
    # by hand; the OTA never returns it.
    auth_token: str | None = None
    # Device-Id (MAC) values allowed to connect and activate; None allows all.
    device_allowlist: list[str] | None = None
    # What OTA tells the boards to connect to; None derives it from the OTA
    # request's Host and the gateway's WebSocket port.
    websocket_url: str | None = None
    # Binary framing OTA asks the boards to use: 1 bare Opus, 2 and 3 with headers.
    protocol_version: Literal[1, 2, 3] = 1
    downlink_sample_rate: Literal[8000, 16000, 24000, 48000] = 24000
    downlink_frame_ms: Literal[20, 40, 60] = 60
    # The firmware gives up on a connection without a server hello after 10 s.
    hello_timeout_s: float = Field(10.0, gt=0)
    # The firmware drops a channel silent for 120 s; say something before that.
    keepalive_s: float = Field(60.0, gt=0, lt=120)
    mcp_timeout_s: float = Field(10.0, gt=0)
    # tools/list pages fetched at most (a device offers a dozen tools).
    mcp_max_pages: int = Field(20, ge=1)


class EchoKitSettings(Section):
    """EchoKit boards (second-state/echokit_box firmware) at /ws/{device_id}."""

    # A 16-bit PCM WAV sent to each board on a fresh connection (HelloStart,
    # HelloChunk..., HelloEnd); the board plays it when a chat starts. Empty:
    # hello_text spoken once by the bundled Piper voice, cached under var/.
    hello_wav: str = ""
    hello_text: str = "Hello! I am listening."
    send_hello: bool = True
    # A board that drops off keeps its conversation this long; reconnecting
    # with reconnect=true and the same id picks it up again.
    reconnect_grace_s: float = Field(60.0, ge=0)
    # The boards buffer what they get; a longer lead than the gateway's keeps
    # their download-speed check (which turns streaming off) happy.
    playback_lead_ms: int = Field(1500, ge=0, le=5000)
    # Board ids (the firmware uses its MAC) allowed to connect; None allows all.
    device_allowlist: list[str] | None = None
    # ?token=... or Authorization: Bearer, for clients that can send one (the
    # firmware cannot); None asks for none. gateway.auth_token does not apply.
    auth_token: str | None = None


class SessionDefaults(Section):
    """Per-session settings' defaults where no stage section holds them
    (parley/session_settings.py); a client may change each for its session."""

    barge_in: bool = True
    min_interrupt_ms: int = Field(0, ge=0, le=5000)
    voice: str = ""
    vad_stats: bool = False
    # Prepare the answer at a short pause, before the turn is known to be over.
    early_answer: bool = True
    turn_detection: bool = True
    backchannels: list[str] = []
    turn_detector: Literal["silence", "transcript"] = "silence"


class StateSettings(Section):
    """What must outlive a process, in NATS JetStream KV (parley/state.py):
    the conversation history (llm). The NATS server needs JetStream (`parley
    up` starts it with -js; the Kubernetes NATS has it on its volumes)."""

    # False: nothing is stored (a history lives and dies with its llm
    # instance); no JetStream needed.
    enabled: bool = True
    # A history expires this long after its last write (JetStream max_age).
    # An open session is never idle longer than llm.session_idle_timeout_s
    # (900 s) before its stages close it, so an hour keeps every open
    # conversation with room to spare, while one whose gateway vanished
    # (nobody ended it) is gone within the hour, not kept for ever.
    history_ttl_s: float = Field(3600.0, gt=0)
    # The session record (bucket parley_sessions), same reasoning.
    session_ttl_s: float = Field(3600.0, gt=0)
    # Copies of each bucket: 1 on one NATS server, 3 on the Kubernetes
    # three-server cluster (a node may go without losing a write).
    replicas: int = Field(1, ge=1, le=5)
    # Largest value a bucket accepts; a history is bounded well below
    # (llm.max_history_turns and 12000 characters, ~50 KB at worst).
    max_value_bytes: int = Field(262_144, ge=1024)
    # A KV read or write that takes longer has failed.
    timeout_s: float = Field(2.0, gt=0)
    # How long a service waits at start for a JetStream that is not up yet
    # (a cluster electing its leader); the startupProbe allows longer.
    start_wait_s: float = Field(60.0, ge=0, le=600)


class GatewaySettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    metrics_port: int = Field(9101, ge=0, le=65535)
    # Clients may send 20-60 ms frames; anything over this is refused by frame.
    max_frame_bytes: int = Field(64_000, ge=1024)
    # Hard WebSocket message limit; above it the connection itself is closed.
    max_message_bytes: int = Field(1_048_576, ge=1024)
    input_sample_rates: list[int] = [8000, 16000, 22050, 24000, 44100, 48000]
    output_sample_rate: int = Field(16000, ge=8000, le=48000)
    placement_timeout_s: float = Field(3.0, gt=0)
    # Sessions this gateway holds at once (beyond it: server_busy, HTTP 503
    # before a WebSocket upgrade); 0: no limit, the stages' capacity bounds it.
    max_sessions: int = Field(0, ge=0)
    # Owners silent this many heartbeat intervals are presumed dead (the
    # stages' interval; the watcher looks that often): 0.75 s. The longest gap
    # between two heartbeats of a stage (sender's clock, tests/e2e/
    # test_failover.py) was 0.30 s with Whisper transcribing and a fresh asr
    # loading on 2 cores; 1.5 s when the shared machine starved every process
    # at once, the gateway's loop as well (no owner was taken for dead). A
    # stage starved alone that long would be: two owners until fencing exists.
    heartbeat_misses: int = Field(3, ge=1)
    heartbeat_interval_s: float = Field(0.25, gt=0)
    # Audio sent ahead of real time, so a device's jitter buffer never starves.
    playback_lead_ms: int = Field(300, ge=0, le=5000)
    # Client audio faster than this many times real time is dropped (a
    # flood must not queue without bound or slow other sessions down), once
    # a burst of audio_burst_ms has gone through: a client catching up after
    # a stall sends its backlog at once (the e2e clients, whose loop stalls
    # while Piper synthesizes, sent ~3 s so; a mobile link's retransmits
    # stall as long), and 5 s of audio costs the VAD ~50 ms; 0 turns it off.
    max_audio_speed: float = Field(1.5, ge=0)
    audio_burst_ms: int = Field(5000, ge=100, le=60000)
    drain_timeout_s: float = Field(10.0, ge=0)
    # A connection that drops keeps its session this long for a reconnect
    # (Parley WebSocket session_resume, gRPC resume); 0 ends it at once.
    # Long enough for a phone changing networks, short enough that a device
    # gone for good does not hold stage capacity.
    resume_grace_s: float = Field(30.0, ge=0, le=3600)
    auth_token: str | None = None
    # Server secret from which each device's own token is derived (Xiaozhi
    # boards, EchoKit boards; services/gateway/core/device_tokens.py); None:
    # derived from auth_token; neither: devices are not asked for one
    # (loopback only, see start()).
    device_secret: str | None = None
    # Origins (scheme://host[:port]) whose pages may open a WebSocket here;
    # the page's own origin (Origin matching Host) always may, and requests
    # without an Origin (devices, the CLI) are not browser pages. "*": any.
    allowed_origins: list[str] = []
    # TLS for the WebSocket (and OTA HTTP) and gRPC ports: PEM paths.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Plain HTTP beside the WebSocket port, for what needs POST (Xiaozhi OTA);
    # 0 picks a free port.
    http_port: int = Field(8081, ge=0, le=65535)
    # gRPC Converse API and the gRPC health service; 0 picks a free port.
    grpc_port: int = Field(50051, ge=0, le=65535)
    xiaozhi: XiaozhiSettings = XiaozhiSettings()
    echokit: EchoKitSettings = EchoKitSettings()


class ParleySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    nats: NatsSettings = NatsSettings()
    log: LogSettings = LogSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    gateway: GatewaySettings = GatewaySettings()
    session: SessionDefaults = SessionDefaults()
    vad: VadSettings = VadSettings()
    asr: AsrSettings = AsrSettings()
    llm: LlmSettings = LlmSettings()
    tts: TtsSettings = TtsSettings()
    tools: ToolsSettings = ToolsSettings()
    state: StateSettings = StateSettings()

    @model_validator(mode="after")
    def _remote_needs_url(self) -> ParleySettings:
        for name in ("asr", "llm", "tts"):
            section = getattr(self, name)
            if section.provider == "openai" and not section.base_url:
                raise ValueError(f"{name}.base_url is required when {name}.provider is openai")
        return self

    @model_validator(mode="after")
    def _state_fits(self) -> ParleySettings:
        if self.state.history_ttl_s < self.llm.session_idle_timeout_s:
            raise ValueError(
                f"state.history_ttl_s ({self.state.history_ttl_s:g}) is shorter than "
                f"llm.session_idle_timeout_s ({self.llm.session_idle_timeout_s:g}): "
                "an open session's history would expire"
            )
        if self.state.max_value_bytes > self.nats.max_payload_bytes:
            raise ValueError(
                f"state.max_value_bytes ({self.state.max_value_bytes}) is over "
                f"nats.max_payload_bytes ({self.nats.max_payload_bytes})"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


_config_path: Path | None = None


class ConfigError(Exception):
    """The configuration is invalid; the message names every bad key."""


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {err['msg']}{shown}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(
    config_file: str | os.PathLike[str] | None = None, **overrides: Any
) -> ParleySettings:
    """Read the TOML file, apply PARLEY_* overrides and validate everything."""
    global _config_path
    raw = config_file or os.environ.get("PARLEY_CONFIG")
    if raw:
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
    else:
        path = Path(DEFAULT_CONFIG_FILE)
        if not path.is_file():
            path = None  # type: ignore[assignment]
    # The file is a source only for this construction: a ParleySettings built
    # later (a test's, say) must not read whatever file was loaded last.
    _config_path = path
    try:
        return ParleySettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
    except Exception as exc:  # a TOML syntax error names its line
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    finally:
        _config_path = None


def load_settings_or_exit(config_file: str | None = None) -> ParleySettings:
    try:
        return load_settings(config_file)
    except ConfigError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
