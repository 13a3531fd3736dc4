"""``autoglm edge serve``: the edge daemon (needs the ``edge`` extra, never torch)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = sub.add_parser(
        "serve",
        help="serve Inference to local apps with the proxy, escalating to the cloud",
        description="Flags override the config file and AUTOGLM_EDGE_* environment variables.",
    )
    s.add_argument("--config", type=Path, help="TOML settings file")
    s.add_argument("--pack", type=Path, help="model pack whose proxy is served")
    s.add_argument("--listen", help="local gRPC address: HOST:PORT or unix:PATH")
    s.add_argument(
        "--cloud",
        action="append",
        metavar="HOST:PORT",
        help="cloud target (repeat for several: balanced round-robin with failover)",
    )
    s.add_argument("--device-id", help="this device's id (default: the host name)")
    s.add_argument(
        "--mqtt", metavar="HOST:PORT", help="MQTT broker of the control plane (turns it on)"
    )
    s.add_argument("--fleet", help="fleet the device belongs to (MQTT topics)")
    s.add_argument("--metrics-port", type=int, help="Prometheus /metrics port; 0 = off")
    s.add_argument("--state-dir", type=Path, help="folder for state that survives restarts")
    s.add_argument("--cloud-token-file", type=Path, help="file holding the bearer token")
    s.add_argument("--precision", choices=["fp32", "int8"], help="proxy variant to run")
    s.add_argument("--mode", choices=["auto", "edge_only", "cloud_only"], help="routing mode")
    s.add_argument("--threshold", type=float, help="escalate below this confidence")
    s.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from shared.pack.manifest import PackError
    from shared.serving import ServeError
    from shared.settings.base import SettingsError, load_settings
    from shared.settings.edge import EdgeSettings

    overrides: dict[str, Any] = {
        "pack": args.pack,
        "listen": args.listen,
        "cloud.targets": args.cloud,
        "device_id": args.device_id,
        "fleet": args.fleet,
        "mqtt.broker": args.mqtt,
        "mqtt.enabled": True if args.mqtt else None,
        "metrics_port": args.metrics_port,
        "state_dir": args.state_dir,
        "onnx.precision": args.precision,
        "runtime.routing.mode": args.mode,
        "runtime.routing.threshold": args.threshold,
    }
    try:
        if args.cloud_token_file is not None:
            overrides["cloud.token"] = _read_token(args.cloud_token_file)
        settings = load_settings(EdgeSettings, config_file=args.config, overrides=overrides)
        asyncio.run(_run(settings))
    except (SettingsError, PackError, ServeError) as exc:
        print(f"autoglm edge serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _read_token(path: Path) -> str:
    from shared.settings.base import SettingsError

    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"--cloud-token-file {path}: {exc.strerror}") from None
    if not token:
        raise SettingsError(f"--cloud-token-file {path} is empty")
    return token


async def _run(settings: Any) -> None:
    from edge.server import EdgeDaemon

    await EdgeDaemon(settings).run()
