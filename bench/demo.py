"""``autoglm demo`` (what ``make demo`` runs): the whole system on loopback, end to end.

1. the demo model pack, built on first use (about 7 minutes on 2 cores) and reused after;
2. a Mosquitto broker, the cloud service (full model), and two edge daemons (proxy) that join
   the fleet over MQTT and reach the cloud through an emulated WAN (+50 ms round trip);
3. a fleet configuration pushed over MQTT with ``autoglm ctl config set``, applied by both edges;
4. one mixed workload sent through both edges three ways: all-edge, all-cloud and hybrid;
5. the cloud killed, and the hybrid workload again: the edges answer alone;
6. sample answers, a summary, the fleet's view (``autoglm ctl status``), JSON and plots.

Everything it started is stopped when it ends, fails, or is interrupted (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from bench import workload as wl
from bench.hybrid import (
    Progress,
    edge_toml,
    mode_table,
    route_lines,
    run_three_ways,
    write_outputs,
)
from bench.stack.loopback import Stack
from shared.control import DeviceStatus, Topics, parse
from shared.mqtt import build_client
from shared.net import split_host_port
from shared.pack.manifest import read_manifest

FLEET_CONFIG = ["routing.target_min_accuracy_share=0.99", "telemetry.interval_s=1"]
EDGES = ("edge-a", "edge-b")
KILLED_REQUESTS = 30
SAMPLES = 8


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("--pack", type=Path, help="pack to run (default: build or reuse demo)")
    parser.add_argument("--packs-dir", type=Path, default=Path("packs"), help="where packs live")
    parser.add_argument("--requests", type=int, default=120, help="distinct prompts per mode")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients")
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="emulated WAN round trip")
    parser.add_argument("--jitter-ms", type=float, default=5.0, help="emulated WAN jitter")
    parser.add_argument("--fleet", default="demo", help="MQTT fleet of the two edges")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="JSON, plots, logs")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.set_defaults(handler=_run)


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say(f"\n== {text} " + "=" * max(0, 78 - len(text)))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo the way Ctrl-C does: through the clean-up path. SIGINT does so
    too even when the demo was started with it ignored (a background job of a shell)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def ensure_pack(args: argparse.Namespace) -> Path:
    if args.pack is not None:
        return Path(args.pack)
    latest = args.packs_dir / "demo" / "latest"
    from toolkit.build import RECIPES, build_pack

    if not latest.exists():
        say("building the demo pack: full model and distilled proxy (about 7 min on 2 cores) ...")
    return build_pack(RECIPES["demo"], args.packs_dir)  # logs "built ... in N s" or "reusing"


def wait_online(broker: str, fleet: str, devices: tuple[str, ...], timeout: float = 30.0) -> None:
    """Until every device's retained status says online (they have subscribed by then)."""
    online: set[str] = set()
    topics = Topics(fleet)
    client = build_client(f"demo-watch-{time.monotonic_ns()}")

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        with contextlib.suppress(ValueError):
            status = parse(DeviceStatus, message.payload)
            if status.state == "online":
                online.add(status.device_id)

    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(topics.status, qos=1)
    client.connect(*split_host_port(broker))
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not online.issuperset(devices):
            if time.monotonic() > deadline:
                raise TimeoutError(f"devices not online after {timeout} s: {devices}")
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()


def ctl(broker: str, fleet: str, command: list[str], *rest: str) -> None:
    """Runs ``autoglm ctl COMMAND --mqtt BROKER --fleet FLEET REST`` in this process, echoing
    it as an operator types it."""
    from autoglm_cli import main

    argv = ["ctl", *command, "--mqtt", broker, "--fleet", fleet, *rest]
    say("$ autoglm " + " ".join(argv))
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"autoglm {' '.join(argv)} exited with {code}")


def samples(examples: list[Any], outcomes: list[wl.Outcome], names: dict[str, str]) -> list[str]:
    """A few hybrid answers, escalated and local ones both."""
    by_route: dict[str, list[wl.Outcome]] = {}
    for o in outcomes:
        by_route.setdefault(o.route or o.code, []).append(o)
    picked: list[wl.Outcome] = []
    while len(picked) < SAMPLES and any(by_route.values()):
        for group in by_route.values():
            if group and len(picked) < SAMPLES:
                picked.append(group.pop(0))
    lines = []
    for o in sorted(picked, key=lambda o: o.index):
        ex = examples[o.index]
        mark = "right" if o.correct else f"wrong (expected {ex.answer!r})"
        why = f", {o.escalation_reason}" if o.escalation_reason else ""
        lines.append(
            f"  {ex.prompt!r:<30} -> {o.text!r:<16} {mark}\n"
            f"  {'':<30}    route {o.route}{why}, confidence {o.confidence:.2f}, "
            f"{o.latency_ms:.1f} ms, via {names.get(o.edge, o.edge)}"
        )
    return lines


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with sigterm_as_interrupt():
        try:
            return _demo(args, started)
        except KeyboardInterrupt:
            say("\ninterrupted: everything the demo started has been stopped")
            return 130
        except (RuntimeError, TimeoutError) as exc:
            say(f"\ndemo failed: {exc}\neverything the demo started has been stopped")
            return 1


