"""OpenTelemetry setup and W3C trace context carried in NATS headers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from parley.config import TelemetrySettings


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a file, one JSON document a line, for local runs."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def export(self, spans: Any) -> SpanExportResult:
        for span in spans:
            self._file.write(json.dumps(json.loads(span.to_json())) + "\n")
        self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def setup_tracing(service: str, settings: TelemetrySettings) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"parley-{service}"}))
    exporter: SpanExporter | None = None
    if settings.traces_exporter == "console":
        exporter = ConsoleSpanExporter()
    elif settings.traces_exporter == "file":
        exporter = JsonLinesSpanExporter(settings.traces_file.format(service=service))
    elif settings.traces_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, str] | None) -> otel_context.Context:
    return propagate.extract(headers or {})


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    return json.loads(span.to_json())
