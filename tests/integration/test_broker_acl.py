"""The production broker's ACL (deploy/mosquitto/acl) and config, on a real mosquitto.

Users: devices ``dev-a`` and ``dev-b`` (user name = device id) and ``operator``. Every test uses
its own fleet name, so that retained messages of one test never reach another. Negative checks
do not sleep for long: a message that should not arrive is checked after a later, allowed one
from the same client has arrived (the broker keeps one client's messages in order).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import (
    Broker,
    Refused,
    close,
    collect,
    drop,
    mosquitto_version,
    paho_client,
    publish,
    reply_address,
    response_properties,
    subscribe,
    tool,
)
from cloud_server import make_certs

from shared.control import Topics

pytestmark = pytest.mark.slow

USERS = {"dev-a": "pass-a", "dev-b": "pass-b", "operator": "pass-op", "health": "pass-health"}
NOT_AUTHORIZED = 0x87  # MQTT v5 reason code 135
SETTLE = 0.2  # extra wait for a message that must not come, after the sentinel arrived


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Password file with USERS and the production ACL file itself (not a copy)."""
    with Broker(tmp_path_factory.mktemp("broker"), users=USERS) as b:
        assert b.acl_file == Path(__file__).resolve().parents[2] / "deploy/mosquitto/acl"
        yield b


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, mqtt.Client]]:
    """Connected clients of dev-a, dev-b and operator; closed after the test."""
    made = {name: paho_client(broker, name, USERS[name]) for name in ("dev-a", "dev-b", "operator")}
    yield made
    for client in made.values():
        close(client)


def topics_of(messages: list[mqtt.MQTTMessage]) -> list[str]:
    return [m.topic for m in messages]


def test_device_cannot_publish_as_another_device(broker: Broker, clients: dict) -> None:
    """(1) dev-a writing dev-b's status is refused (PUBACK 0x87) and never delivered."""
    a, op = clients["dev-a"], clients["operator"]
    fleet = Topics("acl1")
    watch = subscribe(op, fleet.status)  # devices/+/status
    assert watch.granted

    denied = publish(a, Topics("acl1", "dev-b").status, b'{"state": "online"}', retain=True)
    assert denied is not None and denied.value == NOT_AUTHORIZED, denied
    ok = publish(a, Topics("acl1", "dev-a").status, b'{"state": "online"}', retain=True)
    assert ok is not None and not ok.is_failure, ok

    first = watch.get(timeout=3)
    assert first.topic == Topics("acl1", "dev-a").status  # dev-b's would have come first
    assert topics_of(watch.wait(1, SETTLE)) == []
    # Nor was anything retained for dev-b: a new subscriber gets only dev-a's birth.
    retained = collect(op, fleet.status, timeout=0.5, count=2)
    assert topics_of(retained) == [Topics("acl1", "dev-a").status]
    assert "Denied PUBLISH from" in broker.log()


def test_last_will_is_checked_like_a_publish(broker: Broker, clients: dict) -> None:
    """A Last Will on another device's status is accepted at CONNECT (mosquitto 2.0) but never
    published; the device's own Will ("lost") is."""
    op = clients["operator"]
    t = Topics("acl6", "dev-a")
    watch = subscribe(op, Topics("acl6").status)
    forged = paho_client(
        broker, "dev-a", USERS["dev-a"], will=(Topics("acl6", "dev-b").status, b"x")
    )
    drop(forged)
    own = paho_client(broker, "dev-a", USERS["dev-a"], will=(t.status, b'{"state": "lost"}'))
    drop(own)
    first = watch.get(timeout=3)
    assert (first.topic, first.payload) == (t.status, b'{"state": "lost"}')
    assert topics_of(watch.wait(1, SETTLE)) == []
    retained = collect(op, Topics("acl6").status, timeout=0.5, count=2)
    assert topics_of(retained) == [t.status]


@pytest.mark.parametrize(
    "topic",
    [
        "autoglm/v1/acl1/devices/dev-b/config/reported",
        "autoglm/v1/acl1/devices/dev-b/telemetry",
        "autoglm/v1/acl1/devices/dev-b/models/reported",
        "autoglm/v1/acl1/devices/dev-a/config/desired",  # its own desired: only the operator
        "autoglm/v1/acl1/config/desired",
        "autoglm/v1/acl1/models/announce",
        "autoglm/v1/acl1/devices/dev-b/cmd/drain",
        "autoglm/v1/acl1/other",
        "$SYS/broker/uptime",
    ],
)
def test_device_writes_are_limited_to_its_own_reports(clients: dict, topic: str) -> None:
    """Everything a device may not write is answered with PUBACK 0x87 Not authorized."""
    rc = publish(clients["dev-a"], topic, b"{}")
    assert rc is not None and rc.value == NOT_AUTHORIZED, (topic, rc)


