"""The MQTT control plane's topics and payloads, one definition for the agent and `autoglm ctl`.

Topics live under ``autoglm/v1/<fleet>/`` and follow the shadow/twin pattern (desired and
reported state with versions, birth and Last Will, verified artifacts). Every payload is JSON,
validated by the pydantic models below; ``extra="forbid"`` everywhere so a typo is an error with
the field's name, not a silently ignored key.

======================================  ==========  ========  =================================
topic (under ``autoglm/v1/<fleet>/``)   direction   retained  payload
======================================  ==========  ========  =================================
``config/desired``                      op -> fleet yes       :class:`DesiredConfig`
``devices/<id>/config/desired``         op -> dev   yes       :class:`DesiredConfig`
``devices/<id>/config/reported``        dev -> op   yes       :class:`ReportedConfig`
``devices/<id>/status``                 dev -> op   yes       :class:`DeviceStatus`
``devices/<id>/telemetry``              dev -> op   no        :class:`Telemetry`
``models/announce``                     op -> fleet yes       :class:`ModelAnnouncement`
``devices/<id>/models/reported``        dev -> op   yes       :class:`ModelReport`
``devices/<id>/cmd/<name>``             op -> dev   no        :class:`Command` (MQTT v5 reply)
======================================  ==========  ========  =================================
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.pack.manifest import FileEntry

PREFIX = "autoglm/v1"
M = TypeVar("M", bound=BaseModel)
# Largest payload an agent reads; bigger ones are refused before JSON parsing.
MAX_PAYLOAD_BYTES = 64 * 1024
# Deepest nesting of objects and arrays a payload may have (checked before it is parsed).
MAX_DEPTH = 16
# Highest desired-document version: a version beyond it would lock out every later document.
MAX_VERSION = 2**31 - 1
COMMANDS = ("ping", "drain", "rollback")


class PayloadError(ValueError):
    """A control message that cannot be used; ``problems`` lists each one with its field."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class Topics:
    """Topic names of one fleet (and one device, where it has one)."""

    def __init__(self, fleet: str, device_id: str = "+") -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.base = f"{PREFIX}/{fleet}"
        dev = f"{self.base}/devices/{device_id}"
        self.fleet_desired = f"{self.base}/config/desired"
        self.device_desired = f"{dev}/config/desired"
        self.reported = f"{dev}/config/reported"
        self.status = f"{dev}/status"
        self.telemetry = f"{dev}/telemetry"
        self.announce = f"{self.base}/models/announce"
        self.models_reported = f"{dev}/models/reported"
        self.commands = f"{dev}/cmd/+"
        self.replies = f"{self.base}/replies/"  # command replies go only below this

    def is_reply_topic(self, topic: str) -> bool:
        """A topic a device may send a command's reply to: below ``replies/``, no wildcards."""
        rest = topic.removeprefix(self.replies)
        return rest != topic and bool(rest) and not any(ch in topic for ch in "+#\0")

    def command(self, name: str) -> str:
        return f"{self.base}/devices/{self.device_id}/cmd/{name}"

    def device_of(self, topic: str) -> str | None:
        """The device id in a per-device topic of this fleet (None for fleet topics)."""
        parts = topic.split("/")
        base = self.base.split("/")
        if (
            parts[: len(base)] == base
            and len(parts) > len(base) + 1
            and parts[len(base)] == "devices"
        ):
            return parts[len(base) + 1]
        return None


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


def now() -> float:
    return round(time.time(), 3)


class DesiredConfig(BaseModel):
    """A desired runtime configuration: ``version`` plus any part of ``RuntimeSettings``.

    The runtime keys (``routing``, ``fallback``, ``cache``, ``telemetry``, ``cloud_call``) are
    validated by the agent against the settings models; other keys are refused by name.
    """

    model_config = ConfigDict(extra="allow")
    version: int = Field(
        ge=1, le=MAX_VERSION, description="applied only when newer than the applied one"
    )

    def patch(self) -> dict[str, Any]:
        """The settings part of the document (everything but ``version``)."""
        return dict(self.model_extra or {})


class ReportedConfig(_Payload):
    version: int = Field(description="version of the document this report answers")
    scope: Literal["fleet", "device", "startup"] = Field(description="which document")
    status: Literal[200, 400, 500] = Field(description="200 applied, 400 invalid, 500 failed")
    detail: str = Field(default="", description="a readable summary")
    errors: list[str] = Field(default_factory=list, description="each problem with its field")
    fleet_version: int = Field(default=0, description="fleet document in force (0 = none)")
    device_version: int = Field(default=0, description="device document in force (0 = none)")
    effective: dict[str, Any] = Field(default_factory=dict, description="runtime settings in force")
    ts: float = Field(default_factory=now)


class DeviceStatus(_Payload):
    state: Literal["online", "offline", "lost"]
    device_id: str
    fleet: str
    pack: str = Field(default="", description="name/version of the proxy in use")
    precision: str = ""
    providers: list[str] = Field(default_factory=list)
    fleet_version: int = 0
    device_version: int = 0
    software: str = ""
    ts: float = Field(default_factory=now)


class Telemetry(_Payload):
    device_id: str
    ts: float = Field(default_factory=now)
    interval_s: float
    requests: dict[str, int] = Field(description="answers in the interval by route")
    errors: int = Field(description="requests refused or failed in the interval")
    escalation_share: float = Field(description="share of answered requests sent to the cloud")
    fallbacks: int
    cache_hits: int
    cloud_errors: int
    latency_ms: dict[str, float] = Field(description="p50 and p95 over the interval")
    providers: list[str]
    pack: str
    fleet_version: int
    device_version: int


class ModelAnnouncement(_Payload):
    """A pack version devices should run; ``devices`` empty = the whole fleet."""

    name: str
    version: str
    files: dict[str, FileEntry] = Field(description="every file of the pack with sha256 and size")
    devices: list[str] = Field(default_factory=list, description="staged roll-out: only these")
    ts: float = Field(default_factory=now)

    def targets(self, device_id: str) -> bool:
        return not self.devices or device_id in self.devices


class ModelReport(_Payload):
    name: str
    version: str = Field(description="the announced (or rolled back to) version")
    status: Literal["applied", "failed", "rolled_back", "downloading"]
    detail: str = ""
    running: str = Field(description="name/version of the proxy in use after this")
    ts: float = Field(default_factory=now)


class Command(_Payload):
    args: dict[str, Any] = Field(default_factory=dict)


class CommandReply(_Payload):
    ok: bool
    command: str
    device_id: str
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=now)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = {ord("{"): 1, ord("["): 1, ord("}"): -1, ord("]"): -1}


def nesting_depth(payload: bytes) -> int:
    """How deep objects and arrays nest in a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    for byte in _STRING.sub(b"", payload):
        step = _BRACKETS.get(byte)
        if step is not None:
            depth += step
            deepest = max(deepest, depth)
    return deepest


def parse(model: type[M], payload: bytes) -> M:
    """Validate a payload; PayloadError with one line per problem (field: message)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES} bytes")
    depth = nesting_depth(payload)
    if depth > MAX_DEPTH:
        raise PayloadError(f"payload nests {depth} levels deep; at most {MAX_DEPTH} are allowed")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        problems = []
        for e in exc.errors(include_url=False):
            where = ".".join(str(p) for p in e["loc"]) or "(payload)"
            problems.append(f"{where}: {e['msg']}")
        raise PayloadError("; ".join(problems), problems) from None


def dump(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()
