"""``autoglm health``, run as a subprocess against real servers on loopback: the container probe."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cloud_server import ROOT, make_certs

from bench.stack.processes import CloudServer, EdgeServer, ServerProcess, free_port
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc

pytestmark = pytest.mark.slow

INFERENCE = "autoglm.v1.Inference"


def health(*args: str) -> subprocess.CompletedProcess[str]:
    """``autoglm health ARGS`` in a fresh interpreter, as a container runtime runs it."""
    return subprocess.run(
        [sys.executable, "-m", "autoglm_cli", "health", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("health")


@pytest.fixture(scope="module")
def cloud(quick_pack: Path, workdir: Path) -> Iterator[CloudServer]:
    server = CloudServer(quick_pack, workdir, args=["--auth-disabled"])
    server.wait_serving()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(quick_pack: Path, workdir: Path, cloud: CloudServer) -> Iterator[EdgeServer]:
    server = EdgeServer(quick_pack, workdir, clouds=[cloud.address])
    server.wait_serving()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_cloud(quick_pack: Path, workdir: Path) -> Iterator[tuple[CloudServer, Path]]:
    """A cloud serving TLS only; yields it and the CA that signed its certificate."""
    certs = make_certs(workdir / "certs")
    config = workdir / "cloud-tls.toml"
    config.write_text(
        f'[tls]\ncert_file = "{certs["server.pem"]}"\nkey_file = "{certs["server.key"]}"\n'
    )
    ca = certs["ca.pem"]
    server = CloudServer(
        quick_pack,
        workdir,
        args=["--auth-disabled", "--config", str(config)],
        channel_factory=lambda a: grpc.secure_channel(
            a, grpc.ssl_channel_credentials(ca.read_bytes())
        ),
    )
    server.wait_serving()
    yield server, ca
    server.stop()


@pytest.mark.parametrize("service", ["", INFERENCE], ids=["server", "inference"])
@pytest.mark.parametrize("side", ["cloud", "edge"])
def test_serving_server_exits_0_and_prints_serving(
    request: pytest.FixtureRequest, side: str, service: str
) -> None:
    """A running edge or cloud answers SERVING, for the whole server and for Inference."""
    server: ServerProcess = request.getfixturevalue(side)
    result = health(server.address, "--service", service, "--timeout", "5")
    assert (result.returncode, result.stdout, result.stderr) == (0, "SERVING\n", "")


def test_tls_server_is_serving_with_its_ca_and_refuses_plaintext(
    tls_cloud: tuple[CloudServer, Path],
) -> None:
    """Against a TLS cloud, --ca gives SERVING; a plaintext probe exits 1 with a reason."""
    server, ca = tls_cloud
    assert health(server.address, "--ca", str(ca)).returncode == 0
    plain = health(server.address, "--timeout", "5")
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.startswith(f"autoglm health: {server.address}: UNAVAILABLE")


def test_unknown_service_exits_1_naming_it(edge: EdgeServer) -> None:
    """Asking for a service the server does not have exits 1 and names the service."""
    result = health(edge.address, "--service", "autoglm.v1.ModelStore")
    assert result.returncode == 1
    assert "does not know the service 'autoglm.v1.ModelStore'" in result.stderr


def test_nothing_listening_exits_1_with_one_line_reason() -> None:
    """A port where nothing listens: exit 1, one line on stderr saying UNAVAILABLE."""
    address = f"127.0.0.1:{free_port()}"
    result = health(address, "--timeout", "5")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"autoglm health: {address}: UNAVAILABLE")


def test_silent_listener_exits_1_after_the_timeout() -> None:
    """A socket that accepts but never speaks gRPC: exit 1 after --timeout, saying so."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        t0 = time.monotonic()
        result = health(address, "--timeout", "0.5")
        assert time.monotonic() - t0 < 10
    assert result.returncode == 1
    assert result.stderr == f"autoglm health: {address}: no answer within 0.5 s\n"


def test_draining_cloud_is_not_serving(quick_pack: Path, tmp_path: Path) -> None:
    """After SIGTERM, while queued requests drain, the probe prints NOT_SERVING and exits 1."""
    env = {"AUTOGLM_CLOUD_ENGINE__MAX_BATCH_SIZE": "1", "AUTOGLM_CLOUD_DRAIN_GRACE_S": "60"}
    server = CloudServer(quick_pack, tmp_path, args=["--auth-disabled"], env=env)
    try:
        server.wait_serving()
        with server.channel() as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            # "q": the quick pack's full model writes 60 tokens for it; 40 of them queue for
            # several seconds behind a one-slot engine, which keeps the drain open.
            request = pb.GenerateRequest(prompt="q", sampling=pb.SamplingParams(max_new_tokens=60))
            calls = [stub.Generate.future(request, timeout=60) for _ in range(40)]
            calls[0].result()  # the first answered: the rest are in the queue
            server.terminate()
            end = time.monotonic() + 10
            result = health(server.address)
            while result.stdout == "SERVING\n" and time.monotonic() < end:
                result = health(server.address)
            drained = calls[-1].done()
            for call in calls:
                call.cancel()
        if result.stdout != "NOT_SERVING\n" and drained:
            pytest.skip("the drain ended before the probe ran (machine too fast or too busy)")
        assert (result.returncode, result.stdout) == (1, "NOT_SERVING\n")
        assert result.stderr == f"autoglm health: {server.address} is NOT_SERVING\n"
    finally:
        server.kill()
