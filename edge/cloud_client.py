"""The edge's gRPC client of the cloud: round-robin over targets, failover, one breaker each.

Escalated requests must either get the cloud's answer or fail fast enough for the edge to fall
back to its proxy's answer within the same deadline. So: one overall deadline per call, shared
by every attempt; a retry of UNAVAILABLE on the same target is left to gRPC's own retry policy
(service config, with back-off), and this module only fails over to the next target; a target
that keeps failing is skipped by its circuit breaker until a trial call finds it back.

gRPC errors become `CloudUnavailable` (fall back) or `CloudRejected` (the request itself is bad:
give it to the app) here, once, so the rest of the edge never sees an RpcError.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, cast

import grpc

from edge.breaker import CircuitBreaker
from shared.pack.fetch import fetch_pack
from shared.rpc import INFERENCE_SERVICE, inference_pb2, inference_pb2_grpc, model_store_pb2_grpc
from shared.settings.edge import CloudCallSettings, EdgeCloudSettings
from shared.tls import read_pem

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
KEEPALIVE_TIMEOUT_MS = 10_000
MAX_RECONNECT_BACKOFF_MS = 10_000  # gRPC's default (120 s) would hide a recovered cloud for long

# The request itself is bad: the cloud is up, the app must fix the request.
REJECTED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)
# The cloud is up but overloaded: try another target, but do not open the breaker.
OVERLOADED = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})


class CloudError(Exception):
    """The cloud did not answer; `code` is the gRPC status the app would see."""

    def __init__(self, message: str, code: grpc.StatusCode, target: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.target = target


class CloudUnavailable(CloudError):
    """Every target failed, all breakers are open, or the deadline passed: fall back locally."""


class CloudRejected(CloudError):
    """The cloud refused the request itself (bad input): give this to the app, do not fall back."""


class CloudClient:
    """Calls `Inference.Generate` on the cloud targets, in rotation, with failover."""

    def __init__(
        self, cloud: EdgeCloudSettings, call: CloudCallSettings, *, device_id: str
    ) -> None:
        self._cloud = cloud
        self._call = call
        self._device_id = device_id
        self._targets: tuple[str, ...] = tuple(cloud.targets)
        self._credentials = _credentials(cloud) if cloud.tls.enabled else None
        self._metadata: tuple[tuple[str, str], ...] = ()
        if cloud.token is not None:
            self._metadata = (("authorization", f"Bearer {cloud.token.get_secret_value()}"),)
        self._compression = grpc.Compression.Gzip if cloud.compression == "gzip" else None
        self._breakers = {
            t: CircuitBreaker(call.breaker_failures, call.breaker_cooldown_s) for t in self._targets
        }
        # Channels are made on first use, inside the event loop they belong to.
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: list[grpc.aio.Channel] = []
        self._next = 0

    @property
    def targets(self) -> tuple[str, ...]:
        """The cloud targets, in configured order."""
        return self._targets

    def breaker_states(self) -> dict[str, str]:
        """Each target's breaker state: closed, open or half_open."""
        return {t: b.state for t, b in self._breakers.items()}

    async def generate(
        self, request: inference_pb2.GenerateRequest, *, timeout_s: float | None = None
    ) -> tuple[inference_pb2.GenerateResponse, str]:
        """The cloud's answer and the target that gave it; CloudUnavailable or CloudRejected."""
        if not request.device_id:
            copy = inference_pb2.GenerateRequest()
            copy.CopyFrom(request)
            copy.device_id = self._device_id
            request = copy
        loop = asyncio.get_running_loop()
        end = loop.time() + (timeout_s if timeout_s is not None else self._call.deadline_s)
        start, self._next = self._next, (self._next + 1) % len(self._targets)
        order = self._targets[start:] + self._targets[:start]
        problems: list[str] = []
        deadline_passed = False
        for target in order:
            remaining = end - loop.time()
            if remaining <= 0 or deadline_passed:
                deadline_passed = True
                problems.append(f"{target}: not tried (deadline passed)")
                continue
            breaker = self._breakers[target]
            if not breaker.allow():
                problems.append(f"{target}: circuit open")
                continue
            try:
                response = await self._stub(target).Generate(
                    request,
                    timeout=remaining,
                    metadata=self._metadata,
                    compression=self._compression,
                )
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                problems.append(f"{target}: {code.name} ({exc.details()})")
                if code in REJECTED:
                    self._success(target, breaker)
                    raise CloudRejected(exc.details() or code.name, code, target) from None
                if code in OVERLOADED:
                    breaker.release()
                else:
                    self._failure(target, breaker, code)
                # The attempt had all the time left: after its deadline, nothing remains.
                deadline_passed = code == grpc.StatusCode.DEADLINE_EXCEEDED
                continue
            except BaseException:  # cancelled by our caller: no verdict on the target
                breaker.release()
                raise
            self._success(target, breaker)
            return cast(inference_pb2.GenerateResponse, response), target
        code = grpc.StatusCode.DEADLINE_EXCEEDED if deadline_passed else grpc.StatusCode.UNAVAILABLE
        raise CloudUnavailable("; ".join(problems), code)

    async def fetch_pack(self, name: str, version: str, dest_root: Path) -> Path:
        """Download a pack over ModelStore from the first target that serves it, verified and
        moved into ``dest_root/name/version`` (see :func:`shared.pack.fetch.fetch_pack`)."""
        problems = []
        for target in self.targets:
            self._stub(target)  # opens the target's channel
            stub = _Authorized(model_store_pb2_grpc.ModelStoreStub(self._channels[target]), self)
            try:
                return await fetch_pack(stub, name, version, dest_root)
            except grpc.aio.AioRpcError as exc:
                problems.append(f"{target}: {exc.code().name} ({exc.details()})")
        raise CloudUnavailable("; ".join(problems), grpc.StatusCode.UNAVAILABLE)

    def reconfigure(self, call: CloudCallSettings) -> None:
        """Apply new call settings now; channels are rebuilt when the retry policy changed.

        Call it from the event loop's thread: old channels close there, after a grace period.
        """
        old, self._call = self._call, call
        for breaker in self._breakers.values():
            breaker.reconfigure(call.breaker_failures, call.breaker_cooldown_s)
        if (old.retries, old.retry_backoff_s) != (call.retries, call.retry_backoff_s):
            channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
            for channel in channels:
                self._retire(channel, grace_s=old.deadline_s)

    async def close(self, grace_s: float | None = None) -> None:
        """Close every channel; calls in flight get `grace_s` seconds (None: cancelled now).

        Channels retired by `reconfigure` are waited for: their calls had their grace already.
        """
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        retired, self._retired = self._retired, []
        for channel in channels + retired:
            await channel.close(grace_s)
        if self._closing:
            await asyncio.gather(*self._closing)

    def _retire(self, channel: grpc.aio.Channel, grace_s: float) -> None:
        """Close `channel` once the calls in flight on it had their time (at most `grace_s`)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running here: close() will do it
            self._retired.append(channel)
            return
        task = loop.create_task(channel.close(grace_s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _stub(self, target: str) -> Any:
        stub = self._stubs.get(target)
        if stub is None:
            options = channel_options(self._cloud, self._call)
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                channel = grpc.aio.secure_channel(target, self._credentials, options=options)
            self._channels[target] = channel
            stub = self._stubs[target] = inference_pb2_grpc.InferenceStub(channel)
        return stub

    def _success(self, target: str, breaker: CircuitBreaker) -> None:
        if breaker.record_success():
            log.info("cloud target %s answers again: circuit closed", target)

    def _failure(self, target: str, breaker: CircuitBreaker, code: grpc.StatusCode) -> None:
        if breaker.record_failure():
            log.warning(
                "cloud target %s failed (%s): circuit open for %.1f s",
                target,
                code.name,
                self._call.breaker_cooldown_s,
            )


class _Authorized:
    """A ModelStore stub that sends the client's token with every call."""

    def __init__(self, stub: Any, client: CloudClient) -> None:
        self._stub, self._client = stub, client

    def FetchPack(self, request: Any) -> Any:  # the gRPC method's name
        return self._stub.FetchPack(request, metadata=self._client._metadata)


