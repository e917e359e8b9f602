"""Multi-node bookkeeping: the leader's Ray view (members by spec-hash label), what peers
read from a leader's /status (its *running* head and engine), and the fate-sharing and
waiting reasons that name nodes."""

from __future__ import annotations

from typing import Any

from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import Inventory, PeerReplica, RayView, ReplicaKey, Stop
from reconciler.ports.peers import peer_replicas as read_peer
from reconciler.ports.ray_nodes import RayClusterView, RayNode, replica_view
from schemas.status import NodeStatus
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from testrigs.status_docs import status_dict

EMPTY = Inventory()
KEY = ReplicaKey("r1", 0)


def _node(ip: str, h: str | None, alive: bool = True, head: bool = False) -> RayNode:
    labels = {"reconciler-spec-hash": h} if h else {}
    return RayNode(node_id=ip + str(alive), ip=ip, alive=alive, is_head=head,
                   resources={"GPU": 8.0}, labels=labels)


def test_replica_view_counts_only_members_at_the_hash() -> None:
    full = RayClusterView(
        nodes=(
            _node("10.0.0.1", "aaa", head=True),
            _node("10.0.0.2", "bbb"),  # a follower of another revision
            _node("10.0.0.3", "aaa", alive=False),  # died
            _node("10.0.0.4", "aaa", alive=False),  # died, then rejoined
            _node("10.0.0.4", "aaa"),
            _node("10.0.0.5", None),
        ),
        cluster_ray_version="2.60.0", cluster_python_version="3.11.7",
        client_ray_version="2.60.0", client_python_version="3.12.1",
    )
    view = replica_view(full, "aaa")
    assert view.alive_nodes == ("10.0.0.1", "10.0.0.4")
    assert view.gpus == 16.0
    assert view.mismatched == ("10.0.0.2 at bbb", "10.0.0.5 at no hash label")
    assert view.lost == ("10.0.0.3",)
    assert view.notes == ("Python version mismatch: head 3.11.7, this node's engine env 3.12.1",)
    assert replica_view(full, None).alive_nodes == (
        "10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5")


def peer_replicas(doc: dict[str, Any]) -> dict[ReplicaKey, PeerReplica]:
    """As the peers port reads a /status answer: validated as a whole NodeStatus."""
    return read_peer(NodeStatus.model_validate(doc))


def _status(node_name: str, role: str, members: list[dict[str, Any]], state: str = "Ready",
            desired_hash: str = "new") -> dict[str, Any]:
    nodes = [node_name, "n1"] if role == "leader" else [node_name]
    return status_dict(node_name, [{
        "deployment": "r1", "index": 0, "state": state, "reason": "", "role": role,
        "nodes": nodes, "gpus": [], "port": 8000, "specHash": desired_hash,
        "members": members}])


def _m(role: str, h: str, running: bool = True, health: str = "ready") -> dict[str, Any]:
    return {"role": role, "specHash": h, "running": running, "health": health, "pid": 1,
            "gpus": [], "port": 1}


def test_peers_read_the_running_head_not_the_desired_hash() -> None:
    # the leader already wants "new" but its head still runs "old": followers must see old
    st = _status("n0", "leader", [_m("ray-head", "old"), _m("engine", "old")])
    assert peer_replicas(st)[KEY] == PeerReplica(
        "old", ready=True, head_up=True, engine_hash="old", engine_ready=True
    )
    # head started, not listening yet; engine not there
    st = _status("n0", "leader", [_m("ray-head", "new", health="starting")], "Starting")
    assert peer_replicas(st)[KEY] == PeerReplica("new", ready=False, head_up=False)
    # head gone (exited, not reaped yet)
    st = _status("n0", "leader", [_m("ray-head", "new", running=False)], "Pending")
    assert peer_replicas(st)[KEY] == PeerReplica("", ready=False, head_up=False)
    # engine of another hash than the head is not "ready" for the head's hash
    st = _status("n0", "leader", [_m("ray-head", "new"), _m("engine", "old")])
    assert peer_replicas(st)[KEY] == PeerReplica(
        "new", ready=False, head_up=True, engine_hash="old", engine_ready=True
    )
    # single-node: the engine's running hash
    st = _status("n0", "single", [_m("engine", "old")])
    assert peer_replicas(st)[KEY] == PeerReplica(
        "old", ready=True, engine_hash="old", engine_ready=True
    )
    # an older peer without members: desired hash and state, never head_up
    st = _status("n0", "leader", [])
    del st["replicas"][0]["members"]
    assert peer_replicas(st)[KEY] == PeerReplica("new", ready=True, head_up=False)
    # followers' rows are not the truth about a replica
    assert peer_replicas(_status("n1", "follower", [_m("ray-worker", "x")])) == {}


