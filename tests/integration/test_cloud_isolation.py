"""One caller never hurts another on the real cloud server: shared request ids, forged log lines,
sampling numbers that would break a step."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cloud_server import AUTH, write_tokens
from grpc_health.v1 import health_pb2
from hypothesis import given
from strategies import REQUESTS

from bench.stack.processes import CloudServer
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc

pytestmark = pytest.mark.slow

PROMPTS = ["rev uojyw=", "sort utub=", "add 6 6 4=", "rev yo=", "shift abc=", "max 3 9=", "q", "ok"]
T = 30.0


@pytest.fixture(scope="module")
def server(quick_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    workdir = tmp_path_factory.mktemp("isolation")
    tokens = write_tokens(workdir / "tokens.txt")
    server = CloudServer(quick_pack, workdir, args=["--tokens-file", str(tokens)]).wait_serving()
    yield server
    server.stop()


def stream(server: CloudServer, request: pb.GenerateRequest) -> tuple[list[int], str]:
    """The tokens of a streamed answer and the request id of its final chunk."""
    with server.channel() as ch:
        chunks = list(
            inference_pb2_grpc.InferenceStub(ch).GenerateStream(request, timeout=T, metadata=AUTH)
        )
    return [t for c in chunks for t in c.token_ids], chunks[-1].final.request_id


def greedy(prompt: str, rid: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(
        prompt=prompt, request_id=rid, sampling=pb.SamplingParams(max_new_tokens=24)
    )


def test_callers_sharing_a_request_id_each_get_only_their_own_tokens(server: CloudServer) -> None:
    """Sixteen concurrent streams with one request id (two per prompt): every caller gets the
    answer its prompt gets alone, and its own id back."""
    alone = {p: stream(server, greedy(p))[0] for p in PROMPTS}
    prompts = PROMPTS * 2
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(lambda p: stream(server, greedy(p, "shared-id")), prompts))
    assert [tokens for tokens, _ in got] == [alone[p] for p in prompts]
    assert {rid for _, rid in got} == {"shared-id"}
    # A finished request leaves nothing behind under its id: the next one is answered in full.
    assert stream(server, greedy(PROMPTS[0], "shared-id"))[0] == alone[PROMPTS[0]]


def test_a_request_id_cannot_forge_a_log_line(server: CloudServer) -> None:
    forged = "abc\nERROR cloud: FORGED\r\x1b[2J"
    tokens, rid = stream(server, greedy(PROMPTS[0], forged))
    assert tokens and "\n" not in rid and "\x1b" not in rid and rid.startswith("abc?")
    assert not any(line.startswith("ERROR cloud: FORGED") for line in server.log().splitlines())


@pytest.mark.parametrize("temperature", [math.nan, math.inf, 1e-40, 1e9])
def test_sampling_numbers_that_would_break_a_step_are_refused_and_others_finish(
    server: CloudServer, temperature: float
) -> None:
    """A temperature that is not a finite number in range is INVALID_ARGUMENT for that call;
    the requests in flight beside it all finish with their usual answers."""
    alone = {p: stream(server, greedy(p))[0] for p in PROMPTS}
    bad = pb.GenerateRequest(
        prompt="rev abc=",
        sampling=pb.SamplingParams(max_new_tokens=24, temperature=temperature, seed=1),
    )

    def call_bad() -> grpc.StatusCode:
        try:
            stream(server, bad)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(len(PROMPTS) + 1) as pool:
        good = [pool.submit(stream, server, greedy(p)) for p in PROMPTS]
        code = pool.submit(call_bad).result()
        answers = [f.result()[0] for f in good]
    tiny = 0 < temperature < 1e-5  # treated as greedy, as vLLM does
    assert code == (grpc.StatusCode.OK if tiny else grpc.StatusCode.INVALID_ARGUMENT)
    assert answers == [alone[p] for p in PROMPTS]


GRANTS = "tok-any\ntok-dev devices=dev-a,dev-b\ntok-prio max_priority=10\n"


@pytest.fixture(scope="module")
def granted(quick_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    workdir = tmp_path_factory.mktemp("grants")
    (workdir / "tokens.txt").write_text(GRANTS)
    server = CloudServer(
        quick_pack, workdir, args=["--tokens-file", str(workdir / "tokens.txt")]
    ).wait_serving()
    yield server
    server.stop()


def code_with(server: CloudServer, token: str, request: pb.GenerateRequest) -> grpc.StatusCode:
    with server.channel() as ch:
        try:
            inference_pb2_grpc.InferenceStub(ch).Generate(
                request, timeout=T, metadata=(("authorization", f"Bearer {token}"),)
            )
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_a_token_bound_to_devices_may_not_claim_another(granted: CloudServer) -> None:
    def as_device(device: str) -> pb.GenerateRequest:
        r = greedy("rev abc=")
        r.device_id = device
        return r

    assert code_with(granted, "tok-dev", as_device("dev-a")) == grpc.StatusCode.OK
    assert code_with(granted, "tok-dev", as_device("dev-c")) == grpc.StatusCode.PERMISSION_DENIED
    assert code_with(granted, "tok-any", as_device("dev-c")) == grpc.StatusCode.OK


def raw_generate(server: CloudServer, body: bytes, metadata: Any = AUTH) -> grpc.StatusCode:
    """A Generate call whose request bytes are sent as they are (not built by protobuf)."""
    with server.channel() as ch:
        call = ch.unary_unary(
            "/autoglm.v1.Inference/Generate",
            request_serializer=lambda b: b,
            response_deserializer=pb.GenerateResponse.FromString,
        )
        try:
            call(body, timeout=T, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_a_string_field_that_is_not_utf8_is_invalid_argument(server: CloudServer) -> None:
    prompt = b"\x12\x04\xff\xfe\xfd\xfc"  # field 2 (prompt), 4 bytes that are not UTF-8
    assert raw_generate(server, prompt) == grpc.StatusCode.INVALID_ARGUMENT
    assert raw_generate(server, b"\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT
    assert stream(server, greedy(PROMPTS[0]))[0]  # still serving


def test_a_call_without_a_token_is_refused_before_its_bytes_are_parsed(
    server: CloudServer,
) -> None:
    assert raw_generate(server, b"\xff\xff\xff", metadata=()) == grpc.StatusCode.UNAUTHENTICATED


# What a cloud may answer to any request: an answer, or the documented refusals.
CLOUD_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@given(request=REQUESTS)
def test_any_request_gets_an_answer_or_a_documented_refusal(
    server: CloudServer, request: pb.GenerateRequest
) -> None:
    with server.channel() as ch:
        try:
            inference_pb2_grpc.InferenceStub(ch).Generate(request, timeout=T, metadata=AUTH)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert exc.details(), code
    assert code in CLOUD_CODES
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
