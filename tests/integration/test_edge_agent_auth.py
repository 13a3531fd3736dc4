"""The real edge agent on the production broker config: TLS, a password, the real ACL; and no
retry storm when the broker refuses the credentials."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from broker import Broker, close, paho_client, subscribe
from cloud_server import make_certs
from hybrid import ask, edge_config, route

from bench.stack.processes import EdgeServer
from shared import control as c

pytestmark = pytest.mark.slow

USERS = {"dev-a": "dev-a-secret", "operator": "operator-secret"}


def _edge(pack: Path, workdir: Path, broker: str, conf: str) -> EdgeServer:
    config = edge_config(workdir / "edge.toml", conf)
    args = ["--mqtt", broker, "--fleet", "prod", "--device-id", "dev-a", *config]
    return EdgeServer(pack, workdir, args=[*args, "--mode", "edge_only"])


def test_agent_joins_over_tls_with_its_password_under_the_production_acl(
    quick_pack: Path, tmp_path: Path
) -> None:
    """The device reaches the TLS listener, and its birth (its own status topic) gets through
    the ACL to the operator."""
    certs = make_certs(tmp_path / "certs")
    with Broker.production(tmp_path / "broker", users=USERS, certs=certs) as b:
        op = paho_client(b, "operator", USERS["operator"])
        try:
            status = subscribe(op, c.Topics("prod", "dev-a").status)
            conf = (
                f'[mqtt]\nusername = "dev-a"\npassword = "{USERS["dev-a"]}"\n'
                f'[mqtt.tls]\nenabled = true\nca_file = "{certs["ca.pem"]}"\n'
            )
            edge = _edge(quick_pack, tmp_path, f"127.0.0.1:{b.tls_port}", conf)
            try:
                edge.wait_serving()
                msg = status.get(timeout=15)
                assert json.loads(msg.payload)["state"] == "online"
            finally:
                edge.stop()
        finally:
            close(op)


def test_refused_credentials_stop_retrying_and_the_daemon_keeps_serving(
    quick_pack: Path, tmp_path: Path
) -> None:
    """A wrong password: one refusal, an error naming the cause, no further attempts; the local
    API answers throughout."""
    with Broker(tmp_path / "broker", users=USERS) as b:
        conf = '[mqtt]\nusername = "dev-a"\npassword = "wrong"\n'
        edge = _edge(quick_pack, tmp_path, b.address, conf)
        try:
            edge.wait_serving()
            time.sleep(3.0)  # paho would have retried after 1 s and 2 s
            assert route(ask(edge, "rev abc=")) == "ROUTE_EDGE"
            log = edge.log()
            assert "not retrying: fix the credentials" in log
            assert log.count("broker refused us") == 1
        finally:
            edge.stop()
