"""The edge's cloud client against real in-process gRPC servers on local ports."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from cloud.service.auth import BearerAuthInterceptor
from edge.cloud_client import CloudClient, CloudRejected, CloudUnavailable, service_config
from shared.rpc import inference_pb2, inference_pb2_grpc
from shared.settings.edge import CloudCallSettings, EdgeCloudSettings

T = TypeVar("T")
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
GZIP_OFF = [("grpc.compression_enabled_algorithms_bitset", 1)]  # the server refuses gzip


class FakeCloud(inference_pb2_grpc.InferenceServicer):
    """Answers with its name, or with the next scripted error code; records what it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.codes: list[grpc.StatusCode | None] = []  # one per call, then OK for good
        self.delay_s = 0.0
        self.calls = 0
        self.metadata: list[dict[str, str]] = []
        self.device_ids: list[str] = []

    async def Generate(self, request: Any, context: Any) -> inference_pb2.GenerateResponse:
        self.calls += 1
        self.metadata.append({m.key: m.value for m in context.invocation_metadata()})
        self.device_ids.append(request.device_id)
        await asyncio.sleep(self.delay_s)
        code = self.codes.pop(0) if self.codes else None
        if code is not None:
            await context.abort(code, f"{self.name} says {code.name}")
        return inference_pb2.GenerateResponse(text=self.name, route=inference_pb2.ROUTE_CLOUD)


def dead_target() -> str:
    """A local address nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def call_settings(**kw: Any) -> CloudCallSettings:
    values: dict[str, Any] = {"deadline_s": 3.0, "retries": 0, "retry_backoff_s": 0.01}
    return CloudCallSettings(**(values | kw))


def with_clouds(
    fn: Callable[[CloudClient, list[FakeCloud]], Awaitable[T]],
    *,
    live: int = 1,
    dead: int = 0,
    call: CloudCallSettings | None = None,
    server: dict[str, Any] | None = None,
    server_tls: grpc.ServerCredentials | None = None,
    **cloud: Any,
) -> T:
    """Run ``fn(client, clouds)`` with `live` fake clouds (then `dead` targets), then stop all."""

    async def main() -> T:
        clouds, servers, targets = [], [], []
        for i in range(live):
            srv = grpc.aio.server(**(server or {}))
            clouds.append(FakeCloud(f"cloud{i}"))
            inference_pb2_grpc.add_InferenceServicer_to_server(clouds[-1], srv)
            port = (
                srv.add_secure_port("127.0.0.1:0", server_tls)
                if server_tls
                else srv.add_insecure_port("127.0.0.1:0")
            )
            await srv.start()
            servers.append(srv)
            targets.append(f"127.0.0.1:{port}")
        targets += [dead_target() for _ in range(dead)]
        settings = EdgeCloudSettings(targets=targets, **({"token": "t0k"} | cloud))
        client = CloudClient(settings, call or call_settings(), device_id="edge-1")
        try:
            return await fn(client, clouds)
        finally:
            await client.close()
            for srv in servers:
                await srv.stop(None)

    return asyncio.run(main())


async def ask(client: CloudClient, **kw: Any) -> tuple[str, str]:
    """One call; the answering cloud's name and its target."""
    reply, target = await client.generate(inference_pb2.GenerateRequest(prompt="1+1="), **kw)
    return reply.text, target


async def failure(client: CloudClient, **kw: Any) -> CloudUnavailable:
    with pytest.raises(CloudUnavailable) as info:
        await ask(client, **kw)
    return info.value


def test_token_is_sent_as_a_bearer_header_the_cloud_accepts() -> None:
    """The cloud's own auth interceptor accepts the token; the header is `Bearer <token>`."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        assert (await ask(client))[0] == "cloud0"
        assert clouds[0].metadata[0]["authorization"] == "Bearer t0k"

    with_clouds(go, server={"interceptors": [BearerAuthInterceptor(["t0k"])]})


def test_wrong_token_is_unavailable_naming_unauthenticated() -> None:
    """A refused token is the cloud's failure for the edge (fall back), with the reason kept."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        error = await failure(client)
        assert error.code == UNAVAILABLE
        assert "UNAUTHENTICATED" in str(error)

    with_clouds(go, server={"interceptors": [BearerAuthInterceptor(["other"])]}, token="bad")


