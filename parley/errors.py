"""Errors a model provider raises; the stage reports them to the client."""

from __future__ import annotations

# What a client is told of a provider's failure: no URL, no response body
# (an error body may quote the request, and base_url names infrastructure).
_PUBLIC = {
    "timeout": "the provider timed out",
    "provider_unavailable": "the provider is unavailable",
    "provider_error": "the provider failed",
}


class ProviderError(Exception):
    """code: provider_unavailable, provider_error, timeout or bad_audio.
    `message` is for the logs (at WARNING); `public` is what the client hears."""

    def __init__(self, code: str, message: str, public: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        if public is None:
            # bad_audio is about the client's own input, in our words.
            public = message if code == "bad_audio" else _PUBLIC.get(code, "the provider failed")
        self.public = public


class StartRefused(Exception):
    """A service will not start as configured (say, reachable from other
    machines without credentials); the message says what to set."""
