"""Fault drills: real processes on loopback, a fault injected under load, recovery timed.

Each drill runs a real edge daemon (``autoglm edge serve``) in front of real clouds, with client
threads sending a steady mix of prompts (easy ones the proxy answers, held-out ones it escalates)
while a fault is injected: the cloud killed and restarted, one of two cloud replicas killed, the
MQTT broker restarted, a latency spike on the WAN (``bench.stack.wan.DelayProxy``). Each asserts
that no request fails beyond what the fallback policy allows, and that the system recovers within a
bound derived below from the settings it depends on. docs/fault-drills.md explains each drill and
what an operator sees meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import paho.mqtt.client as mqtt
import pytest
from broker import Broker, Inbox, close, paho_client, publish, subscribe
from hybrid import ask, edge_config, prompts, route
from prom import metric

from bench.stack.processes import CloudServer, EdgeServer, free_port
from bench.stack.wan import DelayProxy
from edge.cloud_client import MAX_RECONNECT_BACKOFF_MS
from shared import control as c
from shared.mqtt import RECONNECT_MAX_S, RECONNECT_MIN_S
from shared.rpc import inference_pb2 as pb
from shared.rpc import inference_pb2_grpc

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------- settings and bounds

BREAKER_FAILURES = 2
BREAKER_COOLDOWN_S = 1.0  # short, so that a drill sees the breaker open and close in seconds
DEADLINE_S = 5.0  # cloud call deadline where the drill does not test the deadline itself
WAN_RTT_MS = 50.0  # a plain WAN round trip between edge and cloud
# Slack for a shared 2-core machine: a process scheduled late, a decode, a health poll. Every
# bound below is "what the settings allow" plus this, never a measured speed.
MARGIN_S = 5.0

# Drill 1, the cloud killed and restarted. Once the cloud serves again, the edge's gRPC channel
# connects at its next reconnect attempt, at most the channel's longest back-off later
# (edge.cloud_client caps it at MAX_RECONNECT_BACKOFF_MS; gRPC adds up to 20% jitter); the
# breaker, open since the outage, lets one trial call through each cooldown, so the first trial
# after that connects closes it. gRPC's own default cap (120 s) would break this bound.
RECONNECT_BACKOFF_S = MAX_RECONNECT_BACKOFF_MS / 1000 * 1.2
CLOUD_RECOVERY_S = RECONNECT_BACKOFF_S + BREAKER_COOLDOWN_S + MARGIN_S
# A call in flight when the cloud dies fails at once (the connection resets); a new one is
# refused: the first fallback comes within one deadline.
OUTAGE_SEEN_S = DEADLINE_S + MARGIN_S

# Drill 3, the broker restarted. paho reconnects RECONNECT_MIN_S after the drop, the delay doubling
# after each failed try (1, 3, 7, 15 ... s after the drop), capped at RECONNECT_MAX_S: a broker that
# comes back D seconds after the drop is found by the next try, less than D + RECONNECT_MIN_S
# later. D is the planned downtime plus the time mosquitto takes to stop and start again.
BROKER_DOWN_S = 2.0  # requests keep flowing this long with no broker
BROKER_RESTART_S = 3.0  # allowance for mosquitto to stop and start (the bound assumes no more)
BROKER_RECOVERY_S = (
    min(BROKER_DOWN_S + BROKER_RESTART_S + RECONNECT_MIN_S, RECONNECT_MAX_S) + MARGIN_S
)

# Drill 4, a latency spike. The spike's one-way delay alone exceeds the deadline, so no call made
# during it can be answered in time. Once the delay is set back, bytes queued during the spike
# still drain for up to one spike one-way delay; a trial call started before that fails at its
# deadline and reopens the breaker for one more cooldown; the next trial gets through. The spike
# may also take the connection down (a keep-alive ping whose answer waits behind the spike's
# queue past KEEPALIVE_TIMEOUT_MS on a busy machine, or the server's GOAWAY): then the channel
# connects again, at most one reconnect back-off later, so the bound allows for one.
# The deadline is still far above a normal call (50 ms RTT + tens of ms in the cloud), so that a
# starved CPU does not make trial calls miss it after the spike.
SPIKE_DEADLINE_S = 2.0
SPIKE_RTT_MS = 5000.0
SPIKE_S = 5.0  # the first calls wait out the deadline; then the breaker opens: fast fallbacks
SPIKE_RECOVERY_S = (
    SPIKE_RTT_MS / 2000 + SPIKE_DEADLINE_S + BREAKER_COOLDOWN_S + RECONNECT_BACKOFF_S + MARGIN_S
)
assert SPIKE_RTT_MS / 2000 > SPIKE_DEADLINE_S, "the spike must exceed the deadline one way"

WARM_S = 30.0  # the first escalations through a fresh edge reach the cloud (connection set-up)
LOAD_THREADS = 3
LOAD_PAUSE_S = 0.05  # between two requests of one thread: steady load, CPU left for the servers
MAX_PER_THREAD = 2000  # a hard bound on requests, whatever happens to the clock

EASY = prompts("rev", 1, 8) + prompts("shift", 1, 8)
HELD_OUT = prompts("max", 1, 8)  # the quick pack's held-out family: the proxy escalates it
MIX = [p for pair in zip(EASY[::2], EASY[1::2], HELD_OUT, strict=True) for p in pair]

FLEET = "drills"
DEVICE = "drill-dev"
CLOUD = "ROUTE_CLOUD"
FALLBACK = "ROUTE_EDGE_FALLBACK"

T = TypeVar("T")


def settings(
    *, deadline_s: float = DEADLINE_S, retries: int = 2, on_cloud_failure: str = "edge"
) -> str:
    """Edge settings of a drill: short breaker, no answer cache (every request takes its route)."""
    return f"""
