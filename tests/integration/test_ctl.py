"""``autoglm ctl`` against a real mosquitto, with simulated devices (paho clients).

A ``FakeDevice`` speaks the device side of ``shared/control.py`` the simple way: a retained
birth, desired documents merged fleet then device and answered on ``config/reported`` (stale
versions ignored), commands answered on the MQTT v5 response topic, announcements answered on
``models/reported``. Every test uses its own fleet, so retained messages never leak between tests.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Broker, close, collect, free_port, paho_client, publish
from cloud_server import make_certs
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from autoglm_cli import main
from shared.control import (
    CommandReply,
    DesiredConfig,
    DeviceStatus,
    ModelAnnouncement,
    ModelReport,
    ReportedConfig,
    Telemetry,
    Topics,
    dump,
    parse,
)
from shared.pack.manifest import open_pack
from shared.settings.base import SettingsError
from shared.settings.edge import RuntimeSettings

TIMEOUT = "3"  # seconds the CLI waits for devices that do answer
SHORT = "0.5"  # ... for devices that do not


class FakeDevice:
    """A device on the control plane, without a daemon behind it."""

    def __init__(
        self,
        client: mqtt.Client,
        fleet: str,
        device_id: str,
        *,
        state: str = "online",
        model_outcome: str = "applied",
        silent: bool = False,
    ) -> None:
        self.client = client
        self.id = device_id
        self.state = state
        self.topics = Topics(fleet, device_id)
        self.model_outcome = model_outcome
        self.docs: dict[str, DesiredConfig | None] = {"fleet": None, "device": None}
        self.requests: list[tuple[str, Properties | None]] = []
        self._stop = threading.Event()
        t = self.topics
        client.on_message = self._on_message
        if state == "online" and not silent:  # offline, lost: only the retained status is left
            client.subscribe(
                [(t.fleet_desired, 1), (t.device_desired, 1), (t.announce, 1), (t.commands, 1)]
            )
        publish(client, t.status, dump(self.status()), retain=True)  # after the SUBSCRIBE

    def status(self) -> DeviceStatus:
        fleet, device = self.docs["fleet"], self.docs["device"]
        return DeviceStatus(
            state=self.state,  # type: ignore[arg-type]
            device_id=self.id,
            fleet=self.topics.fleet,
            pack="demo/1",
            precision="fp32",
            providers=["CPUExecutionProvider"],
            fleet_version=fleet.version if fleet else 0,
            device_version=device.version if device else 0,
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t, props = self.topics, getattr(msg, "properties", None)
        if not msg.payload and "/cmd/" not in msg.topic:
            return  # a cleared retained document: keep what is in force, like the agent
        if msg.topic in (t.fleet_desired, t.device_desired):
            self._desired("fleet" if msg.topic == t.fleet_desired else "device", msg.payload)
        elif msg.topic == t.announce:
            self._announce(parse(ModelAnnouncement, msg.payload))
        elif msg.topic.startswith(t.commands[:-1]):
            self.requests.append((msg.topic, props))
            self._reply(msg.topic.rsplit("/", 1)[1], props)

    def _desired(self, scope: str, payload: bytes) -> None:
        doc = parse(DesiredConfig, payload)
        current = self.docs[scope]
        if current is not None and doc.version <= current.version:
            return  # stale: ignored silently, like the real agent
        docs = {**self.docs, scope: doc}
        try:
            settings = RuntimeSettings()
            for d in (docs["fleet"], docs["device"]):
                settings = settings.merged(d.patch()) if d is not None else settings
        except SettingsError as exc:
            self._report(scope, doc.version, 400, exc.problems, {})
            return
        self.docs = docs
        self._report(scope, doc.version, 200, [], settings.model_dump(mode="json"))
        self.client.publish(self.topics.status, dump(self.status()), qos=1, retain=True)

    def _report(
        self, scope: str, version: int, status: int, errors: list[str], effective: dict
    ) -> None:
        fleet, device = self.docs["fleet"], self.docs["device"]
        report = ReportedConfig(
            version=version,
            scope=scope,  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            detail="applied" if status == 200 else "rejected",
            errors=errors,
            fleet_version=fleet.version if fleet else 0,
            device_version=device.version if device else 0,
            effective=effective,
        )
        self.client.publish(self.topics.reported, dump(report), qos=1, retain=True)

    def _announce(self, ann: ModelAnnouncement) -> None:
        if not ann.targets(self.id) or self.model_outcome == "silent":
            return
        for status in ("downloading", self.model_outcome):
            running = f"{ann.name}/{ann.version}" if status == "applied" else "demo/1"
            report = ModelReport(
                name=ann.name,
                version=ann.version,
                status=status,  # type: ignore[arg-type]
                detail="sha256 mismatch" if status == "failed" else "",
                running=running,
            )
            self.client.publish(self.topics.models_reported, dump(report), qos=1, retain=True)

    def _reply(self, name: str, props: Properties | None) -> None:
        known = {"ping": ("", {"uptime_s": 1.5}), "rollback": ("now running demo/0", {})}
        detail, data = known.get(name, (f"unknown command {name!r}", {}))
        reply = CommandReply(ok=name in known, command=name, device_id=self.id, detail=detail)
        reply.data = data
        out = Properties(PacketTypes.PUBLISH)
        out.CorrelationData = props.CorrelationData  # type: ignore[union-attr]
        self.client.publish(props.ResponseTopic, dump(reply), qos=1, properties=out)  # type: ignore[union-attr]

    def send_telemetry(self, every_s: float = 0.1) -> None:
        """Publish telemetry every ``every_s`` seconds until close()."""

        def loop() -> None:
            while not self._stop.wait(every_s):
                self.client.publish(self.topics.telemetry, dump(telemetry(self.id)), qos=0)

        threading.Thread(target=loop, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        close(self.client)


def telemetry(device_id: str) -> Telemetry:
    return Telemetry(
        device_id=device_id, interval_s=30, requests={"edge": 9, "cloud": 3}, errors=0,
        escalation_share=0.25, fallbacks=0, cache_hits=0, cloud_errors=0,
        latency_ms={"p50": 3.0, "p95": 9.5}, providers=["CPUExecutionProvider"], pack="demo/1",
        fleet_version=0, device_version=0,
    )  # fmt: skip


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("ctl-broker")) as b:
        yield b


@pytest.fixture
def fleet() -> str:
    return f"ctl-{uuid.uuid4().hex[:8]}"


DeviceMaker = Callable[..., FakeDevice]


@pytest.fixture
def device(broker: Broker, fleet: str) -> Iterator[DeviceMaker]:
    """``device("dev-a", state=..., model_outcome=...)``: a FakeDevice, closed after the test."""
    made: list[FakeDevice] = []

    def make(device_id: str, **kw: Any) -> FakeDevice:
        made.append(FakeDevice(paho_client(broker), fleet, device_id, **kw))
        return made[-1]

    yield make
    for d in made:
        d.close()


Ctl = Callable[..., tuple[int, str, str]]


@pytest.fixture
def ctl(broker: Broker, fleet: str, capsys: pytest.CaptureFixture[str]) -> Ctl:
    """``ctl("status", "--json")`` runs ``autoglm ctl`` in-process: (exit code, stdout, stderr)."""

    def run(*args: str, address: str | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["ctl", "--mqtt", address or broker.address, "--fleet", fleet, *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def retained(broker: Broker, topic: str) -> dict | None:
    """The retained JSON document on ``topic``, or None."""
    client = paho_client(broker)
    try:
        found = collect(client, topic, timeout=0.3, count=1)
    finally:
        close(client)
    return json.loads(found[0].payload) if found else None


# ---------------------------------------------------------------------------------- config


def test_config_set_waits_for_every_online_device_and_prints_each_ack(
    ctl: Ctl, device: DeviceMaker, broker: Broker, fleet: str
) -> None:
    """Version 1 is published retained; each online device's 200 is printed with the value."""
    device("dev-a"), device("dev-b"), device("dev-c", state="offline")
    code, out, _ = ctl("config", "set", "routing.threshold=0.4", "--timeout", TIMEOUT)
    assert code == 0, out
    assert "dev-a  200  applied  routing.threshold=0.4" in out
    assert "dev-b  200  applied  routing.threshold=0.4" in out
    assert "dev-c" not in out  # offline: not waited for
    assert retained(broker, Topics(fleet).fleet_desired) == {
        "version": 1,
        "routing": {"threshold": 0.4},
    }


