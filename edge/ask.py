"""``autoglm ask``: send one prompt to an edge daemon (or a cloud service) and print the answer
with its metadata: route, confidence, escalation reason, model versions and stage timings."""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf.json_format import MessageToDict

from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc

ROUTES = {
    "auto": pb.ROUTE_PREFERENCE_AUTO,
    "edge": pb.ROUTE_PREFERENCE_EDGE_ONLY,
    "cloud": pb.ROUTE_PREFERENCE_CLOUD_ONLY,
}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument(
        "--target",
        default="127.0.0.1:50061",
        help="gRPC address of an edge daemon (default) or a cloud: HOST:PORT or unix:PATH",
    )
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    parser.add_argument("--route", choices=sorted(ROUTES), default="auto", help="route preference")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0 = the server's default")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.0, help="0 = 1.0 (no truncation)")
    parser.add_argument("--seed", type=int, help="seed of the sampler")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--token", help="bearer token (needed when calling a cloud directly)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    parser.set_defaults(handler=_ask)


def request_of(args: argparse.Namespace) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        stop=args.stop,
    )
    if args.seed is not None:
        sampling.seed = args.seed
    return pb.GenerateRequest(prompt=args.prompt, sampling=sampling, route=ROUTES[args.route])


def describe(r: pb.GenerateResponse) -> str:
    """The answer and one line of metadata, for people."""
    route = pb.Route.Name(r.route).removeprefix("ROUTE_")
    parts = [f"route={route}", f"confidence={r.confidence:.3f}"]
    if r.escalation_reason:
        parts.append(f"escalated={r.escalation_reason}")
    if r.models.edge_pack:
        parts.append(f"edge={r.models.edge_pack}")
    if r.models.cloud_pack:
        parts.append(f"cloud={r.models.cloud_pack}")
    timings = " ".join(f"{t.stage}={t.ms:.1f}ms" for t in r.timings)
    return f"{r.text}\n[{' '.join(parts)}] {timings}"


def _ask(args: argparse.Namespace) -> int:
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    with grpc.insecure_channel(args.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        try:
            response = stub.Generate(request_of(args), timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"autoglm ask: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
    else:
        print(describe(response))
    return 0
