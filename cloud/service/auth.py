"""Bearer-token authentication of the cloud's gRPC calls, as a server interceptor.

Every call must carry ``authorization: Bearer <token>`` with a token listed in the tokens file
(one per line; ``#`` comments and blank lines are ignored). Health checks and server reflection
are exempt so that probes and generic tools work without credentials. A call without an
accepted token is refused before its request is parsed.

A line may grant more than the right to call, after the token and a space:

    TOKEN                                  any device id, priority 0 (priorities ignored)
    TOKEN devices=dev-a,dev-b              only these device ids (PERMISSION_DENIED otherwise)
    TOKEN max_priority=10                  requests may ask for priorities up to 10
    TOKEN devices=dev-a max_priority=5     both

A request's ``priority`` is cut to its token's ``max_priority``, so a client cannot jump the
shared queue unless the operator allowed it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from shared.names import is_plain_name

log = logging.getLogger(__name__)

EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class AuthConfigError(ValueError):
    """Authentication cannot be set up (no tokens file, or no token in it)."""


MAX_PRIORITY = 1000


@dataclass(frozen=True)
class Grant:
    """What one token may do."""

    devices: frozenset[str] | None = None  # None: any device id
    max_priority: int = 0

    def allows_device(self, device_id: str) -> bool:
        return self.devices is None or device_id in self.devices


ANYONE = Grant(None, MAX_PRIORITY)  # authentication disabled: local tests only


def _grant(options: list[str], where: str) -> Grant:
    devices: frozenset[str] | None = None
    max_priority = 0
    for option in options:
        key, sep, value = option.partition("=")
        if key == "devices" and sep:
            ids = [d for d in value.split(",") if d]
            bad = [d for d in ids if not is_plain_name(d)]
            if not ids or bad:
                raise AuthConfigError(f"{where}: devices= needs plain device ids, got {value!r}")
            devices = frozenset(ids)
        elif key == "max_priority" and sep and value.isdigit() and int(value) <= MAX_PRIORITY:
            max_priority = int(value)
        else:
            raise AuthConfigError(
                f"{where}: unknown option {option!r} "
                f"(devices=ID,ID or max_priority=0..{MAX_PRIORITY})"
            )
    return Grant(devices, max_priority)


def read_grants(path: Path) -> dict[str, Grant]:
    """The tokens listed in ``path`` and what each may do; AuthConfigError when the file is
    unreadable, malformed or lists no token."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"cannot read tokens_file {path}: {exc}") from None
    grants: dict[str, Grant] = {}
    for n, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        grants[words[0]] = _grant(words[1:], f"tokens_file {path} line {n}")
    if not grants:
        raise AuthConfigError(f"tokens_file {path} lists no token")
    return grants


class BearerAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without an accepted bearer token with UNAUTHENTICATED."""

    def __init__(self, tokens: list[str] | dict[str, Grant]) -> None:
        grants = tokens if isinstance(tokens, dict) else dict.fromkeys(tokens, Grant())
        self._grants = [(t.encode(), g) for t, g in grants.items()]

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
        grants = read_grants(tokens_file)
        log.info("authentication: %d accepted token(s) from %s", len(grants), tokens_file)
        return cls(grants)

    @property
    def disabled(self) -> bool:
        return not self._grants

    def check(self, metadata: Any) -> str | None:
        """None when ``metadata`` carries an accepted token, else why not."""
        return self._lookup(metadata)[1]

    def grant(self, metadata: Any) -> Grant:
        """What the call's token may do (every right when authentication is disabled; no right
        to priorities or devices beyond its line's for a token; callers check first)."""
        if self.disabled:
            return ANYONE
        grant, _ = self._lookup(metadata)
        return grant if grant is not None else Grant(frozenset(), 0)

    def _lookup(self, metadata: Any) -> tuple[Grant | None, str | None]:
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return None, "missing 'authorization: Bearer <token>' metadata"
        value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "authorization metadata must be 'Bearer <token>'"
        given = token.strip().encode()
        # Compare with every token (no early exit) so timing does not tell which one matched.
        found: Grant | None = None
        for accepted, grant in self._grants:
            if hmac.compare_digest(given, accepted):
                found = grant
        return (found, None) if found is not None else (None, "token not accepted")

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

    # No request deserializer: a refused call's bytes are never parsed.
    codecs = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **codecs)
    return grpc.stream_stream_rpc_method_handler(streaming, **codecs)