[runtime.cloud_call]
deadline_s = {deadline_s}
retries = {retries}
breaker_failures = {BREAKER_FAILURES}
breaker_cooldown_s = {BREAKER_COOLDOWN_S}

[runtime.cache]
enabled = false

[runtime.fallback]
on_cloud_failure = "{on_cloud_failure}"
"""


# --------------------------------------------------------------------------- load and waiting


@dataclass(frozen=True)
class Outcome:
    """One request of the load: when it was sent and answered, and how."""

    prompt: str
    sent: float  # time.monotonic()
    done: float
    route: str | None  # None: the request failed
    reason: str  # escalation_reason; empty when the proxy answered on its own
    error: str = ""

    @property
    def escalated(self) -> bool:
        return bool(self.reason)


class Load:
    """``threads`` clients, each on its own channel, sending ``prompts`` in turn (each from its
    own starting point) to an edge until stopped (at most ``max_per_thread`` requests each)."""

    def __init__(
        self,
        edge: EdgeServer,
        prompts: Sequence[str] = MIX,
        *,
        threads: int = LOAD_THREADS,
        pause_s: float = LOAD_PAUSE_S,
        max_per_thread: int = MAX_PER_THREAD,
    ) -> None:
        self.address = edge.address
        self.prompts = list(prompts)
        self.pause_s = pause_s
        self.max_per_thread = max_per_thread
        self.tag = uuid.uuid4().hex[:6]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._run, args=(i, threads), name=f"load-{i}")
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for th in self._threads:
            th.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        """Stop sending, wait for the requests in flight; returns every outcome."""
        self._stop.set()
        for th in self._threads:
            th.join(60)
        assert not any(th.is_alive() for th in self._threads), "a load thread did not end"
        return self.outcomes()

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def first(self, ok: Callable[[Outcome], bool]) -> Outcome | None:
        """The earliest answered outcome (by arrival) for which ``ok`` holds."""
        return next((o for o in self.outcomes() if ok(o)), None)

    def _run(self, index: int, threads: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            n, start = 0, index * len(self.prompts) // threads  # each thread walks the whole mix
            while not self._stop.is_set() and n < self.max_per_thread:
                prompt = self.prompts[(start + n) % len(self.prompts)]
                request = pb.GenerateRequest(prompt=prompt, request_id=f"{self.tag}-{index}-{n}")
                sent = time.monotonic()
                try:
                    reply = stub.Generate(request, timeout=30)
                    outcome = Outcome(
                        prompt, sent, time.monotonic(), route(reply), reply.escalation_reason
                    )
                except grpc.RpcError as exc:
                    error = f"{exc.code().name}: {exc.details()}"
                    outcome = Outcome(prompt, sent, time.monotonic(), None, "", error)
                with self._lock:
                    self._outcomes.append(outcome)
                n += 1
                self._stop.wait(self.pause_s)


def failures(outcomes: Sequence[Outcome]) -> list[str]:
    return [f"{o.prompt!r}: {o.error}" for o in outcomes if o.route is None]


def report(drill: str, outcomes: Sequence[Outcome], **seconds: float) -> None:
    """One line per drill (``pytest -s`` shows it): the load by route, and the times measured."""
    routes: dict[str, int] = {}
    for o in outcomes:
        key = (o.route or "FAILED").removeprefix("ROUTE_").lower()
        routes[key] = routes.get(key, 0) + 1
    times = " ".join(f"{k}={v:.2f}s" for k, v in seconds.items())
    print(f"\n{drill}: {len(outcomes)} requests {routes} {times}")


def wait_until(what: str, timeout: float, check: Callable[[], T | None], every: float = 0.05) -> T:
    """The first true value of ``check()``, polled until ``timeout`` seconds have passed."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout:.1f} s")
        time.sleep(every)


