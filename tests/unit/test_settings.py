"""Settings: source order, environment names, file errors, validation, secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from shared.settings import (
    CloudSettings,
    ComponentSettings,
    EdgeSettings,
    RoutingSettings,
    RuntimeSettings,
    SettingsError,
    load_settings,
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AUTOGLM_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("AUTOGLM_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    """A config file holding text."""
    path = tmp_path / "settings.toml"
    path.write_text(text, encoding="utf-8")
    return path


def get(settings: BaseModel, dotted: str) -> Any:
    """The value at a dotted path, e.g. get(s, "runtime.routing.threshold")."""
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def toml_line(dotted: str, value: Any) -> str:
    """A TOML document setting one dotted key."""
    *tables, key = dotted.split(".")
    literal = f'"{value}"' if isinstance(value, str) else str(value).lower()
    header = f"[{'.'.join(tables)}]\n" if tables else ""
    return f"{header}{key} = {literal}\n"


# One row per field the precedence tests use: class, dotted key, default, file, env, override.
# fmt: off
PRECEDENCE = [
    pytest.param(EdgeSettings, "listen", "127.0.0.1:50061", "0.0.0.0:1", "0.0.0.0:2", "0.0.0.0:3",
                 id="edge-listen"),
    pytest.param(EdgeSettings, "runtime.routing.threshold", None, 0.1, 0.2, 0.3,
                 id="edge-threshold"),
    pytest.param(EdgeSettings, "runtime.cache.enabled", True, False, True, False,
                 id="edge-cache-enabled"),
    pytest.param(EdgeSettings, "mqtt.broker", "127.0.0.1:1883", "a:1", "b:2", "c:3",
                 id="edge-broker"),
    pytest.param(CloudSettings, "engine.max_batch_size", 32, 4, 8, 16, id="cloud-batch"),
    pytest.param(CloudSettings, "device", "auto", "cpu", "cuda", "cpu", id="cloud-device"),
]
# fmt: on


def env_value(value: Any) -> str:
    """How a value is written in an environment variable."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize(("cls", "key", "default", "in_file", "in_env", "override"), PRECEDENCE)
def test_defaults_apply_without_any_source(
    cls: type[ComponentSettings], key: str, default: Any, in_file: Any, in_env: Any, override: Any
) -> None:
    """With no file, no environment and no override, a field has its default."""
    assert get(load_settings(cls), key) == default


@pytest.mark.parametrize(("cls", "key", "default", "in_file", "in_env", "override"), PRECEDENCE)
def test_file_beats_defaults(
    tmp_path: Path,
    cls: type[ComponentSettings],
    key: str,
    default: Any,
    in_file: Any,
    in_env: Any,
    override: Any,
) -> None:
    """A value in the config file replaces the default."""
    config = write(tmp_path, toml_line(key, in_file))
    assert get(load_settings(cls, config_file=config), key) == in_file


@pytest.mark.parametrize(("cls", "key", "default", "in_file", "in_env", "override"), PRECEDENCE)
def test_environment_beats_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cls: type[ComponentSettings],
    key: str,
    default: Any,
    in_file: Any,
    in_env: Any,
    override: Any,
) -> None:
    """An environment variable replaces the config file's value."""
    config = write(tmp_path, toml_line(key, in_file))
    monkeypatch.setenv(cls.env_name(*key.split(".")), env_value(in_env))
    assert get(load_settings(cls, config_file=config), key) == in_env


@pytest.mark.parametrize(("cls", "key", "default", "in_file", "in_env", "override"), PRECEDENCE)
def test_override_beats_environment(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cls: type[ComponentSettings],
    key: str,
    default: Any,
    in_file: Any,
    in_env: Any,
    override: Any,
) -> None:
    """A command-line override replaces the environment's (and the file's) value."""
    config = write(tmp_path, toml_line(key, in_file))
    monkeypatch.setenv(cls.env_name(*key.split(".")), env_value(in_env))
    settings = load_settings(cls, config_file=config, overrides={key: override})
    assert get(settings, key) == override


