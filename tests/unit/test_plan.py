"""Table-style tests of the pure planner: (desired, observed, inventory, now) -> actions."""

from __future__ import annotations

from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Inventory,
    MarkReady,
    MemberKey,
    PeerReplica,
    RayView,
    Reap,
    ReplicaKey,
    RestartRecord,
    Start,
    Stop,
)
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc

EMPTY = Inventory()


def kinds(p: object) -> list[str]:
    return [f"{type(a).__name__}:{getattr(a, 'member', getattr(a, 'replica', ''))}"
            for a in p.actions]  # type: ignore[attr-defined]


def test_single_node_start_from_empty() -> None:
    c = cluster(node("n0", gpus=8))
    d = deployment("llama", parallelism={"tensor": 2})
    p = plan(desired(c, d), observed("n0", gpus(8)), EMPTY, 0.0, ctx("n0"))
    assert kinds(p) == ["Start:llama/0/engine"]
    start = p.actions[0]
    assert isinstance(start, Start)
    launch = start.launch
    assert launch.gpus == (0, 1)
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert launch.env["VLLM_HOST_IP"] == "198.18.0.10"
    argv = list(launch.argv)
    assert argv[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.9"
    assert "--distributed-executor-backend" in argv  # world size 2 on one node
    assert p.replicas[ReplicaKey("llama", 0)].state == "Starting"


def test_running_ready_engine_is_left_alone_and_marked_ready_once() -> None:
    c = cluster(node("n0"))
    d = deployment("llama")
    h = spec_hash(c, d)
    obs = observed("n0", gpus(8), proc("llama", spec_hash=h, gpus=(0,)))
    p = plan(desired(c, d), obs, EMPTY, 100.0, ctx("n0"))
    assert p.empty
    assert [type(a) for a in p.actions] == [MarkReady]
    inv = Inventory(restarts={ReplicaKey("llama", 0): RestartRecord(ready_since=50.0)})
    assert plan(desired(c, d), obs, inv, 100.0, ctx("n0")).actions == ()
    assert p.replicas[ReplicaKey("llama", 0)].state == "Ready"


def test_spec_change_replaces_engine_on_the_same_gpus_with_reason() -> None:
    c = cluster(node("n0"))
    old = deployment("llama", engine={"maxModelLen": 4096}, parallelism={"tensor": 2})
    new = deployment("llama", engine={"maxModelLen": 8192}, parallelism={"tensor": 2})
    h_old, h_new = spec_hash(c, old), spec_hash(c, new)
    assert h_old != h_new
    obs = observed("n0", gpus(8), proc("llama", spec_hash=h_old, gpus=(4, 5)))
    p = plan(desired(c, new), obs, EMPTY, 10.0, ctx("n0"))
    assert kinds(p) == ["Stop:llama/0/engine", "Start:llama/0/engine"]
    stop = p.actions[0]
    assert isinstance(stop, Stop) and f"hash {h_old} -> {h_new}" in stop.reason
    start = p.actions[1]
    assert isinstance(start, Start) and start.launch.gpus == (4, 5)


def test_fields_that_do_not_reach_the_engine_do_not_restart_it() -> None:
    c = cluster(node("n0"), node("n1"))
    a = deployment("llama", replicas=1, rollout={"strategy": "RollingUpdate"})
    b = deployment("llama", replicas=2, rollout={"strategy": "Recreate"},
                   probes={"periodSeconds": 30})
    assert spec_hash(c, a) == spec_hash(c, b)


def test_deleted_and_suspended_deployments_are_stopped() -> None:
    c = cluster(node("n0"))
    d = deployment("llama")
    h = spec_hash(c, d)
    obs = observed("n0", gpus(8), proc("llama", spec_hash=h))
    p = plan(desired(c), obs, EMPTY, 0.0, ctx("n0"))
    assert kinds(p) == ["Stop:llama/0/engine"]
    assert "no longer in the desired state" in p.actions[0].reason  # type: ignore[union-attr]
    sus = deployment("llama", suspend=True)
    p = plan(desired(c, sus), obs, EMPTY, 0.0, ctx("n0"))
    assert kinds(p) == ["Stop:llama/0/engine"]
    assert "suspended" in p.actions[0].reason  # type: ignore[union-attr]


def test_foreign_process_gpu_is_never_assigned() -> None:
    c = cluster(node("n0", gpus=2))
    d = deployment("llama", parallelism={"tensor": 2})
    obs = observed("n0", gpus(2, pids={1: (4242,)}), foreign=frozenset({4242}))
    p = plan(desired(c, d), obs, EMPTY, 0.0, ctx("n0"))
    assert p.empty
    status = p.replicas[ReplicaKey("llama", 0)]
    assert status.state == "Pending"
    assert "pid 4242" in status.reason and "needs 2 GPU(s), 1 usable" in status.reason
    d1 = deployment("llama", parallelism={"tensor": 1})
    p = plan(desired(c, d1), obs, EMPTY, 0.0, ctx("n0"))
    start = p.actions[0]
    assert isinstance(start, Start) and start.launch.gpus == (0,)


def test_declared_versus_observed_gpu_drift() -> None:
    c = cluster(node("n0", gpus=8))
    d = deployment("big", parallelism={"tensor": 8})
    p = plan(desired(c, d), observed("n0", gpus(7)), EMPTY, 0.0, ctx("n0"))
    assert any("declared 8, found 7" in n for n in p.notes)
    assert p.empty and p.replicas[ReplicaKey("big", 0)].state == "Pending"
    p = plan(desired(c, d), observed("n0", gpus(8, memory_gib=40)), EMPTY, 0.0, ctx("n0"))
    assert any("memory drift" in n for n in p.notes)


def test_crash_restarts_at_once_then_backs_off() -> None:
    c = cluster(node("n0"))
    d = deployment("llama")
    h = spec_hash(c, d)
    dead = proc("llama", spec_hash=h, running=False, exit_code=137)
    p = plan(desired(c, d), observed("n0", gpus(8), dead), EMPTY, 100.0, ctx("n0"))
    assert kinds(p) == ["Reap:llama/0/engine", "Start:llama/0/engine"]
    reap = p.actions[0]
    assert isinstance(reap, Reap) and reap.failure and "code 137" in reap.reason
    # second failure: 10 s (+-10 % jitter) before the next start
    inv = Inventory(restarts={ReplicaKey("llama", 0): RestartRecord(
        failures=1, last_failure_at=100.0)})
    p = plan(desired(c, d), observed("n0", gpus(8), dead), inv, 101.0, ctx("n0"))
    assert kinds(p) == ["Reap:llama/0/engine"]
    assert p.replicas[ReplicaKey("llama", 0)].state == "CrashLoopBackOff"
    inv2 = Inventory(restarts={ReplicaKey("llama", 0): RestartRecord(
        failures=2, last_failure_at=101.0)})
    assert kinds(plan(desired(c, d), observed("n0", gpus(8)), inv2, 105.0, ctx("n0"))) == []
    assert kinds(plan(desired(c, d), observed("n0", gpus(8)), inv2, 113.0, ctx("n0"))) == [
        "Start:llama/0/engine"]


def test_backoff_is_forgiven_after_a_healthy_period() -> None:
    c = cluster(node("n0"))
    d = deployment("llama")
    inv = Inventory(restarts={ReplicaKey("llama", 0): RestartRecord(
        failures=6, last_failure_at=1000.0, ready_since=1000.0)})
    assert kinds(plan(desired(c, d), observed("n0", gpus(8)), inv, 1700.0, ctx("n0"))) == [
        "Start:llama/0/engine"]


def test_startup_timeout_stops_with_failure() -> None:
    c = cluster(node("n0"))
    d = deployment("llama", probes={"startupTimeoutSeconds": 60})
    h = spec_hash(c, d)
    loading = proc("llama", spec_hash=h, health="starting", started_at=0.0)
    assert plan(desired(c, d), observed("n0", gpus(8), loading), EMPTY, 59.0, ctx("n0")).empty
    p = plan(desired(c, d), observed("n0", gpus(8), loading), EMPTY, 61.0, ctx("n0"))
    assert kinds(p)[0] == "Stop:llama/0/engine"
    stop = p.actions[0]
    assert isinstance(stop, Stop) and stop.failure and "startup timeout" in stop.reason


def test_hung_engine_restarted_after_grace() -> None:
    c = cluster(node("n0"))
    d = deployment("llama")
    h = spec_hash(c, d)
    hung = proc("llama", spec_hash=h, health="unhealthy", unhealthy_since=100.0)
    assert plan(desired(c, d), observed("n0", gpus(8), hung), EMPTY, 110.0, ctx("n0")).empty
    p = plan(desired(c, d), observed("n0", gpus(8), hung), EMPTY, 131.0, ctx("n0"))
    assert kinds(p)[0] == "Stop:llama/0/engine"


def test_oversubscription_is_reported_with_numbers() -> None:
    c = cluster(node("n0", gpus=8))
    d = deployment("llama", replicas=3, parallelism={"tensor": 4})
    p = plan(desired(c, d), observed("n0", gpus(8)), EMPTY, 0.0, ctx("n0"))
    assert sorted(str(a.member) for a in p.actions if isinstance(a, Start)) == [
        "llama/0/engine", "llama/1/engine"]
    starts = [a for a in p.actions if isinstance(a, Start)]
    assert {g for a in starts for g in a.launch.gpus} == set(range(8))
    status = p.replicas[ReplicaKey("llama", 2)]
    assert status.state == "Pending"
    assert "needs 4 GPUs" in status.reason and "0 free on matching nodes" in status.reason


def test_multi_node_unschedulable_reason() -> None:
    c = cluster(node("n0", gpus=8), node("n1", gpus=8))
    big = deployment("r1", parallelism={"tensor": 8, "pipeline": 2})
    other = deployment("small", port=8010, parallelism={"tensor": 8}, placement={"nodes": ["n1"]})
    p = plan(desired(c, big, other), observed("n0", gpus(8)), EMPTY, 0.0, ctx("n0"))
    reason = p.replicas[ReplicaKey("r1", 0)].reason
    assert "needs 16 GPUs" in reason and "8 free on matching nodes" in reason


def multi_node_setup() -> tuple[object, ...]:
    c = cluster(node("n0", gpus=8), node("n1", gpus=8))
    d = deployment("r1", parallelism={"tensor": 8, "pipeline": 2})
    return c, d, spec_hash(c, d)


def test_multi_node_leader_forms_ray_then_starts_engine() -> None:
    c, d, h = multi_node_setup()
    want = desired(c, d)  # type: ignore[arg-type]
    from reconciler.core.placement import place

    pl = place(want).replicas[ReplicaKey("r1", 0)]
    leader, follower = pl.nodes
    key = ReplicaKey("r1", 0)
    # leader, nothing running: start the Ray head with all 8 GPUs
    p = plan(want, observed(leader, gpus(8)), EMPTY, 0.0, ctx(leader))
    assert kinds(p) == ["Start:r1/0/ray-head"]
    head = p.actions[0]
    assert isinstance(head, Start)
    argv = list(head.launch.argv)
    assert "--head" in argv and argv[argv.index("--num-gpus") + 1] == "8"
    assert head.launch.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert head.launch.env["VLLM_HOST_IP"] == argv[argv.index("--node-ip-address") + 1]
    # head running, only itself in Ray: wait, naming what is missing
    head_proc = proc("r1", role="ray-head", spec_hash=h, gpus=tuple(range(8)))  # type: ignore[arg-type]
    p = plan(want, observed(leader, gpus(8), head_proc,
                            ray={key: RayView(("198.18.0.10",), 8)}), EMPTY, 1.0, ctx(leader))
    assert p.empty
    assert "1/2 nodes, 8/16 GPUs" in p.replicas[key].reason
    # all members in: start vLLM with the Ray executor and RAY_ADDRESS
    p = plan(want, observed(leader, gpus(8), head_proc,
                            ray={key: RayView(("a", "b"), 16)}), EMPTY, 2.0, ctx(leader))
    assert kinds(p) == ["Start:r1/0/engine"]
    eng = p.actions[0]
    assert isinstance(eng, Start)
    assert "--distributed-executor-backend" in eng.launch.argv
    assert eng.launch.env["RAY_ADDRESS"].endswith(":" + argv[argv.index("--port") + 1])
    assert eng.launch.gpus == ()
    # the follower waits for the leader's head at the same hash, then joins
    p = plan(want, observed(follower, gpus(8)), EMPTY, 0.0, ctx(follower))
    assert p.empty and "waiting for leader" in p.replicas[key].reason
    stale = {key: PeerReplica(spec_hash="0ld0ld0ld0ld", ready=True)}
    assert plan(want, observed(follower, gpus(8), peers=stale), EMPTY, 0.0, ctx(follower)).empty
    fresh = {key: PeerReplica(spec_hash=h, ready=False, head_up=True)}  # type: ignore[arg-type]
    p = plan(want, observed(follower, gpus(8), peers=fresh), EMPTY, 0.0, ctx(follower))
    assert kinds(p) == ["Start:r1/0/ray-worker"]


def test_multi_node_member_death_restarts_group_locally() -> None:
    c, d, h = multi_node_setup()
    want = desired(c, d)  # type: ignore[arg-type]
    from reconciler.core.placement import place

    leader = place(want).replicas[ReplicaKey("r1", 0)].leader
    dead_head = proc("r1", role="ray-head", spec_hash=h, running=False, exit_code=1)  # type: ignore[arg-type]
    engine = proc("r1", role="engine", spec_hash=h, gpus=())  # type: ignore[arg-type]
    p = plan(want, observed(leader, gpus(8), dead_head, engine), EMPTY, 0.0, ctx(leader))
    # the head is reaped, the engine that depended on it is stopped; the group re-forms
    # after a backoff, not in this tick (followers must first leave the old cluster)
    assert kinds(p) == ["Reap:r1/0/ray-head", "Stop:r1/0/engine"]
    assert p.replicas[ReplicaKey("r1", 0)].state == "CrashLoopBackOff"


def test_multi_node_lost_member_tears_down_the_replica_on_the_leader() -> None:
    c, d, h = multi_node_setup()
    want = desired(c, d)  # type: ignore[arg-type]
    from reconciler.core.placement import place

    key = ReplicaKey("r1", 0)
    leader, follower = place(want).replicas[key].nodes
    head = proc("r1", role="ray-head", spec_hash=h, gpus=tuple(range(8)))  # type: ignore[arg-type]
    engine = proc("r1", role="engine", spec_hash=h, gpus=())  # type: ignore[arg-type]
    whole = {key: RayView(("a", "b"), 16)}
    assert plan(want, observed(leader, gpus(8), head, engine, ray=whole), EMPTY, 0.0,
                ctx(leader)).actions == (MarkReady(key, "r1/0: ready"),)
    half = {key: RayView(("a",), 8)}
    p = plan(want, observed(leader, gpus(8), head, engine, ray=half), EMPTY, 0.0, ctx(leader))
    assert kinds(p)[:2] == ["Stop:r1/0/engine", "Stop:r1/0/ray-head"]
    assert "1/2 nodes alive" in p.actions[0].reason  # type: ignore[union-attr]
    # the follower sees the leader's head down (or at another hash) and leaves too
    worker = proc("r1", role="ray-worker", spec_hash=h, gpus=tuple(range(8)))  # type: ignore[arg-type]
    down = {key: PeerReplica(h, ready=False, head_up=False)}  # type: ignore[arg-type]
    p = plan(want, observed(follower, gpus(8), worker, peers=down), EMPTY, 0.0, ctx(follower))
    assert kinds(p) == ["Stop:r1/0/ray-worker"]
    unknown = observed(follower, gpus(8), worker)  # leader unreachable: no guess
    assert plan(want, unknown, EMPTY, 0.0, ctx(follower)).actions == ()


def test_rolling_update_goes_in_index_order() -> None:
    c = cluster(node("n0", gpus=1), node("n1", gpus=1), node("n2", gpus=1))
    old = deployment("llama", replicas=3, engine={"maxModelLen": 1024})
    new = deployment("llama", replicas=3, engine={"maxModelLen": 2048})
    h_old, h_new = spec_hash(c, old), spec_hash(c, new)
    from reconciler.core.placement import place

    pl = place(desired(c, new)).replicas
    where = {k.index: p.nodes[0] for k, p in pl.items()}
    # replica 1's node: replica 0 not yet ready at the new hash -> keep serving
    n1 = where[1]
    obs = observed(n1, gpus(1), proc("llama", 1, spec_hash=h_old, port=8001),
                   peers={ReplicaKey("llama", 0): PeerReplica(h_old, True)})
    p = plan(desired(c, new), obs, EMPTY, 0.0, ctx(n1))
    assert p.empty and "rolling update: waiting" in p.replicas[ReplicaKey("llama", 1)].reason
    obs = observed(n1, gpus(1), proc("llama", 1, spec_hash=h_old, port=8001),
                   peers={ReplicaKey("llama", 0): PeerReplica(h_new, True)})
    p = plan(desired(c, new), obs, EMPTY, 0.0, ctx(n1))
    assert kinds(p) == ["Stop:llama/1/engine", "Start:llama/1/engine"]
    # replica 0 goes first without waiting
    n0 = where[0]
    obs = observed(n0, gpus(1), proc("llama", 0, spec_hash=h_old))
    assert kinds(plan(desired(c, new), obs, EMPTY, 0.0, ctx(n0)))[0] == "Stop:llama/0/engine"


def test_max_unavailable_two_lets_two_go_at_once() -> None:
    c = cluster(node("n0", gpus=4))
    old = deployment("llama", replicas=3, engine={"maxModelLen": 1024},
                     rollout={"maxUnavailable": 2})
    new = deployment("llama", replicas=3, engine={"maxModelLen": 2048},
                     rollout={"maxUnavailable": 2})
    h_old = spec_hash(c, old)
    procs = [proc("llama", i, spec_hash=h_old, gpus=(i,), port=8000 + i, pid=100 + i)
             for i in range(3)]
    p = plan(desired(c, new), observed("n0", gpus(4), *procs), EMPTY, 0.0, ctx("n0"))
    stops = [str(a.member) for a in p.actions if isinstance(a, Stop)]
    assert stops == ["llama/0/engine", "llama/1/engine"]


def test_recreate_waits_for_old_members_elsewhere() -> None:
    c = cluster(node("n0", gpus=2))
    old = deployment("llama", replicas=2, engine={"maxModelLen": 1024},
                     rollout={"strategy": "Recreate"})
    new = deployment("llama", replicas=2, engine={"maxModelLen": 2048},
                     rollout={"strategy": "Recreate"})
    h_old = spec_hash(c, old)
    procs = [proc("llama", i, spec_hash=h_old, gpus=(i,), port=8000 + i, pid=100 + i)
             for i in range(2)]
    p = plan(desired(c, new), observed("n0", gpus(2), *procs), EMPTY, 0.0, ctx("n0"))
    assert [type(a).__name__ for a in p.actions] == ["Stop", "Stop", "Start", "Start"]


def test_no_desired_state_touches_nothing() -> None:
    obs = observed("n0", gpus(8), proc("llama", spec_hash="abc"))
    p = plan(None, obs, EMPTY, 0.0, ctx("n0"))
    assert p.actions == () and p.notes


def test_node_missing_from_cluster_runs_nothing_and_says_so() -> None:
    c = cluster(node("n0"))
    d = deployment("llama")
    p = plan(desired(c, d), observed("stranger", gpus(8)), EMPTY, 0.0, ctx("stranger"))
    assert p.empty and any("not in the Cluster" in n for n in p.notes)


def test_memberkey_slug_round_trip() -> None:
    m = MemberKey(ReplicaKey("deep-seek", 3), "ray-worker")
    assert MemberKey.from_slug(m.slug) == m


def test_model_path_outside_allowed_roots_is_refused() -> None:
    from dataclasses import replace

    c = cluster(node("n0"))
    d = deployment("llama")  # /models/llama
    inside = replace(ctx("n0"), allowed_model_roots=("/models",))
    assert kinds(plan(desired(c, d), observed("n0", gpus(8)), EMPTY, 0.0, inside)) == [
        "Start:llama/0/engine"]
    outside = replace(ctx("n0"), allowed_model_roots=("/srv/models", "/data"))
    p = plan(desired(c, d), observed("n0", gpus(8)), EMPTY, 0.0, outside)
    assert p.empty and "outside this node's allowed model roots" in p.replicas[
        ReplicaKey("llama", 0)].reason
    sneaky = deployment("x", model={"path": "/models2/x", "servedName": "x"})
    p = plan(desired(c, sneaky), observed("n0", gpus(8)), EMPTY, 0.0, inside)
    assert p.empty
