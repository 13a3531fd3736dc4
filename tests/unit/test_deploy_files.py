"""Deployment files (compose, Dockerfiles, systemd, Kubernetes, docs) run only tested commands.

There is no Docker engine or cluster on the CI machines, so these files are checked by parsing:
every `autoglm` command they run must parse with the real command-line parser and use only
flags the integration tests exercise; health checks must ask the port the server listens on;
images must install the right extras; the example edge config must load with the real settings.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm_cli import build_parser
from shared.settings.base import load_settings
from shared.settings.cloud import CloudSettings
from shared.settings.edge import EdgeSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
UNIT_FILE = DEPLOY / "systemd" / "autoglm-edge.service"
EDGE_TOML = DEPLOY / "systemd" / "edge.toml.example"
K8S = DEPLOY / "k8s"
OPERATIONS = ROOT / "docs" / "operations.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
# The extras each image installs; edge images never get `cloud` (torch).
IMAGE_EXTRAS = {
    "cloud.Dockerfile": {"cloud"},
    "edge.Dockerfile": {"edge"},
    "edge-jetson.Dockerfile": {"edge-gpu"},
}
UNIT_BINARY = "/opt/autoglm/venv/bin/autoglm"


# ---------------------------------------------------------------------------------------------
# Parsers of the files.


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also drops comment lines inside a continued instruction, as Docker does
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).partition(" ")
        result.append((word.upper(), rest.strip()))
        pending = ""
    return result


def instruction(path: Path, name: str) -> list[str]:
    return [rest for word, rest in dockerfile(path) if word == name]


def exec_form(text: str) -> list[str]:
    """A JSON-array (exec form) instruction argument."""
    assert text.startswith("["), f"use the exec form (a JSON array): {text}"
    value = json.loads(text)
    assert isinstance(value, list)
    return [str(v) for v in value]


def healthcheck_command(path: Path) -> list[str]:
    (check,) = instruction(path, "HEALTHCHECK")
    return exec_form(check.split(" CMD ", 1)[1])


def systemd_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (keys may repeat), continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current, pending = "", ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
        else:
            key, _, value = line.partition("=")
            sections[current].setdefault(key.strip(), []).append(value.strip())
    return sections


UNIT = systemd_unit(UNIT_FILE)
SERVICE = UNIT["Service"]


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


K8S_DOCS = k8s_documents()


def k8s_containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(file, pod spec, container) for every container of every workload."""
    for name, doc in K8S_DOCS:
        if doc["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
            pod = doc["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield name, pod, container


def k8s_argv(container: dict[str, Any]) -> list[str] | None:
    """The autoglm argv of a container of our images (their ENTRYPOINT is autoglm)."""
    if not container["image"].startswith("autoglm-"):
        return None
    command = container.get("command")
    if command is None:
        return [str(a) for a in container.get("args", [])]
    if command[0] == "autoglm":
        return [str(a) for a in command[1:] + container.get("args", [])]
    return None  # e.g. the init container's shell loop


def operations_commands() -> list[list[str]]:
    """The `autoglm` argv of each command in the shell blocks of docs/operations.md."""
    commands, in_block, pending = [], False, ""
    for raw in OPERATIONS.read_text().splitlines():
        if raw.startswith("```"):
            in_block = raw.strip() in {"```sh", "```bash"}
            continue
        if not in_block:
            continue
        line = pending + raw.split(" #")[0].strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:  # split at &&, ||, |, ; outside quotes
            if token.strip("&|;"):
                words.append(token)
                continue
            argv = _autoglm_argv(words)
            if argv is not None:
                commands.append(argv)
            words = []
    return commands


def _autoglm_argv(words: list[str]) -> list[str] | None:
    """The autoglm arguments of a shell command: run directly, in a container, or as its CMD."""
    if words and re.fullmatch(r"(.*/)?autoglm", words[0]):
        return words[1:]
    if words[:3] == ["docker", "compose", "exec"] and words[4:5] == ["autoglm"]:
        return words[5:]
    if words[:2] == ["docker", "run"] and "--entrypoint" not in words:
        for i, word in enumerate(words[2:], start=2):
            is_image = re.fullmatch(r"autoglm-(cloud|edge)(:[\w.-]+)?", word)
            if is_image and not words[i - 1].startswith("-"):
                return words[i + 1 :] or None  # nothing after the image: its own CMD
    return None


# ---------------------------------------------------------------------------------------------
# Every autoglm command line of the deployment files.


def _commands() -> Iterator[Any]:
    for name, svc in SERVICES.items():
        if "build" in svc:
            cmd = svc["command"]
            yield pytest.param(
                cmd if isinstance(cmd, list) else shlex.split(cmd), id=f"compose-{name}"
            )
        test = svc.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["autoglm"]:
            yield pytest.param(test[2:], id=f"compose-{name}-healthcheck")
    for path in DOCKERFILES:
        yield pytest.param(exec_form(instruction(path, "CMD")[0]), id=f"{path.name}-CMD")
        yield pytest.param(healthcheck_command(path)[1:], id=f"{path.name}-HEALTHCHECK")
    for name, _, container in k8s_containers():
        argv = k8s_argv(container)
        if argv is not None:
            yield pytest.param(argv, id=f"k8s-{name}-{container['name']}")
    yield pytest.param(shlex.split(SERVICE["ExecStart"][0])[1:], id="systemd-ExecStart")


COMMANDS = list(_commands())


def parse(argv: list[str]) -> Any:
    """The parsed arguments; a test failure naming the command when argparse refuses it."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser(argv).parse_args(argv)
    except SystemExit:
        pytest.fail(f"`autoglm {shlex.join(argv)}` does not parse:\n{stderr.getvalue()}")


@functools.cache
def integration_test_flags() -> set[str]:
    """Every --flag written in the integration tests and the launcher they use."""
    sources = [
        ROOT / "bench" / "stack" / "processes.py",
        *sorted((ROOT / "tests/integration").glob("*.py")),
    ]
    return {f for path in sources for f in re.findall(r"--[a-z][a-z0-9-]*", path.read_text())}


def flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("argv", COMMANDS)
def test_deployed_command_parses_with_the_real_cli(argv: list[str]) -> None:
    """Each autoglm command of compose, Dockerfiles, Kubernetes and systemd parses."""
    assert callable(parse(argv).handler)


@pytest.mark.parametrize("argv", COMMANDS)
def test_deployed_command_uses_only_flags_the_integration_tests_exercise(argv: list[str]) -> None:
    """Each flag a deployment file passes also appears in an integration test."""
    used = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    missing = sorted(used - integration_test_flags())
    assert not missing, f"`autoglm {shlex.join(argv)}`: no integration test uses {missing}"


def test_operations_doc_commands_parse_with_the_real_cli() -> None:
    """Every `autoglm` command in docs/operations.md's shell blocks parses."""
    commands = operations_commands()
    assert len(commands) >= 10
    for argv in commands:
        parse(argv)


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def test_compose_runs_broker_pack_job_cloud_and_two_edges() -> None:
    """The stack is the broker, the pack-building job, the cloud and two edges."""
    assert set(SERVICES) == {"mosquitto", "build-pack", "cloud", "edge-a", "edge-b"}


def test_compose_volumes_are_declared_and_mounted_files_exist() -> None:
    """Every named volume used is declared; every bind-mounted file exists."""
    declared = set(COMPOSE.get("volumes", {}))
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: mounts missing {src}"
            else:
                assert src in declared, f"{name}: volume {src} not declared"


@pytest.mark.parametrize(
    ("name", "needs"),
    [
        ("cloud", {"build-pack": "service_completed_successfully"}),
        ("edge-a", {"cloud": "service_healthy", "mosquitto": "service_healthy"}),
        ("edge-b", {"cloud": "service_healthy", "mosquitto": "service_healthy"}),
    ],
    ids=["cloud", "edge-a", "edge-b"],
)
def test_compose_services_start_after_what_they_need(name: str, needs: dict[str, str]) -> None:
    """The cloud waits for the pack; the edges wait for a healthy cloud and broker."""
    depends = SERVICES[name]["depends_on"]
    assert {k: v["condition"] for k, v in depends.items()} == needs


@pytest.mark.parametrize("name", ["mosquitto", "cloud", "edge-a", "edge-b"])
def test_compose_servers_have_health_checks(name: str) -> None:
    """Every long-running service has a health check command."""
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] == "CMD" and len(test) > 1


@pytest.mark.parametrize("name", ["cloud", "edge-a", "edge-b"])
def test_compose_health_check_asks_the_listen_port(name: str) -> None:
    """`autoglm health` asks the port that `--listen` opens."""
    svc = SERVICES[name]
    test = svc["healthcheck"]["test"]
    assert test[1:3] == ["autoglm", "health"]
    listen = flag_value(svc["command"], "--listen")
    assert listen is not None and port_of(test[3]) == port_of(listen)


@pytest.mark.parametrize("name", ["edge-a", "edge-b"])
def test_compose_edges_share_the_pack_read_only_and_keep_their_own_state(name: str) -> None:
    """Edges mount the packs volume read-only and a volume of their own on --state-dir."""
    svc = SERVICES[name]
    assert "packs:/packs:ro" in svc["volumes"]
    state = flag_value(svc["command"], "--state-dir")
    assert f"{name}-state:{state}" in svc["volumes"]
    assert flag_value(svc["command"], "--device-id") == name
    assert (flag_value(svc["command"], "--pack") or "").startswith("/packs/")


# ---------------------------------------------------------------------------------------------
# Dockerfiles


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_files_that_exist(path: Path) -> None:
    """COPY sources exist in the build context."""
    for args in instruction(path, "COPY"):
        for src in [a for a in args.split() if not a.startswith("--")][:-1]:
            assert (ROOT / src).exists(), f"{path.name}: COPY {src}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_autoglm_as_a_non_root_user_with_a_health_check(path: Path) -> None:
    """ENTRYPOINT is autoglm, the last USER is not root, HEALTHCHECK runs `autoglm health`."""
    assert [exec_form(e) for e in instruction(path, "ENTRYPOINT")] == [["autoglm"]]
    assert instruction(path, "USER")[-1] not in {"root", "0"}
    assert healthcheck_command(path)[:2] == ["autoglm", "health"]
    assert instruction(path, "EXPOSE")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_health_check_asks_the_port_it_serves(path: Path) -> None:
    """HEALTHCHECK asks CMD's --listen port (or the settings' default one) and it is EXPOSEd."""
    cmd = exec_form(instruction(path, "CMD")[0])
    settings = CloudSettings if cmd[0] == "cloud" else EdgeSettings
    default = settings.model_fields["listen"].default
    port = port_of(flag_value(cmd, "--listen") or default)
    assert port_of(healthcheck_command(path)[2]) == port
    assert str(port) in " ".join(instruction(path, "EXPOSE")).split()


def pip_installs(path: Path) -> list[str]:
    """The `pip install ...` commands in the RUN instructions."""
    runs = " ".join(instruction(path, "RUN"))
    return re.findall(r"pip install [^;&|]*", runs)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_the_extras_of_its_side(path: Path) -> None:
    """Cloud image: [cloud]; edge images: [edge] or [edge-gpu], never [cloud] or torch."""
    extras = {
        e for line in pip_installs(path) for m in re.findall(r"\.\[([^\]]+)\]", line)
        for e in m.split(",")
    }  # fmt: skip
    assert extras == IMAGE_EXTRAS[path.name]
    assert extras <= set(EXTRAS)
    if path.name.startswith("edge"):
        assert not any("torch" in line for line in pip_installs(path))


def test_cpu_cloud_image_uses_the_cpu_constraints_like_the_makefile() -> None:
    """The CPU build of the cloud image pins torch with constraints-cpu.txt, as `make venv`."""
    assert "-c constraints-cpu.txt" in (ROOT / "Makefile").read_text()
    lines = pip_installs(DEPLOY / "docker" / "cloud.Dockerfile")
    assert any("-c constraints-cpu.txt" in line and ".[cloud]" in line for line in lines)


def test_edge_gpu_extra_is_the_edge_extra_with_the_gpu_runtime() -> None:
    """[edge-gpu] = [edge] with onnxruntime-gpu for onnxruntime: the tested dependency set."""
    swapped = [d.replace("onnxruntime", "onnxruntime-gpu") for d in EXTRAS["edge"]]
    assert sorted(EXTRAS["edge-gpu"]) == sorted(swapped)


def test_jetson_image_installs_one_onnxruntime_and_pins_it_before_the_project() -> None:
    """The Jetson wheel goes in first and is pinned; `.[edge-gpu]` is installed under that pin."""
    lines = pip_installs(DEPLOY / "docker" / "edge-jetson.Dockerfile")
    project = [line for line in lines if ".[edge-gpu]" in line]
    assert project and all("-c /opt/autoglm/onnxruntime-pin.txt" in line for line in project)
    assert not any(".[edge]" in line or "'onnxruntime>" in line for line in lines)


# ---------------------------------------------------------------------------------------------
# systemd unit and example config


def test_systemd_unit_reloads_with_sighup_and_stops_after_the_drain() -> None:
    """Reload sends SIGHUP (hot swap); SIGTERM stops it, with time to spare for the drain."""
    from edge.server import STOP_GRACE_S

    assert SERVICE["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert SERVICE["KillSignal"] == ["SIGTERM"]
    assert int(SERVICE["TimeoutStopSec"][0]) > STOP_GRACE_S + 10
    assert SERVICE["Restart"] == ["on-failure"]
    assert "network-online.target" in UNIT["Unit"]["After"][0].split()


def test_systemd_unit_runs_autoglm_from_its_virtualenv() -> None:
    """ExecStart runs the venv's autoglm by absolute path, once."""
    (exec_start,) = SERVICE["ExecStart"]
    assert shlex.split(exec_start)[:3] == [UNIT_BINARY, "edge", "serve"]


def test_systemd_unit_keeps_state_in_its_state_directory_as_a_dedicated_user() -> None:
    """--state-dir is systemd's StateDirectory, the only writable path; the user is not root."""
    argv = shlex.split(SERVICE["ExecStart"][0])
    assert flag_value(argv, "--state-dir") == f"/var/lib/{SERVICE['StateDirectory'][0]}"
    assert SERVICE["ReadWritePaths"] == [flag_value(argv, "--state-dir")]
    assert SERVICE["User"][0] not in {"root", "0"}
    assert flag_value(argv, "--config") == "/etc/autoglm/edge.toml"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ],
)
def test_systemd_unit_is_hardened(key: str, value: str) -> None:
    """The unit sets the sandboxing options every network daemon should have."""
    assert SERVICE[key] == [value]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AUTOGLM_"):
            monkeypatch.delenv(name)