@pytest.mark.parametrize(
    "overrides",
    [
        {"runtime.routing.threshold": 0.3},
        {"runtime": {"routing": {"threshold": 0.3}}},
        {"runtime.routing": {"threshold": 0.3}},
    ],
    ids=["dotted", "nested", "mixed"],
)
def test_overrides_accept_dotted_and_nested_keys(overrides: dict[str, Any]) -> None:
    """Overrides may be written as dotted keys, nested dicts, or both."""
    assert load_settings(EdgeSettings, overrides=overrides).runtime.routing.threshold == 0.3


def test_none_overrides_are_skipped(tmp_path: Path) -> None:
    """An override of None (a flag that was not given) leaves the file's value in place."""
    config = write(tmp_path, 'listen = "0.0.0.0:7"\n')
    settings = load_settings(EdgeSettings, config_file=config, overrides={"listen": None})
    assert settings.listen == "0.0.0.0:7"


@pytest.mark.parametrize(
    ("cls", "env", "key", "expected"),
    [
        (
            EdgeSettings,
            "AUTOGLM_EDGE_RUNTIME__ROUTING__THRESHOLD",
            "runtime.routing.threshold",
            0.4,
        ),
        (
            EdgeSettings,
            "autoglm_edge_runtime__cloud_call__retries",
            "runtime.cloud_call.retries",
            4,
        ),
        (EdgeSettings, "AUTOGLM_EDGE_MQTT__TLS__ENABLED", "mqtt.tls.enabled", True),
        (CloudSettings, "AUTOGLM_CLOUD_ENGINE__BATCHING", "engine.batching", False),
        (CloudSettings, "AUTOGLM_CLOUD_TLS__CERT_FILE", "tls.cert_file", None),
    ],
    ids=["threshold", "lower-case-name", "mqtt-tls", "cloud-batching", "null"],
)
def test_nested_environment_variable(
    monkeypatch: pytest.MonkeyPatch, cls: type[ComponentSettings], env: str, key: str, expected: Any
) -> None:
    """A nested field is set by PREFIX + path joined with "__", in any case; "null" unsets."""
    raw = "null" if expected is None else env_value(expected)
    monkeypatch.setenv(env, raw)
    assert get(load_settings(cls), key) == expected


def test_environment_merges_with_file_field_by_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable for one field of a group keeps the file's other fields of that group."""
    config = write(tmp_path, '[runtime.routing]\nmode = "edge_only"\n')
    monkeypatch.setenv("AUTOGLM_EDGE_RUNTIME__ROUTING__THRESHOLD", "0.25")
    routing = load_settings(EdgeSettings, config_file=config).runtime.routing
    assert (routing.mode, routing.threshold) == ("edge_only", 0.25)


def test_environment_null_replaces_file_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "null" in the environment unsets the file's threshold so that a target can be used."""
    config = write(tmp_path, "[runtime.routing]\nthreshold = 0.5\n")
    monkeypatch.setenv("AUTOGLM_EDGE_RUNTIME__ROUTING__THRESHOLD", "null")
    monkeypatch.setenv("AUTOGLM_EDGE_RUNTIME__ROUTING__TARGET_MAX_ESCALATION", "0.3")
    routing = load_settings(EdgeSettings, config_file=config).runtime.routing
    assert (routing.threshold, routing.target_max_escalation) == (None, 0.3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a:1,b:2", ["a:1", "b:2"]),
        (" a:1 , b:2 ,", ["a:1", "b:2"]),
        ('["a:1", "[::1]:2"]', ["a:1", "[::1]:2"]),
    ],
    ids=["commas", "spaces", "json"],
)
def test_environment_lists(monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]) -> None:
    """List fields take comma-separated items or a JSON array from the environment."""
    monkeypatch.setenv("AUTOGLM_EDGE_CLOUD__TARGETS", raw)
    assert load_settings(EdgeSettings).cloud.targets == expected


