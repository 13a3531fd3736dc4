"""``autoglm ctl``: the operator's command line over the MQTT control plane.

    autoglm ctl [--mqtt HOST:PORT] [--fleet NAME] ... SUBCOMMAND
        config set [--device ID] [--version N] [--file F] [KEY=VALUE ...]
        config get [--device ID] [--json]
        status [--json] [--wait S]
        models announce --pack DIR [--devices a,b] [--wait/--no-wait]
        models rollback [--device ID]
        cmd NAME [--device ID] [--arg K=V ...] [--json]

The connection options may also follow the subcommand (``autoglm ctl status --timeout 3``).
Exit codes: 0 done (every expected device answered well), 1 some device refused, failed or did
not answer in time, 2 nothing was done (bad input, broker unreachable or refusing).
The protocol (topics and payloads) is ``shared/control.py``; the guide is ``docs/ctl.md``.
"""

from __future__ import annotations

import argparse

from cloud.ctl import commands, config, status
from cloud.ctl.options import add_connection_options


def register(parser: argparse.ArgumentParser) -> None:
    add_connection_options(parser)
    subs = parser.add_subparsers(dest="ctl_command", required=True, metavar="SUBCOMMAND")
    config.register(subs)
    status.register(subs)
    commands.register(subs)