def channel_options(cloud: EdgeCloudSettings, call: CloudCallSettings) -> list[tuple[str, Any]]:
    """gRPC channel options: keep-alive, message size, retry policy, TLS name override."""
    options: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", int(cloud.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(service_config(call))),
    ]
    if cloud.tls.enabled and cloud.tls.server_name:
        options.append(("grpc.ssl_target_name_override", cloud.tls.server_name))
    return options


def service_config(call: CloudCallSettings) -> dict[str, Any]:
    """The service config: retry UNAVAILABLE `call.retries` times with exponential back-off."""
    method: dict[str, Any] = {"name": [{"service": INFERENCE_SERVICE}]}
    if call.retries > 0:
        method["retryPolicy"] = {
            "maxAttempts": call.retries + 1,
            "initialBackoff": _duration(call.retry_backoff_s),
            "maxBackoff": _duration(10 * call.retry_backoff_s),
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return {"methodConfig": [method]}


def _duration(seconds: float) -> str:
    """A protobuf JSON duration, as the service config wants it ("0.100000000s")."""
    return f"{seconds:.9f}s"


def _credentials(cloud: EdgeCloudSettings) -> grpc.ChannelCredentials:
    """TLS credentials from the PEM files; ValueError naming the file that cannot be read."""
    tls = cloud.tls
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls.ca_file, "cloud.tls.ca_file"),
        private_key=read_pem(tls.key_file, "cloud.tls.key_file"),
        certificate_chain=read_pem(tls.cert_file, "cloud.tls.cert_file"),
    )