def test_config_set_builds_on_the_retained_document_with_the_next_version(
    ctl: Ctl, device: DeviceMaker, broker: Broker, fleet: str
) -> None:
    """A second set keeps the first one's keys, bumps the version; --unset drops a key."""
    device("dev-a")
    assert ctl("config", "set", "routing.threshold=0.4", "cache.enabled=false")[0] == 0
    code, out, _ = ctl("config", "set", "fallback.on_cloud_failure=fail", "--unset", "cache")
    assert code == 0, out
    assert "dev-a  200  applied  fallback.on_cloud_failure=fail" in out
    assert retained(broker, Topics(fleet).fleet_desired) == {
        "version": 2,
        "routing": {"threshold": 0.4},
        "fallback": {"on_cloud_failure": "fail"},
    }


def test_config_set_reads_a_toml_file_and_honours_an_explicit_version(
    ctl: Ctl, device: DeviceMaker, broker: Broker, fleet: str, tmp_path: Path
) -> None:
    """--file settings.toml and --version 7: the device document is published as given."""
    device("dev-a")
    path = tmp_path / "settings.toml"
    path.write_text("[routing]\nmode = 'edge_only'\n[cache]\nttl_s = 60\n")
    code, out, _ = ctl("config", "set", "--device", "dev-a", "--file", str(path), "--version", "7")
    assert code == 0, out
    assert "dev-a  200  applied  routing.mode=edge_only  cache.ttl_s=60" in out
    desired = retained(broker, Topics(fleet, "dev-a").device_desired)
    assert desired == {"version": 7, "routing": {"mode": "edge_only"}, "cache": {"ttl_s": 60}}


