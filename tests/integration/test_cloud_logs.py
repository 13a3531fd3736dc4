"""`--log-format json`: the cloud's log is one JSON object per line, with request ids as fields."""

from __future__ import annotations

import json
from pathlib import Path

from cloud_server import AUTH, write_tokens

from bench.stack.processes import CloudServer
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc


def test_json_logs_carry_the_request_id_as_a_field(quick_pack: Path, tmp_path: Path) -> None:
    """Every line parses as JSON; the request's lines name it in `request_id`."""
    tokens = write_tokens(tmp_path / "tokens")
    server = CloudServer(
        quick_pack, tmp_path, args=["--tokens-file", str(tokens)], cli_args=["--log-format", "json"]
    )
    try:
        server.wait_serving()
        with server.channel() as ch:
            request = pb.GenerateRequest(
                request_id="req-json-1",
                prompt="rev abc=",
                sampling=pb.SamplingParams(max_new_tokens=8),
            )
            inference_pb2_grpc.InferenceStub(ch).Generate(request, metadata=AUTH, timeout=20)
    finally:
        assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    mine = [entry for entry in lines if entry.get("request_id") == "req-json-1"]
    assert any(entry.get("status") == "ok" and "e2e_ms" in entry for entry in mine)