def test_example_edge_config_loads_with_the_real_settings(clean_env: None) -> None:
    """deploy/systemd/edge.toml.example loads with EdgeSettings as it is."""
    settings = load_settings(EdgeSettings, config_file=EDGE_TOML)
    assert settings.listen.startswith("unix:/run/") and settings.mqtt.enabled


COMMENTED_KEY = re.compile(r"# (\w+) = ")


def _commented_blocks() -> list[Any]:
    """Runs of consecutive `# key = value` lines of the example: alternatives set together."""
    blocks: list[list[int]] = []
    lines = EDGE_TOML.read_text().splitlines()
    for i, line in enumerate(lines):
        if COMMENTED_KEY.match(line):
            if blocks and blocks[-1][-1] == i - 1:
                blocks[-1].append(i)
            else:
                blocks.append([i])
    keys = [[COMMENTED_KEY.match(lines[i])[1] for i in b] for b in blocks]  # type: ignore[index]
    return [pytest.param(b, id="+".join(k)) for b, k in zip(blocks, keys, strict=True)]


@pytest.mark.parametrize("name", ["cloud", "edge-a", "edge-b"])
def test_compose_environment_sets_real_settings(
    name: str, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every AUTOGLM_* variable a compose service sets names a setting, which takes its value."""
    cls: type[CloudSettings | EdgeSettings] = CloudSettings if name == "cloud" else EdgeSettings
    env = {k: str(v) for k, v in (SERVICES[name].get("environment") or {}).items()}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(cls)
    for key, value in env.items():
        path = key.removeprefix(cls.env_name()).lower().split("__")
        assert cls.env_name(*path) == key, f"{key}: not under {cls.env_name()}"
        field: Any = settings
        for part in path:
            assert hasattr(field, part), f"{key}: no setting {'.'.join(path)}"
            field = getattr(field, part)
        assert str(field) == value or str(field).lower() == value.lower(), key


@pytest.mark.parametrize("block", _commented_blocks())
def test_example_edge_config_commented_keys_are_real_settings(
    block: list[int], tmp_path: Path, clean_env: None
) -> None:
    """Uncommenting a block of `# key = value` lines (replacing active ones) still loads."""
    lines = EDGE_TOML.read_text().splitlines()
    tables = list(
        accumulate(lines, lambda t, line: line if line.startswith("[") else t, initial="")
    )[1:]
    table = tables[block[0]]
    keys = {COMMENTED_KEY.match(lines[i])[1] for i in block}  # type: ignore[index]
    kept = [
        line.removeprefix("# ") if i in block else line
        for i, line in enumerate(lines)
        # an uncommented line replaces an active one of the same key in the same table
        if i in block or tables[i] != table or line.split(" = ")[0] not in keys
    ]
    config = tmp_path / "edge.toml"
    config.write_text("\n".join(kept) + "\n")
    load_settings(EdgeSettings, config_file=config)


# ---------------------------------------------------------------------------------------------
# Kubernetes


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml's resources are exactly the manifests in deploy/k8s."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def _kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in K8S_DOCS if d["kind"] == kind]
    return doc


def test_k8s_cloud_replicas_have_stable_names_behind_a_headless_service() -> None:
    """The StatefulSet's serviceName is a headless Service of its pods: one DNS name each."""
    sts, svc = _kind("StatefulSet"), _kind("Service")
    assert sts["spec"]["replicas"] >= 2
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


@pytest.mark.parametrize(
    "found",
    [(f, p, c) for f, p, c in k8s_containers() if "--listen" in (k8s_argv(c) or [])],
    ids=lambda f: f"{f[0]}-{f[2]['name']}",
)
def test_k8s_probes_ask_the_listen_port(found: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """Liveness, readiness and startup probes are gRPC probes on the --listen port."""
    _, _, container = found
    port = port_of(flag_value(k8s_argv(container) or [], "--listen") or "")
    assert port in [p["containerPort"] for p in container["ports"]]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["grpc"]["port"] == port, probe


def test_k8s_service_targets_the_grpc_port() -> None:
    """The headless Service's target port is the cloud container's named gRPC port."""
    (port,) = _kind("Service")["spec"]["ports"]
    cloud = _kind("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] in [p["name"] for p in cloud["ports"]]


def _drain_grace(env: list[dict[str, str]] | dict[str, str] | None) -> float:
    pairs = env.items() if isinstance(env, dict) else [(e["name"], e["value"]) for e in env or []]
    default = CloudSettings.model_fields["drain_grace_s"].default
    return float(dict(pairs).get(CloudSettings.env_name("drain_grace_s"), default))


def test_k8s_and_compose_give_the_cloud_more_time_to_stop_than_its_drain() -> None:
    """Termination grace (k8s) and stop_grace_period (compose) exceed drain_grace_s + stop grace."""
    from cloud.service.server import STOP_GRACE_S

    pod = _kind("StatefulSet")["spec"]["template"]["spec"]
    drain = _drain_grace(pod["containers"][0].get("env"))
    assert pod["terminationGracePeriodSeconds"] > drain + STOP_GRACE_S
    compose = SERVICES["cloud"]
    stop = float(compose["stop_grace_period"].removesuffix("s"))
    assert stop > _drain_grace(compose.get("environment")) + STOP_GRACE_S


@pytest.mark.parametrize(
    "conf", sorted((DEPLOY / "mosquitto").glob("*.conf")), ids=lambda p: p.name
)
def test_broker_configs_disable_nagle(conf: Path) -> None:
    """Every broker config sets set_tcp_nodelay, or small messages stall for 40 ms."""
    assert "set_tcp_nodelay true" in conf.read_text().splitlines()
