"""Runs ``autoglm cloud serve`` as a child process on loopback: for benchmarks, demos and tests.

The server is started with the same command an operator types, waited for through the standard
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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

ChannelFactory = Callable[[str], grpc.Channel]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CloudServer:
    """One server process; ``channel()`` opens a client channel to it."""

    def __init__(
        self,
        pack: Path,
        workdir: Path,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cli_args: Sequence[str] = (),  # before the subcommand, e.g. ("--log-format", "json")
        channel_factory: ChannelFactory = grpc.insecure_channel,
    ) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.log_path = workdir / f"server-{self.address.rsplit(':', 1)[1]}.log"
        self._channel_factory = channel_factory
        cmd = [sys.executable, "-m", "shared.cli", *cli_args, "cloud", "serve", "--pack", str(pack)]
        cmd += ["--listen", self.address, "--device", "cpu", *args]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

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

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> CloudServer:
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
        self._log.close()
        return self.proc.returncode
