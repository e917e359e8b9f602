"""Draining a multi-node Ray replica end to end, in-process with the fakes and one fake
clock (the rig of test_multinode_fakes.py: every node a Reconciler, peers reading each
other's published /status as JSON).

A delete or a spec change with rollout.drainTimeoutSeconds: the leader's replica shows
Draining (what every gateway and follower reads) before its engine gets SIGTERM with the
drain on its grace; the leader's Ray head and every follower's Ray worker stay while
that engine runs; the worker leaves once the leader's status no longer shows it. A dead
leader holds its followers no longer than the announce + the drain + the margin; a live
leader that has not yet seen the change (still serving) holds them until it drains.
"""

from __future__ import annotations

import pytest

from reconciler.core.drain import hold_bound
from reconciler.core.members import DRAIN_ANNOUNCE_S
from testrigs.multinode_cluster import deployment_yaml
from tests.integration.test_multinode_fakes import (
    CLUSTER,
    NAMES,
    Node,
    World,
    world,
)

__all__ = ["world"]  # the rig's fixture, used here

DRAIN_S = 20
GRACE_S = 1.0  # the rig's ApplyConfig(stop_grace_s)


def drained_yaml(nodes: list[str], max_model_len: int = 1024) -> str:
    return deployment_yaml("mn", nodes=nodes, pipeline=len(nodes), port=8000,
                           max_model_len=max_model_len, drain_s=DRAIN_S)


def stops(node: Node, role: str) -> list[tuple[float, float]]:
    """(when, grace) of every stop of `role` the node's daemon asked for."""
    return [(t, grace) for t, m, grace in node.procs.stop_log if m == node.member(role)]


def formed(world: World, size: int, max_model_len: int = 1024) -> tuple[Node, list[Node]]:
    members = list(NAMES[:size])
    world.source.commit({"cluster.yaml": CLUSTER, "mn.yaml": drained_yaml(members,
                                                                          max_model_len)})
    world.add_nodes()
    world.until("Ready on every member", lambda: world.ready_everywhere(members))
    order = world.order()
    return world.nodes[order[0]], [world.nodes[n] for n in order[1:]]


@pytest.mark.parametrize("size", [2, 3], ids=["2-node", "3-node"])
def test_a_deleted_multi_node_replica_drains_its_leader_engine_before_any_ray_node_goes(
        world: World, size: int) -> None:
    leader, followers = formed(world, size)
    world.source.commit({"mn.yaml": None})
    seen: list[tuple[float, str, list[str]]] = []
    for _ in range(30):
        world.round()
        seen.append((world.clock.now(), leader.state(), [f.state() for f in followers]))
        if leader.running("engine"):
            # the engine's Ray workers stay while it runs
            assert leader.running("ray-head")
            assert all(f.running("ray-worker") for f in followers), seen
        if leader.running("ray-head") is None and all(
                f.running("ray-worker") is None for f in followers):
            break
    else:
        raise AssertionError(f"not torn down: {seen}")
    # gateways and followers saw the leader's replica Draining first, then nothing
    states = [s for _, s, _ in seen]
    assert states[0] == "Draining" and states[-1] == "-", seen
    assert all(fs in ("Ready", "Draining", "-") for _, _, f in seen for fs in f), seen
    assert any("Draining" in f for _, _, f in seen)
    # SIGTERM DRAIN_ANNOUNCE_S after the announce, with the drain on top of its grace
    ((engine_at, grace),) = stops(leader, "engine")
    assert grace == GRACE_S + DRAIN_S
    first_draining = seen[0][0]
    assert engine_at >= first_draining + DRAIN_ANNOUNCE_S
    ((head_at, _),) = stops(leader, "ray-head")
    assert head_at >= engine_at
    for f in followers:
        ((worker_at, worker_grace),) = stops(f, "ray-worker")
        # not before the engine stopped, and not much later (its next look at the leader)
        assert engine_at <= worker_at <= engine_at + 2.0, (engine_at, worker_at)
        assert worker_grace == GRACE_S
    assert all(n.rec.refused_transitions == {} for n in world.nodes.values())


def test_a_dead_leader_does_not_pin_its_followers_beyond_the_bound(world: World) -> None:
    leader, followers = formed(world, 2)
    (follower,) = followers
    world.down.add(leader.name)  # its daemon dies: no ticks, no /status
    world.source.commit({"mn.yaml": None})
    decided = None
    while follower.running("ray-worker") is not None:
        world.round()
        if decided is None:
            decided = world.clock.now()  # the follower saw the delete in this round
        assert world.clock.now() < decided + hold_bound(DRAIN_S) + 2.0, "pinned"
        if follower.running("ray-worker") is not None:
            assert follower.state() == "Draining"
    assert decided is not None
    ((worker_at, _),) = stops(follower, "ray-worker")
    # kept until the bound (the leader might still have been draining), not longer
    assert decided + hold_bound(DRAIN_S) <= worker_at <= decided + hold_bound(DRAIN_S) + 1.0
    assert follower.rec.refused_transitions == {}


