"""``autoglm cloud serve``: the cloud inference service."""

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
        help="serve Inference and ModelStore over gRPC",
        description="Flags override the config file and AUTOGLM_CLOUD_* environment variables.",
    )
    s.add_argument("--config", type=Path, help="TOML settings file")
    s.add_argument("--pack", type=Path, help="model pack whose full model is served")
    s.add_argument("--listen", help="gRPC address HOST:PORT (port 0 = any) or unix:PATH")
    s.add_argument("--metrics-port", type=int, help="Prometheus /metrics port; 0 = off")
    s.add_argument("--packs-dir", type=Path, help="folder of packs that ModelStore serves")
    s.add_argument("--tokens-file", type=Path, help="accepted bearer tokens, one per line")
    s.add_argument(
        "--auth-disabled",
        action="store_true",
        default=None,
        help="accept calls without a token (local tests only)",
    )
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], help="torch device of the model")
    s.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from cloud.service.auth import AuthConfigError
    from cloud.service.server import EngineDied, ServeError, serve
    from shared.pack.manifest import PackError
    from shared.settings.base import SettingsError, load_settings
    from shared.settings.cloud import CloudSettings

    overrides: dict[str, Any] = {
        "pack": args.pack,
        "listen": args.listen,
        "metrics_port": args.metrics_port,
        "packs_dir": args.packs_dir,
        "tokens_file": args.tokens_file,
        "auth_disabled": args.auth_disabled,
        "device": args.device,
    }
    try:
        settings = load_settings(CloudSettings, config_file=args.config, overrides=overrides)
        asyncio.run(serve(settings))
    except (SettingsError, PackError, AuthConfigError, ServeError) as exc:
        print(f"autoglm cloud serve: {exc}", file=sys.stderr)
        return 2
    except EngineDied as exc:  # a supervisor (systemd, Kubernetes, compose) restarts it
        print(f"autoglm cloud serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C while draining
        return 130
    return 0
