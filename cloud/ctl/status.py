"""``autoglm ctl status``: one line per device of the fleet.

The retained topics (status, reported config, reported model) say what each device is and runs;
telemetry is not retained, so the command listens for ``--wait`` seconds to hear some.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from cloud.ctl.options import connection_options, guarded, session_of
from cloud.ctl.session import Message, decode
from shared.control import DeviceStatus, ModelReport, ReportedConfig, Telemetry, Topics

# Per-device topic (after devices/<id>/) -> its payload model and the view's field.
KINDS: dict[str, tuple[type[BaseModel], str]] = {
    "status": (DeviceStatus, "status"),
    "config/reported": (ReportedConfig, "config"),
    "models/reported": (ModelReport, "model"),
    "telemetry": (Telemetry, "telemetry"),
}
HEADER = ("DEVICE", "STATE", "PACK", "RUNTIME", "CONFIG", "TELEMETRY")


@dataclass
class DeviceView:
    status: DeviceStatus | None = None
    config: ReportedConfig | None = None
    model: ModelReport | None = None
    telemetry: Telemetry | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            name: value.model_dump(mode="json") if value is not None else None
            for name, value in vars(self).items()
        }


def register(subs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = subs.add_parser(
        "status",
        parents=[connection_options()],
        help="devices: state, pack, config, last telemetry",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--wait",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds to listen for telemetry (default: 2)",
    )
    status.set_defaults(handler=guarded(show_status))


def show_status(args: argparse.Namespace) -> int:
    with session_of(args) as session:
        t = session.topics
        found = session.retained(t.status, t.reported, t.models_reported, t.telemetry)
        deadline = time.monotonic() + max(0.0, args.wait)
        while (message := session.next(deadline)) is not None:
            found[message.topic] = message
    views = views_of(t, found.values())
    if args.json:
        devices = {d: v.as_json() for d, v in views.items()}
        print(json.dumps({"fleet": t.fleet, "devices": devices}, indent=2))
    else:
        print(table(t.fleet, views, args.wait))
    return 0


def views_of(topics: Topics, messages: Any) -> dict[str, DeviceView]:
    views: dict[str, DeviceView] = {}
    for message in messages:
        device = topics.device_of(message.topic)
        kind = kind_of(topics, message)
        if device is None or kind is None or not message.payload:
            continue
        model, field = KINDS[kind]
        value = decode(model, message)
        if value is not None:
            setattr(views.setdefault(device, DeviceView()), field, value)
    return dict(sorted(views.items()))


def kind_of(topics: Topics, message: Message) -> str | None:
    device = topics.device_of(message.topic)
    prefix = f"{topics.base}/devices/{device}/"
    rest = message.topic.removeprefix(prefix)
    return rest if rest in KINDS else None


def table(fleet: str, views: dict[str, DeviceView], wait: float) -> str:
    if not views:
        return f"fleet {fleet}: no device has reported"
    online = sum(1 for v in views.values() if v.status and v.status.state == "online")
    rows = [HEADER, *(row(d, v) for d, v in views.items())]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"fleet {fleet}: {len(views)} device(s), {online} online"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not any(v.telemetry for v in views.values()):
        lines.append(f"(no telemetry heard in {wait:g} s; devices send it every interval_s)")
    return "\n".join(lines)


def row(device: str, view: DeviceView) -> tuple[str, ...]:
    s = view.status
    state = s.state if s else "?"
    pack = s.pack if s and s.pack else "-"
    runtime = "-"
    if s and (s.precision or s.providers):
        providers = ",".join(p.removesuffix("ExecutionProvider") for p in s.providers)
        runtime = f"{s.precision or '?'} {providers or '?'}"
    return (device, state, pack, runtime, config_cell(view), telemetry_cell(view.telemetry))


def config_cell(view: DeviceView) -> str:
    source: ReportedConfig | DeviceStatus | None = view.config or view.status
    if source is None:
        return "-"
    cell = f"fleet v{source.fleet_version or '-'} device v{source.device_version or '-'}"
    if view.config is not None:
        c = view.config
        cell += f" (last: {c.status} {c.scope} v{c.version})"
    return cell


def telemetry_cell(t: Telemetry | None) -> str:
    if t is None:
        return "-"
    p50 = t.latency_ms.get("p50")
    latency = f"p50 {p50:.1f} ms" if p50 is not None else "p50 -"
    requests = f"{sum(t.requests.values())} req/{t.interval_s:g}s"
    return f"{requests}  esc {t.escalation_share:.0%}  {latency}"
