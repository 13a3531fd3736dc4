"""What the edge's and the cloud's gRPC servers share: binding, health and reflection, signals.

Kept free of torch and onnxruntime, like all of ``shared``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.net import is_local_address

log = logging.getLogger(__name__)

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING


def warn_if_exposed(listen: str, what: str, remedy: str) -> None:
    """Log a warning when ``listen`` is reachable beyond this machine and served without TLS."""
    if not is_local_address(listen):
        log.warning("%s on %s WITHOUT TLS, reachable beyond this machine: %s", what, listen, remedy)


class ServeError(RuntimeError):
    """The server cannot start (e.g. the address cannot be bound)."""


def bind(server: grpc.aio.Server, listen: str, creds: grpc.ServerCredentials | None) -> str:
    """Open the port; returns the address actually bound (port 0 becomes the real port)."""
    try:
        if creds is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, creds)
    except RuntimeError as exc:  # grpc reports a failed bind this way
        raise ServeError(f"cannot listen on {listen}: {exc}") from None
    if listen.startswith("unix:"):
        return listen
    return f"{listen.rsplit(':', 1)[0]}:{port}"


def add_health_and_reflection(
    server: grpc.aio.Server, services: Sequence[str]
) -> health.aio.HealthServicer:  # type: ignore[name-defined]
    """The standard health service (set SERVING with :func:`set_serving`) and reflection."""
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection((*services, HEALTH, reflection.SERVICE_NAME), server)
    return servicer


async def set_serving(servicer: health.aio.HealthServicer, services: Sequence[str]) -> None:  # type: ignore[name-defined]
    for name in ("", *services):
        await servicer.set(name, SERVING)


@contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT while the block runs (main thread only)."""
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            log.debug("cannot handle %s here", sig.name)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


class _Undecodable:
    """What a request that cannot be parsed becomes, so that its call can say why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class InvalidMessagesInterceptor(grpc.aio.ServerInterceptor):
    """Requests that do not parse (bytes that are not the message, a string field that is not
    UTF-8) get INVALID_ARGUMENT with the reason, instead of gRPC's generic INTERNAL/UNKNOWN.

    Put it after authentication: a refused call's bytes are never parsed at all."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        # The project's own services only (health and reflection are the libraries'), and
        # unary requests only (every call of autoglm.v1 has one).
        if not handler_call_details.method.startswith("/autoglm.") or handler.request_streaming:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # DecodeError, UnicodeDecodeError...
                return _Undecodable(f"the request is not a valid message: {exc}")

        codecs = {
            "request_deserializer": deserialize,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary  # an aio servicer method (the stubs type the sync API)

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if isinstance(request, _Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **codecs)
        inner_stream: Any = handler.unary_stream

        async def streaming(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            async for item in inner_stream(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(streaming, **codecs)
