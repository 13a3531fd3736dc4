"""``serve()``: the cloud's gRPC server, from settings to a drained shutdown.

Startup: check auth settings, open and verify the pack, load the full model, start the engine
thread, then the gRPC server (Inference, ModelStore, health, reflection). Shutdown on SIGTERM or
SIGINT: health goes NOT_SERVING, new calls get UNAVAILABLE, running requests get
``drain_grace_s`` to finish, and ``server.stop`` runs in ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import torch

from cloud.engine import AsyncEngine, EngineCore
from cloud.model import weights
from cloud.service.auth import BearerAuthInterceptor
from cloud.service.metrics import ServiceMetrics
from cloud.service.model_store import ModelStoreServicer
from cloud.service.servicer import InferenceServicer, metrics_observer
from shared.pack.manifest import open_pack
from shared.rpc import (
    INFERENCE_SERVICE,
    MODEL_STORE_SERVICE,
    inference_pb2_grpc,
    model_store_pb2_grpc,
)
from shared.serving import (
    InvalidMessagesInterceptor,
    ServeError,
    add_health_and_reflection,
    bind,
    set_serving,
    stop_on_signals,
    warn_if_exposed,
)
from shared.settings.cloud import CloudSettings, ServerTLSSettings
from shared.tls import PemFileError, read_pem
from shared.tokenizer import tokenizer_from_spec

log = logging.getLogger(__name__)

# Seconds the server keeps open after the engine drained, to send the last answers.
STOP_GRACE_S = 2.0


def pick_device(wanted: str) -> str:
    """``cuda`` when asked for, or when ``auto`` and a GPU is present; else ``cpu``."""
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def _credentials(tls: ServerTLSSettings) -> grpc.ServerCredentials | None:
    if tls.cert_file is None or tls.key_file is None:
        return None
    ca = read_pem(tls.client_ca_file, "tls.client_ca_file")
    key, cert = read_pem(tls.key_file, "tls.key_file"), read_pem(tls.cert_file, "tls.cert_file")
    assert key is not None and cert is not None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def _bind(server: grpc.aio.Server, listen: str, tls: ServerTLSSettings) -> str:
    """Open the port; returns the address actually bound (port 0 becomes the real port)."""
    try:
        creds = _credentials(tls)
    except PemFileError as exc:  # a certificate or key file that cannot be read
        raise ServeError(f"TLS: {exc}") from None
    address = bind(server, listen, creds)
    if creds is None:
        warn_if_exposed(listen, "serving", "set [tls] cert_file and key_file")
    else:
        mode = "mutual TLS" if tls.client_ca_file is not None else "TLS"
        log.info("serving with %s", mode)
    return address


class EngineDied(RuntimeError):
    """The engine thread stopped on an unexpected error; the process should be restarted."""


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def serve(settings: CloudSettings, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the cloud service until SIGTERM/SIGINT, then drain and stop.

    Raises AuthConfigError (auth not set up), PackError (pack missing or corrupt) or ServeError
    (address not usable) before anything listens, and EngineDied if the engine thread stops on
    an error while serving (health turns NOT_SERVING first). ``on_ready`` gets the bound
    address once the server accepts calls.
    """
    auth = BearerAuthInterceptor.from_settings(settings.tokens_file, settings.auth_disabled)
    pack_dir = Path(settings.pack).resolve()
    manifest = open_pack(pack_dir)
    label = f"{manifest.name}/{manifest.version}"
    device = pick_device(settings.device)
    log.info("loading the full model of pack %s on %s (device=%s)", label, device, settings.device)
    model = weights.load(pack_dir / manifest.full.weights, manifest.full.config, device)
    tokenizer = tokenizer_from_spec(json.loads((pack_dir / manifest.tokenizer).read_text()))

    metrics = ServiceMetrics()
    observer = metrics_observer(metrics)
    loop = asyncio.get_running_loop()
    died = asyncio.Event()  # the engine thread stopped on an error: stop serving, exit non-zero
    engine = AsyncEngine(
        EngineCore(model, tokenizer, settings.engine, device=device, observer=observer),
        on_death=lambda: loop.call_soon_threadsafe(died.set),
    )
    limit = settings.max_message_bytes
    server = grpc.aio.server(
        interceptors=[auth, InvalidMessagesInterceptor()],
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing
            # Edges ping every keepalive_s (default 30 s) while calls are open; allow it.
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ],
    )
    inference_pb2_grpc.add_InferenceServicer_to_server(
        InferenceServicer(engine, label, metrics, auth), server
    )
    model_store_pb2_grpc.add_ModelStoreServicer_to_server(
        ModelStoreServicer(
            Path(settings.packs_dir), max_bytes_per_s=settings.fetch_max_mib_s * 2**20
        ),
        server,
    )
    health_servicer = add_health_and_reflection(server, (INFERENCE_SERVICE, MODEL_STORE_SERVICE))
    address = _bind(server, settings.listen, settings.tls)

    stop = asyncio.Event()
    engine.start()
    try:
        await server.start()
        await set_serving(health_servicer, (INFERENCE_SERVICE, MODEL_STORE_SERVICE))
        if settings.metrics_port > 0:
            host, port = settings.metrics_host, settings.metrics_port
            metrics.start_http(port, host)
            log.info("metrics on http://%s:%d/metrics", host, port)
        log.info("serving pack %s on %s", label, address)
        if on_ready is not None:
            on_ready(address)
        with stop_on_signals(stop):
            await _first_of(stop, died)
        if died.is_set():
            await health_servicer.enter_graceful_shutdown()
            raise EngineDied("the engine thread stopped on an error (logged above); not serving")
        log.info("shutting down: draining for up to %.1f s", settings.drain_grace_s)
        await health_servicer.enter_graceful_shutdown()
        await engine.drain(settings.drain_grace_s)
        log.info("engine drained")
    finally:
        await server.stop(STOP_GRACE_S)
        log.info("server stopped")
