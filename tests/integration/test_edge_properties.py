"""Any request to the real edge daemon (in front of a real cloud): an answer or a documented
refusal, never UNKNOWN or INTERNAL, and the daemon keeps serving; a cloud-only flood of bad
requests does not open the circuit breaker for everyone else."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cloud_server import write_tokens
from grpc_health.v1 import health_pb2
from hybrid import ask, route
from hypothesis import given
from strategies import REQUESTS

from bench.stack.processes import CloudServer, EdgeServer
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc

pytestmark = pytest.mark.slow

EDGE_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,  # also a cloud's refusal, passed on with "cloud:"
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def edge(quick_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeServer]:
    workdir = tmp_path_factory.mktemp("edge-properties")
    tokens = write_tokens(workdir / "tokens.txt")
    (workdir / "edge-token.txt").write_text(tokens.read_text().splitlines()[2] + "\n")
    cloud = CloudServer(quick_pack, workdir, args=["--tokens-file", str(tokens)]).wait_serving()
    edge = EdgeServer(quick_pack, workdir, clouds=[cloud.address],
                      args=["--cloud-token-file", str(workdir / "edge-token.txt")])  # fmt: skip
    edge.wait_serving()
    yield edge
    edge.stop()
    cloud.stop()


@given(request=REQUESTS)
def test_any_request_gets_an_answer_or_a_documented_refusal(
    edge: EdgeServer, request: pb.GenerateRequest
) -> None:
    with edge.channel() as ch:
        try:
            inference_pb2_grpc.InferenceStub(ch).Generate(request, timeout=30)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert exc.details(), code
    assert code in EDGE_CODES, code
    assert edge.health() == health_pb2.HealthCheckResponse.SERVING


def test_bad_cloud_only_requests_do_not_open_the_breaker_for_others(edge: EdgeServer) -> None:
    """Twenty cloud-only requests with a NaN temperature are refused at the edge (no cloud call
    is made, so no cloud failure is counted); a good cloud-only request still goes to the cloud."""
    bad = pb.GenerateRequest(
        prompt="rev abc=",
        route=pb.ROUTE_PREFERENCE_CLOUD_ONLY,
        sampling=pb.SamplingParams(temperature=math.nan, max_new_tokens=8),
    )
    with edge.channel() as ch:
        stub = inference_pb2_grpc.InferenceStub(ch)
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as exc:
                stub.Generate(bad, timeout=30)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert route(ask(edge, "rev abc=", route=pb.ROUTE_PREFERENCE_CLOUD_ONLY)) == "ROUTE_CLOUD"