def test_device_id_is_filled_in_without_changing_the_callers_request() -> None:
    """An empty device_id becomes the client's; a set one is kept; the caller's copy is intact."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        request = inference_pb2.GenerateRequest(prompt="x")
        await client.generate(request)
        await client.generate(inference_pb2.GenerateRequest(prompt="x", device_id="other"))
        assert request.device_id == ""
        assert clouds[0].device_ids == ["edge-1", "other"]

    with_clouds(go)


def test_round_robin_alternates_between_healthy_targets() -> None:
    """Consecutive calls start at the next target in turn."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> list[str]:
        return [(await ask(client))[0] for _ in range(4)]

    assert with_clouds(go, live=2) == ["cloud0", "cloud1", "cloud0", "cloud1"]


def test_failover_answers_every_call_from_the_live_target() -> None:
    """With one target down, every call is still answered, by the other one."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> list[str]:
        return [(await ask(client))[0] for _ in range(4)]

    call = call_settings(retries=1, breaker_failures=100)
    assert with_clouds(go, live=1, dead=1, call=call) == ["cloud0"] * 4


def test_all_targets_down_is_unavailable_naming_each_target() -> None:
    """Every target's failure is in the message; the code is UNAVAILABLE."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        error = await failure(client)
        assert error.code == UNAVAILABLE
        for target in client.targets:
            assert f"{target}: UNAVAILABLE" in str(error)

    with_clouds(go, live=0, dead=2)


def test_invalid_argument_is_rejected_at_once_and_the_breaker_stays_closed() -> None:
    """A bad request goes back to the app: no failover, no breaker failure."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        clouds[0].codes = [grpc.StatusCode.INVALID_ARGUMENT]
        with pytest.raises(CloudRejected) as info:
            await ask(client)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.target == client.targets[0]
        assert clouds[1].calls == 0
        assert client.breaker_states() == dict.fromkeys(client.targets, "closed")

    with_clouds(go, live=2, call=call_settings(breaker_failures=1))


def test_overloaded_target_fails_over_without_opening_its_breaker() -> None:
    """RESOURCE_EXHAUSTED moves on to the next target, but an overloaded cloud is not down."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        clouds[0].codes = [grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert (await ask(client))[0] == "cloud1"
        assert client.breaker_states()[client.targets[0]] == "closed"

    with_clouds(go, live=2, call=call_settings(breaker_failures=1))


def test_breaker_opens_after_n_failures_then_fails_fast(caplog: pytest.LogCaptureFixture) -> None:
    """After N failures the target is not contacted any more, and a warning says so."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        clouds[0].codes = [UNAVAILABLE] * 5
        for _ in range(2):
            assert "cloud0 says UNAVAILABLE" in str(await failure(client))
        assert client.breaker_states() == {client.targets[0]: "open"}
        started = time.monotonic()
        assert str(await failure(client)) == f"{client.targets[0]}: circuit open"
        assert time.monotonic() - started < 0.1
        assert clouds[0].calls == 2

    with caplog.at_level(logging.INFO, logger="edge.cloud_client"):
        with_clouds(go, call=call_settings(breaker_failures=2))
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_trial_after_cooldown_closes_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    """Once the cooldown has passed, a successful trial call closes the breaker again."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        clouds[0].codes = [UNAVAILABLE]
        await failure(client)
        await failure(client)  # circuit open: not contacted
        await asyncio.sleep(0.25)
        assert (await ask(client))[0] == "cloud0"
        assert clouds[0].calls == 2
        assert client.breaker_states() == {client.targets[0]: "closed"}

    with caplog.at_level(logging.INFO, logger="edge.cloud_client"):
        with_clouds(go, call=call_settings(breaker_failures=1, breaker_cooldown_s=0.2))
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]