# --------------------------------------------------------------------------- processes


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExitStack]:
    """Every process and proxy a drill starts is stopped here, whatever the drill's outcome.
    When the drill failed, the edge's and the cloud's events (their logs less the per-request
    lines) are printed first: the breaker's transitions and the gRPC errors with their details."""
    with ExitStack() as s:
        yield s
        if getattr(request.node, "rep_call", None) and request.node.rep_call.failed:
            for log in sorted(tmp_path.glob("*.log")):
                lines = log.read_text().splitlines()
                # per-request lines left out: answers, and fallbacks while the breaker is open
                events = [x for x in lines if '"route"' not in x and not x.endswith("circuit open")]
                print(f"--- {log.name} (last 60 events)", *events[-60:], sep="\n")


def start_cloud(stack: ExitStack, pack: Path, workdir: Path) -> CloudServer:
    cloud = CloudServer(pack, workdir, args=["--auth-disabled"])
    stack.callback(cloud.stop)
    print(f"cloud log: {cloud.log_path}")  # shown with the failure report
    cloud.wait_serving()
    return cloud


def start_edge(
    stack: ExitStack,
    pack: Path,
    workdir: Path,
    clouds: Sequence[str],
    toml: str,
    args: Sequence[str] = (),
) -> tuple[EdgeServer, int]:
    """An edge with the drill's settings and a metrics page; returns it and the metrics port."""
    port = free_port()
    flags = [*edge_config(workdir / "edge.toml", toml), "--metrics-port", str(port), *args]
    edge = EdgeServer(pack, workdir, clouds=clouds, args=flags)
    stack.callback(edge.stop)
    print(f"edge log: {edge.log_path}")
    edge.wait_serving()
    return edge, port


def cloud_answers(
    load: Load, after: float = 0.0, count: int = 1, timeout: float = WARM_S
) -> list[Outcome]:
    """Until the load has ``count`` escalations answered by the cloud, sent after ``after``;
    returns them in the order they were answered."""

    def check() -> list[Outcome] | None:
        found = [o for o in load.outcomes() if o.route == CLOUD and o.sent >= after]
        return found[:count] if len(found) >= count else None

    return wait_until(f"{count} escalation(s) answered by the cloud", timeout, check)


# --------------------------------------------------------------------------- the drills


