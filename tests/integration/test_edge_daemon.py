"""The real ``autoglm edge serve`` in front of real ``autoglm cloud serve`` processes (loopback)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cloud_server import write_tokens
from hybrid import ask, edge_config, prompts, route

from autoglm_cli import main
from bench.stack.processes import CloudServer, EdgeServer, free_port
from shared.rpc import inference_pb2 as pb

pytestmark = pytest.mark.slow

EASY = prompts("rev", 1, 12) + prompts("shift", 1, 12)
HELD_OUT = prompts("max", 1, 10)  # a family the quick pack never trained on
# Small breaker numbers so that the fault tests run in seconds.
FAST_BREAKER = """
[runtime.cloud_call]
deadline_s = 5.0
retries = 0
breaker_failures = 2
breaker_cooldown_s = 1.0
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hybrid")


@pytest.fixture(scope="module")
def token_args(workdir: Path) -> tuple[list[str], list[str]]:
    """(cloud flags, edge flags) for bearer-token auth between them."""
    tokens = write_tokens(workdir / "tokens.txt")
    token_file = workdir / "edge-token.txt"
    token_file.write_text(tokens.read_text().splitlines()[2] + "\n")
    return ["--tokens-file", str(tokens)], ["--cloud-token-file", str(token_file)]


def _cloud(pack: Path, workdir: Path, token_args: tuple[list[str], list[str]]) -> CloudServer:
    server = CloudServer(pack, workdir, args=token_args[0])
    server.wait_serving()
    return server


@pytest.fixture(scope="module")
def cloud(
    quick_pack: Path, workdir: Path, token_args: tuple[list[str], list[str]]
) -> Iterator[CloudServer]:
    server = _cloud(quick_pack, workdir, token_args)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(
    quick_pack: Path, workdir: Path, cloud: CloudServer, token_args: tuple[list[str], list[str]]
) -> Iterator[EdgeServer]:
    metrics = ["--metrics-port", str(free_port())]
    server = EdgeServer(quick_pack, workdir, clouds=[cloud.address], args=token_args[1] + metrics)
    server.wait_serving()
    yield server
    server.stop()


def test_easy_prompts_stay_at_the_edge_and_the_held_out_family_is_escalated(
    edge: EdgeServer,
) -> None:
    """Tier-1 prompts of trained families mostly stay local; the unseen family goes to the cloud
    with the proxy's draft, and every answer says where it came from."""
    easy = [ask(edge, p) for p in EASY]
    held_out = [ask(edge, p) for p in HELD_OUT]
    edge_share = sum(route(r) == "ROUTE_EDGE" for r in easy) / len(easy)
    escalated = sum(route(r) == "ROUTE_CLOUD" for r in held_out) / len(held_out)
    assert edge_share >= 0.6, [(r.text, r.confidence) for r in easy]
    assert escalated >= 0.9
    local = next(r for r in easy if route(r) == "ROUTE_EDGE")
    assert local.models.edge_pack and not local.models.cloud_pack
    assert [t.stage for t in local.timings] == ["edge", "total"]
    remote = next(r for r in held_out if route(r) == "ROUTE_CLOUD")
    assert remote.escalation_reason == "low_confidence"
    assert remote.models.edge_pack and remote.models.cloud_pack
    assert [t.stage for t in remote.timings] == ["edge", "cloud", "total"]


def test_route_preference_and_policy_escalation(edge: EdgeServer) -> None:
    """cloud_only skips the proxy; edge_only never calls the cloud; a request longer than the
    proxy may write is escalated by policy without running the proxy."""
    cloud_only = ask(edge, HELD_OUT[0], route=pb.ROUTE_PREFERENCE_CLOUD_ONLY)
    assert (route(cloud_only), cloud_only.escalation_reason) == ("ROUTE_CLOUD", "policy_cloud_only")
    assert not cloud_only.models.edge_pack
    edge_only = ask(edge, HELD_OUT[0], route=pb.ROUTE_PREFERENCE_EDGE_ONLY)
    assert route(edge_only) == "ROUTE_EDGE"
    long = ask(edge, EASY[0], sampling=pb.SamplingParams(max_new_tokens=40))
    assert (route(long), long.escalation_reason) == ("ROUTE_CLOUD", "max_new_tokens_too_large")
    # Beyond the proxy's context: escalated unseen; here the full model's context is no longer,
    # so the cloud's INVALID_ARGUMENT reaches the app (no fallback for a bad request).
    with pytest.raises(grpc.RpcError) as err:
        ask(edge, "rev " + "a" * 70 + "=")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cloud: prompt has 76 tokens" in str(err.value.details())


