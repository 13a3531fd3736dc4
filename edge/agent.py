"""The edge's MQTT agent: desired/reported configuration, status, telemetry, roll-outs, commands.

paho-mqtt runs its network loop in its own thread; every message is handed to the daemon's
asyncio loop (``run_coroutine_threadsafe``), where one lock serialises configuration and model
changes. Subscriptions are made in ``on_connect`` so that a reconnect restores them; paho retries
with capped exponential delays, and a refusal of the credentials stops retrying (an error in
the log, no storm). The Last Will marks the device ``lost``; a clean stop publishes ``offline``.
One handler's failure is logged and never stops the others. Topics and payloads:
:mod:`shared.control` and docs/mqtt.md.

The agent reaches the daemon only through :class:`Daemon`, the few things the control plane
needs (status, runtime settings, install and roll back a pack, telemetry, stop), never through
its internals; :class:`edge.server.EdgeDaemon` implements it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.cloud_client import CloudError
from edge.metrics import WindowStats
from edge.shadow import DesiredState, Doc, Scope
from shared import control as c
from shared.mqtt import Will, build_client, refused_for_good
from shared.net import split_host_port
from shared.pack.manifest import PackError, open_pack
from shared.settings.edge import EdgeSettings, RuntimeSettings

log = logging.getLogger(__name__)

PUBLISH_WAIT_S = 2.0
TELEMETRY_TICK_S = 0.25
# Quiet time after an applied document before the agent subscribes to the desired topics again:
# the broker then re-sends the retained documents, so a device that missed messages in a burst
# (the broker drops what a slow client cannot take) ends on the retained version.
RESYNC_QUIET_S = 1.0


def _software() -> str:
    try:
        return version("open-autoglm")
    except PackageNotFoundError:
        return "dev"


@dataclass(frozen=True)
class RunningModel:
    """The pack a daemon serves, as status and telemetry report it."""

    name: str
    version: str
    precision: str  # "fp32" or "int8"
    providers: list[str]  # ONNX Runtime execution providers in use

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


class Daemon(Protocol):
    """What the control plane needs of an edge daemon."""

    @property
    def settings(self) -> EdgeSettings: ...

    @property
    def desired(self) -> DesiredState:
        """The device shadow: desired documents in force and the settings they give."""
        ...

    @property
    def runtime(self) -> RuntimeSettings: ...

    def uptime_s(self) -> float: ...

    def running(self) -> RunningModel: ...

    def apply_runtime(self, runtime: RuntimeSettings) -> None:
        """Apply new runtime settings at once."""
        ...

    async def fetch_pack(self, name: str, version: str) -> Path:
        """Download and verify an announced pack into the daemon's pack store."""
        ...

    async def swap_pack(self, pack_dir: Path) -> object:
        """Load, self-test and switch to a pack; PackError keeps the running one."""
        ...

    async def rollback(self) -> object:
        """Switch back to the pack before the last swap; PackError when there is none."""
        ...

    async def discard_pack(self, pack_dir: Path) -> None:
        """Remove a fetched pack that a failed roll-out left, unless it is in use."""
        ...

    def drain_telemetry(self) -> WindowStats:
        """The request statistics since the last call."""
        ...

    def stop(self) -> None: ...


