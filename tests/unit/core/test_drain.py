"""Draining before a stop (rollout.drainTimeoutSeconds): the replica is announced
Draining first (gateways drop it from their tables), the engine gets SIGTERM
DRAIN_ANNOUNCE_S later with the drain timeout added to its stop grace, and vLLM is
launched with --shutdown-timeout so it finishes the requests in flight. A deleted
deployment drains too: the engine knows its drain from how it was launched.
Multi-node replicas: test_drain_multinode.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from reconciler.core.launch import drain_from_argv
from reconciler.core.members import DRAIN_ANNOUNCE_S
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import Drain, MemberKey, Plan, ReplicaKey, Start, Stop
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from tests.unit.core.plan_helpers import EMPTY, kinds

C = cluster(node("n0", gpus=2))
ENGINE = MemberKey(ReplicaKey("llama", 0), "engine")
DRAIN = {"drainTimeoutSeconds": 20}


def dep(max_len: int, rollout: dict[str, Any] | None = None, **spec: Any) -> Any:
    return deployment("llama", engine={"maxModelLen": max_len},
                      rollout=DRAIN if rollout is None else rollout,
                      **spec)


OLD, NEW = dep(1024), dep(2048)
H_OLD = spec_hash(C, OLD)


def tick(d: Any, now: float, draining: Mapping[MemberKey, float] | None = None,
         health: str = "ready", *deps: Any, launched_drain: float | None = None) -> Plan:
    obs = observed("n0", gpus(2), proc("llama", spec_hash=H_OLD, health=health,
                                       drain_s=launched_drain))
    want = desired(C, d, *deps) if d is not None else desired(C, *deps)
    return plan(want, obs, EMPTY, now, ctx("n0"), draining=draining)


def test_a_spec_change_announces_the_drain_then_stops_after_the_announce() -> None:
    p1 = tick(NEW, 100.0)
    assert kinds(p1) == ["Drain:llama/0/engine"]
    assert p1.replicas[ReplicaKey("llama", 0)].state == "Draining"
    assert p1.replicas[ReplicaKey("llama", 0)].spec_hash == H_OLD  # still the old engine
    assert p1.draining == {ENGINE: 100.0}
    # still announcing: nothing to do, still Draining, the start time carried on
    p2 = tick(NEW, 100.0 + DRAIN_ANNOUNCE_S - 0.1, p1.draining)
    assert kinds(p2) == [] and p2.draining == {ENGINE: 100.0}
    assert p2.replicas[ReplicaKey("llama", 0)].state == "Draining"
    # announced long enough: SIGTERM with the drain on top of the grace, replacement starts
    p3 = tick(NEW, 100.0 + DRAIN_ANNOUNCE_S, p2.draining)
    assert kinds(p3) == ["Stop:llama/0/engine", "Start:llama/0/engine"]
    stop = p3.actions[0]
    assert isinstance(stop, Stop) and stop.drain_s == 20.0 and "drained" in stop.reason
    assert p3.draining == {}


@pytest.mark.parametrize(("case", "launched", "want"), [
    ("scaled in", None, ["Drain:llama/0/engine"]),
    ("suspended", None, ["Drain:llama/0/engine"]),
    # the engine says how it drains (its state file / env markers): a deleted deployment
    # drains too
    ("deleted", 20.0, ["Drain:llama/0/engine"]),
    # an engine whose record predates that, and whose argv has no --shutdown-timeout
    ("deleted", None, ["Stop:llama/0/engine"]),
])
def test_every_stop_on_purpose_drains_where_the_engine_or_its_spec_says_how(
        case: str, launched: float | None, want: list[str]) -> None:
    if case == "scaled in":
        d = dep(1024, replicas=0)
    elif case == "suspended":
        d = dep(1024, suspend=True)
    else:
        d = None
    p = tick(d, 50.0, None, "ready", deployment("other", port=9000), launched_drain=launched)
    assert [k for k in kinds(p) if "llama" in k] == want
    key = ReplicaKey("llama", 0)
    if want[0].startswith("Drain"):
        # out of the gateways at once: Draining at the running engine's hash and port
        st = p.replicas[key]
        assert (st.state, st.role, st.spec_hash, st.port) == ("Draining", "single", H_OLD, 8000)
        p2 = tick(d, 50.0 + DRAIN_ANNOUNCE_S, p.draining, "ready", deployment("other", port=9000),
                  launched_drain=launched)
        stop = p2.actions[0]
        assert isinstance(stop, Stop) and stop.drain_s == 20.0 and key not in p2.replicas
    else:
        assert key not in p.replicas


@pytest.mark.parametrize(("why", "d", "health"), [
    ("no drain timeout set: stop at once, as before", dep(2048, rollout={}), "ready"),
    ("not serving yet: nothing to protect", NEW, "starting"),
])
def test_no_drain(why: str, d: Any, health: str) -> None:
    p = tick(d, 10.0, None, health)
    assert kinds(p)[0] == "Stop:llama/0/engine", why
    stop = p.actions[0]
    assert isinstance(stop, Stop) and stop.drain_s == 0.0
    assert not any(isinstance(a, Drain) for a in p.actions)


def test_a_change_reverted_while_draining_calls_the_drain_off() -> None:
    p1 = tick(NEW, 10.0)
    assert p1.draining
    p2 = tick(OLD, 11.0, p1.draining)
    assert not any(isinstance(a, Drain | Stop) for a in p2.actions) and p2.draining == {}
    assert p2.replicas[ReplicaKey("llama", 0)].state == "Ready"


def test_the_engine_is_launched_with_vllm_drain_and_the_hash_moves_only_when_set() -> None:
    p = plan(desired(C, NEW), observed("n0", gpus(2)), EMPTY, 0.0, ctx("n0"))
    argv = list(p.actions[0].launch.argv)  # type: ignore[union-attr]
    assert argv[argv.index("--shutdown-timeout") + 1] == "20"
    plain = dep(2048, rollout={})
    p = plan(desired(C, plain), observed("n0", gpus(2)), EMPTY, 0.0, ctx("n0"))
    assert "--shutdown-timeout" not in p.actions[0].launch.argv  # type: ignore[union-attr]
    assert spec_hash(C, plain) != spec_hash(C, NEW)  # argv differs
    assert spec_hash(C, plain) == spec_hash(C, dep(2048, rollout={"maxUnavailable": 2}))


@pytest.mark.parametrize(("argv", "want"), [
    (["vllm", "--shutdown-timeout", "20"], 20.0),
    (["vllm", "--shutdown-timeout=7.5"], 7.5),
    (["vllm", "--shutdown-timeout", "5", "--shutdown-timeout", "9"], 9.0),  # argparse: last
    (["vllm", "--port", "8000"], None),
    (["vllm", "--shutdown-timeout"], None),
    (["vllm", "--shutdown-timeout", "soon"], None),
])
def test_the_drain_an_engine_was_started_with_is_read_back_from_its_argv(
        argv: list[str], want: float | None) -> None:
    assert drain_from_argv(argv) == want


def test_every_member_is_launched_knowing_its_drain_and_its_leader() -> None:
    p = plan(desired(C, NEW), observed("n0", gpus(2)), EMPTY, 0.0, ctx("n0"))
    start = p.actions[0]
    assert isinstance(start, Start)
    assert (start.launch.drain_s, start.launch.leader) == (20.0, "")
    p = plan(desired(C, dep(2048, rollout={})), observed("n0", gpus(2)), EMPTY, 0.0, ctx("n0"))
    assert p.actions[0].launch.drain_s is None  # type: ignore[union-attr]
