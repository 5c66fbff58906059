"""Errors the session core raises to its protocol adapters."""

from __future__ import annotations


class ClientError(Exception):
    """Bad input from the client: reported as an error event, never fatal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ClientToolError(Exception):
    """A client tool failed; the message goes to the model."""
