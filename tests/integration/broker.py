"""Test helpers for the MQTT control plane: a real mosquitto on loopback, and paho-mqtt clients.

``Broker`` is ``bench.stack.mosquitto.Broker`` (a real ``mosquitto -c <generated config>`` on a free
127.0.0.1 port: anonymous by default, or with a password file) with the production ACL
(``deploy/mosquitto/acl``, the real file, not a copy) by default. ``production_config``
rewrites ``deploy/mosquitto/mosquitto.conf`` for a test (ports, paths), so the production file
itself can be booted. No pytest fixtures here: tests define them.

The client helpers wrap paho-mqtt 2.x (MQTT v5, ``loop_start``): ``paho_client`` connects (or
raises ``Refused`` with the CONNACK reason), ``subscribe`` returns an ``Inbox`` with the SUBACK
reason codes and the messages, ``publish`` waits for the PUBACK and returns its reason code, and
``close`` disconnects and stops the loop (pytest turns leaked sockets and threads into errors).
"""

from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench.stack import mosquitto
from bench.stack.mosquitto import (  # re-exported for the tests
    WAIT,
    _run_as,
    free_port,
    mosquitto_bin,
    mosquitto_version,
    tool,
    write_password_file,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"
PRODUCTION_ACL = DEPLOY / "acl"
PRODUCTION_CONF = DEPLOY / "mosquitto.conf"
__all__ = ["WAIT", "free_port", "mosquitto_bin", "mosquitto_version", "tool", "write_password_file"]


def production_config(
    workdir: Path, *, tls_port: int, plain_port: int, certs: Mapping[str, Path], password_file: Path
) -> str:
    """``deploy/mosquitto/mosquitto.conf`` with only ports and paths changed, for a test.

    The TLS listener moves to 127.0.0.1:``tls_port``, the loopback listener to ``plain_port``,
    ``/mosquitto/certs/*`` to ``certs`` (keys ``ca.pem``, ``server.pem``, ``server.key``), the
    password file to ``password_file``, the ACL to the real ``deploy/mosquitto/acl`` and the data
    folder into ``workdir``. Every other line is kept as it is.
    """
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    replace = {
        "listener 8883": f"listener {tls_port} 127.0.0.1",
        "listener 1883 127.0.0.1": f"listener {plain_port} 127.0.0.1",
        "cafile /mosquitto/certs/ca.pem": f"cafile {certs['ca.pem']}",
        "certfile /mosquitto/certs/server.pem": f"certfile {certs['server.pem']}",
        "keyfile /mosquitto/certs/server.key": f"keyfile {certs['server.key']}",
        "password_file /mosquitto/config/password_file": f"password_file {password_file}",
        "acl_file /mosquitto/config/acl": f"acl_file {PRODUCTION_ACL}",
        "persistence_location /mosquitto/data/": f"persistence_location {data}/",
    }
    lines = PRODUCTION_CONF.read_text().splitlines()
    missing = set(replace) - set(lines)
    assert not missing, f"mosquitto.conf no longer has the lines {sorted(missing)}"
    out = [replace.get(line, line) for line in lines]
    unmapped = [ln for ln in out if " /mosquitto/" in ln and not ln.startswith("#")]
    assert not unmapped, f"unmapped paths: {unmapped}"
    return "\n".join([*out, *_run_as(), ""])


class Broker(mosquitto.Broker):
    """``bench.stack.mosquitto.Broker`` with the production ACL by default, and the production
    config (``Broker.production``)."""

    def __init__(self, workdir: Path, *, acl_file: Path | None = PRODUCTION_ACL, **kw: Any) -> None:
        super().__init__(workdir, acl_file=acl_file, **kw)

    @classmethod
    def production(
        cls, workdir: Path, *, users: Mapping[str, str], certs: Mapping[str, Path]
    ) -> Broker:
        """The production config (``production_config``): TLS on 127.0.0.1:``tls_port``,
        the loopback listener on ``port``, the given users and the production ACL."""
        broker = cls(workdir, users=users)
        broker.tls_port = free_port()
        broker._config = production_config(
            broker.workdir, tls_port=broker.tls_port, plain_port=broker.port,
            certs=certs, password_file=broker.password_file,
        )  # fmt: skip
        return broker


# ------------------------------------------------------------------------------- clients


class Refused(ConnectionError):
    """The broker refused the connection; ``reason`` is the CONNACK reason code."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"connection refused: {reason}")
        self.reason = reason


class Inbox:
    """Messages of one subscription, and the SUBACK's reason codes (one per filter).

    paho hands a message to every inbox whose filter matches its topic, so two overlapping
    subscriptions of one client both see a message the broker sends for either of them.
    """

    def __init__(self, topic_filter: str) -> None:
        self.topic_filter = topic_filter
        self.reason_codes: list[ReasonCode] = []
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    @property
    def granted(self) -> bool:
        return all(not rc.is_failure for rc in self.reason_codes)

    def get(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        """The next message; ``queue.Empty`` after ``timeout`` seconds."""
        return self.messages.get(timeout=timeout)

    def wait(self, count: int = 1, timeout: float = WAIT) -> list[mqtt.MQTTMessage]:
        """``count`` messages, or as many as arrive in ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        out: list[mqtt.MQTTMessage] = []
        while len(out) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return out

    def drain(self) -> list[mqtt.MQTTMessage]:
        """What has arrived so far, without waiting."""
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out


class _State:
    """Per-client bookkeeping the callbacks fill (paho runs them on its loop thread)."""

    def __init__(self) -> None:
        self.connected = threading.Event()
        self.connack: ReasonCode | None = None
        self.acks: dict[int, tuple[threading.Event, list[ReasonCode]]] = {}
        self.lock = threading.Lock()

    def expect(self, mid: int) -> tuple[threading.Event, list[ReasonCode]]:
        with self.lock:
            return self.acks.setdefault(mid, (threading.Event(), []))

    def forget(self, mid: int) -> None:
        with self.lock:
            self.acks.pop(mid, None)

    def acked(self, mid: int, codes: list[ReasonCode]) -> None:
        event, found = self.expect(mid)
        found.extend(codes)
        event.set()


def _state(client: mqtt.Client) -> _State:
    state = client.user_data_get()
    assert isinstance(state, _State), "not a client made by paho_client()"
    return state


def paho_client(
    broker: Broker,
    username: str | None = None,
    password: str | None = None,
    client_id: str | None = None,
    *,
    port: int | None = None,
    tls_ca: Path | None = None,
    will: tuple[str, bytes] | None = None,
    reconnect: bool = False,
    timeout: float = WAIT,
) -> mqtt.Client:
    """A connected paho-mqtt 2.x client (MQTT v5, clean start, loop running).

    Raises ``Refused`` with the CONNACK reason code when the broker says no. ``port`` and
    ``tls_ca`` reach another listener of the broker (TLS verified against ``tls_ca``); ``will``
    is a (topic, payload) Last Will, retained at QoS 1. ``reconnect``: paho reconnects after
    a lost connection (off by default, so that a test sees the loss). Call ``close()`` when done.
    """
    state = _State()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{username or 'anon'}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        userdata=state,
        reconnect_on_failure=reconnect,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)

    def on_connect(c: mqtt.Client, s: _State, flags: Any, rc: ReasonCode, props: Any) -> None:
        s.connack = rc
        if rc.is_failure:
            c.disconnect()  # no reconnect attempts, even with reconnect=True
        s.connected.set()

    def on_subscribe(c: mqtt.Client, s: _State, mid: int, rcs: list[ReasonCode], p: Any) -> None:
        s.acked(mid, list(rcs))

    def on_publish(c: mqtt.Client, s: _State, mid: int, rc: ReasonCode, p: Any) -> None:
        s.acked(mid, [rc])

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.connect(broker.host, port or broker.port, keepalive=30)
    client.loop_start()
    if not state.connected.wait(timeout):
        close(client)
        raise TimeoutError(f"no CONNACK from {broker.host}:{port or broker.port} in {timeout}s")
    assert state.connack is not None
    if state.connack.is_failure:
        close(client)
        raise Refused(state.connack)
    return client


