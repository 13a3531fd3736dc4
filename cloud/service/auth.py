"""Bearer-token authentication of the cloud's gRPC calls, as a server interceptor.

Every call must carry ``authorization: Bearer <token>`` with a token listed in the tokens file
(one per line; ``#`` comments and blank lines are ignored). Health checks and server reflection
are exempt so that probes and generic tools work without credentials.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class AuthConfigError(ValueError):
    """Authentication cannot be set up (no tokens file, or no token in it)."""


def read_tokens(path: Path) -> list[str]:
    """The tokens listed in ``path``; AuthConfigError when it is unreadable or lists none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise AuthConfigError(f"cannot read tokens_file {path}: {exc.strerror}") from None
    tokens = [line.strip() for line in lines]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise AuthConfigError(f"tokens_file {path} lists no token")
    return tokens


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without an accepted bearer token with UNAUTHENTICATED."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    @classmethod
    def from_settings(cls, tokens_file: Path | None, auth_disabled: bool) -> BearerAuthInterceptor:
        """The interceptor the settings ask for; AuthConfigError when they ask for nothing."""
        if auth_disabled:
            log.warning("authentication is DISABLED: every caller is accepted (local tests only)")
            return cls([])
        if tokens_file is None:
            raise AuthConfigError(
                "no tokens_file set: set tokens_file (--tokens-file) or, for local tests only, "
                "auth_disabled = true (--auth-disabled)"
            )
        tokens = read_tokens(tokens_file)
        log.info("authentication: %d accepted token(s) from %s", len(tokens), tokens_file)
        return cls(tokens)

    @property
    def disabled(self) -> bool:
        return not self._tokens

    def check(self, metadata: Any) -> str | None:
        """None when ``metadata`` carries an accepted token, else why not."""
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return "missing 'authorization: Bearer <token>' metadata"
        value = values[0] if isinstance(values[0], str) else values[0].decode()
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "authorization metadata must be 'Bearer <token>'"
        given = token.strip().encode()
        # Compare with every token (no early exit) so timing does not tell which one matched.
        ok = False
        for accepted in self._tokens:
            ok |= hmac.compare_digest(given, accepted)
        return None if ok else "token not accepted"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if self.disabled or handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        problem = self.check(handler_call_details.invocation_metadata)
        if problem is None:
            return handler
        log.info("%s rejected: %s", method, problem)
        return _rejecting(handler, f"unauthenticated: {problem}")


def _rejecting(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that aborts with UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def streaming(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **codecs)
    return grpc.stream_stream_rpc_method_handler(streaming, **codecs)
