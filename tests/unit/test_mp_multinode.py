"""executor mp across nodes: vLLM's own multi-node mode (--nnodes), one engine per node."""

from __future__ import annotations

from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.topology import ReplicaShape, replica_shape
from reconciler.core.vocabulary import Inventory, PeerReplica, ReplicaKey, Start, Stop
from reconciler.ports.peers import peer_replicas
from schemas.status import NodeStatus
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from testrigs.status_docs import node_status

EMPTY = Inventory()
KEY = ReplicaKey("r1", 0)


def kinds(p: object) -> list[str]:
    return [f"{type(a).__name__}:{getattr(a, 'member', getattr(a, 'replica', ''))}"
            for a in p.actions]  # type: ignore[attr-defined]


def gpu_setup() -> tuple[object, ...]:
    c = cluster(node("n0", gpus=8), node("n1", gpus=8))
    d = deployment("r1", parallelism={"tensor": 8, "pipeline": 2}, executor="mp")
    return c, d, spec_hash(c, d)


def cpu_setup() -> tuple[object, ...]:
    c = cluster(node("n0", gpus=0), node("n1", gpus=0))
    d = deployment("r1", parallelism={"tensor": 2}, executor="mp")
    return c, d, spec_hash(c, d)


def test_shape_gpu_nodes_same_rule_as_ray() -> None:
    c, d, _ = gpu_setup()
    assert replica_shape(c, d) == ReplicaShape(nodes=2, gpus_per_node=8)  # type: ignore[arg-type]


def test_shape_cpu_one_rank_per_node() -> None:
    c, d, _ = cpu_setup()
    assert replica_shape(c, d) == ReplicaShape(nodes=2, gpus_per_node=0)  # type: ignore[arg-type]
    three = deployment("r1", parallelism={"tensor": 3}, executor="mp")
    reason = replica_shape(c, three)  # type: ignore[arg-type]
    assert isinstance(reason, str) and "one rank per node" in reason
    ray = deployment("r1", parallelism={"tensor": 2})
    reason = replica_shape(c, ray)  # type: ignore[arg-type]
    assert isinstance(reason, str) and "executor 'mp'" in reason


def test_cpu_placement_takes_distinct_nodes_and_a_port_block() -> None:
    c, d, _ = cpu_setup()
    pl = place(desired(c, d)).replicas[KEY]  # type: ignore[arg-type]
    assert sorted(pl.nodes) == ["n0", "n1"] and pl.ray_block is not None


def _argv_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_every_node_runs_one_engine_and_no_ray() -> None:
    c, d, h = cpu_setup()
    want = desired(c, d)  # type: ignore[arg-type]
    pl = place(want).replicas[KEY]
    leader, follower = pl.nodes
    addr = {"n0": "198.18.0.10", "n1": "198.18.0.11"}
    master_port = c.spec.ports.ray.start + pl.ray_block * c.spec.ports.ray_block_size  # type: ignore[attr-defined, operator]
    # the leader starts its engine at once (no Ray head), serving HTTP
    p = plan(want, observed(leader, gpus(0)), EMPTY, 0.0, ctx(leader))
    assert kinds(p) == ["Start:r1/0/engine"]
    start = p.actions[0]
    assert isinstance(start, Start)
    argv = list(start.launch.argv)
    assert argv[:4] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.cli.main", "serve"]
    assert argv[4] == "/models/r1"
    assert _argv_value(argv, "--nnodes") == "2"
    assert _argv_value(argv, "--node-rank") == "0"
    assert _argv_value(argv, "--master-addr") == addr[leader]
    assert _argv_value(argv, "--master-port") == str(master_port)
    assert _argv_value(argv, "--distributed-executor-backend") == "mp"
    assert _argv_value(argv, "--tensor-parallel-size") == "2"
    assert _argv_value(argv, "--host") == addr[leader]
    assert _argv_value(argv, "--port") == "8000"
    assert "--headless" not in argv and "--model" not in argv
    assert start.launch.port == 8000 and start.launch.served_name == "r1"
    assert start.launch.env["VLLM_HOST_IP"] == addr[leader]
    assert "RAY_ADDRESS" not in start.launch.env
    assert p.replicas[KEY].role == "leader"

    # the follower waits for the leader's engine at the same hash ...
    p = plan(want, observed(follower, gpus(0)), EMPTY, 0.0, ctx(follower))
    assert p.empty and "waiting for leader" in p.replicas[KEY].reason
    stale = {KEY: PeerReplica("", False, engine_hash="0ld0ld0ld0ld", engine_ready=True)}
    assert plan(want, observed(follower, gpus(0), peers=stale), EMPTY, 0.0, ctx(follower)).empty
    down = {KEY: PeerReplica("", False)}  # type: ignore[arg-type]
    assert plan(want, observed(follower, gpus(0), peers=down), EMPTY, 0.0, ctx(follower)).empty
    # ... then starts headless, with no HTTP port
    up = {KEY: PeerReplica("", False, engine_hash=h)}  # type: ignore[arg-type]
    p = plan(want, observed(follower, gpus(0), peers=up), EMPTY, 0.0, ctx(follower))
    assert kinds(p) == ["Start:r1/0/engine"]
    start = p.actions[0]
    assert isinstance(start, Start)
    argv = list(start.launch.argv)
    assert argv[3:5] == ["serve", "/models/r1"]
    assert _argv_value(argv, "--node-rank") == "1"
    assert _argv_value(argv, "--master-addr") == addr[leader]
    assert _argv_value(argv, "--master-port") == str(master_port)
    assert "--headless" in argv
    assert "--host" not in argv and "--port" not in argv
    assert start.launch.port == 0 and start.launch.served_name == ""
    assert start.launch.env["VLLM_HOST_IP"] == addr[follower]
    assert p.replicas[KEY].role == "follower"


