"""A stand-in for the OTel Collector in the container test (its image cannot
be pulled here): OTLP/HTTP traces on 4318, a health answer on 13133, and one
JSON line on stdout per export, naming the service and counting its spans.
Runs inside the Parley image, which has the OTLP protobuf classes."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class Traces(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            spans = sum(len(s.spans) for s in resource_spans.scope_spans)
            line = {"path": self.path, "service": attributes.get("service.name"), "spans": spans}
            line["pod"] = attributes.get("k8s.pod.name")
            print(json.dumps(line), flush=True)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    health = ThreadingHTTPServer(("0.0.0.0", 13133), Health)
    threading.Thread(target=health.serve_forever, daemon=True).start()
    print("otlp sink ready", file=sys.stderr, flush=True)
    ThreadingHTTPServer(("0.0.0.0", 4318), Traces).serve_forever()