class EdgeAgent:
    """Connects one daemon to the control plane."""

    def __init__(self, daemon: Daemon, loop: asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.loop = loop
        s = daemon.settings
        self.device_id = s.device_id
        self.topics = c.Topics(s.fleet, s.device_id)
        self._lock = asyncio.Lock()  # one configuration or model change at a time
        # Announcements that failed here, by name, version and announced files: the same one
        # delivered again is not retried; a corrected one (other files) is.
        self._failed: set[tuple[str, str, str]] = set()
        self._telemetry: asyncio.Task[None] | None = None
        self._resync: asyncio.TimerHandle | None = None
        password = s.mqtt.password.get_secret_value() if s.mqtt.password else None
        self.client = build_client(
            f"autoglm-edge-{s.fleet}-{s.device_id}",
            username=s.mqtt.username,
            password=password,
            tls=s.mqtt.tls,
            will=Will(self.topics.status, c.dump(self.status("lost"))),
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the daemon serves whether or not the broker is there."""
        host, port = split_host_port(self.daemon.settings.mqtt.broker)
        self.client.connect_async(host, port, keepalive=self.daemon.settings.mqtt.keepalive_s)
        self.client.loop_start()
        self._telemetry = self.loop.create_task(self._telemetry_loop())
        log.info("MQTT: connecting to %s as %s", self.daemon.settings.mqtt.broker, self.device_id)

    async def stop(self) -> None:
        """Publish ``offline`` (when connected), disconnect, stop the network thread."""
        if self._telemetry is not None:
            self._telemetry.cancel()
        if self._resync is not None:
            self._resync.cancel()
        if self.client.is_connected():
            info = self._publish(self.topics.status, self.status("offline"), retain=True)
            await asyncio.to_thread(info.wait_for_publish, PUBLISH_WAIT_S)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            if refused_for_good(reason):
                log.error("MQTT: broker refused us (%s); not retrying: fix the credentials", reason)
                client.disconnect()
            else:
                log.warning("MQTT: connection refused (%s); retrying", reason)
            return
        t = self.topics
        client.subscribe(
            [(t.fleet_desired, 1), (t.device_desired, 1), (t.announce, 1), (t.commands, 1)]
        )
        self._publish(t.status, self.status("online"), retain=True)
        log.info("MQTT: connected to %s", self.daemon.settings.mqtt.broker)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT: disconnected (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        asyncio.run_coroutine_threadsafe(
            self._handle(msg.topic, bytes(msg.payload), getattr(msg, "properties", None)),
            self.loop,
        )

    # -- handlers (event loop) -----------------------------------------------------------------

    async def _handle(self, topic: str, payload: bytes, props: Properties | None) -> None:
        t = self.topics
        try:
            if topic.startswith(t.commands[:-1]):  # an empty command payload means no args
                await self._command(topic.rsplit("/", 1)[1], payload, props)
            elif not payload:
                log.info("MQTT: %s cleared; keeping what is in force", topic)
            elif topic == t.fleet_desired:
                await self._desired("fleet", payload)
            elif topic == t.device_desired:
                await self._desired("device", payload)
            elif topic == t.announce:
                await self._announce(payload)
        except Exception:
            log.exception("MQTT: handling %s failed", topic)

    async def _desired(self, scope: Scope, payload: bytes) -> None:
        async with self._lock:
            try:
                doc = c.parse(c.DesiredConfig, payload)
            except c.PayloadError as exc:
                self._report(scope, _version_in(payload), 400, "invalid document", exc.problems)
                return
            state = self.daemon.desired
            proposal = state.propose(scope, Doc(doc.version, doc.patch()))
            if proposal is None:
                in_force = state.version(scope)
                if doc.version == in_force:  # a retained document delivered again
                    log.debug("MQTT: %s config v%d is in force already", scope, doc.version)
                    return
                log.info(
                    "MQTT: %s config v%d is older than v%d: refused", scope, doc.version, in_force
                )
                detail = f"version {doc.version} is older than v{in_force} in force"
                self._report(scope, doc.version, 400, detail, [f"version: {detail}"])
                return
            if proposal.settings is None:
                self._report(scope, doc.version, 400, "rejected", proposal.errors)
                return
            old = self.daemon.runtime
            try:
                self.daemon.apply_runtime(proposal.settings)
                state.commit(proposal)
            except Exception as exc:
                self.daemon.apply_runtime(old)
                log.exception("MQTT: applying %s config v%d failed", scope, doc.version)
                self._report(scope, doc.version, 500, f"applying failed, rolled back: {exc}", [])
                return
            log.info("MQTT: applied %s config v%d", scope, doc.version)
            self._report(scope, doc.version, 200, "applied", [])
            self._publish(self.topics.status, self.status("online"), retain=True)
            self._schedule_resync()

    def _schedule_resync(self) -> None:
        """After RESYNC_QUIET_S without another applied document, ask the broker for the
        retained desired documents again (MQTT 5 re-sends them on a repeated SUBSCRIBE)."""
        if self._resync is not None:
            self._resync.cancel()
        self._resync = self.loop.call_later(RESYNC_QUIET_S, self._subscribe_desired)

    def _subscribe_desired(self) -> None:
        self._resync = None
        if self.client.is_connected():
            t = self.topics
            self.client.subscribe([(t.fleet_desired, 1), (t.device_desired, 1)])

    async def _announce(self, payload: bytes) -> None:
        try:
            ann = c.parse(c.ModelAnnouncement, payload)
        except c.PayloadError as exc:
            log.warning("MQTT: invalid model announcement: %s", exc)
            return
        if not ann.targets(self.device_id):
            return
        async with self._lock:
            running = self.daemon.running()
            if (running.name, running.version) == (ann.name, ann.version):
                self._model_report(ann, "applied", "already running")
                return
            key = (ann.name, ann.version, _files_key(ann))
            if key in self._failed:
                return  # reported already; a corrected announcement (or version) is needed
            self._model_report(ann, "downloading", "")
            dest: Path | None = None
            try:
                dest = await self.daemon.fetch_pack(ann.name, ann.version)
                _check_announced(ann, dest)
                await self.daemon.swap_pack(dest)
            except (PackError, CloudError, OSError) as exc:
                self._failed.add(key)
                log.error("roll-out of %s/%s failed: %s", ann.name, ann.version, exc)
                if dest is not None:  # what was downloaded goes, so that a retry fetches again
                    await self.daemon.discard_pack(dest)
                self._model_report(ann, "failed", str(exc))
                return
            self._model_report(ann, "applied", "")
            self._publish(self.topics.status, self.status("online"), retain=True)

    async def _command(self, name: str, payload: bytes, props: Properties | None) -> None:
        ok, detail, data = True, "", {}
        try:
            c.parse(c.Command, payload or b"{}")
            if name == "ping":
                data = {"uptime_s": round(self.daemon.uptime_s(), 1)}
                data |= self.status("online").model_dump(include={"pack", "providers"})
            elif name == "rollback":
                async with self._lock:
                    await self.daemon.rollback()
                detail = f"now running {self.daemon.running().label}"
                self._publish(self.topics.status, self.status("online"), retain=True)
            elif name == "drain":
                detail = "draining: requests in flight finish, then the daemon stops"
            else:
                ok, detail = False, f"unknown command {name!r}; known: {', '.join(c.COMMANDS)}"
        except (c.PayloadError, PackError) as exc:
            ok, detail = False, str(exc)
        reply = c.CommandReply(
            ok=ok, command=name, device_id=self.device_id, detail=detail, data=data
        )
        response_topic = getattr(props, "ResponseTopic", None)
        if response_topic and not self.topics.is_reply_topic(response_topic):
            log.warning(
                "MQTT: command %s asked for a reply on %r, outside %s*: not sent",
                name,
                response_topic,
                self.topics.replies,
            )
        elif response_topic:
            out = Properties(mqtt.PacketTypes.PUBLISH)
            correlation = getattr(props, "CorrelationData", None)
            if correlation is not None:
                out.CorrelationData = correlation
            info = self.client.publish(response_topic, c.dump(reply), qos=1, properties=out)
            await asyncio.to_thread(info.wait_for_publish, PUBLISH_WAIT_S)
        if name == "drain" and ok:
            self.daemon.stop()

    # -- outgoing --------------------------------------------------------------------------------

    def status(self, state: str) -> c.DeviceStatus:
        model = self.daemon.running()
        return c.DeviceStatus(
            state=state,  # type: ignore[arg-type]
            device_id=self.device_id,
            fleet=self.topics.fleet,
            pack=model.label,
            precision=model.precision,
            providers=model.providers,
            fleet_version=self.daemon.desired.version("fleet"),
            device_version=self.daemon.desired.version("device"),
            software=_software(),
        )

    def _report(self, scope: Scope, ver: int, status: int, detail: str, errors: list[str]) -> None:
        state = self.daemon.desired
        report = c.ReportedConfig(
            version=ver,
            scope=scope,
            status=status,  # type: ignore[arg-type]
            detail=detail,
            errors=errors,
            fleet_version=state.version("fleet"),
            device_version=state.version("device"),
            effective=state.effective.model_dump(mode="json"),
        )
        self._publish(self.topics.reported, report, retain=True)

    def _model_report(self, ann: c.ModelAnnouncement, status: str, detail: str) -> None:
        report = c.ModelReport(
            name=ann.name,
            version=ann.version,
            status=status,  # type: ignore[arg-type]
            detail=detail,
            running=self.daemon.running().label,
        )
        self._publish(self.topics.models_reported, report, retain=True)

    def _publish(self, topic: str, message: Any, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, c.dump(message), qos=1, retain=retain)

    async def _telemetry_loop(self) -> None:
        """Every ``telemetry.interval_s`` (re-read each tick: operators may change it)."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(TELEMETRY_TICK_S)
            if time.monotonic() - last < self.daemon.runtime.telemetry.interval_s:
                continue
            last = time.monotonic()
            stats = self.daemon.drain_telemetry()
            if not self.client.is_connected():
                continue
            model = self.daemon.running()
            message = c.Telemetry(
                device_id=self.device_id,
                interval_s=self.daemon.runtime.telemetry.interval_s,
                requests=stats.requests,
                errors=stats.errors,
                escalation_share=round(stats.escalation_share, 4),
                fallbacks=stats.requests.get("edge_fallback", 0),
                cache_hits=stats.requests.get("cache", 0),
                cloud_errors=stats.cloud_errors,
                latency_ms=stats.latency_ms,
                providers=model.providers,
                pack=model.label,
                fleet_version=self.daemon.desired.version("fleet"),
                device_version=self.daemon.desired.version("device"),
            )
            self.client.publish(self.topics.telemetry, c.dump(message), qos=0)


def _version_in(payload: bytes) -> int:
    """The version of a document that failed validation, when one can be read (else 0); a
    document nested too deep to parse safely is searched, not parsed."""
    if len(payload) > c.MAX_PAYLOAD_BYTES:
        return 0
    if c.nesting_depth(payload) > c.MAX_DEPTH:
        found = re.search(rb'^\s*\{\s*"version"\s*:\s*(\d{1,12})\b', payload)
        return int(found.group(1)) if found else 0
    try:
        v = json.loads(payload).get("version")
    except (ValueError, AttributeError):
        return 0
    return v if isinstance(v, int) else 0


def _files_key(ann: c.ModelAnnouncement) -> str:
    return json.dumps({k: v.model_dump() for k, v in sorted(ann.files.items())})


def _check_announced(ann: c.ModelAnnouncement, dest: Path) -> None:
    """The fetched pack must be exactly the announced one: name, version, every file's hash."""
    manifest = open_pack(dest)
    if (manifest.name, manifest.version) != (ann.name, ann.version):
        raise PackError(
            f"fetched {manifest.name}/{manifest.version}, announced {ann.name}/{ann.version}"
        )
    if manifest.files != ann.files:
        names = sorted(set(manifest.files) | set(ann.files))
        differ = [n for n in names if manifest.files.get(n) != ann.files.get(n)]
        raise PackError(f"the fetched pack's files differ from the announcement: {differ[:3]}")
