"""Property-based tests of the boundaries that parse untrusted input: arbitrary values give a
valid result or the documented error, never another exception (fixed seed, bounded examples:
tests/conftest.py)."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.shadow import DesiredState, Doc
from shared import control as c
from shared.names import is_plain_name
from shared.pack.manifest import PackError, check_name
from shared.request_ids import MAX_LABEL, request_label
from shared.rpc import inference_pb2 as pb
from shared.sampling import InvalidRequest, pick_token, sampling_from_wire, validate_params
from shared.settings.base import SettingsError, load_settings
from shared.settings.edge import EdgeSettings, RuntimeSettings

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=30,
)
PAYLOADS = (c.DesiredConfig, c.ModelAnnouncement, c.Command, c.DeviceStatus, c.ReportedConfig)


@pytest.mark.parametrize("model", PAYLOADS, ids=lambda m: m.__name__)
@given(payload=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_mqtt_payload_parses_or_is_a_payload_error(model: type, payload: bytes) -> None:
    try:
        model_ = c.parse(model, payload)
    except c.PayloadError as exc:
        assert str(exc)
    else:
        assert isinstance(model_, model)


@given(depth=st.integers(min_value=c.MAX_DEPTH + 1, max_value=20_000))
def test_deeply_nested_documents_are_refused_before_parsing(depth: int) -> None:
    payload = b'{"version": 1, "routing": ' + b"[" * depth + b"]" * depth + b"}"
    if len(payload) > c.MAX_PAYLOAD_BYTES:
        payload = b"[" * (c.MAX_PAYLOAD_BYTES // 2) + b"]" * (c.MAX_PAYLOAD_BYTES // 2)
    with pytest.raises(c.PayloadError, match=r"nests|exceeds"):
        c.parse(c.DesiredConfig, payload)


@given(value=JSON)
def test_nesting_depth_matches_the_parsed_structure(value: Any) -> None:
    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    assert c.nesting_depth(json.dumps(value).encode()) == depth(value)


@given(version=st.integers(min_value=c.MAX_VERSION + 1, max_value=2**80) | st.integers(max_value=0))
def test_desired_versions_outside_the_documented_range_are_refused(version: int) -> None:
    with pytest.raises(c.PayloadError, match="version"):
        c.parse(c.DesiredConfig, json.dumps({"version": version}).encode())


@given(patch=st.dictionaries(st.sampled_from(["routing", "cache", "telemetry", "x"]), JSON))
def test_any_desired_patch_gives_settings_or_named_errors(patch: dict) -> None:
    state = DesiredState(RuntimeSettings(), Path("/nonexistent"))
    proposal = state.propose("fleet", Doc(1, patch))
    assert proposal is not None
    assert (proposal.settings is None) == bool(proposal.errors)


@given(
    temperature=st.floats(width=32),
    top_p=st.floats(width=32),
    max_new=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    seed=st.none() | st.integers(min_value=0, max_value=2**64 - 1),
    logits=st.lists(st.floats(-50, 50, width=32), min_size=2, max_size=40),
)
def test_sampling_numbers_are_valid_or_refused_and_valid_ones_always_pick(
    temperature: float, top_p: float, max_new: int, seed: int | None, logits: list[float]
) -> None:
    wire = pb.SamplingParams(max_new_tokens=max_new, temperature=temperature, top_p=top_p)
    if seed is not None:
        wire.seed = seed
    params = sampling_from_wire(wire)
    try:
        validate_params(params, max_new_tokens_limit=256)
    except InvalidRequest:
        return
    row = np.asarray(logits, dtype=np.float32)
    tok, prob = pick_token(row, params, np.random.default_rng(params.seed))
    assert 0 <= tok < len(logits) and 0.0 <= prob <= 1.0 and math.isfinite(prob)


@given(client_id=st.text(max_size=400))
def test_request_labels_are_printable_bounded_and_never_empty(client_id: str) -> None:
    label = request_label(client_id)
    assert 0 < len(label) <= MAX_LABEL
    assert label.isprintable() and "\n" not in label


@given(name=st.text(max_size=80))
def test_pack_names_are_plain_by_a_full_match(name: str) -> None:
    try:
        check_name("name", name)
    except PackError:
        assert not is_plain_name(name) or name in {".", ".."}
    else:
        assert is_plain_name(name) and "\n" not in name and "/" not in name


def test_a_name_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(PackError):
        check_name("name", "demo\n")
    assert not is_plain_name("dev-a\n")


@given(
    data=st.binary(max_size=300) | st.text(max_size=300).map(lambda s: s.encode(errors="replace"))
)
def test_any_config_file_gives_settings_or_a_settings_error(
    tmp_path_factory: Any, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "edge.toml"
    path.write_bytes(data)
    try:
        load_settings(EdgeSettings, config_file=path)
    except SettingsError as exc:
        assert str(path) in str(exc) or "invalid EdgeSettings" in str(exc)


@given(table=st.dictionaries(st.sampled_from(["listen", "device_id", "fleet", "runtime"]), JSON))
def test_any_toml_table_of_settings_gives_settings_or_a_settings_error(
    tmp_path_factory: Any, table: dict
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "edge.toml"
    lines = [f"{k} = {json.dumps(v)}" for k, v in table.items() if isinstance(v, (str, int, bool))]
    path.write_text("\n".join(lines))
    try:
        tomllib.loads(path.read_text())
        load_settings(EdgeSettings, config_file=path)
    except (SettingsError, tomllib.TOMLDecodeError):
        pass


@given(topic=st.text(max_size=60))
def test_command_replies_go_only_below_the_replies_namespace(topic: str) -> None:
    t = c.Topics("fleet", "dev")
    if t.is_reply_topic(topic):
        assert topic.startswith("autoglm/v1/fleet/replies/") and "#" not in topic
    assert t.is_reply_topic("autoglm/v1/fleet/replies/autoglm-ctl-1/x")
    assert not t.is_reply_topic("autoglm/v1/fleet/devices/dev/config/desired")