def test_cli_argv_comes_from_the_node() -> None:
    from dataclasses import replace

    c, d, _ = cpu_setup()
    want = desired(c, d)  # type: ignore[arg-type]
    leader = place(want).replicas[KEY].leader
    node_ctx = replace(ctx(leader), cli_argv=("/srv/shims/vllm_cli.py",))
    p = plan(want, observed(leader, gpus(0)), EMPTY, 0.0, node_ctx)
    start = p.actions[0]
    assert isinstance(start, Start)
    assert list(start.launch.argv[:3]) == ["/opt/vllm/bin/python", "/srv/shims/vllm_cli.py",
                                           "serve"]


def test_gpu_mp_multinode_takes_gpus_on_every_node() -> None:
    c, d, h = gpu_setup()
    want = desired(c, d)  # type: ignore[arg-type]
    leader, follower = place(want).replicas[KEY].nodes
    p = plan(want, observed(leader, gpus(8)), EMPTY, 0.0, ctx(leader))
    assert kinds(p) == ["Start:r1/0/engine"]
    start = p.actions[0]
    assert isinstance(start, Start) and start.launch.gpus == tuple(range(8))
    argv = list(start.launch.argv)
    assert _argv_value(argv, "--pipeline-parallel-size") == "2"
    assert _argv_value(argv, "--distributed-executor-backend") == "mp"
    up = {KEY: PeerReplica("", False, engine_hash=h)}  # type: ignore[arg-type]
    p = plan(want, observed(follower, gpus(8), peers=up), EMPTY, 0.0, ctx(follower))
    start = p.actions[0]
    assert isinstance(start, Start) and start.launch.gpus == tuple(range(8))


def test_follower_fate_sharing_with_the_leaders_engine() -> None:
    c, d, h = cpu_setup()
    want = desired(c, d)  # type: ignore[arg-type]
    follower = place(want).replicas[KEY].nodes[1]
    rank = proc("r1", spec_hash=h, gpus=(), port=0)  # type: ignore[arg-type]
    # leader up and ready: the follower reports Ready, nothing to do
    ready = {KEY: PeerReplica("", False, engine_hash=h, engine_ready=True)}  # type: ignore[arg-type]
    p = plan(want, observed(follower, gpus(0), rank, peers=ready), EMPTY, 0.0, ctx(follower))
    assert not any(isinstance(a, Start | Stop) for a in p.actions)
    assert p.replicas[KEY].state == "Ready"
    # leader unreachable: cannot know, keep running
    p = plan(want, observed(follower, gpus(0), rank), EMPTY, 0.0, ctx(follower))
    assert not any(isinstance(a, Stop) for a in p.actions)
    # leader's engine down: the follower rank stops
    down = {KEY: PeerReplica("", False)}  # type: ignore[arg-type]
    p = plan(want, observed(follower, gpus(0), rank, peers=down), EMPTY, 0.0, ctx(follower))
    stops = [a for a in p.actions if isinstance(a, Stop)]
    assert len(stops) == 1 and "leader" in stops[0].reason and "is down" in stops[0].reason
    assert not any(isinstance(a, Start) for a in p.actions)
    # leader's engine at another hash: stop too
    other = {KEY: PeerReplica("", False, engine_hash="0ld0ld0ld0ld", engine_ready=True)}
    p = plan(want, observed(follower, gpus(0), rank, peers=other), EMPTY, 0.0, ctx(follower))
    stops = [a for a in p.actions if isinstance(a, Stop)]
    assert len(stops) == 1 and "runs hash 0ld0ld0ld0ld" in stops[0].reason


