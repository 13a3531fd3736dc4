"""The command line of ``autoglm ctl``: connection options, their session, error handling."""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.ctl.session import CtlError, Session, warn
from shared.settings.edge import ClientTLSSettings

DEFAULT_BROKER = "127.0.0.1:1883"
DEFAULT_FLEET = "default"


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, true, null, "quoted"), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def shown(value: Any) -> str:
    """A value for people: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def session_of(args: argparse.Namespace) -> Session:
    password = None
    if args.password_file is not None:
        try:
            password = Path(args.password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            raise CtlError(f"cannot read --password-file: {exc}") from None
    tls = None
    if args.ca_file is not None and not Path(args.ca_file).is_file():
        raise CtlError(f"--ca-file {args.ca_file}: no such file")
    if args.tls or args.ca_file is not None:
        tls = ClientTLSSettings(enabled=True, ca_file=args.ca_file)
    return Session(
        args.mqtt,
        args.fleet,
        timeout=args.timeout,
        username=args.username,
        password=password,
        tls=tls,
    )


def guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A handler whose CtlError becomes one line on stderr and exit code 2."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CtlError as exc:
            warn(str(exc))
            return 2

    return run


def add_connection_options(parser: argparse.ArgumentParser, *, leaf: bool = False) -> None:
    """The options of the broker connection: on the group with their defaults, and again on
    every subcommand (``leaf``) with no defaults, so that they may come after it too."""
    env = os.environ.get

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if leaf else value

    group = parser.add_argument_group("connection") if leaf else parser
    group.add_argument(
        "--mqtt",
        default=default(env("AUTOGLM_CTL_MQTT") or DEFAULT_BROKER),
        metavar="HOST:PORT",
        help=f"the broker (env AUTOGLM_CTL_MQTT; default: {DEFAULT_BROKER})",
    )
    group.add_argument(
        "--fleet",
        default=default(env("AUTOGLM_CTL_FLEET") or DEFAULT_FLEET),
        help=f"the fleet (env AUTOGLM_CTL_FLEET; default: {DEFAULT_FLEET})",
    )
    group.add_argument(
        "--username", default=default(env("AUTOGLM_CTL_USERNAME")), help="env AUTOGLM_CTL_USERNAME"
    )
    group.add_argument(
        "--password-file",
        type=Path,
        default=default(env("AUTOGLM_CTL_PASSWORD_FILE")),
        metavar="FILE",
        help="file holding the password (env AUTOGLM_CTL_PASSWORD_FILE)",
    )
    group.add_argument(
        "--tls", action="store_true", default=default(False), help="TLS to the broker (system CAs)"
    )
    group.add_argument(
        "--ca-file",
        type=Path,
        default=default(None),
        help="CA of the broker's certificate (sets --tls)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(10.0),
        metavar="S",
        help="seconds to wait for the broker and for devices' answers (default: 10)",
    )


def add_wait_flag(parser: argparse.ArgumentParser) -> None:
    """--wait / --no-wait: whether to wait for the devices' reports."""
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the devices' reports (default: yes)",
    )


def connection_options() -> argparse.ArgumentParser:
    """A parent parser that gives a subcommand the connection options (see above)."""
    parent = argparse.ArgumentParser(add_help=False)
    add_connection_options(parent, leaf=True)
    return parent
