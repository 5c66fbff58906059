"""Errors the session core raises to its protocol adapters."""

from __future__ import annotations


class ClientError(Exception):
    """Bad input from the client: reported as an error event, never fatal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ClientToolError(Exception):
    """A client tool failed; the message goes to the model."""


class ServerBusy(ClientError):
    """Every instance of a stage (or the gateway itself) is at capacity: the
    session is refused rather than slowing every other one down."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__("server_busy", message)
        self.stage = stage
