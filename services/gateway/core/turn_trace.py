"""Each user turn is one trace. Its root span opens before the user speaks
(audio is published under it) and is handed to the turn when VAD ends it;
the next audio goes under a fresh root."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace

tracer = trace.get_tracer("parley.gateway")

# Turns whose spans stay open for answers still in flight.
KEEP = 4


class TurnTrace:
    def __init__(self, session_id: str, protocol: str) -> None:
        self.session_id = session_id
        self.protocol = protocol
        self._listen: trace.Span | None = None
        self._turns: dict[int, trace.Span] = {}
        # The context of each answer's first audio chunk, for its first-audio span.
        self._audio_out: dict[str, otel_context.Context] = {}
        self.listen()

    def listen(self) -> None:
        self._listen = tracer.start_span(
            "gateway.turn",
            context=otel_context.Context(),  # a new trace, not the connection's
            attributes={"parley.session_id": self.session_id, "parley.protocol": self.protocol},
        )

    def context(self) -> otel_context.Context:
        return trace.set_span_in_context(self._listen or trace.INVALID_SPAN)

    def turn_ended(self, turn_id: int, speech_ms: float) -> None:
        """The VAD ended the turn: its root span goes with it, a new one opens."""
        if self._listen is not None:
            self._listen.set_attribute("parley.turn_id", turn_id)
            self._listen.set_attribute("parley.speech_ms", speech_ms)
            self._turns[turn_id] = self._listen
            for old in sorted(self._turns)[:-KEEP]:
                self.end(old)
        self.listen()

    def end(self, turn_id: int) -> None:
        span = self._turns.pop(turn_id, None)
        if span is not None:
            span.end()

    def audio_out(self, response_id: str) -> None:
        self._audio_out.setdefault(response_id, otel_context.get_current())

    def drop_audio_out(self, response_id: str) -> None:
        self._audio_out.pop(response_id, None)

    def first_audio_sent(self, response_id: str, turn_id: int) -> None:
        parent = self._audio_out.pop(response_id, None)
        if parent is not None:
            tracer.start_span(
                "gateway.first_audio_sent",
                context=parent,
                attributes={
                    "parley.session_id": self.session_id,
                    "parley.turn_id": turn_id,
                    "parley.response_id": response_id,
                },
            ).end()

    def close(self) -> None:
        for turn_id in list(self._turns):
            self.end(turn_id)
        if self._listen is not None:
            self._listen.end()
            self._listen = None
