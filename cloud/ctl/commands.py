"""``autoglm ctl models announce|rollback`` and ``autoglm ctl cmd``.

Commands are MQTT v5 requests: each goes to ``devices/<id>/cmd/<name>`` with a ResponseTopic
under ``replies/<client-id>/`` and its own CorrelationData, and the device answers a
``CommandReply`` there. Model roll-outs are a retained ``models/announce``; devices answer on
their retained ``models/reported``.
"""

from __future__ import annotations

import argparse
import time
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
from cloud.ctl.session import CtlError, Session, check_id, decode
from shared.control import (
    COMMANDS,
    Command,
    CommandReply,
    DeviceStatus,
    ModelAnnouncement,
    ModelReport,
    dump,
)
from shared.pack.manifest import PackError, open_pack

FINAL = ("applied", "failed", "rolled_back")


def register(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = subs.add_parser("models", help="roll a model pack out, or roll it back")
    verbs = models.add_subparsers(dest="models_command", required=True, metavar="VERB")
    announce = verbs.add_parser(
        "announce", parents=[connection_options()], help="announce a pack version to the devices"
    )
    announce.add_argument("--pack", type=Path, required=True, help="the pack's version folder")
    announce.add_argument("--devices", help="comma-separated ids (staged roll-out); default all")
    add_wait_flag(announce)
    announce.set_defaults(handler=guarded(models_announce))
    rollback = verbs.add_parser(
        "rollback", parents=[connection_options()], help="go back to the previous pack"
    )
    rollback.add_argument("--device", help="only this device (default: every online device)")
    rollback.set_defaults(handler=guarded(models_rollback))

    cmd = subs.add_parser(
        "cmd",
        parents=[connection_options()],
        help=f"send a command ({', '.join(COMMANDS)}) and print replies",
    )
    cmd.add_argument("name", help=f"command name: {', '.join(COMMANDS)}")
    cmd.add_argument("--device", help="only this device (default: every online device)")
    cmd.add_argument(
        "--arg", action="append", default=[], metavar="K=V", help="an argument (repeatable)"
    )
    cmd.add_argument("--json", action="store_true", help="print each reply as a JSON line")
    cmd.set_defaults(handler=guarded(command))


# ---------------------------------------------------------------------------------------------
# Commands.


def command(args: argparse.Namespace) -> int:
    name = check_id("command name", args.name)
    cmd_args: dict[str, Any] = {}
    for pair in args.arg:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CtlError(f"--arg expects K=V, got {pair!r}")
        cmd_args[key] = parse_value(value)
    with session_of(args) as session:
        devices = targets(session, args.device)
        return send_commands(session, name, cmd_args, devices, as_json=args.json)


def models_rollback(args: argparse.Namespace) -> int:
    with session_of(args) as session:
        devices = targets(session, args.device)
        return send_commands(session, "rollback", {}, devices, as_json=False)


def targets(session: Session, device: str | None) -> list[str]:
    """``[device]``, or every online device of the fleet (CtlError when there is none)."""
    if device:
        return [check_id("device id", device)]
    online = session.online_devices()
    if not online:
        raise CtlError(f"no device of fleet {session.topics.fleet} is online")
    return online


def send_commands(
    session: Session, name: str, args: dict[str, Any], devices: list[str], *, as_json: bool
) -> int:
    """Send ``name`` to each device and print the replies; 0 when every one says ok."""
    payload = dump(Command(args=args))
    pending = {session.request(d, name, payload): d for d in devices}
    width = max(len(d) for d in devices)
    failed = False
    deadline = time.monotonic() + session.timeout
    while pending:
        message = session.next(deadline)
        if message is None:
            break
        if not message.topic.startswith(session.replies + "/"):
            continue
        device = pending.pop(message.correlation or b"", None)
        if device is None:
            continue
        reply = decode(CommandReply, message)
        failed |= reply is None or not reply.ok
        if reply is None:
            print(f"{device:<{width}}  invalid reply")
        elif as_json:
            print(reply.model_dump_json())
        else:
            print(reply_line(device, reply, width))
    if pending:
        late = ", ".join(sorted(pending.values()))
        print(f"no reply to {name} in {session.timeout:g} s from: {late}")
    return 1 if failed or pending else 0


def reply_line(device: str, reply: CommandReply, width: int) -> str:
    parts = [f"{device:<{width}}", "ok  " if reply.ok else "FAIL", reply.detail]
    parts += [f"{k}={shown(v)}" for k, v in reply.data.items()]
    return "  ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# Model roll-out.


def models_announce(args: argparse.Namespace) -> int:
    try:
        manifest = open_pack(args.pack)
    except PackError as exc:
        raise CtlError(str(exc)) from None
    chosen = [check_id("device id", d.strip()) for d in (args.devices or "").split(",") if d]
    label = f"{manifest.name}/{manifest.version}"
    with session_of(args) as session:
        t = session.topics
        found = session.retained(t.status, t.models_reported)
        statuses = session.statuses(found.values())
        devices = chosen or [d for d, s in statuses.items() if s.state == "online"]
        known = earlier_answers(session, found.values(), statuses, manifest.name, manifest.version)
        announcement = ModelAnnouncement(
            name=manifest.name, version=manifest.version, files=manifest.files, devices=chosen
        )
        session.publish(t.announce, dump(announcement), retain=True)
        size = sum(f.size for f in manifest.files.values())
        to = ", ".join(chosen) if chosen else f"fleet {t.fleet}"
        print(f"announced {label} ({len(manifest.files)} files, {size} bytes) to {to}")
        if not args.wait:
            return 0
        if not devices:
            print("no device is online; devices pick the announcement up when they connect")
            return 0
        return await_models(session, manifest.name, manifest.version, devices, known)


def earlier_answers(
    session: Session,
    messages: Any,
    statuses: dict[str, DeviceStatus],
    name: str,
    version: str,
) -> dict[str, ModelReport]:
    """What devices said about ``name/version`` before this announcement.

    A device whose status shows it running that version has it; a device whose retained report
    says the version failed does not try it again for the same announcement.
    """
    label = f"{name}/{version}"
    known: dict[str, ModelReport] = {}
    for m in messages:
        device = session.topics.device_of(m.topic)
        if not device or not m.topic.endswith("/models/reported"):
            continue
        report = decode(ModelReport, m)
        if report and (report.name, report.version, report.status) == (name, version, "failed"):
            known[device] = report.model_copy(update={"detail": f"earlier: {report.detail}"})
    for device, status in statuses.items():
        if status.pack == label:
            known[device] = ModelReport(
                name=name, version=version, status="applied", detail="running", running=label
            )
    return known


def await_models(
    session: Session, name: str, version: str, devices: list[str], known: dict[str, ModelReport]
) -> int:
    """Print each device's report on ``name/version``; 0 when every device applied it."""
    width = max(len(d) for d in devices)
    answered = {d: r for d, r in sorted(known.items()) if d in devices}
    for device, earlier in answered.items():
        print(model_line(device, earlier, width))
    waiting = set(devices)
    deadline = time.monotonic() + session.timeout
    while waiting - set(answered):
        message = session.next(deadline)
        if message is None:
            break
        device = session.topics.device_of(message.topic) or ""
        if device not in waiting or message.retained:
            continue
        if not message.topic.endswith("/models/reported"):
            continue
        report = decode(ModelReport, message)
        if report is None or report.name != name:
            continue
        if report.status == "rolled_back" or report.version == version:
            print(model_line(device, report, width))
            if report.status in FINAL and device not in answered:
                answered[device] = report
    failed = any(r.status != "applied" for r in answered.values())
    missing = sorted(waiting - set(answered))
    if missing:
        print(
            f"no final report in {session.timeout:g} s from: {', '.join(missing)} "
            "(downloads can take longer: raise --timeout, or watch `autoglm ctl status`)"
        )
    return 1 if failed or missing else 0


def model_line(device: str, report: ModelReport, width: int) -> str:
    line = f"{device:<{width}}  {report.status:<11}  {report.name}/{report.version}"
    line += f"  running {report.running or '-'}"
    return f"{line}  {report.detail}".rstrip()