def test_device_cannot_read_another_devices_desired_or_commands(clients: dict) -> None:
    """(2) dev-a subscribing to dev-b's desired config or commands receives nothing.

    mosquitto 2.0's acl_file does not check SUBSCRIBE: the SUBACK grants QoS 1 (reason 0x01,
    observed with 2.0.11), and each message is checked against `read` when it would be
    delivered. Newer brokers may refuse the subscription with 0x87 instead; both are safe.
    """
    a, b, op = clients["dev-a"], clients["dev-b"], clients["operator"]
    ta, tb = Topics("acl2", "dev-a"), Topics("acl2", "dev-b")
    publish(op, tb.device_desired, b'{"version": 7}', retain=True)

    other = subscribe(a, tb.device_desired)
    wildcard = subscribe(a, Topics("acl2").device_desired)  # devices/+/config/desired
    everything = subscribe(a, "autoglm/v1/#")
    for inbox in (other, wildcard, everything):
        codes = [rc.value for rc in inbox.reason_codes]
        if mosquitto_version() < (2, 1):
            assert codes == [1], inbox.reason_codes  # "Granted QoS 1"
        else:
            assert codes in ([1], [NOT_AUTHORIZED]), inbox.reason_codes

    # Sentinel: dev-a's own desired, published after dev-b's, reaches dev-a.
    publish(op, ta.device_desired, b'{"version": 3}', retain=True)
    assert wildcard.get(timeout=3).topic == ta.device_desired

    # A live command to dev-b: dev-b gets it, dev-a (subscribed to dev-b's commands) does not.
    snoop = subscribe(a, tb.commands)
    own = subscribe(a, ta.commands)
    inbox_b = subscribe(b, tb.commands)
    publish(op, tb.command("ping"), b"{}")
    assert inbox_b.get(timeout=3).topic == tb.command("ping")
    publish(op, ta.command("ping"), b"{}")  # sentinel for dev-a
    assert own.get(timeout=3).topic == ta.command("ping")

    leaked = [
        m.topic
        for inbox in (other, wildcard, everything, snoop)
        for m in inbox.wait(99, SETTLE)
        if "/dev-b/" in m.topic
    ]
    assert leaked == []


def test_device_reads_its_own_desired_the_fleet_desired_announce_and_commands(
    clients: dict,
) -> None:
    """(3) What a device needs: retained desired configs and announcements, its commands, and
    a reply on the operator's MQTT v5 response topic (correlation data echoed)."""
    a, op = clients["dev-a"], clients["operator"]
    t = Topics("acl3", "dev-a")
    retained = {
        t.fleet_desired: b'{"version": 1}',
        t.device_desired: b'{"version": 2}',
        t.announce: b'{"name": "demo", "version": "v2", "files": {}}',
    }
    for topic, payload in retained.items():
        rc = publish(op, topic, payload, retain=True)
        assert rc is not None and not rc.is_failure, (topic, rc)
    for topic, payload in retained.items():
        got = collect(a, topic, timeout=3, count=1)
        assert [(m.topic, m.payload, m.retain) for m in got] == [(topic, payload, True)]

    # A command with a response topic, and the device's reply.
    cmds = subscribe(a, t.commands)
    reply_topic = f"{t.base}/replies/operator/{uuid.uuid4().hex}"
    replies = subscribe(op, reply_topic)
    correlation = uuid.uuid4().bytes
    publish(op, t.command("ping"), b"{}", properties=response_properties(reply_topic, correlation))
    cmd = cmds.get(timeout=3)
    assert cmd.topic == t.command("ping")
    respond_to, echo = reply_address(cmd)
    assert respond_to == reply_topic and echo == correlation
    answer = response_properties(respond_to, echo)
    rc = publish(a, respond_to, b'{"ok": true}', properties=answer)
    assert rc is not None and not rc.is_failure, rc
    reply = replies.get(timeout=3)
    assert reply.payload == b'{"ok": true}'
    assert reply_address(reply)[1] == correlation

    # And its own reports go through.
    for topic in (t.reported, t.status, t.telemetry, t.models_reported):
        rc = publish(a, topic, b"{}", retain=topic != t.telemetry)
        assert rc is not None and not rc.is_failure, (topic, rc)


