"""The real ``autoglm cloud serve`` process over loopback gRPC: contract, limits, TLS, shutdown."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cloud_server import AUTH, ROOT, make_certs, write_tokens
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prom import metric

from bench.stack.processes import CloudServer, free_port
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc

pytestmark = pytest.mark.slow

PROMPTS = ["rev uojyw=", "sort utub=", "add 6 6 4=", "rev yo=", "sort pzi=", "add 9 2 4 4 2="]
LONG = "q"  # the quick pack's full model answers it with 60 tokens and no EOS: a long request
SERIAL = {"AUTOGLM_CLOUD_ENGINE__MAX_BATCH_SIZE": "1"}  # one request at a time: others queue
T = 20.0  # deadline of ordinary calls, seconds


def req(prompt: str, n: int = 16, **kw: Any) -> pb.GenerateRequest:
    sampling = kw.pop("sampling", None) or pb.SamplingParams(max_new_tokens=n)
    return pb.GenerateRequest(prompt=prompt, sampling=sampling, **kw)


def generate(server: CloudServer, request: pb.GenerateRequest, **kw: Any) -> pb.GenerateResponse:
    kw.setdefault("timeout", T)
    kw.setdefault("metadata", AUTH)
    with server.channel() as ch:
        reply: pb.GenerateResponse = inference_pb2_grpc.InferenceStub(ch).Generate(request, **kw)
        return reply


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokens(tmp_path_factory.mktemp("auth") / "tokens.txt")


@pytest.fixture(scope="module")
def start(
    quick_pack: Path, tokens: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., CloudServer]]:
    """Starts servers that are stopped (SIGTERM, then SIGKILL) when the module ends."""
    servers: list[CloudServer] = []
    workdir = tmp_path_factory.mktemp("servers")

    def _start(*args: str, **kw: Any) -> CloudServer:
        server = CloudServer(quick_pack, workdir, args=["--tokens-file", str(tokens), *args], **kw)
        servers.append(server)
        return server.wait_serving()

    yield _start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(start: Callable[..., CloudServer]) -> CloudServer:
    return start("--metrics-port", str(free_port()))


def test_concurrent_clients_are_all_answered_like_one_at_a_time(server: CloudServer) -> None:
    """8 concurrent greedy calls all succeed and match the answers of sequential calls."""
    prompts = [PROMPTS[i % len(PROMPTS)] + "x" * (i // len(PROMPTS)) for i in range(8)]
    alone = [generate(server, req(p)).token_ids for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda p: generate(server, req(p)), prompts))
    assert [r.token_ids for r in replies] == alone
    for r in replies:
        assert r.route == pb.ROUTE_CLOUD and r.models.cloud_pack.startswith("quick/")
        assert [t.stage for t in r.timings] == ["queue", "prefill", "decode", "total"]
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens == len(r.token_ids)


def test_generate_and_stream_give_the_same_answer(server: CloudServer) -> None:
    """GenerateStream's deltas and final chunk equal Generate's answer."""
    for prompt in (PROMPTS[0], LONG):
        request = req(prompt, 40, request_id=f"same-{prompt}")
        reply = generate(server, request)
        with server.channel() as ch:
            chunks = list(
                inference_pb2_grpc.InferenceStub(ch).GenerateStream(
                    request, timeout=T, metadata=AUTH
                )
            )
        assert "".join(c.text_delta for c in chunks) == reply.text
        assert [t for c in chunks for t in c.token_ids] == list(reply.token_ids)
        assert [c.HasField("final") for c in chunks] == [False] * (len(chunks) - 1) + [True]
        final = chunks[-1].final
        assert (final.text, final.token_ids, final.request_id) == (
            reply.text,
            reply.token_ids,
            request.request_id,
        )
        assert final.finish_reason == reply.finish_reason != pb.FINISH_REASON_UNSPECIFIED


def test_tokens_are_checked_and_health_needs_none(server: CloudServer) -> None:
    """Missing or wrong token -> UNAUTHENTICATED; the right one works; health needs no token."""
    with server.channel() as ch:
        s = inference_pb2_grpc.InferenceStub(ch)
        bad = (("authorization", "Bearer wrong"),)
        assert code_of(lambda: s.Generate(req(PROMPTS[0]), timeout=T)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert code_of(lambda: s.Generate(req(PROMPTS[0]), timeout=T, metadata=bad)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert code_of(lambda: list(s.GenerateStream(req(PROMPTS[0]), timeout=T))) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        other = (("authorization", "Bearer another-token"),)
        assert s.Generate(req(PROMPTS[0]), timeout=T, metadata=other).request_id
    for service in ("", "autoglm.v1.Inference", "autoglm.v1.ModelStore"):
        assert server.health(service) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "request_",
    [
        req(""),
        req("x" * 200),
        req(PROMPTS[0], -1),
        req(PROMPTS[0], 100_000),
        req(PROMPTS[0], sampling=pb.SamplingParams(max_new_tokens=8, temperature=-1)),
        req(PROMPTS[0], sampling=pb.SamplingParams(max_new_tokens=8, top_p=2)),
    ],
    ids=["empty", "oversized", "max_new_tokens=-1", "max_new_tokens=1e5", "temp=-1", "top_p=2"],
)
def test_malformed_requests_are_invalid_argument_and_server_keeps_serving(
    server: CloudServer, request_: pb.GenerateRequest
) -> None:
    """A bad request gets INVALID_ARGUMENT with a reason; the next good one succeeds."""
    with pytest.raises(grpc.RpcError) as info:
        generate(server, request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details()
    assert generate(server, req(PROMPTS[1])).finish_reason != pb.FINISH_REASON_UNSPECIFIED


def test_right_and_wrong_drafts_give_the_plain_greedy_answer(server: CloudServer) -> None:
    """A correct and a wrong draft both give exactly the no-draft answer; acceptance reported."""
    plain = generate(server, req(LONG, 30))
    right = list(plain.token_ids[:5])
    wrong = [(t + 1) % 256 for t in right]
    for draft, accepted in ((right, 5), (wrong, 0)):
        reply = generate(server, req(LONG, 30, draft=pb.Draft(token_ids=draft)))
        assert (reply.text, reply.token_ids) == (plain.text, plain.token_ids)
        assert reply.usage.draft_tokens == 5
        assert reply.usage.draft_tokens_accepted == accepted


def test_gzip_compressed_call_works(server: CloudServer) -> None:
    """A gzip-compressed call gets the same answer as an uncompressed one."""
    plain = generate(server, req(PROMPTS[2]))
    with grpc.insecure_channel(server.address, compression=grpc.Compression.Gzip) as ch:
        s = inference_pb2_grpc.InferenceStub(ch)
        zipped = s.Generate(
            req(PROMPTS[2]), timeout=T, metadata=AUTH, compression=grpc.Compression.Gzip
        )
    assert zipped.token_ids == plain.token_ids


def test_reflection_lists_the_services(server: CloudServer) -> None:
    """Server reflection (no token) lists Inference, ModelStore and health."""
    with server.channel() as ch:
        s = reflection_pb2_grpc.ServerReflectionStub(ch)
        asks = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        answer = next(iter(s.ServerReflectionInfo(asks, timeout=T)))
    names = {x.name for x in answer.list_services_response.service}
    assert {"autoglm.v1.Inference", "autoglm.v1.ModelStore", "grpc.health.v1.Health"} <= names


def test_metrics_page_is_served(server: CloudServer) -> None:
    """The Prometheus page answers once requests were served."""
    generate(server, req(PROMPTS[0]))
    port = server.log().split("metrics on http://127.0.0.1:")[1].split("/")[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=T) as page:
        assert page.status == 200 and page.read()


def _flood(server: CloudServer, n: int, timeout: float = T) -> list[Future[pb.GenerateResponse]]:
    pool = ThreadPoolExecutor(n)
    futures = [pool.submit(generate, server, req(LONG, 60), timeout=timeout) for _ in range(n)]
    pool.shutdown(wait=False)
    return futures


def _codes(futures: list[Future[pb.GenerateResponse]]) -> list[grpc.StatusCode]:
    return [code_of(lambda f=f: f.result(timeout=T)) for f in futures]  # type: ignore[misc]


def test_queue_overflow_is_resource_exhausted(start: Callable[..., CloudServer]) -> None:
    """With max_batch_size=1 and max_waiting=1 a flood gets some RESOURCE_EXHAUSTED, no errors."""
    small = start(env={**SERIAL, "AUTOGLM_CLOUD_ENGINE__MAX_WAITING": "1"})
    codes = _codes(_flood(small, 12))
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_full_engine_refuses_both_calls_at_once_and_counts_them(
    start: Callable[..., CloudServer],
) -> None:
    """With the one running slot and the one waiting place taken, Generate and GenerateStream
    are refused with RESOURCE_EXHAUSTED naming the limits, counted on /metrics; once the two
    long requests finish, the next call is served."""
    port = free_port()
    full = start(
        "--metrics-port", str(port), env={**SERIAL, "AUTOGLM_CLOUD_ENGINE__MAX_WAITING": "1"}
    )
    ahead = _flood(full, 2)
    deadline = time.monotonic() + T
    while metric(port, "autoglm_cloud_in_flight") < 2:
        assert time.monotonic() < deadline, "the two long requests were not admitted"
        time.sleep(0.01)
    with full.channel() as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        for call in (stub.Generate, lambda *a, **kw: list(stub.GenerateStream(*a, **kw))):
            with pytest.raises(grpc.RpcError) as refused:
                call(req(PROMPTS[0], request_id="over"), timeout=T, metadata=AUTH)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "1 running slots and 1 waiting places (request over)" in refused.value.details()
    assert metric(port, "autoglm_cloud_requests_total", status="resource_exhausted") == 2
    assert _codes(ahead) == [grpc.StatusCode.OK] * 2
    assert generate(full, req(PROMPTS[0])).token_ids


@pytest.fixture(scope="module")
def serial(start: Callable[..., CloudServer]) -> CloudServer:
    return start(env=SERIAL)


def test_deadline_expiring_in_the_queue_is_deadline_exceeded(serial: CloudServer) -> None:
    """A call whose deadline passes while it waits behind others gets DEADLINE_EXCEEDED."""
    ahead = _flood(serial, 16)
    time.sleep(0.05)
    late = code_of(lambda: generate(serial, req(LONG, 60), timeout=0.2))
    assert late == grpc.StatusCode.DEADLINE_EXCEEDED
    assert set(_codes(ahead)) == {grpc.StatusCode.OK}


def test_cancelling_a_stream_frees_its_slot(serial: CloudServer) -> None:
    """A cancelled stream is aborted in the engine; the next request on a 1-slot server runs."""
    with serial.channel() as ch:
        stream = inference_pb2_grpc.InferenceStub(ch).GenerateStream(
            req(LONG, 60, request_id="to-cancel"), timeout=T, metadata=AUTH
        )
        next(stream)
        stream.cancel()
    end = time.monotonic() + 5
    while "to-cancel: cancelled" not in serial.log() and time.monotonic() < end:
        time.sleep(0.05)
    assert "to-cancel: cancelled" in serial.log()
    assert generate(serial, req(PROMPTS[0]), timeout=5).finish_reason == pb.FINISH_REASON_EOS


def _secure(ca: Path, client: tuple[Path, Path] | None) -> Callable[[str], grpc.Channel]:
    key, cert = (client[0].read_bytes(), client[1].read_bytes()) if client else (None, None)
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key, cert)
    return lambda address: grpc.secure_channel(address, creds)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_tls_and_mutual_tls(
    start: Callable[..., CloudServer], tmp_path: Path, mutual: bool
) -> None:
    """Calls succeed over TLS (and mTLS with a client certificate); mTLS refuses one without."""
    certs = make_certs(tmp_path / "certs")
    tls = f'[tls]\ncert_file = "{certs["server.pem"]}"\nkey_file = "{certs["server.key"]}"\n'
    if mutual:
        tls += f'client_ca_file = "{certs["ca.pem"]}"\n'
    (tmp_path / "cloud.toml").write_text(tls)
    client = (certs["client.key"], certs["client.pem"]) if mutual else None
    secure = start(
        "--config", str(tmp_path / "cloud.toml"), channel_factory=_secure(certs["ca.pem"], client)
    )
    assert generate(secure, req(PROMPTS[0])).request_id
    assert "WITHOUT TLS" not in secure.log()
    if mutual:
        with _secure(certs["ca.pem"], None)(secure.address) as ch:
            s = inference_pb2_grpc.InferenceStub(ch)
            assert code_of(lambda: s.Generate(req(PROMPTS[0]), timeout=5, metadata=AUTH)) == (
                grpc.StatusCode.UNAVAILABLE
            )


def test_sigterm_drains_in_flight_requests_and_exits_0(
    quick_pack: Path, tokens: Path, tmp_path: Path
) -> None:
    """After SIGTERM in-flight requests complete, new ones get UNAVAILABLE, exit code 0."""
    grace = 15.0
    env = {**SERIAL, "AUTOGLM_CLOUD_DRAIN_GRACE_S": str(grace)}
    # -v: the "accepted" lines the test waits for are DEBUG messages
    server = CloudServer(
        quick_pack, tmp_path, args=["--tokens-file", str(tokens)], env=env, cli_args=["-v"]
    )
    try:
        server.wait_serving()
        n = 24
        in_flight = _flood(server, n, timeout=30)
        end = time.monotonic() + 10
        while server.log().count(": accepted") < n and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(0.05)
        server.terminate()
        t0 = time.monotonic()
        while code_of(lambda: server.health(timeout=1)) == grpc.StatusCode.OK:
            if server.health(timeout=1) != health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.01)
        assert code_of(lambda: generate(server, req(PROMPTS[0]), timeout=5)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        replies = [f.result(timeout=30) for f in in_flight]
        assert {r.finish_reason for r in replies} == {pb.FINISH_REASON_LENGTH}
        assert "UNAVAILABLE: engine is draining" in server.log()
        assert server.proc.wait(timeout=grace + 5) == 0
        assert time.monotonic() - t0 < grace + 5
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pack", "/nonexistent/pack", "--auth-disabled"], "no manifest.json"),
        (["--auth-disabled", "--listen", "nonsense"], "listen"),
        ([], "no tokens_file set"),
        (["--tokens-file", "/nonexistent/tokens"], "cannot read tokens_file"),
    ],
    ids=["no-pack", "bad-listen", "no-tokens-file", "missing-tokens-file"],
)
def test_unusable_settings_exit_2_with_a_clear_message(
    quick_pack: Path, args: list[str], message: str
) -> None:
    """Bad settings, a missing pack or missing auth: exit code 2 and one reason on stderr."""
    cmd = [sys.executable, "-m", "autoglm_cli", "cloud", "serve", "--pack", str(quick_pack), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_server_whose_engine_thread_dies_stops_with_exit_code_1(
    quick_pack: Path, tmp_path: Path
) -> None:
    """A bug that stops the engine thread does not leave a server that accepts calls and never
    answers them: it stops serving and exits 1, for its supervisor to restart it."""
    launcher = (str(Path(__file__).with_name("faulty_cloud.py")),)
    server = CloudServer(quick_pack, tmp_path, args=["--auth-disabled"], launcher=launcher)
    try:
        server.wait_serving()
        generate(server, req("rev abc=", request_id="before"))  # serves as usual until then
        with pytest.raises(grpc.RpcError):
            generate(server, req("engine-bug"))
        assert server.proc.wait(timeout=30) == 1
    finally:
        server.stop()
    log = server.log()
    assert "the engine thread stopped on an unexpected error" in log
    assert "fault injected into the engine loop" in log
