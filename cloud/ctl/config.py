"""``autoglm ctl config set|get``: desired runtime settings of the fleet or of one device.

A desired document is the whole desired state of its scope: ``config set`` starts from the
retained document (unless ``--replace``), applies the file and the ``KEY=VALUE`` pairs, checks
the result against ``RuntimeSettings`` and publishes it, retained, with the next version. Then it
waits for each expected device's ``config/reported`` answering that version.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cloud.ctl.options import (
    add_wait_flag,
    connection_options,
    guarded,
    parse_value,
    session_of,
    shown,
)
from cloud.ctl.session import CtlError, Message, Session, check_id, decode, warn
from shared.control import DesiredConfig, DeviceStatus, ReportedConfig, Topics, dump
from shared.dotted import deep_merge, get_dotted, set_dotted, unset_dotted
from shared.settings.base import SettingsError
from shared.settings.edge import RuntimeSettings

STALE_NOTE = (
    "a device silently ignores a version that is not newer than the one it applied; "
    "a device that is offline applies the retained document when it reconnects"
)


def register(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = subs.add_parser("config", help="desired runtime settings: set, get")
    verbs = config.add_subparsers(dest="config_command", required=True, metavar="VERB")

    put = verbs.add_parser(
        "set",
        parents=[connection_options()],
        help="publish a desired document and wait for the devices",
    )
    put.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="e.g. routing.threshold=0.5")
    put.add_argument("--device", help="the document of this device (default: the fleet's)")
    put.add_argument("--version", type=int, help="default: the retained document's version + 1")
    put.add_argument("--file", type=Path, help="settings from a .json or .toml file")
    put.add_argument(
        "--unset", action="append", default=[], metavar="KEY", help="drop KEY from the document"
    )
    put.add_argument(
        "--replace", action="store_true", help="start from an empty document, not the retained one"
    )
    add_wait_flag(put)
    put.set_defaults(handler=guarded(config_set))

    get = verbs.add_parser(
        "get", parents=[connection_options()], help="print the desired and reported documents"
    )
    get.add_argument("--device", help="also this device's desired document; only its report")
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(handler=guarded(config_get))


# ---------------------------------------------------------------------------------------------
# Building the document.


def leaf_keys(doc: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, value in doc.items():
        if isinstance(value, dict) and value:
            keys += leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise CtlError(f"cannot read {path}: {exc}") from None
    if path.suffix not in (".json", ".toml"):
        raise CtlError(f"{path}: expected a .json or .toml file")
    if not isinstance(data, dict):
        raise CtlError(f"{path}: expected a table of settings")
    return data


def changes_of(args: argparse.Namespace) -> tuple[dict[str, Any], int | None]:
    """The settings this command sets (file, then KEY=VALUE) and the version, when given."""
    patch = read_file(args.file) if args.file is not None else {}
    version = patch.pop("version", None)
    for pair in args.pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CtlError(f"expected KEY=VALUE, got {pair!r}")
        if key == "version":
            raise CtlError("set the version with --version N")
        try:
            set_dotted(patch, key, parse_value(value))
        except ValueError as exc:
            raise CtlError(str(exc)) from None
    if not (patch or args.unset or args.replace):
        raise CtlError("nothing to set: give KEY=VALUE pairs, --file, --unset or --replace")
    if args.version is not None:
        version = args.version
    if version is not None and (not isinstance(version, int) or version < 1):
        raise CtlError(f"the version must be an integer >= 1, got {version!r}")
    return patch, version


def validate(doc: dict[str, Any]) -> list[str]:
    """Problems of a desired document checked against the defaults (empty: fine)."""
    try:
        RuntimeSettings().merged(doc)
    except SettingsError as exc:
        return exc.problems
    return []


# ---------------------------------------------------------------------------------------------
# config set


def config_set(args: argparse.Namespace) -> int:
    patch, given_version = changes_of(args)
    problems = validate(patch)
    if problems:
        return refuse(problems)
    device = check_id("device id", args.device) if args.device else None
    scope = "device" if device else "fleet"
    with session_of(args) as session:
        fleet = session.topics
        topic = Topics(fleet.fleet, device).device_desired if device else fleet.fleet_desired
        found = session.retained(topic, fleet.status, fleet.reported)
        current = read_desired(found.get(topic), replace=args.replace)
        doc = document(current, patch, args)
        problems = validate(doc)
        if problems:
            return refuse(problems)
        floor = newest_version(session, found.values(), scope, device, current)
        version = choose_version(given_version, floor)
        online = [d for d, s in session.statuses(found.values()).items() if s.state == "online"]
        if device and device not in online:
            print(f"note: {device} is not online; it applies the document when it connects")
        desired = DesiredConfig.model_validate({**doc, "version": version})
        session.publish(topic, dump(desired), retain=True)
        target = f"device {device}" if device else f"fleet {fleet.fleet}"
        print(f"published {target} config version {version}: {json.dumps(doc)}")
        if not args.wait:
            return 0
        expected = [device] if device else online
        return await_reports(session, scope, version, expected, leaf_keys(patch))


def document(
    current: DesiredConfig | None, patch: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The retained document (unless --replace) with the patch applied and --unset keys dropped."""
    doc = {} if args.replace or current is None else copy.deepcopy(current.patch())
    doc = deep_merge(doc, patch)
    for key in args.unset:
        unset_dotted(doc, key)
    return doc


