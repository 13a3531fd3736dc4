"""A paho-mqtt client set up the one way both the edge agent and `autoglm ctl` use it.

paho-mqtt 2.x with ``CallbackAPIVersion.VERSION2`` and MQTT v5; optional username/password and
TLS (CA file, client certificate; the broker's host name must match its certificate); capped
exponential reconnect delays (paho's own ``reconnect_delay_set``); an optional Last Will.
Connecting and the network loop stay with the caller (``connect_async`` + ``loop_start`` keeps a
process running while the broker is away).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.settings.edge import ClientTLSSettings

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
# CONNACK reasons that another attempt with the same credentials cannot fix.
REFUSED_FOR_GOOD = {
    "Bad user name or password",
    "Not authorized",
    "Banned",
    "Client identifier not valid",
}


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


def build_client(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: ClientTLSSettings | None = None,
    will: Will | None = None,
) -> mqtt.Client:
    """An MQTT v5 client, not yet connected."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None and tls.enabled:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    return client


def refused_for_good(reason: ReasonCode) -> bool:
    """A CONNACK refusal that retrying with the same credentials cannot fix."""
    return reason.is_failure and str(reason) in REFUSED_FOR_GOOD


def reply_properties(response_topic: str, correlation: bytes) -> Properties:
    """PUBLISH properties of an MQTT v5 request that expects a reply."""
    props = Properties(mqtt.PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props