@pytest.mark.parametrize(
    ("username", "password"),
    [("dev-a", "wrong"), ("dev-a", None), ("operator", "pass-a"), ("nobody", "x"), (None, None)],
)
def test_bad_credentials_are_refused(broker: Broker, username: str, password: str) -> None:
    """(4) Wrong password, unknown user, anonymous: CONNACK 0x87 Not authorized (mosquitto 2.0
    answers 0x87, not 0x86 "Bad user name or password", so as not to tell which was wrong)."""
    with pytest.raises(Refused) as refused:
        paho_client(broker, username, password)
    assert refused.value.reason.value == NOT_AUTHORIZED
    assert refused.value.reason.getName() == "Not authorized"


def test_mosquitto_cli_tools_work_with_operator_credentials(broker: Broker, clients: dict) -> None:
    """(5) mosquitto_pub sets a retained fleet config; mosquitto_sub reads a device's status."""
    t = Topics("acl5", "dev-a")
    login = ["-h", broker.host, "-p", str(broker.port), "-u", "operator", "-P", "pass-op"]
    login += ["-V", "mqttv5"]
    pub = subprocess.run(
        [tool("mosquitto_pub"), *login, "-t", t.fleet_desired, "-m", '{"version": 5}', "-r",
         "-q", "1"],
        capture_output=True, text=True, timeout=5,
    )  # fmt: skip
    assert pub.returncode == 0 and pub.stderr == "", pub
    got = collect(clients["dev-a"], t.fleet_desired, timeout=3, count=1)
    assert [m.payload for m in got] == [b'{"version": 5}']

    publish(clients["dev-a"], t.status, b'{"state": "online"}', retain=True)
    sub = subprocess.run(
        [tool("mosquitto_sub"), *login, "-t", Topics("acl5").status, "-v", "-C", "1", "-W", "3"],
        capture_output=True, text=True, timeout=5,
    )  # fmt: skip
    assert sub.returncode == 0, sub
    assert sub.stdout == f'{t.status} {{"state": "online"}}\n'

    # The operator may not speak for a device: mosquitto_pub reports the refusal (QoS 1).
    forged = subprocess.run(
        [tool("mosquitto_pub"), *login, "-t", t.status, "-m", "{}", "-q", "1"],
        capture_output=True, text=True, timeout=5,
    )  # fmt: skip
    assert "Not authorized" in forged.stderr, forged


def test_production_config_boots_with_tls(tmp_path: Path) -> None:
    """deploy/mosquitto/mosquitto.conf itself (only ports and paths rewritten): TLS for clients,
    anonymous refused, the loopback health check answers."""
    certs = make_certs(tmp_path / "certs")
    with Broker.production(tmp_path / "broker", users=USERS, certs=certs) as b:
        assert b.tls_port is not None
        t = Topics("prod", "dev-a")
        a = paho_client(b, "dev-a", USERS["dev-a"], port=b.tls_port, tls_ca=certs["ca.pem"])
        try:
            rc = publish(a, t.status, b'{"state": "online"}', retain=True)
            assert rc is not None and not rc.is_failure, rc
            rc = publish(a, Topics("prod", "dev-b").status, b"{}")
            assert rc is not None and rc.value == NOT_AUTHORIZED, rc
        finally:
            close(a)
        with pytest.raises(Refused) as refused:
            paho_client(b, port=b.tls_port, tls_ca=certs["ca.pem"])
        assert refused.value.reason.value == NOT_AUTHORIZED

        health = subprocess.run(
            [tool("mosquitto_sub"), "-h", b.host, "-p", str(b.port), "-u", "health",
             "-P", USERS["health"], "-t", "$SYS/broker/uptime", "-C", "1", "-W", "3"],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        assert health.returncode == 0 and health.stdout.endswith("seconds\n"), health

        # Persistence is on: the retained birth survives a restart.
        b.restart()
        op = paho_client(b, "operator", USERS["operator"])
        try:
            got = collect(op, t.status, timeout=3, count=1)
        finally:
            close(op)
        assert [m.payload for m in got] == [b'{"state": "online"}']


def test_restart_keeps_retained_messages_with_persistence(tmp_path: Path) -> None:
    """The helper itself: an anonymous broker with persistence restarts on the same port."""
    with Broker(tmp_path, persistence=True) as b:
        port = b.port
        c = paho_client(b)
        publish(c, "autoglm/v1/f/config/desired", b'{"version": 9}', retain=True)
        close(c)
        b.restart()
        assert b.port == port
        c = paho_client(b)
        try:
            got = collect(c, "autoglm/v1/f/config/desired", timeout=3, count=1)
        finally:
            close(c)
        assert [m.payload for m in got] == [b'{"version": 9}']
