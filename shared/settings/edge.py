"""Settings of the edge daemon (`autoglm edge serve`).

Only `runtime` may change while the daemon runs (over MQTT, see `RuntimeSettings.merged`);
everything else is read once at start and needs a restart to change.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.dotted import deep_merge
from shared.names import NAME_PATTERN, NAME_RULE, is_plain_name
from shared.settings.base import (
    ComponentSettings,
    ExpandedPath,
    HostPort,
    HostPortList,
    ListenAddress,
    Section,
    SettingsError,
    StrList,
    validation_problems,
)

# ---------------------------------------------------------------------------------------------
# Runtime settings: the part operators may change over MQTT.


class RoutingSettings(Section):
    """Which requests the edge answers and which it escalates to the cloud."""

    mode: Literal["auto", "edge_only", "cloud_only"] = Field(
        default="auto",
        description="auto: escalate when the proxy is not confident; edge_only: never call the "
        "cloud; cloud_only: send every request to the cloud.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Escalate when the proxy's running confidence drops below this value.",
    )
    target_max_escalation: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Pick the threshold from the pack's calibration table so that at most this "
        "share of requests is escalated.",
    )
    target_min_accuracy_share: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Pick the threshold from the pack's calibration table so that the mix keeps "
        "at least this share of the full model's accuracy.",
    )

    @model_validator(mode="after")
    def _at_most_one_target(self) -> Self:
        chosen = [
            name
            for name in ("threshold", "target_max_escalation", "target_min_accuracy_share")
            if getattr(self, name) is not None
        ]
        if len(chosen) > 1:
            raise ValueError(f"set at most one of {', '.join(chosen)}; they all choose a threshold")
        return self


class FallbackSettings(Section):
    """What the edge does when the cloud cannot answer."""

    on_cloud_failure: Literal["edge", "fail"] = Field(
        default="edge",
        description="edge: answer with the proxy, flagged route=EDGE_FALLBACK; fail: return the "
        "error (UNAVAILABLE or DEADLINE_EXCEEDED) to the app.",
    )


class CacheSettings(Section):
    """The edge's cache of answers to repeated requests."""

    enabled: bool = Field(default=True, description="Answer repeated requests from the cache.")
    max_entries: int = Field(
        default=1024, ge=1, le=1_000_000, description="Most answers kept (least recently used go)."
    )
    ttl_s: float = Field(
        default=300.0,
        ge=0.0,
        le=86_400.0,
        description="Seconds an answer stays valid; 0 = forever.",
    )


class TelemetrySettings(Section):
    """Telemetry the device publishes over MQTT."""

    interval_s: float = Field(
        default=30.0, ge=1.0, le=3600.0, description="Seconds between two telemetry messages."
    )


class CloudCallSettings(Section):
    """How the edge calls the cloud."""

    deadline_s: float = Field(
        default=10.0, gt=0.0, le=600.0, description="Deadline of one cloud call, in seconds."
    )
    retries: int = Field(
        default=2, ge=0, le=4, description="Retries of a failed call (UNAVAILABLE only)."
    )
    retry_backoff_s: float = Field(
        default=0.1,
        gt=0.0,
        le=10.0,
        description="First back-off before a retry; doubles each retry, capped at 10x.",
    )
    breaker_failures: int = Field(
        default=5, ge=1, le=1000, description="Failures in a row that open the circuit breaker."
    )
    breaker_cooldown_s: float = Field(
        default=30.0,
        gt=0.0,
        le=3600.0,
        description="Seconds the breaker stays open before one trial call.",
    )


class RuntimeSettings(Section):
    """The settings operators may change over MQTT (`config/desired`) without a restart."""

    routing: RoutingSettings = Field(
        default_factory=RoutingSettings, description="Routing between edge and cloud."
    )
    fallback: FallbackSettings = Field(
        default_factory=FallbackSettings, description="Behaviour when the cloud fails."
    )
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Answer cache.")
    telemetry: TelemetrySettings = Field(
        default_factory=TelemetrySettings, description="Telemetry over MQTT."
    )
    cloud_call: CloudCallSettings = Field(
        default_factory=CloudCallSettings, description="Calls to the cloud."
    )

    def merged(self, patch: Mapping[str, Any]) -> RuntimeSettings:
        """These settings with a desired document's values applied; SettingsError says why not.

        `patch` is a (partial) desired document without its `version`; keys of EdgeSettings
        that need a restart are refused by name.
        """
        restart_only = sorted(set(patch) & (set(EdgeSettings.model_fields) - {"runtime"}))
        if restart_only:
            names = ", ".join(restart_only)
            problems = [
                f"{name}: cannot change at run time; needs a restart" for name in restart_only
            ]
            raise SettingsError(f"{names}: cannot change at run time; needs a restart", problems)
        try:
            return RuntimeSettings.model_validate(deep_merge(self.model_dump(), patch))
        except ValidationError as exc:
            problems = validation_problems(RuntimeSettings, exc)
            raise SettingsError("; ".join(problems), problems) from None


