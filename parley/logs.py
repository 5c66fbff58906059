"""Structured logs with the session id and trace id on every line."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

from opentelemetry import trace

session_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("session_id", default="-")

# log.content: what people said and heard at INFO (True) or DEBUG only.
_content_level = logging.DEBUG


def log_content(logger: logging.Logger, msg: str, *args: object) -> None:
    """A line carrying what someone said or heard (a transcript, an answer):
    personal data, so DEBUG unless log.content is on."""
    logger.log(_content_level, msg, *args)


class BoundedLog:
    """Bad input logged at a bounded rate: a client sending garbage as fast
    as it can must not flood the logs (the callers count every case in
    parley_errors_total; this only decides which are written). A token bucket
    of `burst` lines refilled at `per_s`; the next line written says how many
    were left out."""

    def __init__(self, logger: logging.Logger, per_s: float = 1.0, burst: int = 10) -> None:
        self.logger = logger
        self.per_s = per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_s)
        self.last = now
        if self.tokens < 1:
            self.suppressed += 1
            return False
        self.tokens -= 1
        if self.suppressed:
            msg += " (%d similar lines left out)"
            args = (*args, self.suppressed)
            self.suppressed = 0
        self.logger.log(level, msg, *args)
        return True

    def info(self, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, msg, *args)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if not hasattr(record, "session_id"):
            record.session_id = session_id_var.get()
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format(ctx.trace_id, "032x") if ctx.is_valid else "-"
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = (
            f"{ts}.{int(record.msecs):03d} {record.levelname:<5} {record.service:<7} "  # type: ignore[attr-defined]
            f"session={record.session_id} trace={record.trace_id[:16]} "  # type: ignore[attr-defined]
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": record.created,
            "level": record.levelname,
            "service": record.service,  # type: ignore[attr-defined]
            "logger": record.name,
            "session_id": record.session_id,  # type: ignore[attr-defined]
            "trace_id": record.trace_id,  # type: ignore[attr-defined]
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(
    service: str, level: str = "INFO", fmt: str = "text", content: bool = False
) -> None:
    global _content_level
    _content_level = logging.INFO if content else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter drowns the per-turn lines an operator looks for.
    for noisy in (
        "nats",
        "httpx",
        "httpx2",
        "httpcore",
        "httpcore2",
        "websockets",
        "faster_whisper",
        "piper",
        "mcp",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
