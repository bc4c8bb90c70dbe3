"""An OTLP/gRPC trace receiver built from the OpenTelemetry protocol package: every span it is
sent becomes one JSON line in OUT (ids in hex, the resource's service.name, attributes as
strings); with OUT `-` spans are only accepted (the benchmark's collector).
Usage: receiver.py PORT OUT"""
import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def value(v):
    which = v.WhichOneof("value")
    return str(getattr(v, which)) if which else ""


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        if self.out == "-":
            return trace_service_pb2.ExportTraceServiceResponse()
        with open(self.out, "a") as f:
            for rs in request.resource_spans:
                attrs = {a.key: value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        f.write(json.dumps({
                            "service": attrs.get("service.name", ""),
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": KINDS.get(s.kind, str(s.kind)),
                            "status": s.status.code,
                            "start_ns": s.start_time_unix_nano,
                            "end_ns": s.end_time_unix_nano,
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                        }) + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(out), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
