"""Addresses: ``HOST:PORT`` parsing and which addresses only this machine can reach."""

from __future__ import annotations

# Hosts that only this machine can reach: a server bound to one needs no TLS.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host without brackets, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_local_address(listen: str) -> bool:
    """A Unix socket or a loopback ``HOST:PORT``: reachable from this machine only."""
    return listen.startswith("unix:") or listen.rsplit(":", 1)[0] in LOOPBACK_HOSTS
