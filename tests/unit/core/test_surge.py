"""rollout.maxSurge 1 (reconciler/core/surge.py): a single-node replica's new engine starts
beside the old one on free GPUs and the surge port, the old one is retired once the surge
serves, the replica's own engine is replaced in place, and the surge retires last."""

from __future__ import annotations

from typing import Any

from reconciler.core.members import DRAIN_ANNOUNCE_S
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import MemberKey, Plan, ReplicaKey, Start, Stop
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from tests.unit.core.plan_helpers import EMPTY, kinds

KEY = ReplicaKey("llama", 0)
ENGINE, SURGE = MemberKey(KEY, "engine"), MemberKey(KEY, "surge")


def dep(max_len: int, **rollout: Any) -> Any:
    return deployment("llama", engine={"maxModelLen": max_len},
                      rollout={"maxSurge": 1, **rollout})


OLD, NEW = dep(1024), dep(2048)
C2 = cluster(node("n0", gpus=2))
H_OLD, H_NEW = spec_hash(C2, OLD), spec_hash(C2, NEW)


def tick(d: Any, *procs: Any, now: float = 0.0, n_gpus: int = 2,
         draining: dict[MemberKey, float] | None = None) -> Plan:
    c = cluster(node("n0", gpus=n_gpus))
    return plan(desired(c, d), observed("n0", gpus(n_gpus), *procs), EMPTY, now, ctx("n0"),
                draining=draining)


def old(health: str = "ready") -> Any:
    return proc("llama", spec_hash=H_OLD, gpus=(0,), health=health)


def surge(health: str = "ready", h: str = H_NEW) -> Any:
    return proc("llama", role="surge", spec_hash=h, gpus=(1,), port=8001, health=health,
                pid=2000)


def new(health: str = "ready") -> Any:
    return proc("llama", spec_hash=H_NEW, gpus=(0,), health=health, pid=3000)


def test_the_new_engine_starts_beside_the_old_one_on_free_gpus_and_the_surge_port() -> None:
    p = tick(NEW, old())
    assert kinds(p) == ["Start:llama/0/surge"]
    start = p.actions[0]
    assert isinstance(start, Start)
    assert start.launch.gpus == (1,) and start.launch.port == 8001
    assert start.launch.argv[start.launch.argv.index("--port") + 1] == "8001"
    assert start.launch.env["RECONCILER_MEMBER"] == "llama.0.surge"
    s = p.replicas[KEY]
    assert (s.state, s.spec_hash, s.port) == ("Ready", H_OLD, 8000)  # the old one serves on


def test_the_old_engine_waits_while_the_surge_loads() -> None:
    p = tick(NEW, old(), surge("starting"))
    assert kinds(p) == [] and p.replicas[KEY].state == "Ready"


def test_once_the_surge_serves_the_old_engine_is_drained_then_replaced_in_place() -> None:
    d = dep(2048, drainTimeoutSeconds=10)
    h = spec_hash(C2, d)
    s = proc("llama", role="surge", spec_hash=h, gpus=(1,), port=8001, pid=2000)
    p = tick(d, old(), s, now=100.0)
    assert kinds(p) == ["Drain:llama/0/engine"]
    assert p.replicas[KEY].state == "Draining"  # gateways turn to the surge member
    p = tick(d, old(), s, now=100.0 + DRAIN_ANNOUNCE_S, draining=dict(p.draining))
    assert kinds(p) == ["Stop:llama/0/engine", "Start:llama/0/engine"]
    start = p.actions[1]
    assert isinstance(start, Start) and start.launch.gpus == (0,) and start.launch.port == 8000


def test_without_a_drain_the_old_engine_is_replaced_at_once_when_the_surge_serves() -> None:
    p = tick(NEW, old(), surge())
    assert kinds(p) == ["Stop:llama/0/engine", "Start:llama/0/engine"]


def test_the_surge_serves_until_the_replicas_own_engine_is_ready_then_retires() -> None:
    p = tick(NEW, surge(), new("starting"))
    assert kinds(p) == [] and p.replicas[KEY].state == "Starting"
    p = tick(NEW, surge(), new())
    assert kinds(p) == ["Stop:llama/0/surge", "MarkReady:llama/0"]
    stop = p.actions[0]
    assert isinstance(stop, Stop) and "surge no longer needed" in stop.reason
    assert p.replicas[KEY].state == "Ready"


def test_no_room_for_a_surge_replaces_in_place() -> None:
    d = dep(2048)
    p = tick(d, proc("llama", spec_hash=spec_hash(cluster(node("n0", gpus=1)), OLD),
                     gpus=(0,)), n_gpus=1)
    assert kinds(p) == ["Stop:llama/0/engine", "Start:llama/0/engine"]


def test_no_surge_without_max_surge_or_for_an_engine_not_serving() -> None:
    plain = deployment("llama", engine={"maxModelLen": 2048})
    p = tick(plain, proc("llama", spec_hash=spec_hash(C2, deployment(
        "llama", engine={"maxModelLen": 1024})), gpus=(0,)))
    assert kinds(p) == ["Stop:llama/0/engine", "Start:llama/0/engine"]
    p = tick(NEW, old("starting"))  # not serving: nothing to keep up
    assert kinds(p) == ["Stop:llama/0/engine", "Start:llama/0/engine"]
