"""Multi-node Ray replicas end to end in-process, with fakes only and one fake clock.

Every node is a `Reconciler` (control/reconcile: observe, plan, apply) over its own fake
process port and GPUs; the nodes share one `FakeRayNodes` (the Ray clusters, by GCS
address) and read each other's status the way daemons do: each node's status document
is built by reconciler.daemon.status, dumped to JSON and parsed back by the peers port
(`NodeStatus.model_validate` + `peer_replicas`). `ray start` members join the fake Ray
clusters through `RayProcesses`; the test plays the engines (their /health turns ready)
and kills Ray nodes.

Scenarios: a 2- and a 3-node replica form (head, workers at the head's spec hash, then
the engine on the leader) and become Ready on every node; a follower's Ray node dies ->
the whole replica is torn down on every node and, after a backoff on the fake clock (not
before), formed again; a RollingUpdate across nodes goes in index order. Each node asks
only the peers reconciler.core.peer_choice names, and reads only what those answer.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from reconciler.control.apply import ApplyConfig
from reconciler.control.reconcile import Ports, Reconciler
from reconciler.core.backoff import BackoffPolicy
from reconciler.core.launch import NodeContext
from reconciler.core.vocabulary import MemberKey, PeerReplica, ReplicaKey
from reconciler.daemon.conditions import Conditions
from reconciler.daemon.snapshot import Snapshot
from reconciler.daemon.status import build_status
from reconciler.desired.source_sync import SourceSync
from reconciler.ports.inventory import InventoryStore
from reconciler.ports.peers import PeerAnswers, peer_replicas
from reconciler.testing.clock import FakeClock
from reconciler.testing.git_source import FakeGitSource
from reconciler.testing.gpus import FakeGpuPort
from reconciler.testing.processes import FakeProcessPort
from reconciler.testing.ray_nodes import FakeRayNodes, RayProcesses
from schemas.status import NodeStatus
from testrigs.multinode_cluster import cluster_yaml_of, deployment_yaml

BACKOFF_S = 10.0
KEY = ReplicaKey("mn", 0)
NAMES = ("h1", "h2", "h3")
ADDRESSES = {"h1": "198.18.0.11", "h2": "198.18.0.12", "h3": "198.18.0.13"}
CLUSTER = cluster_yaml_of(list(ADDRESSES.items()), gpus=1)  # the system test's cluster


def a_yaml(nodes: list[str]) -> str:
    return deployment_yaml("mn", nodes=nodes, pipeline=len(nodes), port=8000)


class WorldPeers:
    """The peers port of one node: the asked nodes' last published /status, as JSON."""

    def __init__(self, world: World, me: str) -> None:
        self.world = world
        self.me = me
        self.asked: set[str] = set()

    def replicas(self, nodes: Collection[str]) -> PeerAnswers:
        self.asked.update(nodes)
        out: dict[ReplicaKey, PeerReplica] = {}
        answered = []
        for name, node in self.world.nodes.items():
            if (name in nodes and name != self.me and node.published is not None
                    and name not in self.world.down):
                out.update(peer_replicas(NodeStatus.model_validate(node.published)))
                answered.append(name)
        return PeerAnswers(out, answered)


class Node:
    def __init__(self, world: World, name: str, tmp: Path) -> None:
        self.name = name
        self.world = world
        state = tmp / name
        self.procs = FakeProcessPort(state, clock=world.clock)
        self.ray = RayProcesses(self.procs, world.ray)
        self.sync = SourceSync(world.source, state)
        self.inventory = InventoryStore(state)
        self.peers = WorldPeers(world, name)
        self.rec = Reconciler(
            node=NodeContext(name=name, python="/opt/vllm/bin/python", ray="/opt/vllm/bin/ray",
                             backoff=BackoffPolicy(initial_s=BACKOFF_S, jitter=0.0)),
            ports=Ports(gpus=FakeGpuPort(1, node=name), processes=self.ray, clock=world.clock,
                        ray=world.ray, peers=self.peers),
            inventory=self.inventory,
            desired=lambda: self.sync.desired,
            apply_config=ApplyConfig(stop_grace_s=1.0),
        )
        self.conditions = Conditions()
        self.published: dict[str, Any] | None = None

    def tick(self, now: float) -> None:
        if self.name not in self.world.lagging:
            self.sync.sync(now)
        tick = self.rec.tick()
        snap = Snapshot(
            node=self.name, now=now, started_at=now, source_url="file:///repo",
            branch="main", path=".", fetched=self.sync.fetched, attempted=self.sync.attempted,
            good=self.sync.good, applied=self.inventory.current.applied_revision,
            failure=self.sync.failure, last_fetch_success=now, desired=self.sync.desired,
            tick=tick, pid=1,
            restarts={k: r.total_restarts for k, r in self.inventory.current.restarts.items()},
        )
        # what the HTTP API serves, and all a peer gets to read
        self.published = build_status(snap, self.conditions).model_dump(mode="json")

    def replica(self) -> dict[str, Any] | None:
        assert self.published is not None
        return next((r for r in self.published["replicas"] if r["deployment"] == "mn"), None)

    def state(self) -> str:
        r = self.replica()
        return r["state"] if r is not None else "-"

    def member(self, role: str) -> MemberKey:
        return MemberKey(KEY, role)  # type: ignore[arg-type]

    def running(self, role: str) -> int | None:
        p = self.procs.process(self.member(role))
        return p.pid if p is not None and p.running else None


