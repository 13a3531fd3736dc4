"""The generated gRPC code: up to date with proto/, importable from shared.rpc, round-trips."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from shared import rpc
from shared.rpc import inference_pb2, model_store_pb2

ROOT = Path(__file__).resolve().parents[2]
MODULES = [inference_pb2, model_store_pb2]
MESSAGES = [
    pytest.param(module, name, id=name)
    for module in MODULES
    for name in module.DESCRIPTOR.message_types_by_name
]


def test_generated_code_is_up_to_date() -> None:
    """shared/rpc/autoglm/ is what scripts/gen_proto.py makes of proto/ (else: `make proto`)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("checked_in", "expected"),
    [
        ({"a.py": "x = 1\n"}, []),
        ({"a.py": "x = 2\n"}, ["differs: a.py"]),
        ({}, ["missing: a.py"]),
        ({"a.py": "x = 1\n", "old.py": ""}, ["not generated any more: old.py"]),
    ],
    ids=["same", "edited", "missing", "left-over"],
)
def test_check_reports_stale_files(checked_in: dict[str, str], expected: list[str]) -> None:
    """The --check comparison names edited, missing and left-over files."""
    found = _load_script().differences({"a.py": "x = 1\n"}, checked_in)
    assert [line for line in found if not line.startswith(" ")] == expected


def test_no_top_level_autoglm_module() -> None:
    """The generated modules live under shared.rpc; no bare `autoglm` package gets imported."""
    assert "autoglm" not in sys.modules
    for module in MODULES:
        assert module.__name__.startswith("shared.rpc.autoglm.v1.")
        for name in module.DESCRIPTOR.message_types_by_name:
            assert getattr(module, name).__module__ == module.__name__  # for pickle and repr


@pytest.mark.parametrize(
    "name", ["inference_pb2", "inference_pb2_grpc", "model_store_pb2", "model_store_pb2_grpc"]
)
def test_short_names_are_exported(name: str) -> None:
    """shared.rpc re-exports the generated modules under short names."""
    module = getattr(rpc, name)
    assert isinstance(module, ModuleType)
    assert name in rpc.__all__


# A non-default sample for every scalar type, so that every field goes over the wire.
SAMPLES = {
    FieldDescriptor.TYPE_INT32: -7,
    FieldDescriptor.TYPE_INT64: 1 << 40,
    FieldDescriptor.TYPE_UINT64: (1 << 64) - 1,
    FieldDescriptor.TYPE_FLOAT: 0.5,
    FieldDescriptor.TYPE_DOUBLE: 1.25,
    FieldDescriptor.TYPE_BOOL: True,
    FieldDescriptor.TYPE_STRING: "héllo ✓",
    FieldDescriptor.TYPE_BYTES: b"\x00\xff\x10",
}


def _sample(field: Any) -> object:  # a FieldDescriptor (the stubs split it in two types)
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return field.enum_type.values[-1].number
    assert field.type in SAMPLES, f"no sample for {field.full_name}; extend SAMPLES"
    return SAMPLES[field.type]


def fill(message: Message, depth: int = 0) -> Message:
    """Set every field of message (and of its sub-messages) to a non-default value."""
    assert depth < 5, "message nesting too deep for the test"
    for field in message.DESCRIPTOR.fields:
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if field.is_repeated:
            container = getattr(message, field.name)
            for _ in range(2):
                if is_message:
                    fill(container.add(), depth + 1)
                else:
                    container.append(_sample(field))
        elif is_message:
            fill(getattr(message, field.name), depth + 1)
        else:
            setattr(message, field.name, _sample(field))
    return message


@pytest.mark.parametrize(("module", "name"), MESSAGES)
def test_binary_round_trip(module: ModuleType, name: str) -> None:
    """Every message, with every field set, survives serialization unchanged."""
    original = fill(getattr(module, name)())
    wire = original.SerializeToString(deterministic=True)
    decoded = getattr(module, name).FromString(wire)
    assert decoded == original
    assert decoded.ListFields(), f"{name}: nothing was set"
    assert len(decoded.ListFields()) == len(original.DESCRIPTOR.fields)


@pytest.mark.parametrize(("module", "name"), MESSAGES)
def test_json_round_trip(module: ModuleType, name: str) -> None:
    """Every message survives the JSON mapping that grpcurl and logs use."""
    original = fill(getattr(module, name)())
    text = json_format.MessageToJson(original)
    assert json_format.Parse(text, getattr(module, name)()) == original


@pytest.mark.parametrize(
    ("enum", "zero"),
    [
        (inference_pb2.RoutePreference, "ROUTE_PREFERENCE_AUTO"),
        (inference_pb2.FinishReason, "FINISH_REASON_UNSPECIFIED"),
        (inference_pb2.Route, "ROUTE_UNSPECIFIED"),
    ],
)
def test_enum_zero_values(enum: object, zero: str) -> None:
    """Each enum's zero value (what an unset field reads as) is the documented one."""
    assert enum.Name(0) == zero  # type: ignore[attr-defined]


def test_seed_has_presence_and_negative_tokens_reach_the_server() -> None:
    """An unset seed is distinguishable from seed 0; a negative max_new_tokens is kept."""
    params = inference_pb2.SamplingParams(max_new_tokens=-1)
    assert not params.HasField("seed")
    params.seed = 0
    decoded = inference_pb2.SamplingParams.FromString(params.SerializeToString())
    assert decoded.HasField("seed")
    assert decoded.max_new_tokens == -1


@pytest.mark.parametrize(
    ("module", "service", "method", "server_streaming"),
    [
        (inference_pb2, "Inference", "Generate", False),
        (inference_pb2, "Inference", "GenerateStream", True),
        (model_store_pb2, "ModelStore", "ListPacks", False),
        (model_store_pb2, "ModelStore", "FetchPack", True),
    ],
)
def test_service_methods(
    module: ModuleType, service: str, method: str, server_streaming: bool
) -> None:
    """The services have the documented methods, streaming where documented."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"autoglm.v1.{service}"
    found = descriptor.methods_by_name[method]
    assert found.server_streaming is server_streaming
    assert found.client_streaming is False
