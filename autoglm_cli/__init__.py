"""The ``autoglm`` command.

Each subcommand group lives with the component it drives and is imported only when used, so the
edge's commands run on a device without torch:

    autoglm models build|eval|list     model toolkit (toolkit/cli.py, needs torch)
    autoglm bench train|cloud|edge|hybrid|...  benchmarks (bench/cli.py)
    autoglm cloud serve                the cloud inference service (cloud/cli.py)
    autoglm edge serve                 the edge daemon (edge/cli.py, no torch)
    autoglm ask PROMPT                 a client of either (edge/ask.py)
    autoglm ctl config|status|models|cmd   operator CLI over MQTT (cloud/ctl/cli.py, no torch)
    autoglm health ADDR                a gRPC health probe for containers (shared/health.py)
    autoglm demo                       the whole system on loopback (bench/demo.py)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

PROJECT_PACKAGES = frozenset({"autoglm_cli", "bench", "cloud", "edge", "shared", "toolkit"})

# group name -> (module with `register(subparsers)`, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "models": ("toolkit.cli", "build, evaluate and list model packs"),
    "bench": ("bench.cli", "benchmarks that print a table and write JSON"),
    "cloud": ("cloud.cli", "the cloud inference service (cloud serve)"),
    "edge": ("edge.cli", "the edge daemon (edge serve)"),
    "ask": ("edge.ask", "send a prompt to an edge daemon or a cloud and print the answer"),
    "ctl": ("cloud.ctl.cli", "operator CLI over MQTT: config, status, models, commands"),
    "health": ("shared.health", "check a server's gRPC health (exit 0 when SERVING)"),
    "demo": ("bench.demo", "the whole system on loopback: broker, cloud, two edges"),
}


def _missing_extra(group: str, exc: ModuleNotFoundError) -> int:
    if exc.name is None or exc.name.split(".")[0] in PROJECT_PACKAGES:
        raise exc  # a bug in the project, not a missing package
    print(
        f"autoglm {group}: needs the Python package {exc.name!r}, which is not installed here.\n"
        f"Install the matching extra, e.g. pip install 'open-autoglm[cloud]'.",
        file=sys.stderr,
    )
    return 2


def setup_logging(fmt: str, level: int) -> None:
    """Text for people, or JSON lines for log shippers (fields passed as ``extra=`` included)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: one JSON object per line (time, level, logger, message, request_id, ...)",
    )


def _group_named(argv: Sequence[str]) -> str | None:
    """The subcommand group in ``argv``, past the global options and their values."""
    pre = argparse.ArgumentParser(add_help=False)
    _add_global_options(pre)
    _, rest = pre.parse_known_args(argv)
    return next((a for a in rest if not a.startswith("-")), None)


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser, with the subcommands of the group named in ``argv`` registered.

    Raises ModuleNotFoundError when that group needs a package this install lacks.
    """
    parser = argparse.ArgumentParser(prog="autoglm", description=__doc__.splitlines()[0])
    _add_global_options(parser)
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    chosen = _group_named(argv)
    for name, (module, help_text) in GROUPS.items():
        sub = groups.add_parser(name, help=help_text)
        if name == chosen:  # import only the group that runs
            importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(argv)
    except ModuleNotFoundError as exc:
        return _missing_extra(_group_named(argv) or "", exc)
    args = parser.parse_args(argv)
    setup_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ModuleNotFoundError as exc:
        return _missing_extra(args.group, exc)
