"""Readiness probe of the reading frontend: gRPC health over mutual TLS.

Kubernetes' own gRPC probe speaks plaintext only and the frontend accepts mutual TLS
only, so the pod asks itself with its own certificate (issued with the clientAuth usage
for this). Files are read on every run, so rotated certificates need no restart.
Exit 0 when SERVING, 1 otherwise (NOT_SERVING while Triton loads and while draining).
"""
import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--server-name", default="localhost", help="name checked against the server certificate")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    credentials = grpc.ssl_channel_credentials(Path(args.ca).read_bytes(), Path(args.key).read_bytes(),
                                               Path(args.cert).read_bytes())
    options = [("grpc.ssl_target_name_override", args.server_name)]
    with grpc.secure_channel(args.address, credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as err:
            print(f"health check failed: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