def test_a_rolling_update_of_a_multi_node_replica_drains_before_the_group_restarts(
        world: World) -> None:
    leader, (follower,) = formed(world, 2)
    old = leader.procs.process(leader.member("engine"))
    assert old is not None
    world.source.commit({"mn.yaml": drained_yaml(world.order(), max_model_len=2048)})
    seen: list[str] = []

    def replaced() -> bool:
        seen.append(leader.state())
        if leader.running("engine") == old.pid:
            assert follower.running("ray-worker") is not None
        p = leader.procs.process(leader.member("engine"))
        return (world.ready_everywhere([leader.name, follower.name]) and p is not None
                and p.launch.spec_hash != old.launch.spec_hash)

    world.until("Ready again at the new hash", replaced, rounds=30)
    assert seen[0] == "Draining" and "Ready" not in seen[:seen.index("Starting")], seen
    (engine_at, grace), *_ = stops(leader, "engine")
    assert grace == GRACE_S + DRAIN_S
    (worker_at, _), *_ = stops(follower, "ray-worker")
    (head_at, _), *_ = stops(leader, "ray-head")
    assert engine_at <= head_at and engine_at <= worker_at <= engine_at + 2.0
    assert all(n.rec.refused_transitions == {} for n in world.nodes.values())


def test_a_follower_waits_for_a_leader_that_has_not_seen_the_delete_yet(world: World) -> None:
    """Nodes fetch a revision up to a poll interval apart: a follower that sees the delete
    first keeps its worker, past the bound, while the leader still serves; once the
    leader sees it, the drain goes as usual."""
    leader, (follower,) = formed(world, 2)
    world.lagging.add(leader.name)
    world.source.commit({"mn.yaml": None})
    for _ in range(int(hold_bound(DRAIN_S)) + 10):
        world.round()
        assert follower.running("ray-worker") is not None and leader.state() == "Ready"
    assert follower.state() == "Draining"
    world.lagging.discard(leader.name)
    world.until("torn down", lambda: follower.running("ray-worker") is None, rounds=15)
    ((engine_at, _),) = stops(leader, "engine")
    ((worker_at, _),) = stops(follower, "ray-worker")
    assert engine_at <= worker_at
    assert all(n.rec.refused_transitions == {} for n in world.nodes.values())


def test_a_node_drain_moves_a_follower_after_the_leader_engine_drained(world: World) -> None:
    """The Cluster marks a follower's node `drain: true`: the replica is placed without
    it; the leader drains its engine first (it sees a Ray member on a node no longer
    placed, or it moved too), the old follower's worker stays until then, and the
    replica forms again on the new placement."""
    world.source.commit({"cluster.yaml": CLUSTER,
                         "mn.yaml": deployment_yaml("mn", nodes=list(NAMES), pipeline=2,
                                                    port=8000, drain_s=DRAIN_S)})
    world.add_nodes()

    def leader_of() -> list[str]:
        reps = [r for n in world.nodes.values() if (r := n.replica()) is not None
                and r["role"] == "leader"]
        return list(reps[0]["nodes"]) if len(reps) == 1 else []

    world.until("Ready", lambda: (o := leader_of()) != [] and world.ready_everywhere(o))
    old_leader, old_follower = (world.nodes[n] for n in leader_of())
    old_engine = old_leader.running("engine")
    name = old_follower.name
    drained = CLUSTER.replace(f"    - name: {name}\n", f"    - name: {name}\n      drain: true\n")
    assert drained != CLUSTER
    world.source.commit({"cluster.yaml": drained})
    states: list[str] = []

    def moved() -> bool:
        if states[-1:] != [old_leader.state()]:
            states.append(old_leader.state())
        if old_leader.running("engine") == old_engine and old_follower.running(
                "ray-worker") is None:
            raise AssertionError(f"the old follower left while the engine ran: {states}")
        new = [n for n in NAMES if n != name]
        return world.ready_everywhere(new) and all(
            set(world.nodes[n].replica()["nodes"]) == set(new)  # type: ignore[index]
            for n in new)

    world.until("Ready again without the drained node", moved, rounds=30)
    assert "Draining" in states, states
    (engine_at, grace), *_ = stops(old_leader, "engine")
    assert grace == GRACE_S + DRAIN_S
    ((worker_at, _),) = stops(old_follower, "ray-worker")
    assert engine_at <= worker_at <= engine_at + 2.0
    # re-formed on purpose, not as a failure: no restart counted, no backoff; where the
    # leader stayed, its Ray head (which the new follower joined) stayed too
    assert old_leader.rec.restarts_total.get("mn", 0) == 0
    if old_leader.name in leader_of():
        assert stops(old_leader, "ray-head") == [], states
        assert states == ["Draining", "Pending", "Starting", "Ready"], states
    assert all(n.rec.refused_transitions == {} for n in world.nodes.values())