def _setup() -> tuple[Any, str, str, str]:
    c = cluster(node("n0", gpus=8), node("n1", gpus=8))
    d = deployment("r1", parallelism={"tensor": 8, "pipeline": 2})
    want = desired(c, d)
    leader, follower = place(want).replicas[KEY].nodes
    return want, spec_hash(c, d), leader, follower


def test_lost_member_tears_down_head_and_engine() -> None:
    want, h, leader, follower = _setup()
    head = proc("r1", role="ray-head", spec_hash=h, gpus=tuple(range(8)))
    engine = proc("r1", role="engine", spec_hash=h, gpus=())
    follower_ip = next(n.address for n in want.cluster.spec.nodes if n.name == follower)
    leader_ip = next(n.address for n in want.cluster.spec.nodes if n.name == leader)
    # the follower rejoined with a new node id, but its old node is DEAD at our hash
    view = {KEY: RayView((leader_ip,), 8, lost=(follower_ip,))}
    p = plan(want, observed(leader, gpus(8), head, engine, ray=view), EMPTY, 0.0, ctx(leader))
    stops = [a for a in p.actions if isinstance(a, Stop)]
    assert [(str(a.member), a.failure) for a in stops] == [
        ("r1/0/engine", True), ("r1/0/ray-head", False)]
    assert f"{follower} ({follower_ip})" in stops[0].reason
    # no engine yet (still forming): the head goes, and that is the failure
    p = plan(want, observed(leader, gpus(8), head, ray=view), EMPTY, 0.0, ctx(leader))
    stops = [a for a in p.actions if isinstance(a, Stop)]
    assert [(str(a.member), a.failure) for a in stops] == [("r1/0/ray-head", True)]


def test_engine_failure_takes_the_ray_head_along() -> None:
    want, h, leader, _ = _setup()
    head = proc("r1", role="ray-head", spec_hash=h, gpus=tuple(range(8)))
    dead_engine = proc("r1", role="engine", spec_hash=h, gpus=(), running=False, exit_code=3)
    p = plan(want, observed(leader, gpus(8), head, dead_engine), EMPTY, 0.0, ctx(leader))
    names = [f"{type(a).__name__}:{getattr(a, 'member', '')}" for a in p.actions]
    assert names == ["Reap:r1/0/engine", "Stop:r1/0/ray-head"]
    assert p.replicas[KEY].state == "CrashLoopBackOff"


def test_waiting_leader_names_missing_and_mismatched_members() -> None:
    want, h, leader, follower = _setup()
    head = proc("r1", role="ray-head", spec_hash=h, gpus=tuple(range(8)))
    leader_ip = next(n.address for n in want.cluster.spec.nodes if n.name == leader)
    follower_ip = next(n.address for n in want.cluster.spec.nodes if n.name == follower)
    view = {KEY: RayView((leader_ip,), 8, mismatched=(f"{follower_ip} at 0ld",))}
    p = plan(want, observed(leader, gpus(8), head, ray=view), EMPTY, 0.0, ctx(leader))
    reason = p.replicas[KEY].reason
    assert p.empty and p.replicas[KEY].state == "Pending"
    assert f"missing {follower} ({follower_ip})" in reason
    assert f"not counted, at another spec hash: {follower_ip} at 0ld" in reason


def test_a_ray_member_waits_the_initial_backoff_even_after_a_first_failure() -> None:
    from reconciler.core.vocabulary import RestartRecord

    want, h, _, follower = _setup()
    inv = Inventory(restarts={KEY: RestartRecord(failures=1, last_failure_at=0.0,
                                                 total_restarts=1, last_reason="exited")})
    up = {KEY: PeerReplica(h, ready=False, head_up=True)}
    p = plan(want, observed(follower, gpus(8), peers=up), inv, 5.0, ctx(follower))
    assert p.empty and p.replicas[KEY].state == "CrashLoopBackOff"
    assert p.replicas[KEY].reason == "restart 1 in 5s (exited)"
    p = plan(want, observed(follower, gpus(8), peers=up), inv, 10.5, ctx(follower))
    assert [str(getattr(a, "member", "")) for a in p.actions] == ["r1/0/ray-worker"]
