"""A real Mosquitto broker as a child process on 127.0.0.1: for the demo, benchmarks and tests.

``Broker`` writes a config (anonymous by default, or a password file and an ACL), starts
``mosquitto -c`` on a free port, waits until an MQTT CONNECT gets a CONNACK, and stops it by pid
(SIGTERM, then SIGKILL). ``tests/integration/broker.py`` adds the production-config variant and
the test clients.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from bench.stack.processes import free_port

WAIT = 3.0  # the longest any helper waits, seconds


def mosquitto_bin() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def mosquitto_version() -> tuple[int, ...]:
    """The broker's version, e.g. (2, 0, 11), from ``mosquitto -h``."""
    out = subprocess.run([mosquitto_bin(), "-h"], capture_output=True, text=True, timeout=10)
    match = re.search(r"mosquitto version (\d+(?:\.\d+)*)", out.stdout + out.stderr)
    assert match, f"no version in: {out.stdout[:200]}"
    return tuple(int(x) for x in match.group(1).split("."))


def tool(name: str) -> str:
    """Path of a mosquitto tool: ``mosquitto_pub``, ``mosquitto_sub``, ``mosquitto_passwd``."""
    return shutil.which(name) or f"/usr/bin/{name}"


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """A mosquitto password file (salted hashes) holding ``users`` (name -> password)."""
    path.unlink(missing_ok=True)
    for i, (name, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [tool("mosquitto_passwd"), *create, "-b", str(path), name, password],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip
    return path


def _run_as() -> list[str]:
    # Started as root, mosquitto drops to the `mosquitto` user, which cannot read pytest's
    # private tmp folders; `user root` keeps it as it is.
    return [f"user {pwd.getpwuid(os.geteuid()).pw_name}"] if os.geteuid() == 0 else []


class Broker:
    """A real mosquitto on 127.0.0.1, its config, password file and data under ``workdir``.

    ``users`` (name -> password) turns authentication on: anonymous clients are refused, and
    ``acl_file`` applies when given. ``persistence`` keeps retained messages
    across ``restart()``. ``config`` runs that complete config text instead of the generated one
    (the tests' production broker uses it); it must have a plain listener on 127.0.0.1:``port``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        acl_file: Path | None = None,
        persistence: bool = False,
        port: int | None = None,
        config: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.acl_file = acl_file if self.users else None
        self.persistence = persistence
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.conf_path = self.workdir / "mosquitto.conf"
        self.password_file = self.workdir / "password_file"
        self.log_path = self.workdir / "mosquitto.log"
        self._config = config
        self.tls_port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def config_text(self) -> str:
        if self._config is not None:
            return self._config
        lines = [
            f"listener {self.port} {self.host}",
            "set_tcp_nodelay true",
            "log_dest stderr",  # unbuffered, unlike stdout: log() is up to date
            "log_type all",
            "connection_messages true",
        ]
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
            if self.acl_file is not None:
                lines.append(f"acl_file {self.acl_file}")
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            data = self.workdir / "data"
            data.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {data}/"]
        else:
            lines.append("persistence false")
        return "\n".join([*lines, *_run_as(), ""])

    def start(self) -> Broker:
        assert self.proc is None, "already started"
        if self.users:
            write_password_file(self.password_file, self.users)
        self.conf_path.write_text(self.config_text())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [mosquitto_bin(), "-c", str(self.conf_path)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = WAIT) -> Broker:
        """Until an MQTT CONNECT gets a CONNACK (accepted or not: the broker is serving)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"mosquitto exited with {code}:\n{self.log()}")
            try:
                if _connack(self.host, self.port):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"mosquitto not ready on {self.address}:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, timeout: float = WAIT) -> None:
        """SIGTERM (mosquitto saves its database), then SIGKILL if it does not exit in time."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def restart(self) -> Broker:
        """Stop and start on the same port; retained messages survive when persistence is on."""
        self.stop()
        return self.start().wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Broker:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _connack(host: str, port: int) -> bool:
    """Sends a bare MQTT 3.1.1 CONNECT; True when the answer is a CONNACK."""
    client_id = b"ready-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x05"  # protocol name, level 4, clean session, keepalive
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    with socket.create_connection((host, port), timeout=0.5) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        return s.recv(4)[:1] == b"\x20"