def test_invalid_settings_are_refused_locally_with_each_problem_and_nothing_is_published(
    ctl: Ctl, broker: Broker, fleet: str
) -> None:
    """Exit 2 before connecting (the broker address is a closed port): each field is named."""
    code, _, err = ctl(
        "config", "set", "routing.threshold=2", "identity=x", address=f"127.0.0.1:{free_port()}"
    )
    assert code == 2
    assert "routing.threshold: Input should be less than or equal to 1" in err
    assert "identity: unknown setting" in err
    assert retained(broker, Topics(fleet).fleet_desired) is None


def test_a_device_rejection_is_printed_with_its_reason_and_exits_1(
    ctl: Ctl, device: DeviceMaker
) -> None:
    """The device document is fine alone but conflicts with the fleet's: the device says 400."""
    device("dev-a")
    assert ctl("config", "set", "routing.threshold=0.5")[0] == 0
    code, out, _ = ctl("config", "set", "--device", "dev-a", "routing.target_max_escalation=0.3")
    assert code == 1
    assert "dev-a  400  routing: set at most one of threshold, target_max_escalation" in out


def test_a_silent_device_times_out_named_with_the_likely_causes(
    ctl: Ctl, device: DeviceMaker
) -> None:
    """An online device that never reports is listed after --timeout; stale versions mentioned."""
    device("dev-a"), device("dev-b", silent=True)
    code, out, _ = ctl("config", "set", "cache.enabled=false", "--timeout", SHORT)
    assert code == 1
    assert "dev-a  200  applied  cache.enabled=false" in out
    assert f"no report in {SHORT} s from: dev-b" in out
    assert "ignores a version that is not newer" in out


def test_a_version_devices_would_ignore_is_refused(
    ctl: Ctl, device: DeviceMaker, broker: Broker, fleet: str
) -> None:
    """--version not above the retained one: exit 2, the retained document stays as it was."""
    device("dev-a")
    assert ctl("config", "set", "cache.enabled=false", "--version", "3")[0] == 0
    code, _, err = ctl("config", "set", "cache.enabled=true", "--version", "3")
    assert code == 2
    assert "version 3 is not newer than version 3" in err and "use 4" in err
    assert retained(broker, Topics(fleet).fleet_desired) == {
        "version": 3,
        "cache": {"enabled": False},
    }