def _demo(args: argparse.Namespace, started: float) -> int:
    heading("1. model pack")
    pack = ensure_pack(args)
    manifest = read_manifest(pack.resolve())
    say(f"{manifest.name}/{manifest.version}: full model {manifest.full.params:,} parameters, "
        f"proxy {manifest.proxy.params:,} (ONNX); answers up to "
        f"{manifest.routing.max_new_tokens} tokens")  # fmt: skip
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    examples = wl.make_workload(args.requests, args.seed)
    load = wl.Load("closed", args.concurrency)
    max_new = manifest.routing.max_new_tokens
    heading("2. broker, cloud and two edges on loopback")
    stack = Stack(
        pack, work, edge_ids=EDGES, rtt_ms=args.rtt_ms, jitter_ms=args.jitter_ms,
        fleet=args.fleet, edge_toml=edge_toml(None), say=say,
    )  # fmt: skip
    with stack:
        assert stack.broker is not None and stack.cloud is not None
        broker = stack.broker.address
        wait_online(broker, args.fleet, EDGES)
        heading("3. the fleet operator pushes a configuration over MQTT")
        ctl(broker, args.fleet, ["config", "set"], *FLEET_CONFIG)
        heading(f"4. {len(examples)} prompts through both edges, three ways")
        say(f"{load.describe()}; every family (the held-out 'count' included), tiers 1-3")
        progress = Progress(3 * len(examples) + KILLED_REQUESTS, sys.stderr.isatty())
        try:
            outcomes, walls = run_three_ways(
                stack.edge_addresses, examples, load, 1, max_new, progress
            )
            heading("5. the cloud is killed (SIGKILL); the hybrid workload again")
            stack.cloud.kill()
            killed, killed_wall = wl.run(
                stack.edge_addresses, examples, "auto", load, max_new_tokens=max_new,
                indices=range(min(KILLED_REQUESTS, len(examples))), on_done=progress.done,
            )  # fmt: skip
        finally:
            progress.close()
        k = wl.summarize(killed, killed_wall)
        say(f"{k['requests']} requests, {k['failed']} failed; routes: {k['routes']}")
        heading("6. the fleet as the operator sees it")
        ctl(broker, args.fleet, ["status"], "--wait", "1.5")
    report = summarize_demo(examples, outcomes, walls, k, manifest, args)
    heading("sample answers (hybrid)")
    names = {edge.address: device for device, edge in stack.edges.items()}
    for line in samples(examples, outcomes["auto"], names):
        say(line)
    heading("summary")
    for line in summary_lines(report):
        say(line)
    phases = {wl.LABELS[m]: outcomes[m] for m in wl.MODES}
    phases["hybrid, cloud killed"] = killed
    written = write_outputs(report, phases, args.out, "demo")
    say(f"\nJSON and plots: {', '.join(written)}")
    say(f"logs of every process: {work}")
    say(f"demo finished in {time.monotonic() - started:.0f} s; everything it started is stopped")
    return 0


def summarize_demo(
    examples: list[Any],
    outcomes: dict[str, list[wl.Outcome]],
    walls: dict[str, float],
    killed: dict[str, Any],
    manifest: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    modes = {wl.LABELS[m]: wl.summarize(outcomes[m], walls[m]) for m in wl.MODES}
    hybrid = modes["hybrid"]
    return {
        "demo": True,
        "pack": f"{manifest.name}/{manifest.version}",
        "requests_per_mode": len(examples),
        "wan": {"rtt_ms": args.rtt_ms, "jitter_ms": args.jitter_ms},
        "fleet_config": FLEET_CONFIG,
        "modes": modes,
        "cloud_calls_saved": 1.0 - hybrid["cloud_share"],
        "cloud_killed": killed,
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    modes = report["modes"]
    edge, cloud, hybrid = modes["all-edge"], modes["all-cloud"], modes["hybrid"]
    n = report["requests_per_mode"]
    calls = hybrid["routes"].get("CLOUD", 0)
    return [
        *mode_table(modes),
        "",
        *route_lines("hybrid", hybrid),
        "",
        f"edge share: {hybrid['edge_share']:.0%} of hybrid requests answered on the device",
        f"accuracy: hybrid {hybrid['accuracy']:.1%} = {hybrid['accuracy'] / cloud['accuracy']:.1%}"
        f" of all-cloud ({cloud['accuracy']:.1%}); all-edge {edge['accuracy']:.1%}",
        f"latency: hybrid mean {hybrid['latency_ms']['mean']:.1f} ms vs all-cloud "
        f"{cloud['latency_ms']['mean']:.1f} ms",
        f"cloud calls saved: {n - calls} of {n} ({report['cloud_calls_saved']:.0%})",
        f"with the cloud killed: {report['cloud_killed']['failed']} of "
        f"{report['cloud_killed']['requests']} requests failed",
    ]