class World:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock()
        self.ray = FakeRayNodes()
        self.source = FakeGitSource()
        self.nodes: dict[str, Node] = {}
        self.tmp = tmp
        self.down: set[str] = set()  # dead daemons: they neither tick nor answer peers
        self.lagging: set[str] = set()  # daemons that do not fetch new revisions (yet)

    def add_nodes(self) -> None:
        for name in NAMES:
            self.nodes[name] = Node(self, name, self.tmp)

    def round(self, seconds: float = 1.0) -> None:
        """Every daemon ticks once, then the engines that were loading are loaded."""
        self.clock.advance(seconds)
        for node in self.nodes.values():
            if node.name not in self.down:
                node.tick(self.clock.now())
        for node in self.nodes.values():
            for p in node.procs.list():
                if p.member.role == "engine" and p.running and p.health == "starting":
                    node.procs.set_health(p.member, "ready")

    def order(self) -> list[str]:
        """The replica's nodes, leader first (placement decides, every node agrees)."""
        rep = self.nodes[NAMES[0]].replica()
        assert rep is not None
        return list(rep["nodes"])

    def until(self, what: str, cond: Any, rounds: int = 12, watch: str = NAMES[0]) -> list[str]:
        """Rounds until `cond()` holds; returns the states of `watch`'s replica on the way."""
        seen: list[str] = []
        for _ in range(rounds):
            self.round()
            state = self.nodes[watch].state()
            if not seen or seen[-1] != state:
                seen.append(state)
            if cond():
                return seen
        raise AssertionError(f"{what}: not after {rounds} rounds; states {seen}; "
                             f"{[(n.name, n.replica()) for n in self.nodes.values()]}")

    def ready_everywhere(self, members: list[str]) -> bool:
        return all(self.nodes[n].state() == "Ready" for n in members)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


@pytest.mark.parametrize("size", [2, 3], ids=["2-node", "3-node"])
def test_a_ray_replica_forms_on_every_member(world: World, size: int) -> None:
    members = list(NAMES[:size])
    world.source.commit({"cluster.yaml": CLUSTER, "mn.yaml": a_yaml(members)})
    world.add_nodes()
    states = world.until("Ready on every member", lambda: world.ready_everywhere(members))
    assert states[0] != "Ready" and states[-1] == "Ready"  # it formed in these rounds
    order = world.order()
    assert sorted(order) == members
    leader = world.nodes[order[0]]
    rep = leader.replica()
    assert rep is not None and rep["role"] == "leader"
    ips = sorted(ADDRESSES[n] for n in members)
    assert rep["ray"] == {"members": ips, "gpus": float(size), "mismatched": [], "lost": [],
                          "notes": []}
    assert [m["role"] for m in rep["members"]] == ["ray-head", "engine"]
    assert leader.running("ray-head") and leader.running("engine")
    for name in order[1:]:
        f = world.nodes[name]
        assert f.replica()["role"] == "follower"  # type: ignore[index]
        assert f.running("ray-worker") and not f.running("engine")
    # the Ray cluster is the one the head opened, every member at the head's hash
    head = leader.procs.process(leader.member("ray-head"))
    assert head is not None
    view = world.ray.view(f"{ADDRESSES[order[0]]}:21000", head.launch.spec_hash)
    assert view is not None and view.alive_nodes == tuple(ips)
    # the node outside the replica runs nothing of it
    for name in NAMES[size:]:
        assert world.nodes[name].procs.start_count() == 0