# ---------------------------------------------------------------------------------------------
# Groups that need a restart.


class ClientTLSSettings(Section):
    """TLS of a connection the edge opens (to the cloud or the broker)."""

    enabled: bool = Field(
        default=False, description="Use TLS; with no ca_file the system's CAs verify the server."
    )
    ca_file: ExpandedPath | None = Field(
        default=None, description="PEM file of the CA(s) that sign the server's certificate."
    )
    cert_file: ExpandedPath | None = Field(
        default=None, description="PEM client certificate, for mutual TLS (needs key_file)."
    )
    key_file: ExpandedPath | None = Field(default=None, description="PEM private key of cert_file.")
    server_name: str | None = Field(
        default=None,
        description="Expect this name in the server's certificate instead of the host's.",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set cert_file and key_file together (or neither)")
        return self


class EdgeCloudSettings(Section):
    """Where and how the edge reaches the cloud service."""

    targets: HostPortList = Field(
        default_factory=lambda: ["127.0.0.1:50051"],
        min_length=1,
        description="Cloud endpoints (host:port), tried in order.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the cloud with every call."
    )
    tls: ClientTLSSettings = Field(
        default_factory=ClientTLSSettings, description="TLS towards the cloud."
    )
    keepalive_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="Seconds between HTTP/2 keep-alive pings while calls are in flight.",
    )
    compression: Literal["none", "gzip"] = Field(
        default="none", description="Compress requests to the cloud (gzip helps on slow links)."
    )


class OnnxSettings(Section):
    """ONNX Runtime, which runs the proxy."""

    intra_op_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Threads inside one operator; 0 = ONNX Runtime's choice.",
    )
    inter_op_threads: int = Field(
        default=0, ge=0, le=256, description="Threads across operators; 0 = ONNX Runtime's choice."
    )
    providers: StrList = Field(
        default_factory=lambda: [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ],
        min_length=1,
        description="Execution providers in order of preference; those not available are skipped.",
    )
    trt_cache_dir: ExpandedPath | None = Field(
        default=None,
        description="Folder for TensorRT engine caches; unset = under state_dir.",
    )
    precision: Literal["fp32", "int8"] = Field(
        default="fp32",
        description="Proxy variant to run: int8 is smaller and faster on CPUs, at the token "
        "agreement the pack records (falls back to fp32 when the pack has no int8 file).",
    )


class MqttSettings(Section):
    """The MQTT broker of the control plane."""

    enabled: bool = Field(
        default=False,
        description="Connect to the broker (`--mqtt HOST:PORT` turns it on); off: no remote "
        "control, no telemetry (the saved configuration and pack still apply).",
    )
    broker: HostPort = Field(default="127.0.0.1:1883", description="Broker address, host:port.")
    username: str | None = Field(default=None, description="User name at the broker.")
    password: SecretStr | None = Field(default=None, description="Password at the broker.")
    keepalive_s: int = Field(
        default=30, ge=5, le=3600, description="Seconds between MQTT keep-alive pings."
    )
    tls: ClientTLSSettings = Field(
        default_factory=ClientTLSSettings, description="TLS towards the broker."
    )


class EdgeSettings(ComponentSettings):
    """Settings of the edge daemon."""

    model_config = SettingsConfigDict(env_prefix="AUTOGLM_EDGE_")

    device_id: str = Field(
        default="",
        description="This device's id in MQTT topics and cloud metrics; empty = the host name.",
    )
    fleet: str = Field(
        default="default", pattern=NAME_PATTERN, description="Fleet the device belongs to."
    )
    listen: ListenAddress = Field(
        default="127.0.0.1:50061",
        description="Local gRPC address: host:port, or unix:PATH for a Unix socket.",
    )
    pack: ExpandedPath = Field(
        default=Path("packs/demo/latest"),
        description="Model pack to start with, unless state_dir records a newer applied one.",
    )
    state_dir: ExpandedPath = Field(
        default=Path("~/.local/state/autoglm/edge"),
        description="Folder for what survives a restart: applied settings, downloaded packs.",
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics page; 0 = off."
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the /metrics page listens on; 0.0.0.0 in a container or pod, so "
        "that Prometheus can reach it.",
    )
    max_new_tokens_limit: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Largest max_new_tokens an app may ask for (INVALID_ARGUMENT beyond).",
    )
    max_message_bytes: int = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        le=1024 * 1024 * 1024,
        description="Largest gRPC message the local API accepts or sends, in bytes.",
    )
    cloud: EdgeCloudSettings = Field(
        default_factory=EdgeCloudSettings, description="Connection to the cloud."
    )
    onnx: OnnxSettings = Field(default_factory=OnnxSettings, description="ONNX Runtime.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Control plane.")
    runtime: RuntimeSettings = Field(
        default_factory=RuntimeSettings,
        description="Settings operators may change over MQTT.",
    )

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        value = value or socket.gethostname().split(".")[0]
        if not is_plain_name(value):  # device ids become MQTT topic levels
            raise ValueError(f"{value!r} is not a valid id: {NAME_RULE}")
        return value