def test_cloud_killed_mid_load_falls_back_and_escalation_resumes_after_restart(
    quick_pack: Path, tmp_path: Path, stack: ExitStack
) -> None:
    """SIGKILL the only cloud under load, then restart it on the same address: no request fails
    (default policy: fall back), escalations are answered EDGE_FALLBACK during the outage, and
    the cloud answers again within CLOUD_RECOVERY_S of serving again."""
    cloud = start_cloud(stack, quick_pack, tmp_path)
    wan = stack.enter_context(DelayProxy(cloud.address, rtt_ms=WAN_RTT_MS))
    edge, port = start_edge(stack, quick_pack, tmp_path, [wan.address], settings())
    with Load(edge) as load:
        cloud_answers(load)
        cloud.kill()
        killed = time.monotonic()
        wait_until(
            "a fallback answer after the kill",
            OUTAGE_SEEN_S,
            lambda: load.first(lambda o: o.route == FALLBACK and o.sent >= killed),
        )
        wait_until(
            "the breaker of the dead cloud open on /metrics",
            OUTAGE_SEEN_S,
            lambda: metric(port, "autoglm_edge_breaker_open", target=wan.address) == 1,
        )
        restarting = time.monotonic()
        cloud.restart().wait_serving()
        back = time.monotonic()
        resumed = cloud_answers(load, after=back, timeout=CLOUD_RECOVERY_S)[0]
        cloud_answers(load, after=resumed.done, count=3, timeout=MARGIN_S)  # and stays back
        wait_until(
            "the breaker closed on /metrics",
            MARGIN_S,
            lambda: metric(port, "autoglm_edge_breaker_open", target=wan.address) == 0,
        )
    outcomes = load.stop()
    report("cloud killed", outcomes, recovered=resumed.done - back, bound=CLOUD_RECOVERY_S)
    assert not failures(outcomes), failures(outcomes)[:5]
    outage = [o for o in outcomes if killed <= o.sent and o.done <= restarting]
    assert CLOUD not in {o.route for o in outage}, "answered by a dead cloud?"
    assert {o.route for o in outage if o.escalated} == {FALLBACK}
    assert all(o.reason == "low_confidence" for o in outage if o.route == FALLBACK)
    assert resumed.done - back <= CLOUD_RECOVERY_S
    # What an operator sees: fallbacks counted, the cloud errors by code, no failed request.
    assert metric(port, "autoglm_edge_requests_total", route="edge_fallback", status="ok") > 0
    assert metric(port, "autoglm_edge_cloud_errors_total", code="UNAVAILABLE") > 0
    total = metric(port, "autoglm_edge_requests_total")
    assert metric(port, "autoglm_edge_requests_total", status="ok") == total == len(outcomes)


def test_one_of_two_cloud_replicas_killed_under_load_no_escalation_fails(
    quick_pack: Path, tmp_path: Path, stack: ExitStack
) -> None:
    """Round-robin over two clouds, one SIGKILLed under load: every escalation is still answered
    by the cloud (fallback is set to fail, so a call lost on the dead replica would surface as an
    error), and the dead replica's breaker opens."""
    clouds = [start_cloud(stack, quick_pack, tmp_path) for _ in range(2)]
    toml = settings(retries=0, on_cloud_failure="fail")
    edge, port = start_edge(stack, quick_pack, tmp_path, [c.address for c in clouds], toml)
    with Load(edge) as load:
        cloud_answers(load)
        clouds[0].kill()
        killed = time.monotonic()
        wait_until(
            "the dead replica's breaker open on /metrics",
            OUTAGE_SEEN_S,
            lambda: metric(port, "autoglm_edge_breaker_open", target=clouds[0].address) == 1,
        )
        opened = time.monotonic()
        # Twenty escalations take a few breaker cooldowns: half-open trials fail over too.
        cloud_answers(load, after=killed, count=20)
    outcomes = load.stop()
    report("replica killed", outcomes, breaker_open=opened - killed)
    assert not failures(outcomes), failures(outcomes)[:5]
    assert {o.route for o in outcomes if o.escalated} == {CLOUD}
    assert metric(port, "autoglm_edge_breaker_open", target=clouds[1].address) == 0
    assert metric(port, "autoglm_edge_cloud_errors_total") == 0  # failover hid every failure