@pytest.mark.parametrize("size", [2, 3], ids=["2-node", "3-node"])
def test_a_dead_member_restarts_the_whole_replica_after_a_backoff(world: World,
                                                                  size: int) -> None:
    members = list(NAMES[:size])
    world.source.commit({"cluster.yaml": CLUSTER, "mn.yaml": a_yaml(members)})
    world.add_nodes()
    world.until("Ready on every member", lambda: world.ready_everywhere(members))
    order = world.order()
    leader, victim = world.nodes[order[0]], world.nodes[order[-1]]
    before = {(n, role): world.nodes[n].running(role)
              for n in order for role in (("ray-head", "engine") if n == order[0]
                                          else ("ray-worker",))}

    victim.ray.kill_node(victim.member("ray-worker"))  # its raylet dies
    torn_down = world.until(
        "the replica torn down on every member",
        lambda: all(world.nodes[n].running(r) is None for n, r in before), watch=order[0],
    )
    assert "CrashLoopBackOff" in torn_down
    down_at = world.clock.now()

    # nothing comes back while the backoff runs
    while world.clock.now() + 1.0 < down_at + BACKOFF_S - 1.0:
        world.round()
        assert all(world.nodes[n].running(r) is None for n, r in before), world.clock.now()
    assert leader.state() == "CrashLoopBackOff"

    world.until("Ready again on every member", lambda: world.ready_everywhere(members),
                rounds=20)
    after = {k: world.nodes[k[0]].running(k[1]) for k in before}
    assert all(pid is not None and pid != before[k] for k, pid in after.items()), after
    assert leader.rec.restarts_total.get("mn", 0) >= 1
    # counted where a failure led to the restart: the leader (a member lost) and the node
    # whose Ray node died (its worker exited); a follower that only fate-shared had none
    for node in (leader, victim):
        assert node.replica()["restarts"] >= 1  # type: ignore[index]
    # the fresh cluster has every member alive again, and names none lost
    head = leader.procs.process(leader.member("ray-head"))
    assert head is not None
    view = world.ray.view(f"{ADDRESSES[order[0]]}:21000", head.launch.spec_hash)
    assert view is not None and len(view.alive_nodes) == size and view.lost == ()
    # every state change on the way went through the lifecycle table (in a 3-node replica
    # the follower that only fate-shared goes Ready -> Pending, waiting for a new head)
    assert all(n.rec.refused_transitions == {} for n in world.nodes.values())


def test_each_node_asks_only_the_leaders_its_plan_reads(world: World) -> None:
    world.source.commit({"cluster.yaml": CLUSTER, "mn.yaml": a_yaml(["h1", "h2"])})
    world.add_nodes()
    world.until("Ready on every member", lambda: world.ready_everywhere(["h1", "h2"]))
    leader, follower = world.order()
    assert world.nodes[follower].peers.asked == {leader}
    assert world.nodes[leader].peers.asked == set()
    assert world.nodes["h3"].peers.asked == set()


def _roll_yaml(max_model_len: int) -> str:
    text = deployment_yaml("roll", nodes=["h1", "h2"], pipeline=1, port=8010,
                           max_model_len=max_model_len)
    return text.replace("spec:\n", "spec:\n  replicas: 2\n", 1)


def test_a_rolling_update_across_nodes_goes_in_index_order(world: World) -> None:
    """Replica 1's node replaces its engine only once replica 0, on another node, is
    Ready at the new hash: it must ask replica 0's leader, though it follows nobody."""
    world.source.commit({"cluster.yaml": CLUSTER, "roll.yaml": _roll_yaml(1024)})
    world.add_nodes()

    def published(index: int) -> dict[str, Any] | None:
        for node in world.nodes.values():
            for r in (node.published or {}).get("replicas", []):
                if r["deployment"] == "roll" and r["index"] == index and r["nodes"] == [
                        node.name]:
                    return dict(r)
        return None

    def ready_at(index: int, h: str | None) -> bool:
        r = published(index)
        return r is not None and r["state"] == "Ready" and (h is None or r["specHash"] == h)

    world.until("both replicas Ready", lambda: ready_at(0, None) and ready_at(1, None))
    r0, r1 = published(0), published(1)
    assert r0 is not None and r1 is not None and r0["nodes"] != r1["nodes"]
    second = world.nodes[r1["nodes"][0]]
    old = r1["specHash"]
    engine1 = MemberKey(ReplicaKey("roll", 1), "engine")

    world.source.commit({"cluster.yaml": CLUSTER, "roll.yaml": _roll_yaml(2048)})
    new: str | None = None
    replica0_ready_new = replica1_replaced = None
    for n in range(20):
        world.round()
        r = published(0)
        if r is not None and r["specHash"] != old:
            new = r["specHash"]
        p = second.procs.process(engine1)
        if replica1_replaced is None and (p is None or not p.running
                                          or p.launch.spec_hash != old):
            replica1_replaced = n
        if replica0_ready_new is None and new is not None and ready_at(0, new):
            replica0_ready_new = n
        if new is not None and ready_at(0, new) and ready_at(1, new):
            break
    else:
        raise AssertionError(f"rollout not done: {published(0)}, {published(1)}")
    assert replica0_ready_new is not None and replica1_replaced is not None
    # held back while replica 0 was not Ready at the new hash; replaced once it was (in the
    # same round when replica 0's node ticks first: it publishes before the other reads)
    assert replica1_replaced >= max(1, replica0_ready_new)
    assert second.peers.asked == {r0["nodes"][0]}
    assert all(n.rec.refused_transitions == {} for n in world.nodes.values())