def test_other_component_prefix_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cloud's variables do not change the edge's settings, and the other way round."""
    monkeypatch.setenv("AUTOGLM_CLOUD_LISTEN", "0.0.0.0:9")
    monkeypatch.setenv("AUTOGLM_EDGE_LISTEN", "0.0.0.0:8")
    assert load_settings(EdgeSettings).listen == "0.0.0.0:8"
    assert load_settings(CloudSettings).listen == "0.0.0.0:9"


@pytest.mark.parametrize(
    ("cls", "text", "field"),
    [
        (EdgeSettings, "[runtime.routing]\nthreshold = 3.0\n", "runtime.routing.threshold"),
        (EdgeSettings, "metrics_port = 70000\n", "metrics_port"),
        (EdgeSettings, 'listen = "nowhere"\n', "listen"),
        (EdgeSettings, 'fleet = "a/b"\n', "fleet"),
        (EdgeSettings, '[cloud]\ntargets = ["ok:1", "bad"]\n', "cloud.targets.1"),
        (EdgeSettings, '[runtime.routing]\nmode = "sometimes"\n', "runtime.routing.mode"),
        (EdgeSettings, '[cloud.tls]\ncert_file = "c.pem"\n', "cloud.tls"),
        (CloudSettings, 'device = "tpu"\n', "device"),
        (CloudSettings, "[engine]\nmax_batch_size = 0\n", "engine.max_batch_size"),
        (CloudSettings, "[engine]\ndefault_max_new_tokens = 300\n", "engine"),
        (CloudSettings, '[tls]\nclient_ca_file = "ca.pem"\n', "tls"),
        (CloudSettings, 'engine = "fast"\n', "engine"),
    ],
)
def test_bad_value_in_file_names_field_and_file(
    tmp_path: Path, cls: type[ComponentSettings], text: str, field: str
) -> None:
    """A bad value in the file gives one SettingsError naming the field and the file."""
    config = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(cls, config_file=config)
    message = str(caught.value)
    assert f"  - {field}: " in message
    assert f"from config file {config}" in message
    assert message.startswith(f"invalid {cls.__name__} (config file {config}):")


def test_all_bad_fields_are_reported_at_once(tmp_path: Path) -> None:
    """Every bad field appears in the one error, each with its own source."""
    config = write(tmp_path, 'metrics_port = -1\n[runtime.cache]\nmax_entries = "many"\n')
    with pytest.raises(SettingsError) as caught:
        load_settings(EdgeSettings, config_file=config, overrides={"listen": "x"})
    problems = caught.value.problems
    assert len(problems) == 3
    assert any(p.startswith("listen:") and "from the command line" in p for p in problems)
    assert any(p.startswith("metrics_port:") and str(config) in p for p in problems)


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad value from the environment is reported with the variable's name."""
    monkeypatch.setenv("AUTOGLM_CLOUD_ENGINE__MAX_WAITING", "lots")
    with pytest.raises(SettingsError, match="AUTOGLM_CLOUD_ENGINE__MAX_WAITING"):
        load_settings(CloudSettings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("AUTOGLM_EDGE_ONNX__PROVIDERS", "onnx.providers: not a valid JSON array"),
        ("AUTOGLM_EDGE_RUNTIME__CACHE", "runtime: not valid JSON"),
    ],
)
def test_bad_json_in_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, expected: str
) -> None:
    """A list or group given as broken JSON names the field and the variable."""
    monkeypatch.setenv(env, "[{bad")
    with pytest.raises(SettingsError) as caught:
        load_settings(EdgeSettings)
    assert expected in str(caught.value)
    assert f"from environment variable {env}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen = \n", "not valid TOML"),
        ("[runtime\n", "not valid TOML"),
        (None, "no such file"),
    ],
    ids=["no-value", "open-table", "missing"],
)
def test_unreadable_file_names_the_file(tmp_path: Path, text: str | None, expected: str) -> None:
    """A malformed or missing config file is a SettingsError naming the file."""
    config = write(tmp_path, text) if text is not None else tmp_path / "absent.toml"
    with pytest.raises(SettingsError) as caught:
        load_settings(EdgeSettings, config_file=config)
    assert str(config) in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("cls", "text", "field", "hint"),
    [
        (EdgeSettings, 'lisen = "0.0.0.0:1"\n', "lisen", "did you mean 'listen'?"),
        (
            EdgeSettings,
            "[runtime.routing]\nthreshhold = 0.5\n",
            "runtime.routing.threshhold",
            "did you mean 'threshold'?",
        ),
        (EdgeSettings, "[gpu]\nenabled = true\n", "gpu", "unknown setting"),
        (CloudSettings, "[engine]\nmax_batch = 3\n", "engine.max_batch", "'max_batch_size'"),
        (CloudSettings, "[engine]\nwarp_speed = 9\n", "engine.warp_speed", "known: batching"),
    ],
)
def test_unknown_key_in_file_is_rejected(
    tmp_path: Path, cls: type[ComponentSettings], text: str, field: str, hint: str
) -> None:
    """A key that is no setting is an error, with a suggestion when it looks like a typo."""
    config = write(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(cls, config_file=config)
    assert f"{field}: unknown setting" in str(caught.value)
    assert hint in str(caught.value)


def test_unknown_override_is_rejected() -> None:
    """An override of a field that does not exist is an error too."""
    with pytest.raises(SettingsError, match="no_such_flag: unknown setting"):
        load_settings(CloudSettings, overrides={"no_such_flag": 1})


@pytest.mark.parametrize(
    ("overrides", "env"),
    [
        ({"cloud.token": "hunter2-token"}, {}),
        ({"mqtt.password": "hunter2-password"}, {}),
        ({}, {"AUTOGLM_EDGE_CLOUD__TOKEN": "hunter2-env"}),
    ],
    ids=["token", "mqtt-password", "token-from-env"],
)
def test_secrets_are_not_printed(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], env: dict[str, str]
) -> None:
    """Secrets stay out of repr, str and model dumps, yet their values remain readable."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(EdgeSettings, overrides=overrides)
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text
    secrets = [settings.cloud.token, settings.mqtt.password]
    assert any(s is not None and s.get_secret_value().startswith("hunter2") for s in secrets)


def test_secret_value_not_echoed_in_errors() -> None:
    """An invalid secret is reported without its value."""
    with pytest.raises(SettingsError) as caught:
        load_settings(EdgeSettings, overrides={"mqtt.password": ["hunter2"]})
    assert "mqtt.password" in str(caught.value)
    assert "hunter2" not in str(caught.value)


ROUTING_TARGETS = ["threshold", "target_max_escalation", "target_min_accuracy_share"]


@pytest.mark.parametrize(
    "chosen",
    [
        [],
        ["threshold"],
        ["target_max_escalation"],
        ["target_min_accuracy_share"],
    ],
)
def test_routing_accepts_at_most_one_target(chosen: list[str]) -> None:
    """Routing with none or one of threshold and the two targets is valid."""
    routing = RoutingSettings.model_validate(dict.fromkeys(chosen, 0.5))
    assert [name for name in ROUTING_TARGETS if getattr(routing, name) is not None] == chosen


@pytest.mark.parametrize(
    "chosen",
    [
        ["threshold", "target_max_escalation"],
        ["threshold", "target_min_accuracy_share"],
        ["target_max_escalation", "target_min_accuracy_share"],
        ROUTING_TARGETS,
    ],
)
def test_routing_rejects_two_targets(chosen: list[str]) -> None:
    """Setting more than one of threshold and the two targets is an error naming them."""
    with pytest.raises(SettingsError) as caught:
        load_settings(EdgeSettings, overrides={f"runtime.routing.{n}": 0.5 for n in chosen})
    message = str(caught.value)
    assert "runtime.routing: set at most one of" in message
    assert all(name in message for name in chosen)


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("127.0.0.1:50061", True),
        ("0.0.0.0:0", True),
        ("[::1]:50061", True),
        ("localhost:1", True),
        ("unix:/run/autoglm/edge.sock", True),
        ("unix:", False),
        ("::1:50061", False),
        ("localhost", False),
        ("localhost:http", False),
        ("localhost:65536", False),
        (":50061", False),
    ],
)
def test_listen_address(address: str, valid: bool) -> None:
    """listen takes host:port (IPv6 in brackets, port 0 allowed) or unix:PATH."""
    if valid:
        assert load_settings(EdgeSettings, overrides={"listen": address}).listen == address
    else:
        with pytest.raises(SettingsError, match="listen: "):
            load_settings(EdgeSettings, overrides={"listen": address})


@pytest.mark.parametrize("target", ["host:0", "unix:/x.sock", "host"])
def test_cloud_target_needs_a_real_port(target: str) -> None:
    """A cloud target is host:port with a port from 1 to 65535."""
    with pytest.raises(SettingsError, match=r"cloud\.targets\.0: "):
        load_settings(EdgeSettings, overrides={"cloud.targets": [target]})


@pytest.mark.parametrize(("given", "expected_start"), [("", ""), ("jetson-07", "jetson-07")])
def test_device_id_defaults_to_host_name(given: str, expected_start: str) -> None:
    """An empty device_id becomes the host name; a given one is kept."""
    device_id = load_settings(EdgeSettings, overrides={"device_id": given}).device_id
    assert device_id and device_id.startswith(expected_start)


def test_home_in_paths_is_expanded() -> None:
    """A leading "~" in a path field means the user's home."""
    settings = load_settings(EdgeSettings, overrides={"state_dir": "~/edge-state"})
    assert settings.state_dir == Path.home() / "edge-state"


