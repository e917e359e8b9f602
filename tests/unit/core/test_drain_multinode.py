"""Draining a multi-node replica (reconciler/core/drain.py): the leader's serving engine
is announced and stopped with its drain; its Ray head and the followers' Ray workers or
headless ranks stay until that engine has stopped, at most the announce + the drain +
DRAIN_MARGIN_S; a broken group still goes at once. Deleted replicas drain too: every
member knows its drain and leader from how it was launched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from reconciler.core import lifecycle
from reconciler.core.drain import hold_bound
from reconciler.core.members import DRAIN_ANNOUNCE_S
from reconciler.core.peer_choice import peers_to_ask
from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    MemberKey,
    ObservedState,
    PeerReplica,
    Plan,
    ProcessObservation,
    RayView,
    ReplicaKey,
    ReplicaState,
    Stop,
)
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from tests.unit.core.plan_helpers import EMPTY, kinds

KEY = ReplicaKey("r1", 0)
C = cluster(node("n0", gpus=8), node("n1", gpus=8), node("n2", gpus=8))
DRAIN_S = 20.0


def dep(max_len: int = 1024, executor: str = "ray", drain: bool = True) -> Any:
    return deployment("r1", parallelism={"tensor": 8, "pipeline": 2}, executor=executor,
                      engine={"maxModelLen": max_len},
                      rollout={"drainTimeoutSeconds": int(DRAIN_S)} if drain else {})


OTHER = deployment("other", port=9000)  # keeps the revision non-empty after the delete
D = dep()
H = spec_hash(C, D)
LEADER, FOLLOWER = place(desired(C, D)).replicas[KEY].nodes
IP = {"n0": "198.18.0.10", "n1": "198.18.0.11", "n2": "198.18.0.12"}


def head(h: str = H, drain: float | None = DRAIN_S) -> ProcessObservation:
    return proc("r1", role="ray-head", spec_hash=h, gpus=tuple(range(8)), port=21000,
                drain_s=drain, leader=LEADER)


def engine(h: str = H, drain: float | None = DRAIN_S, health: str = "ready") -> ProcessObservation:
    return proc("r1", role="engine", spec_hash=h, gpus=(), drain_s=drain, leader=LEADER,
                health=health)


def worker(h: str = H, drain: float | None = DRAIN_S) -> ProcessObservation:
    return proc("r1", role="ray-worker", spec_hash=h, gpus=tuple(range(8)), port=21001,
                drain_s=drain, leader=LEADER)


def leads(engine_hash: str, head_hash: str = H,
          draining: bool = True) -> dict[ReplicaKey, PeerReplica]:
    """What the leader's /status says: its Ray head up at `head_hash` ("" none), its
    engine running at `engine_hash` ("" none), the replica Draining or not."""
    return {KEY: PeerReplica(spec_hash=head_hash, ready=engine_hash == head_hash != "",
                             head_up=head_hash != "", engine_hash=engine_hash,
                             engine_ready=engine_hash != "", draining=draining)}


def on_leader(want: Any, now: float, *procs: ProcessObservation,
              draining: Mapping[MemberKey, float] | None = None) -> Plan:
    both = RayView((IP[LEADER], IP[FOLLOWER]), 16.0)
    obs = observed(LEADER, gpus(8), *procs, ray={KEY: both})
    return plan(want, obs, EMPTY, now, ctx(LEADER), draining=draining)


def on_follower(want: Any, now: float, *procs: ProcessObservation,
                peers: dict[ReplicaKey, PeerReplica] | None = None,
                answered: bool = True,
                draining: Mapping[MemberKey, float] | None = None) -> Plan:
    obs = observed(FOLLOWER, gpus(8), *procs, peers=peers,
                   answered=frozenset({LEADER}) if answered else frozenset())
    return plan(want, obs, EMPTY, now, ctx(FOLLOWER), draining=draining)


DELETED = desired(C, OTHER)


@pytest.mark.parametrize("gone", ["deleted", "suspended", "scaled in"])
def test_a_replica_no_longer_wanted_drains_on_its_leader_engine_first_then_the_head(
        gone: str) -> None:
    want = {"deleted": DELETED,
            "suspended": desired(C, OTHER, deployment(
                "r1", parallelism={"tensor": 8, "pipeline": 2}, suspend=True)),
            "scaled in": desired(C, OTHER, deployment(
                "r1", parallelism={"tensor": 8, "pipeline": 2}, replicas=0))}[gone]
    p1 = on_leader(want, 100.0, head(), engine())
    assert [k for k in kinds(p1) if "r1" in k] == ["Drain:r1/0/engine"]
    st = p1.replicas[KEY]
    # what the followers and the gateways read: the leader's replica Draining
    assert (st.state, st.role, st.nodes[0], st.spec_hash) == ("Draining", "leader", LEADER, H)
    assert set(p1.draining) == {MemberKey(KEY, "engine"), MemberKey(KEY, "ray-head")}
    p2 = on_leader(want, 100.0 + DRAIN_ANNOUNCE_S, head(), engine(), draining=p1.draining)
    # SIGTERM to the engine with its drain; the head after it, in this order (apply stops
    # synchronously in plan order, so the engine has drained before the head goes)
    assert [k for k in kinds(p2) if "r1" in k] == ["Stop:r1/0/engine", "Stop:r1/0/ray-head"]
    stop = p2.actions[0]
    assert isinstance(stop, Stop) and stop.drain_s == DRAIN_S
    assert p2.draining == {} and KEY not in p2.replicas


@pytest.mark.parametrize(("case", "peers", "answered", "kept"), [
    ("the leader's engine drains at the worker's hash", leads(H), True, True),
    ("the leader's engine still serves: it has not seen the change", leads(H, draining=False),
     True, True),
    ("the leader's engine stopped, its head still up", leads(""), True, False),
    ("the leader answers and runs nothing of the replica", {}, True, False),
    ("the leader does not answer (within the bound)", {}, False, True),
    ("the leader runs an engine of another hash", leads("0" * 12), True, False),
])
def test_a_deleted_replicas_follower_keeps_its_worker_while_the_leader_engine_runs(
        case: str, peers: dict[ReplicaKey, PeerReplica], answered: bool, kept: bool) -> None:
    p = on_follower(DELETED, 50.0, worker(), peers=peers, answered=answered)
    r1 = [k for k in kinds(p) if "r1" in k]
    if kept:
        assert r1 == [], case
        st = p.replicas[KEY]
        assert (st.state, st.role, st.nodes) == ("Draining", "follower", (LEADER, FOLLOWER))
        assert p.draining == {MemberKey(KEY, "ray-worker"): 50.0}
    else:
        assert r1 == ["Stop:r1/0/ray-worker"], case
        assert p.draining == {}


@pytest.mark.parametrize(("peers", "answered"), [({}, False), (leads(H), True)],
                         ids=["leader-dead", "leader-keeps-its-engine"])
def test_no_leader_pins_a_follower_beyond_the_bound(
        peers: dict[ReplicaKey, PeerReplica], answered: bool) -> None:
    bound = hold_bound(DRAIN_S)
    assert bound == DRAIN_ANNOUNCE_S + DRAIN_S + 15.0
    draining = {MemberKey(KEY, "ray-worker"): 50.0}
    p = on_follower(DELETED, 50.0 + bound - 0.5, worker(), peers=peers, answered=answered,
                    draining=draining)
    assert [k for k in kinds(p) if "r1" in k] == [] and p.draining == draining
    p = on_follower(DELETED, 50.0 + bound, worker(), peers=peers, answered=answered,
                    draining=draining)
    assert [k for k in kinds(p) if "r1" in k] == ["Stop:r1/0/ray-worker"]
    assert "no longer" in p.actions[0].reason


def test_a_leader_that_has_not_begun_its_drain_does_not_start_the_followers_clock() -> None:
    """Nodes see a revision up to a poll interval apart: the follower waits for a leader
    that still serves (its requests in flight need this worker), and the bound counts
    from the leader's drain, not from the follower's decision."""
    serving = leads(H, draining=False)
    worker_key = MemberKey(KEY, "ray-worker")
    p = on_follower(DELETED, 500.0, worker(), peers=serving, draining={worker_key: 50.0})
    assert [k for k in kinds(p) if "r1" in k] == [] and p.draining == {worker_key: 500.0}
    p = on_follower(DELETED, 501.0, worker(), peers=leads(H), draining=p.draining)
    assert p.draining == {worker_key: 500.0}  # counting from here


def test_members_launched_without_a_drain_stop_at_once_as_before() -> None:
    p = on_leader(DELETED, 1.0, head(drain=None), engine(drain=None))
    assert [k for k in kinds(p) if "r1" in k] == ["Stop:r1/0/engine", "Stop:r1/0/ray-head"]
    p = on_follower(DELETED, 1.0, worker(drain=None), peers=leads(H))
    assert [k for k in kinds(p) if "r1" in k] == ["Stop:r1/0/ray-worker"]


def test_a_follower_of_a_deleted_replica_asks_the_leader_it_was_launched_under() -> None:
    assert peers_to_ask(DELETED, place(DELETED), FOLLOWER, [worker()]) == (LEADER,)
    gone = proc("r1", role="ray-worker", spec_hash=H, running=False, leader=LEADER)
    assert peers_to_ask(DELETED, place(DELETED), FOLLOWER, [gone]) == ()
    assert peers_to_ask(DELETED, place(DELETED), LEADER, [engine(), head()]) == ()


NEW = dep(2048)
H_NEW = spec_hash(C, NEW)


def test_a_rolling_update_drains_the_leader_engine_before_the_group_restarts() -> None:
    want = desired(C, NEW)
    p1 = on_leader(want, 10.0, head(), engine())
    assert kinds(p1) == ["Drain:r1/0/engine"]  # the old head stays, no new start yet
    assert p1.replicas[KEY].state == "Draining" and p1.replicas[KEY].spec_hash == H
    p2 = on_leader(want, 10.0 + DRAIN_ANNOUNCE_S, head(), engine(), draining=p1.draining)
    assert kinds(p2) == ["Stop:r1/0/engine", "Stop:r1/0/ray-head", "Start:r1/0/ray-head"]
    assert p2.actions[0].drain_s == DRAIN_S  # type: ignore[union-attr]
    assert p2.replicas[KEY].state == "Starting"


def test_a_rolling_update_keeps_the_followers_worker_until_the_old_engine_stopped() -> None:
    want = desired(C, NEW)
    # the leader still serves on the old group: fate sharing does not pull the worker
    # out from under the draining engine (its head is at another hash than wanted)
    p1 = on_follower(want, 10.0, worker(), peers=leads(H))
    assert kinds(p1) == [] and p1.replicas[KEY].state == "Draining"
    assert p1.draining == {MemberKey(KEY, "ray-worker"): 10.0}
    # the old engine and head stopped, the new head is up: leave and join the new one
    p2 = on_follower(want, 14.0, worker(), peers=leads("", H_NEW), draining=p1.draining)
    assert kinds(p2) == ["Stop:r1/0/ray-worker", "Start:r1/0/ray-worker"]


def test_a_broken_group_still_goes_at_once_while_draining() -> None:
    """Fate sharing wins: a member lost mid-drain ends the engine and the head now."""
    want = desired(C, NEW)
    p1 = on_leader(want, 10.0, head(), engine())
    lost = RayView((IP[LEADER],), 8.0, lost=(IP[FOLLOWER],))
    obs = observed(LEADER, gpus(8), head(), engine(), ray={KEY: lost})
    p2 = plan(want, obs, EMPTY, 11.0, ctx(LEADER), draining=p1.draining)
    stops = [a for a in p2.actions if isinstance(a, Stop)]
    assert [str(s.member) for s in stops] == ["r1/0/engine", "r1/0/ray-head"]
    assert stops[0].failure and stops[0].drain_s == 0.0


MP = dep(executor="mp")
H_MP = spec_hash(C, MP)
LEADER_MP, FOLLOWER_MP = place(desired(C, MP)).replicas[KEY].nodes


def rank(h: str, node_name: str) -> ProcessObservation:
    return proc("r1", role="engine", spec_hash=h, gpus=tuple(range(8)), drain_s=DRAIN_S,
                leader=LEADER_MP, port=0 if node_name != LEADER_MP else 8000)


def mp_leads(engine_hash: str) -> dict[ReplicaKey, PeerReplica]:
    return {KEY: PeerReplica(spec_hash=engine_hash, ready=bool(engine_hash),
                             engine_hash=engine_hash, engine_ready=bool(engine_hash))}


@pytest.mark.parametrize("change", ["deleted", "spec change"])
def test_an_mp_replica_drains_rank_0_and_keeps_the_headless_ranks(change: str) -> None:
    want = DELETED if change == "deleted" else desired(C, dep(2048, executor="mp"))
    obs = observed(LEADER_MP, gpus(8), rank(H_MP, LEADER_MP))
    p1 = plan(want, obs, EMPTY, 0.0, ctx(LEADER_MP))
    assert [k for k in kinds(p1) if "r1" in k] == ["Drain:r1/0/engine"]
    p2 = plan(want, obs, EMPTY, DRAIN_ANNOUNCE_S, ctx(LEADER_MP), draining=p1.draining)
    assert next(k for k in kinds(p2) if "r1" in k) == "Stop:r1/0/engine"
    # the headless rank stays while rank 0 runs at its hash, and goes once it does not
    f = observed(FOLLOWER_MP, gpus(8), rank(H_MP, FOLLOWER_MP), peers=mp_leads(H_MP),
                 answered=frozenset({LEADER_MP}))
    p3 = plan(want, f, EMPTY, 1.0, ctx(FOLLOWER_MP))
    assert [k for k in kinds(p3) if "r1" in k] == [] and p3.replicas[KEY].state == "Draining"
    after = "" if change == "deleted" else spec_hash(C, dep(2048, executor="mp"))
    f = observed(FOLLOWER_MP, gpus(8), rank(H_MP, FOLLOWER_MP), peers=mp_leads(after),
                 answered=frozenset({LEADER_MP}))
    p4 = plan(want, f, EMPTY, 5.0, ctx(FOLLOWER_MP), draining=p3.draining)
    assert next(k for k in kinds(p4) if "r1" in k) == "Stop:r1/0/engine"


def _walk(steps: list[tuple[str, Any, ObservedState]]) -> list[ReplicaState]:
    """Plans one after another, each state change through the lifecycle table (refusals
    fail); returns the states of KEY on the way ("-" when it left the record)."""
    previous: dict[ReplicaKey, ReplicaState] = {}
    draining: Mapping[MemberKey, float] = {}
    seen: list[Any] = []
    for now, (where, want, obs) in enumerate(steps):
        p = plan(want, obs, EMPTY, float(now) * DRAIN_ANNOUNCE_S, ctx(where),
                 previous=previous, draining=draining)
        assert p.refused == (), p.refused
        for key, old in lifecycle.stopped(previous, {k: s.state for k, s in p.replicas.items()}):
            assert lifecycle.allowed(old, "Stopped"), (key, old)
        previous = {k: s.state for k, s in p.replicas.items()}
        draining = p.draining
        seen.append(p.replicas[KEY].state if KEY in p.replicas else "-")
    return seen


def test_every_state_change_of_a_multi_node_drain_is_in_the_lifecycle_table() -> None:
    ready = RayView((IP[LEADER], IP[FOLLOWER]), 16.0)
    lead = observed(LEADER, gpus(8), head(), engine(), ray={KEY: ready})
    gone = observed(LEADER, gpus(8))
    want = desired(C, D)
    assert _walk([(LEADER, want, lead), (LEADER, DELETED, lead), (LEADER, DELETED, lead),
                  (LEADER, DELETED, gone)]) == ["Ready", "Draining", "-", "-"]
    assert _walk([(LEADER, want, lead), (LEADER, desired(C, NEW), lead),
                  (LEADER, desired(C, NEW), lead)]) == ["Ready", "Draining", "Starting"]
    f = observed(FOLLOWER, gpus(8), worker(), peers=leads(H), answered=frozenset({LEADER}))
    f_new = observed(FOLLOWER, gpus(8), worker(), peers=leads("", H_NEW),
                     answered=frozenset({LEADER}))
    f_left = observed(FOLLOWER, gpus(8), worker(), answered=frozenset({LEADER}))
    assert _walk([(FOLLOWER, want, f), (FOLLOWER, DELETED, f), (FOLLOWER, DELETED, f_left)]
                 ) == ["Ready", "Draining", "-"]
    assert _walk([(FOLLOWER, want, f), (FOLLOWER, desired(C, NEW), f),
                  (FOLLOWER, desired(C, NEW), f_new)]) == ["Ready", "Draining", "Starting"]


MOVED = RayView((IP[LEADER], IP[FOLLOWER], "198.18.0.99"), 24.0)  # .99: no longer placed


def test_a_leader_whose_group_has_a_member_no_longer_placed_drains_and_re_forms() -> None:
    """A follower moved off (its node drained): the leader drains its engine, keeps its
    head, and starts the engine again once the old member left; no failure counted."""
    obs = observed(LEADER, gpus(8), head(), engine(), ray={KEY: MOVED})
    p1 = plan(desired(C, D), obs, EMPTY, 10.0, ctx(LEADER))
    assert kinds(p1) == ["Drain:r1/0/engine"]
    st = p1.replicas[KEY]
    assert st.state == "Draining" and "198.18.0.99" in st.reason
    p2 = plan(desired(C, D), obs, EMPTY, 10.0 + DRAIN_ANNOUNCE_S, ctx(LEADER),
              draining=p1.draining)
    # the head stays: the new follower has joined it at the same hash
    assert kinds(p2) == ["Stop:r1/0/engine"]
    stop = p2.actions[0]
    assert isinstance(stop, Stop) and not stop.failure and stop.drain_s == DRAIN_S
    # the engine waits while the old member is still in the Ray cluster...
    obs = observed(LEADER, gpus(8), head(), ray={KEY: MOVED})
    p3 = plan(desired(C, D), obs, EMPTY, 14.0, ctx(LEADER))
    assert kinds(p3) == [] and "no longer placed to leave: 198.18.0.99" in p3.replicas[
        KEY].reason
    # ...and starts once it left (Ray keeps it DEAD: no loss of this group, no failure)
    left = RayView((IP[LEADER], IP[FOLLOWER]), 16.0, lost=("198.18.0.99",))
    obs = observed(LEADER, gpus(8), head(), ray={KEY: left})
    assert kinds(plan(desired(C, D), obs, EMPTY, 15.0, ctx(LEADER))) == ["Start:r1/0/engine"]
    # without a drain timeout nothing changes: the old follower leaves at once and fate
    # sharing restarts the group, as before
    h_plain = spec_hash(C, dep(drain=False))
    plain = observed(LEADER, gpus(8), head(h_plain, drain=None), engine(h_plain, drain=None),
                     ray={KEY: MOVED})
    assert kinds(plan(desired(C, dep(drain=False)), plain, EMPTY, 10.0, ctx(LEADER))) == [
        "MarkReady:r1/0"]  # serving on


def test_a_follower_moved_off_waits_for_the_leader_at_most_the_bound() -> None:
    """Only this node left the replica: its leader's revision gives the leader no reason
    to drain, so a leader that serves on does not reset the follower's clock."""
    outsider = next(n for n in ("n0", "n1", "n2") if n not in (LEADER, FOLLOWER))
    moved = deployment("r1", parallelism={"tensor": 8, "pipeline": 2},
                       engine={"maxModelLen": 1024}, rollout={"drainTimeoutSeconds": 20},
                       placement={"nodes": [LEADER, outsider]})
    want = desired(C, moved)
    assert spec_hash(C, moved) == H  # a move, not a spec change
    where = place(want).replicas[KEY]
    assert FOLLOWER not in where.nodes and where.leader == LEADER
    w_key = MemberKey(KEY, "ray-worker")
    serving = leads(H, draining=False)
    p = on_follower(want, 50.0, worker(), peers=serving)
    assert [k for k in kinds(p) if "r1" in k] == [] and p.draining == {w_key: 50.0}
    p = on_follower(want, 50.0 + hold_bound(DRAIN_S), worker(), peers=serving,
                    draining=p.draining)
    assert [k for k in kinds(p) if "r1" in k] == ["Stop:r1/0/ray-worker"]
