"""The edge's MQTT agent against a real Mosquitto broker, a real cloud and a real edge daemon."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import paho.mqtt.client as mqtt
import pytest
from broker import Broker, close, paho_client, publish, response_properties, subscribe, tool
from hybrid import ask, copy_pack_as, prompts, route

from bench.stack.processes import CloudServer, EdgeServer
from shared import control as c
from shared.pack.manifest import read_manifest

pytestmark = pytest.mark.slow

FLEET = "f1"
DEVICE = "dev-a"
HELD_OUT = prompts("max", 1, 4)  # the proxy is unsure of these: escalated at the default threshold
WAIT = 10.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agent")


@pytest.fixture(scope="module")
def broker(workdir: Path) -> Iterator[Broker]:
    b = Broker(workdir / "broker", persistence=True)
    b.start().wait_ready()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def packs(quick_pack: Path, workdir: Path) -> Path:
    """A packs folder for the cloud's ModelStore: v2 (good) and v3 (one byte changed)."""
    root = workdir / "packs"
    copy_pack_as(quick_pack, root, "v2")
    bad = copy_pack_as(quick_pack, root, "v3")
    data = bytearray((bad / "proxy.onnx").read_bytes())
    data[len(data) // 3] ^= 0x01
    (bad / "proxy.onnx").write_bytes(bytes(data))
    return root


@pytest.fixture(scope="module")
def cloud(quick_pack: Path, workdir: Path, packs: Path) -> Iterator[CloudServer]:
    server = CloudServer(quick_pack, workdir, args=["--auth-disabled", "--packs-dir", str(packs)])
    server.wait_serving()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def operator(broker: Broker) -> Iterator[mqtt.Client]:
    client = paho_client(broker, client_id="operator")
    yield client
    close(client)


def start_edge(pack: Path, workdir: Path, broker: Broker, cloud: CloudServer) -> EdgeServer:
    args = ["--mqtt", broker.address, "--fleet", FLEET, "--device-id", DEVICE]
    state = workdir / "edge-state"
    return EdgeServer(pack, workdir, clouds=[cloud.address], args=args, state_dir=state)


@pytest.fixture(scope="module")
def edge(
    quick_pack: Path, workdir: Path, broker: Broker, cloud: CloudServer, operator: mqtt.Client
) -> Iterator[EdgeServer]:
    status = subscribe(operator, c.Topics(FLEET, DEVICE).status)
    server = start_edge(quick_pack, workdir, broker, cloud)
    server.wait_serving()
    _wait_for(status, lambda m: json.loads(m.payload)["state"] == "online")
    yield server
    server.stop()


def _wait_for(inbox: Any, ok: Any, timeout: float = WAIT) -> Any:
    """The first message of ``inbox`` for which ``ok(message)`` holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            msg = inbox.get(timeout=max(0.05, end - time.monotonic()))
        except Exception:  # queue.Empty: keep waiting until the deadline
            continue
        if ok(msg):
            return msg
    raise AssertionError(f"no matching message on {inbox.topic_filter} in {timeout} s")


def push(operator: mqtt.Client, doc: dict[str, Any] | bytes, *, device: bool = False) -> None:
    t = c.Topics(FLEET, DEVICE)
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    publish(operator, t.device_desired if device else t.fleet_desired, payload, retain=True)


def reported(operator: mqtt.Client) -> Any:
    return subscribe(operator, c.Topics(FLEET, DEVICE).reported)


def held_out_routes(edge: EdgeServer) -> set[str]:
    return {route(ask(edge, p)) for p in HELD_OUT}


def test_config_push_is_acknowledged_and_moves_requests_between_routes(
    edge: EdgeServer, operator: mqtt.Client
) -> None:
    """threshold 0 keeps everything at the edge; 1 escalates everything; each push gets 200 with
    the effective settings; a stale version is ignored."""
    inbox = reported(operator)
    push(operator, {"version": 1, "routing": {"threshold": 0.0}, "cache": {"enabled": False}})
    ack = json.loads(_wait_for(inbox, lambda m: json.loads(m.payload)["version"] == 1).payload)
    assert (ack["status"], ack["scope"]) == (200, "fleet")
    assert ack["effective"]["routing"]["threshold"] == 0.0
    assert held_out_routes(edge) == {"ROUTE_EDGE"}
    push(operator, {"version": 2, "routing": {"threshold": 1.0}}, device=True)
    ack = json.loads(_wait_for(inbox, lambda m: json.loads(m.payload)["version"] == 2).payload)
    assert (ack["status"], ack["scope"], ack["fleet_version"]) == (200, "device", 1)
    assert held_out_routes(edge) == {"ROUTE_CLOUD"}
    push(operator, {"version": 1, "routing": {"threshold": 0.0}}, device=True)  # stale
    time.sleep(0.5)
    assert held_out_routes(edge) == {"ROUTE_CLOUD"}
    push(operator, b"", device=True)  # the operator clears the retained device document
    publish(operator, c.Topics(FLEET, DEVICE).device_desired, b"", retain=True)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not json", "Invalid JSON"),
        (b'{"version": 9, "routing": {"threshold": "high"}}', "routing.threshold"),
        (b'{"version": 9, "routing": {"thresh": 0.5}}', "thresh"),
        (b'{"version": 9, "routing": {"threshold": 2}}', "less than or equal to 1"),
        (b'{"version": 9, "listen": "0.0.0.0:1"}', "needs a restart"),
        (b'{"version": 9, "routing": {"threshold": 0.5' + b" " * (1 << 20) + b"}}", "exceeds"),
    ],
    ids=["not-json", "wrong-type", "unknown-field", "out-of-range", "restart-only", "1MB"],
)
def test_invalid_documents_get_400_with_reasons_and_change_nothing(
    edge: EdgeServer, operator: mqtt.Client, payload: bytes, problem: str
) -> None:
    """Each bad document is answered 400 naming the problem; settings and serving go on."""
    inbox = reported(operator)
    before = held_out_routes(edge)
    since = time.time()
    push(operator, payload, device=True)
    ack = json.loads(_wait_for(inbox, lambda m: json.loads(m.payload)["ts"] >= since).payload)
    assert ack["status"] == 400
    assert any(problem in e for e in ack["errors"]), ack
    assert held_out_routes(edge) == before
    publish(operator, c.Topics(FLEET, DEVICE).device_desired, b"", retain=True)


def test_commands_answer_on_the_mqtt5_response_topic(
    edge: EdgeServer, operator: mqtt.Client
) -> None:
    """ping replies with the pack in use, echoing the correlation data; unknown commands fail."""
    replies = subscribe(operator, f"{c.PREFIX}/{FLEET}/replies/test/#")
    for name, ok in (("ping", True), ("reboot", False)):
        correlation = uuid.uuid4().bytes
        props = response_properties(f"{c.PREFIX}/{FLEET}/replies/test/{name}", correlation)
        publish(operator, c.Topics(FLEET, DEVICE).command(name), b"{}", properties=props)
        msg = replies.get(timeout=WAIT)
        reply = c.CommandReply.model_validate_json(msg.payload)
        assert (reply.ok, reply.command, msg.properties.CorrelationData) == (ok, name, correlation)
    assert not reply.ok and "unknown command" in reply.detail


def test_telemetry_reports_routes_escalation_and_latency(
    edge: EdgeServer, operator: mqtt.Client
) -> None:
    """With a 1 s interval, telemetry counts the answers by route, with escalation share and
    latency percentiles, the providers and the pack."""
    inbox = reported(operator)
    since = time.time()
    push(operator, {"version": 20, "telemetry": {"interval_s": 1.0}}, device=True)
    _wait_for(inbox, lambda m: json.loads(m.payload)["ts"] >= since)
    telemetry = subscribe(operator, c.Topics(FLEET, DEVICE).telemetry)
    time.sleep(1.2)
    telemetry.drain()
    for p in ["rev abc=", "rev abd="]:
        ask(edge, p)
    for p in HELD_OUT[:2]:
        ask(edge, p, route=2)  # ROUTE_PREFERENCE_CLOUD_ONLY
    # The four answers may straddle two 1 s windows: add the windows up until all are counted.
    windows: list[c.Telemetry] = []
    counted: dict[str, int] = {}
    while sum(counted.values()) < 4:
        msg = _wait_for(telemetry, lambda m: sum(json.loads(m.payload)["requests"].values()) > 0)
        windows.append(c.Telemetry.model_validate_json(msg.payload))
        for name, n in windows[-1].requests.items():
            counted[name] = counted.get(name, 0) + n
    assert counted == {"edge": 2, "cloud": 2}
    assert all(t.latency_ms["p50"] > 0 for t in windows)
    assert all(t.providers == ["CPUExecutionProvider"] for t in windows)
    assert all(t.pack.startswith("quick/") for t in windows)
    if len(windows) == 1:
        assert windows[0].escalation_share == 0.5


def test_mosquitto_cli_tools_interoperate_with_the_agent(edge: EdgeServer, broker: Broker) -> None:
    """An operator with mosquitto_pub/mosquitto_sub can push a config and read the report."""
    t = c.Topics(FLEET, DEVICE)
    doc = json.dumps({"version": 50, "cache": {"ttl_s": 60}})
    subprocess.run(
        [tool("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port), "-q", "1", "-r",
         "-t", t.device_desired, "-m", doc],
        check=True, timeout=10,
    )  # fmt: skip
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        out = subprocess.run(
            [tool("mosquitto_sub"), "-h", broker.host, "-p", str(broker.port), "-t", t.reported,
             "-C", "1", "-W", "3"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if out.stdout and json.loads(out.stdout)["version"] == 50:
            break
    report = json.loads(out.stdout)
    assert (report["version"], report["status"]) == (50, 200)
    assert report["effective"]["cache"]["ttl_s"] == 60


def test_roll_out_swaps_under_load_and_a_changed_byte_is_refused(
    edge: EdgeServer, operator: mqtt.Client, packs: Path
) -> None:
    """Announce v2: fetched from the cloud, verified, swapped with zero failed requests; v3's
    served copy has one changed byte: refused, v2 keeps serving; rollback returns to v1."""
    t = c.Topics(FLEET, DEVICE)
    reports = subscribe(operator, t.models_reported)
    errors: list[grpc.RpcError] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                ask(edge, "rev load=", route=1)
            except grpc.RpcError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        for version, expected in (("v2", "applied"), ("v3", "failed")):
            manifest = read_manifest(packs / "quick" / version)
            if version == "v3":  # announce the true hashes; the cloud's copy no longer has them
                manifest = read_manifest(packs / "quick" / "v2")
                manifest.version = "v3"
            ann = c.ModelAnnouncement(name="quick", version=version, files=manifest.files)
            publish(operator, t.announce, c.dump(ann), retain=True)
            done = _wait_for(
                reports,
                lambda m, v=version: (
                    json.loads(m.payload)["version"] == v
                    and json.loads(m.payload)["status"] in ("applied", "failed")
                ),
                timeout=30,
            )
            assert json.loads(done.payload)["status"] == expected, done.payload
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    assert not errors, errors[:3]
    assert ask(edge, "rev abc=", route=1).models.edge_pack == "quick/v2"
    assert "proxy.onnx" in json.loads(done.payload)["detail"]
    publish(operator, t.announce, b"", retain=True)


def test_rollback_command_returns_to_the_previous_pack(
    edge: EdgeServer, operator: mqtt.Client, quick_pack: Path
) -> None:
    """`rollback` swaps back to the pack before the last swap, and answers with it."""
    replies = subscribe(operator, f"{c.PREFIX}/{FLEET}/replies/test/rollback")
    props = response_properties(f"{c.PREFIX}/{FLEET}/replies/test/rollback", b"rb")
    publish(operator, c.Topics(FLEET, DEVICE).command("rollback"), b"{}", properties=props)
    reply = c.CommandReply.model_validate_json(replies.get(timeout=WAIT).payload)
    original = f"quick/{read_manifest(quick_pack.resolve()).version}"
    assert reply.ok and original in reply.detail
    assert ask(edge, "rev abc=", route=1).models.edge_pack == original


def test_killed_edge_is_lost_and_restarts_with_saved_settings_while_the_broker_is_down(
    edge: EdgeServer, broker: Broker, cloud: CloudServer, quick_pack: Path, workdir: Path
) -> None:
    """SIGKILL: the Last Will marks the device lost. Restarted with no broker, the daemon serves
    the pack rolled out before (v2) with the configuration applied before (threshold 0:
    everything at the edge), and joins once the broker appears."""
    t = c.Topics(FLEET, DEVICE)
    op = paho_client(broker, client_id="operator-3")
    try:
        status = subscribe(op, t.status)
        _wait_for(status, lambda m: json.loads(m.payload)["state"] == "online")
        reports = subscribe(op, t.models_reported)
        manifest = read_manifest(workdir / "packs" / "quick" / "v2")
        ann = c.ModelAnnouncement(name="quick", version="v2", files=manifest.files)
        publish(op, t.announce, c.dump(ann), retain=True)
        _wait_for(
            reports,
            lambda m: (
                json.loads(m.payload)["version"] == "v2"
                and json.loads(m.payload)["status"] == "applied"
            ),
            timeout=30,
        )
        publish(op, t.announce, b"", retain=True)
        edge.kill()
        _wait_for(status, lambda m: json.loads(m.payload)["state"] == "lost")
    finally:
        close(op)
    broker.stop()
    try:
        edge.restart().wait_serving()
        assert held_out_routes(edge) == {"ROUTE_EDGE"}
        assert ask(edge, "rev abc=").models.edge_pack == "quick/v2"
        assert "applied configuration from" in edge.log()
    finally:
        broker.start().wait_ready()
    op = paho_client(broker, client_id="operator-5")  # the broker appears: the agent joins
    try:
        status = subscribe(op, t.status)
        _wait_for(status, lambda m: json.loads(m.payload)["state"] == "online", timeout=40)
    finally:
        close(op)


def test_drain_command_stops_the_daemon_cleanly(edge: EdgeServer, broker: Broker) -> None:
    """`drain` is answered, then the daemon stops by itself (exit 0) and publishes offline."""
    op = paho_client(broker, client_id="operator-4")
    try:
        status = subscribe(op, c.Topics(FLEET, DEVICE).status)
        _wait_for(status, lambda m: json.loads(m.payload)["state"] == "online", timeout=40)
        replies = subscribe(op, f"{c.PREFIX}/{FLEET}/replies/test/drain")
        props = response_properties(f"{c.PREFIX}/{FLEET}/replies/test/drain", b"d")
        publish(op, c.Topics(FLEET, DEVICE).command("drain"), b"{}", properties=props)
        assert c.CommandReply.model_validate_json(replies.get(timeout=WAIT).payload).ok
        assert edge.proc.wait(30) == 0
        _wait_for(status, lambda m: json.loads(m.payload)["state"] == "offline")
    finally:
        close(op)