def _next(inbox: Inbox, ok: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """The first JSON message of ``inbox`` for which ``ok`` holds."""

    def check() -> dict[str, Any] | None:
        for msg in inbox.drain():
            doc: dict[str, Any] = json.loads(msg.payload)
            if ok(doc):
                return doc
        return None

    return wait_until(f"a matching message on {inbox.topic_filter}", timeout, check)


def _push(operator: mqtt.Client, version: int, runtime: dict[str, Any]) -> None:
    doc = json.dumps({"version": version, **runtime}).encode()
    publish(operator, c.Topics(FLEET, DEVICE).device_desired, doc, retain=True)


def test_broker_restart_requests_keep_flowing_and_the_device_rejoins(
    quick_pack: Path, tmp_path: Path, stack: ExitStack
) -> None:
    """Inference does not depend on the broker: no request fails while it is down. After it is
    back, within BROKER_RECOVERY_S the device is online again (a new birth message) and a new
    desired configuration is applied (reported 200, and it changes the routes)."""
    topics = c.Topics(FLEET, DEVICE)
    broker = Broker(tmp_path / "broker", persistence=True)
    stack.callback(broker.stop)
    broker.start().wait_ready()
    cloud = start_cloud(stack, quick_pack, tmp_path)
    mqtt_args = ["--mqtt", broker.address, "--fleet", FLEET, "--device-id", DEVICE]
    edge, _ = start_edge(stack, quick_pack, tmp_path, [cloud.address], settings(), mqtt_args)

    operator = paho_client(broker, client_id="drill-operator")
    try:
        status = subscribe(operator, topics.status)
        _next(status, lambda s: s["state"] == "online", MARGIN_S + RECONNECT_MIN_S)
        reports = subscribe(operator, topics.reported)
        _push(operator, 1, {"telemetry": {"interval_s": 5.0}})
        assert _next(reports, lambda r: r["version"] == 1, MARGIN_S)["status"] == 200
    finally:
        close(operator)

    with Load(edge) as load:
        cloud_answers(load)
        stopped, stopped_wall = time.monotonic(), time.time()
        broker.stop()
        time.sleep(BROKER_DOWN_S)
        broker.start().wait_ready()
        back = time.monotonic()
        operator = paho_client(broker, client_id="drill-operator-2")
        try:
            status = subscribe(operator, topics.status)
            reports = subscribe(operator, topics.reported)
            _push(operator, 2, {"routing": {"threshold": 0.0}})  # keep everything at the edge
            # ts after the drop: a birth message of the new connection, not the retained old one
            _next(
                status,
                lambda s: s["state"] == "online" and s["ts"] > stopped_wall,
                BROKER_RECOVERY_S - (time.monotonic() - back),
            )
            applied = _next(
                reports,
                lambda r: r["version"] == 2,
                BROKER_RECOVERY_S - (time.monotonic() - back),
            )
            recovered = time.monotonic()
        finally:
            close(operator)
    outcomes = load.stop()
    report("broker restarted", outcomes, recovered=recovered - back, bound=BROKER_RECOVERY_S)
    assert not failures(outcomes), failures(outcomes)[:5]
    assert back - stopped <= BROKER_DOWN_S + BROKER_RESTART_S, "the bound assumes a quick restart"
    assert (applied["status"], applied["effective"]["routing"]["threshold"]) == (200, 0.0)
    assert recovered - back <= BROKER_RECOVERY_S
    down = [o for o in outcomes if stopped <= o.sent and o.done <= back]
    assert len(down) >= LOAD_THREADS, "requests should keep flowing while the broker is down"
    assert {o.route for o in down if o.escalated} == {CLOUD}
    assert {route(ask(edge, p)) for p in HELD_OUT[:3]} == {"ROUTE_EDGE"}  # v2 is in force


def test_latency_spike_falls_back_and_cloud_answers_resume_when_it_passes(
    quick_pack: Path, tmp_path: Path, stack: ExitStack
) -> None:
    """WAN delay raised above the cloud deadline under load: escalations come back EDGE_FALLBACK
    (none fails; the breaker may open); delay set back: the cloud answers again within
    SPIKE_RECOVERY_S."""
    cloud = start_cloud(stack, quick_pack, tmp_path)
    wan = stack.enter_context(DelayProxy(cloud.address, rtt_ms=WAN_RTT_MS))
    toml = settings(deadline_s=SPIKE_DEADLINE_S)
    edge, port = start_edge(stack, quick_pack, tmp_path, [wan.address], toml)
    with Load(edge) as load:
        cloud_answers(load)
        wan.set_delay(SPIKE_RTT_MS)
        spiked = time.monotonic()
        time.sleep(SPIKE_S)
        wan.set_delay(WAN_RTT_MS)
        calmed = time.monotonic()
        resumed = cloud_answers(load, after=calmed, timeout=SPIKE_RECOVERY_S)[0]
        cloud_answers(load, after=resumed.done, count=3, timeout=MARGIN_S)  # and stays back
    outcomes = load.stop()
    report("latency spike", outcomes, recovered=resumed.done - calmed, bound=SPIKE_RECOVERY_S)
    assert not failures(outcomes), failures(outcomes)[:5]
    # A call whose bytes crossed the proxy during the spike cannot be answered within the
    # deadline; a request sent after the spike began and answered before it ended is such a call.
    spike = [o for o in outcomes if spiked <= o.sent and o.done <= calmed]
    assert {o.route for o in spike if o.escalated} == {FALLBACK}, spike
    assert resumed.done - calmed <= SPIKE_RECOVERY_S
    assert metric(port, "autoglm_edge_cloud_errors_total", code="DEADLINE_EXCEEDED") > 0
