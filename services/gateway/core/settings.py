"""The session settings as the gateway's protocols take them: the shared
schema (parley/session_settings.py) with its errors as client errors."""

from __future__ import annotations

from typing import Any

from parley import session_settings as schema
from parley.config import ParleySettings
from parley.v1 import common_pb2
from services.gateway.core.errors import ClientError


def settings_from_json(raw: Any) -> common_pb2.Settings:
    """Validate a client's settings object; errors name the bad key."""
    try:
        return schema.from_json(raw)
    except schema.SettingsError as exc:
        raise ClientError("bad_field", str(exc)) from None


def checked_settings(settings: common_pb2.Settings) -> common_pb2.Settings:
    """Settings that arrive as a proto (gRPC), checked the same way."""
    try:
        return schema.check(settings)
    except schema.SettingsError as exc:
        raise ClientError("bad_field", str(exc)) from None


def check_sample_rate(rate: int, allowed: list[int], what: str) -> None:
    if rate not in allowed:
        raise ClientError(
            "unsupported_sample_rate", f"{what} {rate} is not supported; use one of {allowed}"
        )


def settings_in_force(
    settings: common_pb2.Settings, defaults: ParleySettings
) -> common_pb2.Settings:
    """Every field set: the session's own value, else the services' default."""
    return schema.to_proto(schema.resolve(settings, defaults))


settings_to_json = schema.to_json