def close(client: mqtt.Client) -> None:
    """Disconnect (no Last Will) and stop the network loop."""
    client.disconnect()
    client.loop_stop()


def drop(client: mqtt.Client) -> None:
    """Lose the connection without a DISCONNECT (a crash, a cut cable): the broker publishes
    the client's Last Will. Only for clients made with ``reconnect=False`` (the default)."""
    assert not client._reconnect_on_failure, "paho would reconnect (and so cancel the Will)"
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.shutdown(socket.SHUT_RDWR)  # the loop sees the loss, closes the socket and ends
    client.loop_stop()


def subscribe(client: mqtt.Client, topic_filter: str, qos: int = 1) -> Inbox:
    """Subscribes and waits for the SUBACK; its reason codes are in ``Inbox.reason_codes``."""
    inbox = Inbox(topic_filter)
    client.message_callback_add(topic_filter, lambda c, u, msg: inbox.messages.put(msg))
    rc, mid = client.subscribe(topic_filter, qos=qos)
    assert rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(rc)
    assert mid is not None
    state = _state(client)
    event, codes = state.expect(mid)
    assert event.wait(WAIT), f"no SUBACK for {topic_filter}"
    state.forget(mid)
    inbox.reason_codes = codes
    return inbox


def collect(
    client: mqtt.Client, topic_filter: str, timeout: float = 1.0, count: int | None = None
) -> list[mqtt.MQTTMessage]:
    """Subscribes to ``topic_filter`` and returns the messages received within ``timeout``
    seconds (sooner once ``count`` have come), then unsubscribes."""
    inbox = subscribe(client, topic_filter)
    try:
        return inbox.wait(count if count is not None else 1 << 30, min(timeout, WAIT))
    finally:
        client.unsubscribe(topic_filter)
        client.message_callback_remove(topic_filter)


def publish(
    client: mqtt.Client,
    topic: str,
    payload: bytes | str,
    *,
    qos: int = 1,
    retain: bool = False,
    properties: Properties | None = None,
) -> ReasonCode | None:
    """Publishes and, at QoS 1 or 2, waits for the acknowledgement and returns its reason code
    (mosquitto answers 0x87 "Not authorized" to a publish the ACL denies)."""
    info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
    assert info.rc == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(info.rc)
    if qos == 0:
        return None
    state = _state(client)
    event, codes = state.expect(info.mid)
    assert event.wait(WAIT), f"no PUBACK for {topic}"
    state.forget(info.mid)
    return codes[0]


def response_properties(response_topic: str, correlation: bytes) -> Properties:
    """PUBLISH properties of an MQTT v5 request: where to reply, and what to echo back."""
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props


def reply_address(message: mqtt.MQTTMessage) -> tuple[str | None, bytes | None]:
    """The response topic and correlation data of an MQTT v5 request (None where absent)."""
    props = message.properties
    return getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None)


__all__ = [
    "Broker",
    "Inbox",
    "Refused",
    "close",
    "collect",
    "drop",
    "free_port",
    "mosquitto_version",
    "paho_client",
    "production_config",
    "publish",
    "reply_address",
    "response_properties",
    "subscribe",
    "tool",
    "write_password_file",
]