def test_the_version_continues_from_the_devices_when_the_broker_lost_the_document(
    ctl: Ctl, device: DeviceMaker, broker: Broker, fleet: str
) -> None:
    """Retained document cleared (no persistence at the broker): next version = in force + 1."""
    device("dev-a")
    assert ctl("config", "set", "cache.enabled=false", "--version", "5")[0] == 0
    client = paho_client(broker)
    publish(client, Topics(fleet).fleet_desired, b"", retain=True)
    close(client)
    code, out, _ = ctl("config", "set", "routing.threshold=0.6")
    assert code == 0, out
    assert "config version 6" in out and "dev-a  200  applied  routing.threshold=0.6" in out


def test_an_invalid_retained_document_is_reported_and_can_be_replaced(
    ctl: Ctl, broker: Broker, fleet: str
) -> None:
    """A broken retained document (version 0) stops a merge; --replace overwrites it."""
    client = paho_client(broker)
    publish(client, Topics(fleet).fleet_desired, b'{"version": 0}', retain=True)
    close(client)
    code, _, err = ctl("config", "set", "cache.enabled=false", "--no-wait")
    assert code == 2
    assert "version: Input should be greater than or equal to 1" in err
    assert "is invalid; use --replace" in err
    assert ctl("config", "set", "cache.enabled=false", "--replace", "--no-wait")[0] == 0
    assert retained(broker, Topics(fleet).fleet_desired) == {
        "version": 1,
        "cache": {"enabled": False},
    }


def test_with_no_device_online_config_set_says_so_and_still_publishes(
    ctl: Ctl, broker: Broker, fleet: str
) -> None:
    """No expected device: the document is retained for later, exit 0."""
    code, out, _ = ctl("config", "set", "cache.enabled=false", "--timeout", SHORT)
    assert code == 0
    assert "no device is online" in out
    assert retained(broker, Topics(fleet).fleet_desired) == {
        "version": 1,
        "cache": {"enabled": False},
    }


def test_config_get_prints_desired_and_reported_documents(
    ctl: Ctl, device: DeviceMaker, fleet: str
) -> None:
    """JSON: the fleet and device documents and the device's report; text: one line each."""
    device("dev-a")
    assert ctl("config", "set", "routing.threshold=0.3")[0] == 0
    assert ctl("config", "set", "--device", "dev-a", "cache.enabled=false")[0] == 0
    code, out, _ = ctl("config", "get", "--device", "dev-a", "--json")
    assert code == 0
    state = json.loads(out)
    assert state["fleet"] == fleet
    assert state["desired"]["fleet"] == {"version": 1, "routing": {"threshold": 0.3}}
    assert state["desired"]["device"] == {"version": 1, "cache": {"enabled": False}}
    report = state["reported"]["dev-a"]
    assert (report["status"], report["fleet_version"], report["device_version"]) == (200, 1, 1)
    assert report["effective"]["routing"]["threshold"] == 0.3
    code, out, _ = ctl("config", "get")
    assert 'desired (fleet): version 1  {"routing": {"threshold": 0.3}}' in out
    assert "reported dev-a: 200 on device v1  in force: fleet v1, device v1" in out


# ---------------------------------------------------------------------------------- status


def test_status_shows_each_device_with_its_config_and_the_telemetry_heard(
    ctl: Ctl, device: DeviceMaker
) -> None:
    """Retained status and report, plus telemetry heard during --wait, one row per device."""
    device("dev-a").send_telemetry()
    device("dev-b", state="lost")
    assert ctl("config", "set", "--device", "dev-a", "cache.enabled=false")[0] == 0
    code, out, _ = ctl("status", "--wait", "0.5")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith("2 device(s), 1 online")
    assert lines[1].split() == ["DEVICE", "STATE", "PACK", "RUNTIME", "CONFIG", "TELEMETRY"]
    row_a = next(line for line in lines if line.startswith("dev-a"))
    assert "online  demo/1  fp32 CPU  fleet v- device v1 (last: 200 device v1)" in row_a
    assert row_a.endswith("12 req/30s  esc 25%  p50 3.0 ms")
    assert next(line for line in lines if line.startswith("dev-b")).split()[1] == "lost"
    code, out, _ = ctl("status", "--json", "--wait", "0.3")
    devices = json.loads(out)["devices"]
    assert devices["dev-a"]["telemetry"]["requests"] == {"edge": 9, "cloud": 3}
    assert devices["dev-b"]["telemetry"] is None