@pytest.mark.parametrize(("retries", "answered"), [(1, True), (0, False)])
def test_unavailable_is_retried_by_the_service_config(retries: int, answered: bool) -> None:
    """gRPC retries UNAVAILABLE on the same target as often as `retries` says."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        clouds[0].codes = [UNAVAILABLE]
        if answered:
            assert (await ask(client))[0] == "cloud0"
        else:
            await failure(client)
        assert clouds[0].calls == retries + 1

    with_clouds(go, call=call_settings(retries=retries))


def test_reconfigure_rebuilds_channels_with_the_new_retry_policy() -> None:
    """New retries take effect on the next call, on fresh channels."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        clouds[0].codes = [UNAVAILABLE, UNAVAILABLE]
        await failure(client)
        client.reconfigure(call_settings(retries=1, breaker_failures=7))
        assert (await ask(client))[0] == "cloud0"
        assert clouds[0].calls == 3

    with_clouds(go)


def test_reconfigure_lets_calls_in_flight_finish() -> None:
    """A call already sent on a channel that gets replaced still gets its answer."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        clouds[0].delay_s = 0.2
        in_flight = asyncio.create_task(ask(client))
        await asyncio.sleep(0.1)
        client.reconfigure(call_settings(retries=2))
        clouds[0].delay_s = 0.0
        assert (await ask(client))[0] == "cloud0"
        assert (await in_flight)[0] == "cloud0"

    with_clouds(go)


def test_retry_policy_is_left_out_without_retries() -> None:
    """retries=0 gives no retry policy; otherwise attempts and back-off follow the settings."""
    assert "retryPolicy" not in service_config(call_settings(retries=0))["methodConfig"][0]
    policy = service_config(call_settings(retries=2, retry_backoff_s=0.5))["methodConfig"][0]
    assert policy["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.500000000s",
        "maxBackoff": "5.000000000s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }


@pytest.mark.parametrize(
    ("compression", "server", "answered"),
    [
        ("gzip", {"options": GZIP_OFF}, False),
        ("none", {"options": GZIP_OFF}, True),
        ("gzip", {}, True),
    ],
)
def test_gzip_setting_compresses_requests(
    compression: str, server: dict[str, Any], answered: bool
) -> None:
    """Only gzip calls fail at a server that refuses gzip: the setting reaches the wire."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        if answered:
            assert (await ask(client))[0] == "cloud0"
        else:
            assert "UNIMPLEMENTED" in str(await failure(client))

    with_clouds(go, server=server, compression=compression)


@pytest.mark.parametrize("via", ["settings", "argument"])
def test_overall_deadline_is_honoured(via: str) -> None:
    """Slow clouds: DEADLINE_EXCEEDED within the deadline; the next target gets no time."""

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> None:
        for cloud in clouds:
            cloud.delay_s = 5.0
        started = time.monotonic()
        error = await failure(client, **({"timeout_s": 0.3} if via == "argument" else {}))
        assert 0.25 < time.monotonic() - started < 1.0
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert clouds[1].calls == 0
        assert f"{client.targets[1]}: not tried (deadline passed)" in str(error)

    deadline = 0.3 if via == "settings" else 10.0
    with_clouds(go, live=2, call=call_settings(deadline_s=deadline))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mutual_tls_with_server_name_override(tmp_path: Path) -> None:
    """TLS with a CA file, a client certificate and a certificate name other than the host's."""
    pem = make_certs(tmp_path)
    creds = grpc.ssl_server_credentials(
        [(pem["server.key"].read_bytes(), pem["server.pem"].read_bytes())],
        root_certificates=pem["ca.pem"].read_bytes(),
        require_client_auth=True,
    )
    tls = {"enabled": True, "ca_file": pem["ca.pem"], "server_name": "cloud.test"}
    tls |= {"cert_file": pem["client.pem"], "key_file": pem["client.key"]}

    async def go(client: CloudClient, clouds: list[FakeCloud]) -> str:
        return (await ask(client))[0]

    assert with_clouds(go, server_tls=creds, tls=tls) == "cloud0"


def make_certs(folder: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for `cloud.test` only, and a client certificate."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA",
            "-addext", "basicConstraints=critical,CA:TRUE")  # fmt: skip
    for name, ext in [("server", "subjectAltName=DNS:cloud.test"), ("client", "")]:
        (folder / f"{name}.ext").write_text(ext + "\n")
        openssl("req", *key[:-2], "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
                "-extfile", f"{name}.ext")  # fmt: skip
    return {p.name: p for p in folder.glob("*.*")}