def test_leader_engine_failure_is_an_ordinary_engine_failure() -> None:
    c, d, h = cpu_setup()
    want = desired(c, d)  # type: ignore[arg-type]
    leader = place(want).replicas[KEY].leader
    dead = proc("r1", spec_hash=h, gpus=(), running=False, exit_code=1)  # type: ignore[arg-type]
    p = plan(want, observed(leader, gpus(0), dead), EMPTY, 0.0, ctx(leader))
    # reaped, and not restarted in the same tick even on a first failure: the followers
    # must see the leader's engine gone (a restart at once would look unchanged to them)
    assert kinds(p) == ["Reap:r1/0/engine"]
    assert p.replicas[KEY].state == "CrashLoopBackOff"


def test_peers_report_the_leaders_running_engine_for_mp_replicas() -> None:
    def status(members: list[dict[str, object]]) -> NodeStatus:
        return node_status("n0", [{
            "deployment": "r1", "index": 0, "nodes": ["n0", "n1"], "role": "leader",
            "specHash": "want", "state": "Starting", "members": members,
        }])

    engine = {"role": "engine", "running": True, "specHash": "abc", "health": "starting"}
    assert peer_replicas(status([engine]))[KEY] == PeerReplica(
        "", ready=False, head_up=False, engine_hash="abc", engine_ready=False
    )
    ready = dict(engine, health="ready")
    assert peer_replicas(status([ready]))[KEY] == PeerReplica(
        "", ready=False, head_up=False, engine_hash="abc", engine_ready=True
    )
    assert peer_replicas(status([]))[KEY].engine_hash == ""
    # a Ray replica reads as before: head and engine at one hash
    head = {"role": "ray-head", "running": True, "specHash": "abc", "health": "ready"}
    assert peer_replicas(status([head, ready]))[KEY] == PeerReplica(
        "abc", ready=True, head_up=True, engine_hash="abc", engine_ready=True
    )


def test_rollout_sees_mp_replicas_ready_through_the_leaders_engine() -> None:
    c = cluster(node("n0", gpus=0), node("n1", gpus=0))
    old = deployment("r1", replicas=2, parallelism={"tensor": 2}, executor="mp",
                     engine={"maxModelLen": 256})
    new = deployment("r1", replicas=2, parallelism={"tensor": 2}, executor="mp",
                     engine={"maxModelLen": 512}, rollout={"strategy": "RollingUpdate"})
    h_old, h_new = spec_hash(c, old), spec_hash(c, new)
    want = desired(c, new)
    pl = place(want).replicas
    key1 = ReplicaKey("r1", 1)
    leader1 = pl[key1].leader
    other = "n1" if leader1 == "n0" else "n0"
    assert pl[KEY].leader == other  # replicas spread their leaders over the nodes
    running = proc("r1", 1, spec_hash=h_old, gpus=(), port=8001)  # type: ignore[arg-type]
    behind = {KEY: PeerReplica("", False, engine_hash=h_old, engine_ready=True)}
    p = plan(want, observed(leader1, gpus(0), running, peers=behind), EMPTY, 0.0, ctx(leader1))
    assert not any(isinstance(a, Stop) and a.member.replica == key1 for a in p.actions)
    done = {KEY: PeerReplica("", False, engine_hash=h_new, engine_ready=True)}
    p = plan(want, observed(leader1, gpus(0), running, peers=done), EMPTY, 0.0, ctx(leader1))
    assert any(isinstance(a, Stop) and a.member.replica == key1 for a in p.actions)


def test_follower_rank_follows_the_leader_engine_of_its_own_hash() -> None:
    c = cluster(node("n0", gpus=0), node("n1", gpus=0))
    old = deployment("r1", parallelism={"tensor": 2}, executor="mp", engine={"maxModelLen": 256})
    new = deployment("r1", parallelism={"tensor": 2}, executor="mp", engine={"maxModelLen": 512})
    h_old, h_new = spec_hash(c, old), spec_hash(c, new)
    want = desired(c, new)
    follower = place(want).replicas[KEY].nodes[1]
    rank = proc("r1", spec_hash=h_old, gpus=(), port=0, health="starting")
    # the leader restarted at the new hash: the old rank's group is gone, it stops
    moved = {KEY: PeerReplica("", False, engine_hash=h_new)}
    p = plan(want, observed(follower, gpus(0), rank, peers=moved), EMPTY, 0.0, ctx(follower))
    assert [a.member for a in p.actions if isinstance(a, Stop)] == [rank.member]
    # and its successor starts at the new hash in the same tick
    starts = [a for a in p.actions if isinstance(a, Start)]
    assert len(starts) == 1 and starts[0].launch.spec_hash == h_new
