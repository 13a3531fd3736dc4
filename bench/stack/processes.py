"""Runs ``autoglm cloud serve`` or ``autoglm edge serve`` as a child process on loopback: for
benchmarks, demos and tests.

A server is started with the same command an operator types, waited for through the standard
health service, and stopped by pid: SIGTERM (graceful drain), then SIGKILL after a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

ChannelFactory = Callable[[str], grpc.Channel]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process (``autoglm <cli_args> <command...>``); ``channel()`` opens a client
    channel to it. ``address`` is where it listens (a free loopback port unless given)."""

    def __init__(
        self,
        command: Sequence[str],
        workdir: Path,
        *,
        address: str | None = None,
        env: dict[str, str] | None = None,
        cli_args: Sequence[str] = (),  # before the subcommand, e.g. ("--log-format", "json")
        channel_factory: ChannelFactory = grpc.insecure_channel,
        launcher: Sequence[str] = ("-m", "autoglm_cli"),  # what python runs: the CLI module
    ) -> None:
        self.address = address or f"127.0.0.1:{free_port()}"
        name = command[0] + "-" + self.address.rsplit(":", 1)[-1].replace("/", "_")
        self.log_path = workdir / f"{name}.log"
        self._channel_factory = channel_factory
        self.command = [sys.executable, *launcher, *cli_args, *command]
        self._env = {**os.environ, **(env or {})}
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("a") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                self.command, env=self._env, stdout=log, stderr=subprocess.STDOUT
            )

    def restart(self) -> ServerProcess:
        """Start the same command again after the process ended (e.g. after kill())."""
        assert self.proc.poll() is not None, "stop the server before restarting it"
        self.proc = self._spawn()
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, with no drain."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT_S)

    def channel(self) -> grpc.Channel:
        return self._channel_factory(self.address)

    def log(self) -> str:
        return self.log_path.read_text()

    def health(self, service: str = "", timeout: float = 2.0) -> int:
        """The health status of ``service`` (no token sent)."""
        with self.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            return int(reply.status)

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        """Block until the health check says SERVING; fail with the server's log otherwise."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return self
            except grpc.RpcError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not SERVING after {timeout} s:\n{self.log()}")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after a timeout; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        return self.proc.returncode


class CloudServer(ServerProcess):
    """``autoglm cloud serve --pack PACK --listen ADDRESS --device cpu ARGS``."""

    def __init__(self, pack: Path, workdir: Path, *, args: Sequence[str] = (), **kw: Any) -> None:
        kw.setdefault("address", f"127.0.0.1:{free_port()}")
        command = ["cloud", "serve", "--pack", str(pack), "--listen", kw["address"]]
        super().__init__([*command, "--device", "cpu", *args], workdir, **kw)


class EdgeServer(ServerProcess):
    """``autoglm edge serve --pack PACK --listen ADDRESS --cloud T... --state-dir ... ARGS``."""

    def __init__(
        self,
        pack: Path,
        workdir: Path,
        *,
        clouds: Sequence[str] = (),
        args: Sequence[str] = (),
        state_dir: Path | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("address", f"127.0.0.1:{free_port()}")
        command = ["edge", "serve", "--pack", str(pack), "--listen", kw["address"]]
        for target in clouds:
            command += ["--cloud", target]
        state = state_dir or workdir / f"edge-state-{free_port()}"
        super().__init__([*command, "--state-dir", str(state), *args], workdir, **kw)