def choose_version(given: int | None, floor: int) -> int:
    """``given``, or the one after ``floor``; CtlError when ``given`` would be ignored."""
    if given is not None and given <= floor:
        raise CtlError(
            f"version {given} is not newer than version {floor} (retained, or in force on "
            f"a device): devices would ignore it; leave --version out to use {floor + 1}"
        )
    return given if given is not None else floor + 1


def newest_version(
    session: Session,
    messages: Iterable[Message],
    scope: str,
    device: str | None,
    current: DesiredConfig | None,
) -> int:
    """The newest version of this document retained or in force on a device (0: none).

    A device ignores a version that is not newer than the one it applied, and the broker may have
    lost the retained document (no persistence): the devices' status and reports remember it.
    """
    newest = current.version if current is not None else 0
    for m in messages:
        owner = session.topics.device_of(m.topic)
        if not owner or (device is not None and owner != device):
            continue
        state: ReportedConfig | DeviceStatus | None = None
        if m.topic.endswith("/config/reported"):
            state = decode(ReportedConfig, m)
        elif m.topic.endswith("/status"):
            state = decode(DeviceStatus, m)
        if state is not None:
            newest = max(newest, state.device_version if scope == "device" else state.fleet_version)
    return newest


def refuse(problems: list[str]) -> int:
    warn("refused, nothing published:")
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 2


def read_desired(found: Message | None, *, replace: bool) -> DesiredConfig | None:
    """The retained document; an invalid one is an error, unless it is to be replaced."""
    current = decode(DesiredConfig, found) if found is not None else None
    if found is not None and current is None and not replace:
        raise CtlError(f"the retained document on {found.topic} is invalid; use --replace")
    return current


def await_reports(
    session: Session, scope: str, version: int, expected: list[str], keys: list[str]
) -> int:
    """Print each device's report of ``version``; 0 when every expected device applied it."""
    if expected:
        print(f"waiting up to {session.timeout:g} s for {', '.join(expected)}")
    else:
        print(f"no device is online; waiting {session.timeout:g} s for any report")
    width = max((len(d) for d in expected), default=8)
    answered: dict[str, ReportedConfig] = {}
    deadline = time.monotonic() + session.timeout
    while set(expected) - set(answered) or not expected:
        message = session.next(deadline)
        if message is None:
            break
        report = report_of(session, message, scope, version)
        if report is not None and report[0] not in answered:
            device, answered[device] = report
            print(report_line(device, report[1], keys, width))
    failed = sorted(d for d, r in answered.items() if r.status != 200)
    missing = [d for d in expected if d not in answered]
    if missing:
        print(f"no report in {session.timeout:g} s from: {', '.join(missing)} ({STALE_NOTE})")
    return 1 if failed or missing else 0


def report_of(
    session: Session, message: Message, scope: str, version: int
) -> tuple[str, ReportedConfig] | None:
    """(device, report) when ``message`` is a fresh report of this document, else None."""
    device = session.topics.device_of(message.topic)
    if device is None or message.retained or not message.topic.endswith("/config/reported"):
        return None
    report = decode(ReportedConfig, message)
    if report is None or report.version != version or report.scope != scope:
        return None
    return device, report


def report_line(device: str, report: ReportedConfig, keys: list[str], width: int) -> str:
    if report.status == 200:
        values = "  ".join(f"{k}={shown(get_dotted(report.effective, k))}" for k in keys)
        return f"{device:<{width}}  200  {report.detail or 'applied'}  {values}".rstrip()
    why = "; ".join(report.errors) or report.detail or "(no reason given)"
    return f"{device:<{width}}  {report.status}  {why}"


# ---------------------------------------------------------------------------------------------
# config get


def config_get(args: argparse.Namespace) -> int:
    device = check_id("device id", args.device) if args.device else None
    with session_of(args) as session:
        topics = Topics(session.topics.fleet, device or "+")
        filters = [topics.fleet_desired, topics.reported]
        if device:
            filters.append(topics.device_desired)
        found = session.retained(*filters)
    fleet = found.get(topics.fleet_desired)
    mine = found.get(topics.device_desired) if device else None
    reported = {
        session.topics.device_of(m.topic) or "": r
        for m in found.values()
        if m.topic.endswith("/config/reported") and (r := decode(ReportedConfig, m)) is not None
    }
    desired = {"fleet": desired_json(fleet)}
    if device:
        desired["device"] = desired_json(mine)
    state = {
        "fleet": session.topics.fleet,
        "desired": desired,
        "reported": {d: r.model_dump(mode="json") for d, r in sorted(reported.items())},
    }
    print(json.dumps(state, indent=2) if args.json else describe(state))
    return 0


def desired_json(message: Message | None) -> dict[str, Any] | None:
    doc = decode(DesiredConfig, message) if message is not None else None
    return doc.model_dump(mode="json") if doc is not None else None


def describe(state: dict[str, Any]) -> str:
    lines = []
    for scope, doc in state["desired"].items():
        if doc is None:
            lines.append(f"desired ({scope}): none")
        else:
            rest = {k: v for k, v in doc.items() if k != "version"}
            lines.append(f"desired ({scope}): version {doc['version']}  {json.dumps(rest)}")
    if not state["reported"]:
        lines.append("reported: none")
    for device, r in state["reported"].items():
        why = "; ".join(r["errors"]) or r["detail"]
        lines.append(
            f"reported {device}: {r['status']} on {r['scope']} v{r['version']}  "
            f"in force: fleet v{r['fleet_version']}, device v{r['device_version']}"
            + (f"  ({why})" if why else "")
        )
        lines.append(f"  effective: {json.dumps(r['effective'])}")
    return "\n".join(lines)