# ---------------------------------------------------------------------------------- commands


def test_cmd_ping_asks_every_online_device_on_an_mqtt5_response_topic(
    ctl: Ctl, device: DeviceMaker, fleet: str
) -> None:
    """One reply per online device; the response topic is under replies/<client-id>/."""
    a, b, c = device("dev-a"), device("dev-b"), device("dev-c", state="offline")
    code, out, _ = ctl("cmd", "ping", "--arg", "verbose=true")
    assert code == 0, out
    assert "dev-a  ok    uptime_s=1.5" in out and "dev-b  ok    uptime_s=1.5" in out
    assert not c.requests
    (topic, props), _ = a.requests[0], b.requests[0]
    assert topic == Topics(fleet, "dev-a").command("ping")
    assert props is not None
    assert props.ResponseTopic.startswith(f"autoglm/v1/{fleet}/replies/autoglm-ctl-")
    assert props.CorrelationData != b.requests[0][1].CorrelationData  # type: ignore[union-attr]


def test_cmd_json_prints_each_reply_and_a_refusal_exits_1(ctl: Ctl, device: DeviceMaker) -> None:
    """An unknown command gets ok=false from the device: printed as JSON, exit 1."""
    device("dev-a")
    code, out, _ = ctl("cmd", "reboot", "--device", "dev-a", "--json")
    assert code == 1
    reply = parse(CommandReply, out.strip().encode())
    assert (reply.ok, reply.device_id, reply.command) == (False, "dev-a", "reboot")


def test_cmd_to_a_silent_device_times_out_and_exits_1(ctl: Ctl) -> None:
    """Nobody answers on dev-x's command topic: its name is printed after --timeout."""
    code, out, _ = ctl("cmd", "ping", "--device", "dev-x", "--timeout", SHORT)
    assert code == 1
    assert f"no reply to ping in {SHORT} s from: dev-x" in out


def test_cmd_with_no_online_device_does_nothing_and_says_so(ctl: Ctl, fleet: str) -> None:
    code, _, err = ctl("cmd", "ping")
    assert code == 2
    assert f"no device of fleet {fleet} is online" in err


def test_models_rollback_sends_the_rollback_command(ctl: Ctl, device: DeviceMaker) -> None:
    a = device("dev-a")
    code, out, _ = ctl("models", "rollback", "--device", "dev-a")
    assert code == 0
    assert "dev-a  ok    now running demo/0" in out
    assert a.requests[0][0].endswith("/cmd/rollback")


# ---------------------------------------------------------------------------------- models


def test_models_announce_publishes_the_verified_manifest_and_waits_for_applied(
    ctl: Ctl, device: DeviceMaker, broker: Broker, fleet: str, tmp_path: Path, make_pack: Any
) -> None:
    """Retained announcement with every file's sha256; progress and the final report printed."""
    pack = make_pack(tmp_path, "demo", "2", {"proxy.onnx": b"onnx", "full.safetensors": b"w"})
    device("dev-a")
    code, out, _ = ctl("models", "announce", "--pack", str(pack))
    assert code == 0, out
    assert "announced demo/2 (2 files, 5 bytes) to fleet" in out
    assert "dev-a  downloading  demo/2  running demo/1" in out
    assert "dev-a  applied      demo/2  running demo/2" in out
    ann = retained(broker, Topics(fleet).announce)
    assert ann is not None
    files = open_pack(pack).files
    assert ann["files"] == {k: v.model_dump() for k, v in files.items()}
    assert (ann["name"], ann["version"], ann["devices"]) == ("demo", "2", [])


def test_models_announce_reports_a_failed_device_and_a_silent_one(
    ctl: Ctl, device: DeviceMaker, tmp_path: Path, make_pack: Any
) -> None:
    """A staged roll-out to two devices: one fails, one never answers; exit 1 naming both."""
    pack = make_pack(tmp_path, "demo", "3", {"proxy.onnx": b"onnx"})
    device("dev-a", model_outcome="failed"), device("dev-b", model_outcome="silent")
    code, out, _ = ctl(
        "models", "announce", "--pack", str(pack), "--devices", "dev-a,dev-b", "--timeout", SHORT
    )
    assert code == 1
    assert "to dev-a, dev-b" in out
    assert "dev-a  failed       demo/3  running demo/1  sha256 mismatch" in out
    assert f"no final report in {SHORT} s from: dev-b" in out


