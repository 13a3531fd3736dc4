"""``EdgeDaemon``: the edge's gRPC server, from settings to a clean stop.

Startup: open, verify, load and self-test the pack's proxy, then serve ``Inference`` with health
and reflection on the local address (loopback TCP or a Unix socket) and, when asked, Prometheus
metrics. SIGHUP reloads the configured pack path (a ``latest`` symlink re-pointed by a roll-out)
through the same hot swap the control plane uses. SIGTERM/SIGINT: health goes NOT_SERVING and
requests in flight get ``STOP_GRACE_S`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from edge.agent import EdgeAgent, RunningModel
from edge.cloud_client import CloudClient
from edge.metrics import EdgeMetrics, WindowStats
from edge.pack_history import PackHistory
from edge.proxy import Proxy, ProxyHolder, load_proxy
from edge.servicer import EdgeInference
from edge.shadow import DesiredState
from shared.files import StateWriter
from shared.pack.manifest import PackError
from shared.rpc import INFERENCE_SERVICE, inference_pb2_grpc
from shared.serving import (
    InvalidMessagesInterceptor,
    add_health_and_reflection,
    bind,
    set_serving,
    stop_on_signals,
    warn_if_exposed,
)
from shared.settings.edge import EdgeSettings, RuntimeSettings

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class EdgeDaemon:
    """The proxy, the router, the cloud client and the local API of one device."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.state_writer = StateWriter("edge-state")
        self.desired = DesiredState(settings.runtime, settings.state_dir, self.state_writer)
        runtime = self.desired.load()  # the last applied configuration, broker or not
        self.history = PackHistory(settings.state_dir)
        self.proxies = ProxyHolder(self._startup_proxy())
        self.metrics = EdgeMetrics()
        self._show_model(self.proxies.current)
        self.cloud = CloudClient(settings.cloud, runtime.cloud_call, device_id=settings.device_id)
        self.metrics.watch_breakers(self.cloud.breaker_states)
        workers = min(4, os.cpu_count() or 1)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="proxy")
        self.inference = EdgeInference(
            self.proxies,
            self.cloud,
            runtime,
            self.metrics,
            self.executor,
            max_new_tokens_limit=settings.max_new_tokens_limit,
        )
        self.address: str | None = None
        self._stop = asyncio.Event()

    def _startup_proxy(self) -> Proxy:
        """The pack a roll-out left in force, when it still loads; else the configured one."""
        s = self.settings
        if self.history.current is not None:
            try:
                return load_proxy(self.history.current, s.onnx, s.state_dir)
            except PackError as exc:
                log.warning("cannot run the saved pack, using %s: %s", s.pack, exc)
        return load_proxy(s.pack, s.onnx, s.state_dir)  # PackError: the daemon cannot start

    @property
    def runtime(self) -> RuntimeSettings:
        return self.inference.runtime

    # -- what the control plane uses (edge.agent.Daemon) ---------------------------------------

    def uptime_s(self) -> float:
        return time.monotonic() - self.started

    def running(self) -> RunningModel:
        proxy = self.proxies.current
        return RunningModel(
            proxy.manifest.name, proxy.version, proxy.precision, proxy.decoder.active_providers
        )

    async def fetch_pack(self, name: str, version: str) -> Path:
        """Download and verify ``name/version`` into the pack store (the state folder)."""
        return await self.cloud.fetch_pack(name, version, self.history.packs_dir)

    async def discard_pack(self, pack_dir: Path) -> None:
        running = self.proxies.current.pack_dir.resolve()
        if pack_dir.resolve() != running:
            await asyncio.to_thread(self.history.discard, pack_dir)

    def drain_telemetry(self) -> WindowStats:
        return self.metrics.window.drain()

    def apply_runtime(self, runtime: RuntimeSettings) -> None:
        """Apply new runtime settings at once (the control plane calls this)."""
        self.inference.apply_runtime(runtime)

    async def swap_pack(self, pack_dir: Path) -> Proxy:
        """Load and self-test ``pack_dir`` beside the running proxy, then switch to it.

        On failure (PackError) the running proxy stays and keeps serving."""
        old = self.proxies.current
        try:
            new = await self.proxies.load_and_swap(
                pack_dir, self.settings.onnx, self.settings.state_dir
            )
        except PackError:
            self.metrics.model_swaps.labels(result="failed").inc()
            raise
        try:
            await asyncio.to_thread(self.history.switched, new.pack_dir, old.pack_dir)
        except OSError as exc:
            log.warning("swapped, but cannot record it in %s: %s", self.history.path, exc)
        self.metrics.model_swaps.labels(result="ok").inc()
        self._show_model(new)
        return new

    def _show_model(self, proxy: Proxy) -> None:
        providers = proxy.decoder.active_providers
        self.metrics.set_model(proxy.label, proxy.precision, providers)
        log.info("proxy %s (%s) on %s", proxy.label, proxy.precision, ", ".join(providers))

    async def _reload(self) -> None:
        """SIGHUP: swap to whatever the configured pack path points at now."""
        try:
            new = await self.swap_pack(self.settings.pack)
        except PackError as exc:
            log.error("reload refused, keeping %s: %s", self.proxies.current.label, exc)
            return
        log.info("reloaded: now serving %s", new.label)

    async def rollback(self) -> Proxy:
        """Swap back to the pack that ran before the last swap; PackError when there is none."""
        previous = self.history.previous
        if previous is None:
            raise PackError("no previous pack to roll back to")
        return await self.swap_pack(previous)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until :meth:`stop`, SIGTERM or SIGINT; ServeError when the address is unusable."""
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=[InvalidMessagesInterceptor()],
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        inference_pb2_grpc.add_InferenceServicer_to_server(self.inference, server)
        health = add_health_and_reflection(server, (INFERENCE_SERVICE,))
        listen = self.settings.listen
        if listen.startswith("unix:"):
            Path(listen[5:]).parent.mkdir(parents=True, exist_ok=True)
        warn_if_exposed(listen, "the local API", "bind it to loopback or a unix: socket")
        self.address = bind(server, listen, None)
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = loop.create_task(self._reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        agent = EdgeAgent(self, loop) if self.settings.mqtt.enabled else None
        try:
            await server.start()
            await set_serving(health, (INFERENCE_SERVICE,))
            if agent is not None:
                agent.start()
            if self.settings.metrics_port > 0:
                host, port = self.settings.metrics_host, self.settings.metrics_port
                self.metrics.start_http(port, host)
                log.info("metrics on http://%s:%d/metrics", host, port)
            with stop_on_signals(self._stop):
                try:
                    loop.add_signal_handler(signal.SIGHUP, on_hup)
                except (NotImplementedError, RuntimeError):
                    log.debug("no SIGHUP reload here")
                log.info(
                    "edge %s serving %s on %s (cloud: %s)",
                    self.settings.device_id,
                    self.proxies.current.label,
                    self.address,
                    ", ".join(self.cloud.targets),
                )
                if on_ready is not None:
                    on_ready(self.address)
                await self._stop.wait()
            log.info("shutting down: requests in flight get %.1f s", STOP_GRACE_S)
            await health.enter_graceful_shutdown()
        finally:
            if agent is not None:
                await agent.stop()
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            await server.stop(STOP_GRACE_S)
            await self.cloud.close()
            await asyncio.to_thread(self.state_writer.flush)
            self.executor.shutdown(wait=False, cancel_futures=True)
            log.info("edge stopped")
