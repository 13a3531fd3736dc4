"""The MQTT side of ``autoglm ctl``: one short-lived session per command (its command-line
options are in :mod:`cloud.ctl.options`).

A :class:`Session` connects (MQTT v5, via :func:`shared.mqtt.build_client`), subscribes to the
topics a command needs, and hands every message to the command through a queue. Retained state is
read with a barrier: after subscribing, the session publishes a marker to its own reply topic and
waits for it to come back; the broker delivers the retained messages of a subscription before a
message published after it, so once the marker is back the retained state is complete.
"""

from __future__ import annotations

import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel

from shared.control import DeviceStatus, PayloadError, Topics, parse
from shared.mqtt import build_client, reply_properties
from shared.names import NAME_RULE, is_plain_name
from shared.net import split_host_port
from shared.settings.edge import ClientTLSSettings

M = TypeVar("M", bound=BaseModel)
KEEPALIVE_S = 30
# Longest wait for the barrier that ends the retained messages.
SYNC_S = 2.0


class CtlError(Exception):
    """A failure that ends the command with one line on stderr and exit code 2."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retained: bool
    correlation: bytes | None = None


def check_id(kind: str, value: str) -> str:
    if not is_plain_name(value):  # device and fleet ids are MQTT topic levels
        raise CtlError(f"invalid {kind} {value!r}: {NAME_RULE}")
    return value


def warn(text: str) -> None:
    print(f"autoglm ctl: {text}", file=sys.stderr)


def decode(model: type[M], message: Message) -> M | None:
    """The payload as ``model``, or None (with a warning) when it is not one."""
    try:
        return parse(model, message.payload)
    except PayloadError as exc:
        warn(f"ignoring an invalid message on {message.topic}: {exc}")
        return None


def close_sockets_of(exc: BaseException) -> None:
    """Close the sockets left in the frames of a failed connect.

    paho's ``connect`` drops the socket of a failed TLS handshake without closing it (the garbage
    collector then closes it, with a ResourceWarning); it is still referenced by the traceback.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


class Session:
    """One connection of the operator to the broker, for one command."""

    def __init__(
        self,
        address: str,
        fleet: str,
        *,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        tls: ClientTLSSettings | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.topics = Topics(check_id("fleet", fleet))
        self.client_id = f"autoglm-ctl-{uuid.uuid4().hex[:12]}"
        self.replies = f"{self.topics.base}/replies/{self.client_id}"
        self._credentials = (username, password, tls)
        self._queue: queue.Queue[Message] = queue.Queue()
        self._connack: ReasonCode | None = None
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._marker = ""
        self._marker_seen = threading.Event()
        self._publish_reasons: dict[int, ReasonCode] = {}
        self._client: mqtt.Client | None = None

    # -- connection ----------------------------------------------------------------------------

    def __enter__(self) -> Session:
        self._connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> None:
        try:
            host, port = split_host_port(self.address)
        except ValueError:
            raise CtlError(f"--mqtt expects HOST:PORT, got {self.address!r}") from None
        username, password, tls = self._credentials
        where = self.address
        try:
            client = build_client(self.client_id, username=username, password=password, tls=tls)
        except (OSError, ValueError) as exc:
            raise CtlError(f"cannot set up TLS: {exc}") from None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.connect_timeout = min(self.timeout, 5.0)
        try:
            client.connect(host, port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            close_sockets_of(exc)
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise CtlError(f"cannot connect to the MQTT broker at {where}: {reason}") from None
        self._client = client
        client.loop_start()
        if not self._connected.wait(self.timeout):
            self.close()
            raise CtlError(f"no answer from the MQTT broker at {where} in {self.timeout:g} s")
        if self._connack is not None and self._connack.is_failure:
            self.close()
            raise CtlError(f"the MQTT broker at {where} refused the connection: {self._connack}")
        self.subscribe(f"{self.replies}/#")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    @property
    def client(self) -> mqtt.Client:
        if self._client is None:
            raise CtlError("not connected")
        return self._client

    # -- callbacks (paho's network thread) -----------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = reason
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._lost.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._marker:
            self._marker_seen.set()
            return
        props = getattr(msg, "properties", None)
        correlation = getattr(props, "CorrelationData", None)
        self._queue.put(Message(msg.topic, bytes(msg.payload), bool(msg.retain), correlation))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._publish_reasons[mid] = reason

    # -- messages ------------------------------------------------------------------------------

    def subscribe(self, *filters: str) -> None:
        self.client.subscribe([(f, 1) for f in filters])

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as exc:
            raise CtlError(f"cannot publish on {topic}: {exc}") from None
        if not info.is_published():
            raise CtlError(f"the broker did not acknowledge a message on {topic} in time")
        reason = self._publish_reasons.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise CtlError(f"the broker refused a message on {topic}: {reason}")

    def sync(self) -> None:
        """Return once the retained messages of the subscriptions made so far are queued."""
        self._marker = f"{self.replies}/sync/{uuid.uuid4().hex}"
        self._marker_seen.clear()
        wait = min(self.timeout, SYNC_S)
        try:
            self.publish(self._marker, b"")
        except CtlError as exc:  # e.g. an ACL without write on replies/#: wait a little instead
            warn(f"{exc}; waiting {wait:g} s for retained messages instead")
            time.sleep(wait)
            return
        if not self._marker_seen.wait(wait):
            warn("the broker did not echo the sync marker; retained state may be incomplete")

    def next(self, deadline: float) -> Message | None:
        """The next message, or None once ``deadline`` (time.monotonic) has passed."""
        while True:
            if self._lost.is_set() and self._queue.empty():
                raise CtlError(f"lost the connection to the MQTT broker at {self.address}")
            left = deadline - time.monotonic()
            try:
                return self._queue.get(timeout=max(0.0, min(left, 0.2)))
            except queue.Empty:
                if left <= 0:
                    return None

    def retained(self, *filters: str) -> dict[str, Message]:
        """The current message of each topic matching ``filters`` (empty payloads dropped)."""
        self.subscribe(*filters)
        self.sync()
        latest: dict[str, Message] = {}
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return {t: m for t, m in latest.items() if m.payload}
            latest[message.topic] = message

    def statuses(self, messages: Iterable[Message]) -> dict[str, DeviceStatus]:
        """Device id -> DeviceStatus, from retained ``devices/<id>/status`` messages."""
        out: dict[str, DeviceStatus] = {}
        for m in messages:
            device = self.topics.device_of(m.topic)
            if device and m.topic == Topics(self.topics.fleet, device).status:
                status = decode(DeviceStatus, m)
                if status is not None:
                    out[device] = status
        return dict(sorted(out.items()))

    def online_devices(self) -> list[str]:
        """Devices whose retained status says ``online``."""
        found = self.retained(self.topics.status)
        return [d for d, s in self.statuses(found.values()).items() if s.state == "online"]

    def request(self, device: str, name: str, payload: bytes) -> bytes:
        """Publish a command to ``device``; returns the correlation data of its reply."""
        tag = uuid.uuid4().hex
        props = reply_properties(f"{self.replies}/{tag}", tag.encode())
        self.publish(Topics(self.topics.fleet, device).command(name), payload, properties=props)
        return tag.encode()