def test_a_repeated_deterministic_request_is_answered_from_the_cache(edge: EdgeServer) -> None:
    """The second identical greedy request is a cache hit; sampling without a seed never is."""
    first = ask(edge, "rev cached=")
    second = ask(edge, "rev cached=")
    assert route(second) == "ROUTE_CACHE"
    assert (second.text, list(second.token_ids)) == (first.text, list(first.token_ids))
    assert [t.stage for t in second.timings] == ["cache", "total"]
    sampled = pb.SamplingParams(temperature=1.0)
    ask(edge, "rev cached=", sampling=sampled)
    assert route(ask(edge, "rev cached=", sampling=sampled)) != "ROUTE_CACHE"


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"sampling": pb.SamplingParams(max_new_tokens=-1)}, "max_new_tokens must be >= 0"),
        ({"sampling": pb.SamplingParams(max_new_tokens=10**6)}, "exceeds the limit"),
        ({"sampling": pb.SamplingParams(temperature=-1)}, "temperature"),
        ({"sampling": pb.SamplingParams(top_p=2)}, "top_p"),
        ({"sampling": pb.SamplingParams(stop=[""])}, "stop strings"),
        ({"route": 7}, "RoutePreference"),
        ({"prompt": "a" * 100, "route": pb.ROUTE_PREFERENCE_EDGE_ONLY}, "context"),
    ],
)
def test_malformed_requests_get_invalid_argument_and_the_daemon_keeps_serving(
    edge: EdgeServer, kw: dict[str, object], reason: str
) -> None:
    """Each bad field is refused with INVALID_ARGUMENT naming it; the next request works."""
    prompt = str(kw.pop("prompt", "rev abc="))
    with pytest.raises(grpc.RpcError) as err:
        ask(edge, prompt, **kw)  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in str(err.value.details())
    assert ask(edge, "rev abc=").text == "cba"


def test_autoglm_ask_prints_the_answer_and_its_metadata(
    edge: EdgeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`autoglm ask` for people (answer + route line) and for scripts (--json)."""
    assert main(["ask", "--target", edge.address, "rev xyz="]) == 0
    text, meta = capsys.readouterr().out.splitlines()
    assert text == "zyx" and "route=EDGE " in meta and "edge=quick/" in meta and "total=" in meta
    assert main(["ask", "--target", edge.address, "--json", "--route", "cloud", "rev abc="]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["route"] == "ROUTE_CLOUD" and answer["models"]["cloud_pack"]
    assert main(["ask", "--target", edge.address, ""]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_metrics_count_requests_by_route_and_show_the_model(edge: EdgeServer) -> None:
    """The Prometheus page counts answers by route and names the pack and providers in use."""
    ask(edge, "rev metrics=")
    port = edge.log().split("metrics on http://127.0.0.1:")[1].split("/")[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        text = page.read().decode()
    assert 'autoglm_edge_requests_total{route="edge",status="ok"}' in text
    assert 'providers="CPUExecutionProvider"' in text
    assert "autoglm_edge_breaker_open" in text


def test_stream_ends_with_the_same_final_answer(edge: EdgeServer) -> None:
    """GenerateStream's last chunk carries the response Generate gives."""
    from shared.rpc import inference_pb2_grpc

    with grpc.insecure_channel(edge.address) as ch:
        chunks = list(
            inference_pb2_grpc.InferenceStub(ch).GenerateStream(
                pb.GenerateRequest(prompt="shift abc="), timeout=20
            )
        )
    assert chunks[-1].HasField("final")
    assert (
        "".join(c.text_delta for c in chunks)
        == chunks[-1].final.text
        == ask(edge, "shift abc=").text
    )


def test_the_local_api_serves_on_a_unix_socket(
    quick_pack: Path, workdir: Path, cloud: CloudServer
) -> None:
    """--listen unix:PATH: apps reach the daemon through a socket file."""
    sock = workdir / "run" / "edge.sock"
    server = EdgeServer(quick_pack, workdir, clouds=[cloud.address], address=f"unix:{sock}")
    try:
        server.wait_serving()
        assert route(ask(f"unix:{sock}", "rev abc=")) == "ROUTE_EDGE"
    finally:
        server.stop()


def test_cloud_killed_answers_fall_back_and_escalation_resumes_when_it_returns(
    quick_pack: Path, workdir: Path, token_args: tuple[list[str], list[str]]
) -> None:
    """With the cloud down no request fails (EDGE_FALLBACK); once it is back, escalations reach
    it again within the breaker's cooldown."""
    cloud = _cloud(quick_pack, workdir, token_args)
    config = edge_config(workdir / "fast-breaker.toml", FAST_BREAKER)
    edge = EdgeServer(quick_pack, workdir, clouds=[cloud.address], args=[*token_args[1], *config])
    try:
        edge.wait_serving()
        assert route(ask(edge, HELD_OUT[1])) == "ROUTE_CLOUD"
        cloud.kill()
        down = [ask(edge, p) for p in HELD_OUT + EASY[:4]]
        assert {route(r) for r in down} <= {"ROUTE_EDGE", "ROUTE_EDGE_FALLBACK", "ROUTE_CACHE"}
        fallback = [r for r in down if route(r) == "ROUTE_EDGE_FALLBACK"]
        assert fallback and all(r.escalation_reason == "low_confidence" for r in fallback)
        cloud.restart().wait_serving()
        back = time.monotonic()
        while route(ask(edge, HELD_OUT[2], request_id="probe")) != "ROUTE_CLOUD":
            assert time.monotonic() - back < 1.0 + 5.0, "escalation did not resume"
            time.sleep(0.2)
    finally:
        edge.stop()
        cloud.stop()


def test_health_and_reflection_are_served(edge: EdgeServer) -> None:
    """Generic tools see SERVING and can list autoglm.v1.Inference through reflection."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    assert edge.health("autoglm.v1.Inference") == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(edge.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"autoglm.v1.Inference", "grpc.health.v1.Health"} <= names
