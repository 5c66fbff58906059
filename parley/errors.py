"""Errors a model provider raises; the stage reports them to the client."""

from __future__ import annotations


class ProviderError(Exception):
    """code: provider_unavailable, provider_error, timeout or bad_audio."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StartRefused(Exception):
    """A service will not start as configured (say, reachable from other
    machines without credentials); the message says what to set."""
