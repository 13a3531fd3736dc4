"""Settings of the cloud service (`autoglm cloud serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from shared.settings.base import ComponentSettings, ExpandedPath, ListenAddress, Section


class ServerTLSSettings(Section):
    """TLS of the cloud's gRPC port; off when cert_file is unset."""

    cert_file: ExpandedPath | None = Field(
        default=None, description="PEM server certificate (chain); set to serve TLS."
    )
    key_file: ExpandedPath | None = Field(default=None, description="PEM private key of cert_file.")
    client_ca_file: ExpandedPath | None = Field(
        default=None,
        description="PEM CA(s) of client certificates; set to require mutual TLS.",
    )

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set cert_file and key_file together (or neither)")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        return self


class EngineSettings(Section):
    """The batching engine that runs the full model."""

    max_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Most sequences in one forward pass."
    )
    max_waiting: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Most requests queued behind a full batch; beyond it calls fail with "
        "RESOURCE_EXHAUSTED.",
    )
    max_prompt_tokens: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Longest prompt accepted (INVALID_ARGUMENT beyond); 0 = the model's context.",
    )
    max_new_tokens_limit: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Largest max_new_tokens a request may ask for (INVALID_ARGUMENT beyond).",
    )
    default_max_new_tokens: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="max_new_tokens when a request leaves it 0 (cut to the context left).",
    )
    batching: bool = Field(
        default=True,
        description="Continuous batching; off = one request at a time (baseline for benchmarks).",
    )
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Nice increment of the engine thread (Linux, 2 or more CPUs): on busy CPUs "
        "the server's event loop (admissions, refusals, health checks) runs before the next "
        "step. It yields to other processes too: 0 on a machine shared with edge daemons or "
        "other work.",
    )

    @model_validator(mode="after")
    def _default_within_limit(self) -> Self:
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            raise ValueError(
                f"default_max_new_tokens ({self.default_max_new_tokens}) exceeds "
                f"max_new_tokens_limit ({self.max_new_tokens_limit})"
            )
        return self


class CloudSettings(ComponentSettings):
    """Settings of the cloud service."""

    model_config = SettingsConfigDict(env_prefix="AUTOGLM_CLOUD_")

    listen: ListenAddress = Field(
        default="127.0.0.1:50051",
        description="gRPC address: host:port (port 0 = any free port), or unix:PATH.",
    )
    pack: ExpandedPath = Field(
        default=Path("packs/demo/latest"), description="Model pack whose full model is served."
    )
    packs_dir: ExpandedPath = Field(
        default=Path("packs"),
        description="Folder of packs (`<name>/<version>/`) that ModelStore serves.",
    )
    fetch_max_mib_s: float = Field(
        default=16.0,
        ge=0,
        le=1_000_000,
        description="Most MiB/s that all pack downloads together send (0 = no limit): streaming "
        "costs the server CPU that inference calls need (`autoglm bench fetch` measures it, "
        "docs/benchmarks.md); raise it on hosts with more cores.",
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
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Torch device of the model; auto = cuda when present."
    )
    tls: ServerTLSSettings = Field(
        default_factory=ServerTLSSettings, description="TLS of the gRPC port."
    )
    tokens_file: ExpandedPath | None = Field(
        default=None, description="File of accepted bearer tokens, one per line."
    )
    auth_disabled: bool = Field(
        default=False, description="Accept calls without a token (for local tests only)."
    )
    engine: EngineSettings = Field(default_factory=EngineSettings, description="Batching engine.")
    drain_grace_s: float = Field(
        default=10.0,
        ge=0.0,
        le=3600.0,
        description="Seconds running requests get to finish at shutdown before they are aborted.",
    )
    max_message_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        le=1024 * 1024 * 1024,
        description="Largest gRPC message sent or received, in bytes.",
    )
