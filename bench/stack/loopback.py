"""The whole system on loopback, as child processes: for the demo and the hybrid benchmark.

    [mosquitto] <-MQTT-> edge daemons --gRPC--> DelayProxy (emulated WAN) --gRPC--> cloud

Every part is started with the same command an operator runs (``autoglm cloud serve``,
``autoglm edge serve``, ``mosquitto -c``), waited for through its health check, and stopped by
pid, in reverse order, also when the caller is interrupted (Ctrl-C). The cloud requires a bearer
token, generated per run and handed to the edges in a file, as in production.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from bench.stack.mosquitto import Broker
from bench.stack.processes import CloudServer, EdgeServer, ServerProcess
from bench.stack.wan import DelayProxy

Say = Callable[[str], None]


class Stack:
    """A cloud behind an emulated WAN, edge daemons named ``edge_ids``, and, with ``fleet``, a
    broker the edges join as devices of that fleet. ``edge_toml`` is the edges' settings file."""

    def __init__(
        self,
        pack: Path,
        workdir: Path,
        *,
        edge_ids: Sequence[str] = ("edge-a",),
        rtt_ms: float = 50.0,
        jitter_ms: float = 0.0,
        fleet: str | None = None,
        edge_toml: str = "",
        say: Say = lambda _: None,
    ) -> None:
        self.pack, self.workdir = pack, workdir
        self.edge_ids, self.fleet = tuple(edge_ids), fleet
        self.rtt_ms, self.jitter_ms = rtt_ms, jitter_ms
        self.edge_toml, self.say = edge_toml, say
        self.broker: Broker | None = None
        self.cloud: CloudServer | None = None
        self.wan: DelayProxy | None = None
        self.edges: dict[str, EdgeServer] = {}

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(24)
        tokens = self.workdir / "cloud-tokens.txt"
        tokens.write_text(f"# accepted bearer tokens\n{token}\n")
        edge_token = self.workdir / "edge-token.txt"
        edge_token.write_text(token + "\n")
        for f in (tokens, edge_token):
            f.chmod(0o600)
        if self.fleet is not None:
            self.broker = Broker(self.workdir / "broker").start().wait_ready()
            self.say(f"broker    mosquitto on {self.broker.address}")
        # The cloud shares this machine with the edge daemons: its engine must not yield the
        # CPU to them (engine.nice 0; the default 10 slows escalated answers of the hybrid
        # benchmark, as docs/benchmarks.md shows).
        nice = {"AUTOGLM_CLOUD_ENGINE__NICE": os.environ.get("AUTOGLM_CLOUD_ENGINE__NICE", "0")}
        self.cloud = CloudServer(
            self.pack, self.workdir, args=["--tokens-file", str(tokens)], env=nice
        )
        self.wan = DelayProxy(
            self.cloud.address, rtt_ms=self.rtt_ms, jitter_ms=self.jitter_ms
        ).start()
        config = self.workdir / "edge.toml"
        config.write_text(self.edge_toml)
        for device in self.edge_ids:
            args = ["--device-id", device, "--config", str(config)]
            args += ["--cloud-token-file", str(edge_token)]
            if self.broker is not None and self.fleet is not None:
                args += ["--mqtt", self.broker.address, "--fleet", self.fleet]
            self.edges[device] = EdgeServer(
                self.pack,
                self.workdir,
                clouds=[self.wan.address],
                args=args,
                state_dir=self.workdir / f"state-{device}",
            )
        self._wait(self.cloud, "cloud     full model")
        for device, edge in self.edges.items():
            self._wait(edge, f"{device:<9} proxy")
        return self

    def _wait(self, server: ServerProcess, what: str) -> None:
        server.wait_serving()
        where = server.address
        if self.wan is not None and server is self.cloud:
            where += f", reached through an emulated WAN at {self.wan.address}"
            where += f" (+{self.rtt_ms:g} ms round trip, jitter {self.jitter_ms:g} ms)"
        self.say(f"{what} serving on {where}; log {server.log_path}")

    @property
    def edge_addresses(self) -> list[str]:
        return [e.address for e in self.edges.values()]

    def stop(self) -> None:
        """Stop everything that was started, edges first; safe to call twice."""
        for edge in self.edges.values():
            edge.stop()
        if self.wan is not None:
            self.wan.stop()
        if self.cloud is not None:
            self.cloud.stop()
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
