"""``autoglm health ADDR``: ask a server's standard gRPC health service (``grpc.health.v1``).

The health check of containers and orchestrators, like ``grpc_health_probe``: prints the status
(``SERVING``, ``NOT_SERVING``, ...) and exits 0 only when it is ``SERVING``; anything else (not
serving, unknown service, nothing listening, no answer in time, a failed TLS handshake) exits 1
with one readable line on stderr. Both the edge daemon and the cloud service answer it without a
token; a draining server answers ``NOT_SERVING``.

Kept to grpcio and grpcio-health-checking (no torch, no onnxruntime): it runs in every image.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shared.tls import PemFileError, read_pem

SERVING = "SERVING"


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Ask a server's gRPC health service (grpc.health.v1): print the status, exit 0 when "
        "SERVING, 1 otherwise (not serving, unreachable, no answer in time)."
    )
    parser.add_argument("address", metavar="ADDR", help="server address: HOST:PORT or unix:PATH")
    parser.add_argument(
        "--service",
        default="",
        help="service to ask about, e.g. autoglm.v1.Inference (default: the whole server)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the answer (default 5)"
    )
    tls = parser.add_argument_group("TLS (default: plaintext)")
    tls.add_argument("--tls", action="store_true", help="use TLS, verified with the system's CAs")
    tls.add_argument("--ca", type=Path, metavar="FILE", help="PEM CA(s) of the server (TLS)")
    tls.add_argument("--cert", type=Path, metavar="FILE", help="PEM client certificate (mTLS)")
    tls.add_argument("--key", type=Path, metavar="FILE", help="PEM private key of --cert")
    tls.add_argument(
        "--server-name", metavar="NAME", help="expect this name in the server's certificate"
    )
    parser.set_defaults(handler=_check)


class HealthError(Exception):
    """The check could not be made; the message is the reason, one line."""


def check(
    address: str,
    *,
    service: str = "",
    timeout: float = 5.0,
    tls: bool = False,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    server_name: str | None = None,
) -> str:
    """The health status name of ``service`` at ``address``; HealthError when there is none."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if (cert is None) != (key is None):
        raise HealthError("--cert and --key go together")
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if tls or ca is not None or cert is not None:
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=read_pem(ca, "--ca"),
                private_key=read_pem(key, "--key"),
                certificate_chain=read_pem(cert, "--cert"),
            )
        except PemFileError as exc:
            raise HealthError(str(exc)) from None
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise HealthError(f"no answer within {timeout:g} s") from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise HealthError(f"the server does not know the service {service!r}") from None
            details = " ".join(str(exc.details() or "").split())
            raise HealthError(f"{code.name}: {details}" if details else code.name) from None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _check(args: argparse.Namespace) -> int:
    # Keep gRPC's own logging (e.g. handshake failures) off stderr: one line of ours is the report.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    where = args.address + (f" ({args.service})" if args.service else "")
    try:
        status = check(
            args.address,
            service=args.service,
            timeout=args.timeout,
            tls=args.tls,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
            server_name=args.server_name,
        )
    except HealthError as exc:
        print(f"autoglm health: {where}: {exc}", file=sys.stderr)
        return 1
    print(status)
    if status != SERVING:
        print(f"autoglm health: {where} is {status}", file=sys.stderr)
        return 1
    return 0
