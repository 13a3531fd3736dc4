"""The control plane never gets stuck: absurd versions, deep documents, older versions, bursts
and reply topics, against a real Mosquitto broker and a real edge daemon."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Broker, close, paho_client, publish, response_properties, subscribe

from bench.stack.processes import CloudServer, EdgeServer
from shared import control as c

pytestmark = pytest.mark.slow

FLEET = "hard"
DEVICE = "dev-h"
T = c.Topics(FLEET, DEVICE)
CONVERGE_S = 20.0  # bound for convergence after a burst: RESYNC_QUIET_S plus the burst's drain


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def broker(workdir: Path) -> Iterator[Broker]:
    b = Broker(workdir / "broker").start().wait_ready()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def operator(broker: Broker) -> Iterator[mqtt.Client]:
    client = paho_client(broker, client_id="hardening-operator")
    yield client
    close(client)


@pytest.fixture(scope="module")
def edge(
    quick_pack: Path, workdir: Path, broker: Broker, operator: mqtt.Client
) -> Iterator[EdgeServer]:
    cloud = CloudServer(quick_pack, workdir, args=["--auth-disabled"]).wait_serving()
    status = subscribe(operator, T.status)
    args = ["--mqtt", broker.address, "--fleet", FLEET, "--device-id", DEVICE]
    server = EdgeServer(quick_pack, workdir, clouds=[cloud.address], args=args,
                        state_dir=workdir / "state")  # fmt: skip
    server.wait_serving()
    wait_for(status, lambda m: json.loads(m.payload)["state"] == "online")
    yield server
    server.stop()
    cloud.stop()


def wait_for(inbox: Any, ok: Any, timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            msg = inbox.get(timeout=max(0.05, end - time.monotonic()))
        except Exception:  # queue.Empty
            continue
        if ok(msg):
            return msg
    raise AssertionError(f"no matching message on {inbox.topic_filter} in {timeout} s")


def push(operator: mqtt.Client, doc: dict[str, Any] | bytes, qos: int = 1) -> None:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    publish(operator, T.fleet_desired, payload, qos=qos, retain=True)


def report_of(msg: Any) -> dict[str, Any]:
    return dict(json.loads(msg.payload))


def apply(operator: mqtt.Client, reports: Any, version: int) -> None:
    """Push a valid fleet document and wait until the device reports it applied."""
    push(operator, {"version": version, "cache": {"ttl_s": float(version)}})
    wait_for(reports, lambda m: (report_of(m)["version"], report_of(m)["status"]) == (version, 200))


def test_an_absurd_version_is_refused_and_normal_versions_still_apply(
    edge: EdgeServer, operator: mqtt.Client
) -> None:
    reports = subscribe(operator, T.reported)
    push(operator, {"version": 2**63, "cache": {"ttl_s": 1.0}})
    bad = report_of(wait_for(reports, lambda m: report_of(m)["status"] == 400))
    assert any("version" in e for e in bad["errors"]), bad
    push(operator, {"version": 5, "cache": {"ttl_s": 5.0}})
    ok = report_of(wait_for(reports, lambda m: report_of(m)["version"] == 5))
    assert ok["status"] == 200 and ok["fleet_version"] == 5


def test_a_deeply_nested_document_is_reported_400_and_changes_nothing(
    edge: EdgeServer, operator: mqtt.Client
) -> None:
    reports = subscribe(operator, T.reported)
    apply(operator, reports, 20)
    deep = b'{"version": 21, "cache": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    push(operator, deep)
    bad = report_of(wait_for(reports, lambda m: report_of(m).get("version") == 21))
    assert bad["status"] == 400 and "nests" in " ".join(bad["errors"]), bad
    assert bad["fleet_version"] == 20


def test_an_older_version_is_reported_400(edge: EdgeServer, operator: mqtt.Client) -> None:
    reports = subscribe(operator, T.reported)
    apply(operator, reports, 30)
    push(operator, {"version": 29, "cache": {"ttl_s": 3.0}})
    bad = report_of(wait_for(reports, lambda m: report_of(m).get("version") == 29))
    assert bad["status"] == 400 and "older" in bad["detail"] and bad["fleet_version"] == 30


def test_after_a_burst_the_device_converges_to_the_retained_document(
    edge: EdgeServer, operator: mqtt.Client
) -> None:
    """2,000 documents as fast as the client can send them (QoS 0, so the broker may drop what
    the device cannot take): within CONVERGE_S the device reports the last, retained one."""
    last = 2_100
    for version in range(101, last + 1):
        push(operator, {"version": version, "cache": {"ttl_s": float(version)}}, qos=0)
    push(operator, {"version": last + 1, "cache": {"ttl_s": 1.0}})  # QoS 1: the retained one
    reports = subscribe(operator, T.reported)  # the retained report first, then new ones
    final = report_of(
        wait_for(reports, lambda m: report_of(m)["fleet_version"] == last + 1, CONVERGE_S)
    )
    assert final["effective"]["cache"]["ttl_s"] == 1.0


def test_command_replies_go_only_below_the_replies_namespace(
    edge: EdgeServer, operator: mqtt.Client
) -> None:
    """A reply asked for on a device's desired topic is not sent; one asked for under
    replies/ is (commands are handled in order, so the second proves the first was handled)."""
    stolen = subscribe(operator, T.device_desired)
    good_topic = f"{T.replies}test/ping"
    replies = subscribe(operator, good_topic)
    publish(operator, T.command("ping"), b"{}",
            properties=response_properties(T.device_desired, b"evil"))  # fmt: skip
    publish(operator, T.command("ping"), b"{}", properties=response_properties(good_topic, b"ok"))
    assert json.loads(replies.get().payload)["ok"] is True
    assert stolen.messages.empty()
