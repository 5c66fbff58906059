"""Who may say what on the bus: one NATS user per service, allowed only the
subjects it uses (parley/bus.py). The one source of truth for both NATS
configurations: `parley up` writes it with generated passwords
(var/nats/nats.conf, parley/stack.py), and the Kubernetes nats.conf's
authorization block is this table rendered with $NATS_<SERVICE>_PASSWORD
variables (tests/unit/test_bus_auth.py keeps the file equal to it).

Replies to requests go to the requester's _INBOX (allow_responses lets a
responder answer the one inbox it was asked from, nothing else). There is no
anonymous user: a client without a service's credentials cannot connect."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

S = "parley.v1.s.*"


def _kv(bucket: str) -> tuple[str, ...]:
    """A JetStream KV bucket (parley/state.py): made or found, its keys read,
    written and deleted."""
    stream = f"KV_{bucket}"
    return (
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$KV.{bucket}.>",
    )


def _stage(name: str, publishes: str, reads: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """A placed stage: its own stream and errors out, heartbeats and releases
    of its own kind; the streams it consumes, control, its placement subjects."""
    publish = (
        f"{S}.{publishes}",
        f"{S}.events",
        f"parley.v1.heartbeat.{name}",
        f"parley.v1.release.{name}",
    )
    subscribe = (
        *(f"{S}.{r}" for r in reads),
        f"{S}.control",
        f"parley.v1.place.{name}",
        f"parley.v1.place.{name}.*",
    )
    return publish, subscribe


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


_VAD = _stage("vad", "vad", ("audio.in", "asr"))
_ASR = _stage("asr", "asr", ("audio.in", "vad"))
_LLM = _stage("llm", "llm", ("asr",))
_TTS = _stage("tts", "audio.out", ("llm",))

PERMISSIONS: dict[str, Permissions] = {
    # Client-facing subjects of its sessions, placement, the stages' signs of life.
    "gateway": Permissions(
        publish=(f"{S}.audio.in", f"{S}.control", "parley.v1.place.>", "_INBOX.>"),
        subscribe=(
            f"{S}.vad",
            f"{S}.asr",
            f"{S}.llm",
            f"{S}.audio.out",
            f"{S}.events",
            f"{S}.client_tools.>",
            "parley.v1.heartbeat.*",
            "parley.v1.release.*",
            "_INBOX.>",
        ),
    ),
    "vad": Permissions(*_VAD),
    "asr": Permissions(*_ASR),
    # The only stage that calls tools, and the only one with state (its history).
    "llm": Permissions(
        publish=(*_LLM[0], "parley.v1.tools.list", "parley.v1.tools.call", *_kv("parley_history")),
        subscribe=(*_LLM[1], "_INBOX.>"),
    ),
    "tts": Permissions(*_TTS),
    "tools": Permissions(
        publish=(f"{S}.client_tools.>", f"{S}.events"),
        subscribe=("parley.v1.tools.list", "parley.v1.tools.call", "_INBOX.>"),
    ),
}

SERVICES = tuple(PERMISSIONS)


def user_of(service: str) -> str:
    return f"parley-{service}"


def password_variable(service: str) -> str:
    """The Kubernetes nats.conf's variable (from the parley-secrets Secret)."""
    return f"$NATS_{service.upper()}_PASSWORD"


def _list(subjects: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in subjects) + "]"


def authorization_block(passwords: Mapping[str, str], *, quoted: bool = True) -> str:
    """nats.conf's `authorization { ... }` for every service. `passwords`:
    each service's password, written as a quoted string, or (quoted=False)
    as given, for $VARIABLES."""
    users = []
    for service, perms in PERMISSIONS.items():
        password = passwords[service]
        shown = json.dumps(password) if quoted else password
        users.append(
            "    {\n"
            f"      user: {user_of(service)}\n"
            f"      password: {shown}\n"
            "      permissions: {\n"
            f"        publish: {_list(perms.publish)}\n"
            f"        subscribe: {_list(perms.subscribe)}\n"
            "        allow_responses: true\n"
            "      }\n"
            "    }\n"
        )
    return "authorization {\n  timeout: 5\n  users: [\n" + "".join(users) + "  ]\n}\n"


def kubernetes_block() -> str:
    """What deploy/k8s/base/nats.conf holds, passwords from its environment."""
    return authorization_block({s: password_variable(s) for s in SERVICES}, quoted=False)
