"""Where a session's output goes: one connection's protocol adapter.

Shaped after LiveKit's AudioOutput: the session pushes typed events and paced
audio frames, and tells the sink when a response's audio has all been sent
and when the listener has finished hearing it (or it was cut), so no adapter
needs to look inside the session to know where playback stands."""

from __future__ import annotations

from abc import ABC, abstractmethod

from services.gateway.core.events import AudioOut, SessionEvent


class ClientSink(ABC):
    # How far ahead of the listener audio is sent; None keeps the gateway's
    # playback_lead_ms. (EchoKit boards buffer more: see their settings.)
    playback_lead_ms: int | None = None

    @abstractmethod
    async def send_event(self, event: SessionEvent) -> None:
        """Render one event for the client; must not raise for a closed peer."""

    @abstractmethod
    async def send_audio(self, frame: AudioOut) -> None:
        """One frame of answer audio at the session's output rate."""

    @abstractmethod
    async def close(self, reason: str) -> None:
        """The session ends the connection (the agent said goodbye)."""

    async def on_playback_sent(self, response_id: str) -> None:  # noqa: B027
        """Every frame of the response has left, before the listener has heard
        the last of it (for protocols that announce the end of the stream)."""

    async def on_playback_finished(  # noqa: B027
        self, response_id: str, played_ms: float, interrupted: bool
    ) -> None:
        """The listener has heard the response to its end, or it was cut
        (interrupted) after played_ms."""


class DetachedSink(ClientSink):
    """Stands in while a session waits for its connection to come back:
    nobody is listening, so output is dropped (the history keeps what was heard)."""

    async def send_event(self, event: SessionEvent) -> None:
        pass

    async def send_audio(self, frame: AudioOut) -> None:
        pass

    async def close(self, reason: str) -> None:
        pass