def test_settings_are_frozen() -> None:
    """Settings cannot be changed in place; a new object replaces them."""
    settings = load_settings(EdgeSettings)
    with pytest.raises(ValueError, match="frozen"):
        settings.runtime.cache.enabled = False


@pytest.mark.parametrize(
    ("patch", "key", "expected"),
    [
        ({"routing": {"threshold": 0.7}}, "routing.threshold", 0.7),
        ({"cache": {"enabled": False}}, "cache.enabled", False),
        ({"cache": {"enabled": False}}, "cache.max_entries", 1024),
        ({"cloud_call": {"retries": 0}}, "cloud_call.retries", 0),
        ({}, "routing.mode", "auto"),
    ],
)
def test_runtime_merge_applies_a_desired_document(
    patch: dict[str, Any], key: str, expected: Any
) -> None:
    """A desired document changes the fields it names and keeps the others."""
    assert get(RuntimeSettings().merged(patch), key) == expected


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"listen": "0.0.0.0:1"}, "listen: cannot change at run time"),
        ({"device_id": "x", "pack": "p"}, "device_id, pack: cannot change at run time"),
        ({"routing": {"threshold": 2}}, "routing.threshold: Input should be less than or equal"),
        ({"routing": {"threshold": 0.2, "target_max_escalation": 0.1}}, "set at most one of"),
        ({"cash": {}}, "cash: unknown setting; did you mean 'cache'?"),
    ],
)
def test_runtime_merge_refuses_with_reason(patch: dict[str, Any], expected: str) -> None:
    """A desired document with restart-only, unknown or invalid keys is refused, with a reason."""
    with pytest.raises(SettingsError, match=expected):
        RuntimeSettings().merged(patch)


def _sections(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, field info) of every field of model and its nested groups."""
    found: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        found.append((prefix + name, field))
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _sections(annotation, f"{prefix}{name}.")
    return found


@pytest.mark.parametrize("cls", [EdgeSettings, CloudSettings])
def test_every_field_is_documented(cls: type[ComponentSettings]) -> None:
    """Every field, nested ones included, has a one-line description."""
    for name, field in _sections(cls):
        assert field.description, f"{cls.__name__}.{name} has no description"
        assert "\n" not in field.description, f"{cls.__name__}.{name}: description spans lines"
