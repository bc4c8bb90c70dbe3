"""An app instrumented with the OpenTelemetry Python SDK, exporting over OTLP/gRPC.

  app.py serve PORT SERVICE OTLP   an HTTP server: a SERVER span per request, its parent taken
                                   from the request's W3C trace context; answers JSON with the
                                   trace headers it received. /flaky answers 503 the first time;
                                   /slow-body sends its headers, then its body 300 ms later.
  app.py call URL HOST SERVICE OTLP   one GET inside a CLIENT span whose context it sends;
                                   prints the status and the body."""
import json
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

SLOW_BODY_SECONDS = 0.3


def tracer(service, otlp):
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp, insecure=True)))
    trace.set_tracer_provider(provider)
    return provider, trace.get_tracer("trellis-test-app")


def serve(port, service, otlp):
    _, t = tracer(service, otlp)
    seen = {"flaky": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            ctx = propagate.extract(dict(self.headers.items()))
            with t.start_as_current_span(f"GET {self.path}", context=ctx,
                                         kind=trace.SpanKind.SERVER):
                status = 200
                if self.path == "/flaky":
                    seen["flaky"] += 1
                    status = 503 if seen["flaky"] == 1 else 200
                got = {k.lower(): v for k, v in self.headers.items()
                       if k.lower() in ("traceparent", "b3", "x-b3-traceid", "x-request-id")}
                body = json.dumps({"service": service, "headers": got}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.path == "/slow-body":
                    self.wfile.flush()
                    time.sleep(SLOW_BODY_SECONDS)
                self.wfile.write(body)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def call(url, host, service, otlp):
    provider, t = tracer(service, otlp)
    with t.start_as_current_span("call", kind=trace.SpanKind.CLIENT):
        headers = {"host": host}
        propagate.inject(headers)
        req = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as rsp:
                status, body = rsp.status, rsp.read().decode()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read().decode()
    provider.shutdown()
    print(status)
    print(body)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        call(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
