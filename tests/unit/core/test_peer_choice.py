"""Whom a node asks for /status each tick (reconciler/core/peer_choice.py): the leaders of
the replicas its plan reads, each once, and never itself; not every node of the Cluster."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.core.peer_choice import peers_to_ask
from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import PeerReplica, ReplicaKey
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from tests.unit.core.plan_helpers import EMPTY, kinds

GPU2 = cluster(node("g0", gpus=4), node("g1", gpus=4), node("g9", gpus=4))
CPU3 = cluster(node("c0", gpus=0), node("c1", gpus=0), node("c2", gpus=0), node("c9", gpus=0))
ONE3 = cluster(node("n0", gpus=1), node("n1", gpus=1), node("n2", gpus=1))
RAY = deployment("ray", parallelism={"tensor": 4, "pipeline": 2}, placement={"nodes": ["g0", "g1"]})
MP = deployment("mp", parallelism={"tensor": 4, "pipeline": 2}, executor="mp",
                placement={"nodes": ["g0", "g1"]})


def cpu_mp(name: str, port: int, nodes: list[str]) -> Any:
    return deployment(name, port=port, parallelism={"tensor": len(nodes)}, executor="mp",
                      placement={"nodes": nodes})


SEVERAL = [cpu_mp("x", 8000, ["c0", "c1", "c2"]), cpu_mp("y", 8001, ["c1", "c2"]),
           cpu_mp("z", 8002, ["c1", "c0"]), cpu_mp("w", 8003, ["c0", "c2"]),
           cpu_mp("v", 8004, ["c1", "c2"]), cpu_mp("u", 8005, ["c0", "c1", "c2"])]


def roll(strategy: str) -> Any:
    return deployment("roll", replicas=3, rollout={"strategy": strategy})


CASES = [
    # (cluster, deployments, {node: expected}) where "leader:KEY" / "follower:KEY" name the
    # nodes by their role in the placement
    pytest.param(ONE3, [deployment("a"), deployment("b", port=8001)],
                 {"n0": (), "n1": (), "n2": ()}, id="single-node-replicas-ask-nobody"),
    pytest.param(GPU2, [RAY], {"leader:ray/0": (), "follower:ray/0": ("leader:ray/0",),
                               "g9": ()}, id="ray-follower-asks-its-leader"),
    pytest.param(GPU2, [MP], {"leader:mp/0": (), "follower:mp/0": ("leader:mp/0",),
                              "g9": ()}, id="mp-follower-asks-its-leader"),
    # placed (leader first): u c1+c2+c0, v c2+c1, w c2+c0, x c0+c1+c2, y c1+c2, z c1+c0:
    # c0 follows u and z (both led by c1) and w; c1 follows v, x; c2 follows u, x, y
    pytest.param(CPU3, SEVERAL, {"c0": ("c1", "c2"), "c1": ("c0", "c2"), "c2": ("c0", "c1"),
                                 "c9": ()}, id="a-node-in-several-replicas-asks-each-leader-once"),
    # RollingUpdate: replica i waits for 0..i-1 to be ready at the new hash, and those are
    # led elsewhere: without asking them it would wait forever
    pytest.param(ONE3, [roll("RollingUpdate")],
                 {"leader:roll/0": (), "leader:roll/1": ("leader:roll/0",),
                  "leader:roll/2": ("leader:roll/0", "leader:roll/1")},
                 id="rolling-update-asks-the-leaders-of-earlier-replicas"),
    pytest.param(ONE3, [roll("Recreate")],
                 {"leader:roll/0": (), "leader:roll/1": (), "leader:roll/2": ()},
                 id="recreate-asks-nobody"),
]


def _node(spec: str, where: dict[str, tuple[str, ...]]) -> str:
    if ":" not in spec:
        return spec
    role, key = spec.split(":")
    nodes = where[key]
    return nodes[0] if role == "leader" else nodes[1]


@pytest.mark.parametrize(("c", "deps", "expected"), CASES)
def test_whom_a_node_asks(c: Any, deps: list[Any], expected: dict[str, tuple[str, ...]]) -> None:
    d = desired(c, *deps)
    pl = place(d)
    assert not pl.unschedulable, pl.unschedulable
    where = {str(k): p.nodes for k, p in pl.replicas.items()}
    for who, asks in expected.items():
        me = _node(who, where)
        assert peers_to_ask(d, pl, me) == tuple(sorted(_node(a, where) for a in asks)), who


def test_each_leader_once_sorted_never_itself() -> None:
    d = desired(CPU3, *SEVERAL)
    pl = place(d)
    for me in ("c0", "c1", "c2"):
        led_elsewhere = {p.leader for p in pl.on_node(me) if p.leader != me}
        asks = peers_to_ask(d, pl, me)
        assert asks == tuple(sorted(led_elsewhere)) and me not in asks
    # some node follows two replicas with two different leaders, asked once each
    assert any(len({p.leader for p in pl.on_node(n) if p.leader != n}) == 2
               for n in ("c0", "c1", "c2"))
    # and one leader leads two replicas some node follows: still asked once
    assert any(len([p for p in pl.on_node(n) if p.leader != n]) >
               len(peers_to_ask(d, pl, n)) for n in ("c0", "c1", "c2"))


def test_a_node_outside_the_cluster_asks_nobody() -> None:
    d = desired(GPU2, RAY)
    assert peers_to_ask(d, place(d), "elsewhere") == ()


def test_what_the_chosen_peers_say_is_all_a_rolling_update_needs() -> None:
    """Replica 1's node, given only the answers of the nodes it asks, replaces its old
    engine once replica 0 is ready at the new hash, and not before."""
    old = deployment("roll", replicas=2, engine={"maxModelLen": 1024})
    new = deployment("roll", replicas=2, engine={"maxModelLen": 2048})
    h_old, h_new = spec_hash(ONE3, old), spec_hash(ONE3, new)
    d = desired(ONE3, new)
    pl = place(d)
    first, second = pl.replicas[ReplicaKey("roll", 0)], pl.replicas[ReplicaKey("roll", 1)]
    me = second.leader
    assert peers_to_ask(d, pl, me) == (first.leader,)
    # everything every other node leads, of which only what the asked nodes lead is seen
    leads = {first.leader: {ReplicaKey("roll", 0): PeerReplica(h_new, True)}}
    seen = {k: v for n in peers_to_ask(d, pl, me) for k, v in leads.get(n, {}).items()}
    obs = observed(me, gpus(1), proc("roll", 1, spec_hash=h_old), peers=seen)
    assert kinds(plan(d, obs, EMPTY, 0.0, ctx(me), placement=pl)) == [
        "Stop:roll/1/engine", "Start:roll/1/engine"]
    waiting = observed(me, gpus(1), proc("roll", 1, spec_hash=h_old),
                       peers={ReplicaKey("roll", 0): PeerReplica(h_old, True)})
    assert plan(d, waiting, EMPTY, 0.0, ctx(me), placement=pl).empty