def test_re_announcing_a_version_that_failed_reports_the_earlier_failure_at_once(
    ctl: Ctl, device: DeviceMaker, tmp_path: Path, make_pack: Any
) -> None:
    """The device's retained report says this version failed: no wait for a retry."""
    pack = make_pack(tmp_path, "demo", "5", {"proxy.onnx": b"onnx"})
    device("dev-a", model_outcome="failed")
    assert ctl("models", "announce", "--pack", str(pack))[0] == 1
    code, out, _ = ctl("models", "announce", "--pack", str(pack), "--timeout", "30")
    assert code == 1
    assert "dev-a  failed       demo/5  running demo/1  earlier: sha256 mismatch" in out


def test_models_announce_refuses_a_pack_that_does_not_verify(
    ctl: Ctl, tmp_path: Path, make_pack: Any
) -> None:
    pack = make_pack(tmp_path, "demo", "4", {"proxy.onnx": b"onnx"})
    (pack / "proxy.onnx").write_bytes(b"0nnx")
    code, _, err = ctl("models", "announce", "--pack", str(pack))
    assert code == 2
    assert "'proxy.onnx' does not match its sha256" in err


# ---------------------------------------------------------------------------------- broker


def test_an_unreachable_broker_is_one_line_and_exit_2(ctl: Ctl) -> None:
    code, _, err = ctl("status", address=f"127.0.0.1:{free_port()}")
    assert code == 2
    assert err.strip().startswith("autoglm ctl: cannot connect to the MQTT broker at 127.0.0.1:")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_refused_credentials_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker with a password file: wrong password -> the CONNACK's reason, exit 2."""
    (tmp_path / "pw").write_text("wrong\n")
    with Broker(tmp_path / "b", users={"operator": "right"}) as b:
        code = main(["ctl", "--mqtt", b.address, "--username", "operator",
                     "--password-file", str(tmp_path / "pw"), "status"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoglm ctl: the MQTT broker at 127.0.0.1:")
    # mosquitto 2.0 answers a wrong password with "Not authorized" (0x87), later ones 0x86
    assert err.endswith(("refused the connection: Not authorized", "Bad user name or password"))


def test_works_over_tls_with_the_production_acl_as_the_operator_account(
    tmp_path: Path, fleet: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """TLS listener, password file, deploy/mosquitto/acl: config set and cmd ping go through."""
    certs = make_certs(tmp_path / "certs")
    users = {"operator": "op-pass", "dev-a": "a-pass"}
    (tmp_path / "pw").write_text("op-pass\n")
    with Broker.production(tmp_path / "b", users=users, certs=certs) as b:
        dev = FakeDevice(paho_client(b, "dev-a", "a-pass"), fleet, "dev-a")
        base = ["ctl", "--mqtt", f"127.0.0.1:{b.tls_port}", "--fleet", fleet, "--username",
                "operator", "--password-file", str(tmp_path / "pw"), "--ca-file",
                str(certs["ca.pem"]), "--timeout", TIMEOUT]  # fmt: skip
        try:
            assert main([*base, "config", "set", "routing.threshold=0.2"]) == 0
            assert main([*base, "cmd", "ping"]) == 0
        finally:
            dev.close()
    captured = capsys.readouterr()
    assert "dev-a  200  applied  routing.threshold=0.2" in captured.out
    assert "dev-a  ok" in captured.out
    assert "autoglm ctl:" not in captured.err  # no warning: the sync marker came back


def test_an_untrusted_broker_certificate_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tls with the system CAs against a test CA's certificate: refused, no traceback."""
    certs = make_certs(tmp_path / "certs")
    with Broker.production(tmp_path / "b", users={"operator": "x"}, certs=certs) as b:
        code = main(["ctl", "--mqtt", f"127.0.0.1:{b.tls_port}", "--tls", "status"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(
        f"autoglm ctl: cannot connect to the MQTT broker at 127.0.0.1:{b.tls_port}"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in err and "\n" not in err
