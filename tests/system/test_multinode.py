"""Multi-node deployments end to end: real daemons, real Ray, real git, three test hosts.

Three network-namespace test hosts (h1..h3, one simulated GPU each) each run their own
daemon process (``python -m reconciler run``, own state dir) reading the same repository
from ``git daemon`` on a fourth namespace of the test network (tests/system/
multinode_cluster.py). Deployment ``mn-a`` is a 2-node replica (pipeline parallel 2, pinned to
h1 and h2): a Ray head + the Ray test engine (testrigs/engines/ray_test_engine.py, standing in
for ``vllm serve --distributed-executor-backend ray``) on the leader, a Ray worker on the
follower. ``mn-b`` is a single-node replica on h3 that must never be disturbed.

The cases run in order on one cluster (forming it costs ~20 s on 2 cores):

1. push -> the 2-node replica is Ready; both nodes' status and ``reconciler status`` show
   the roles and members;
2. SIGKILL to the follower's ``ray start`` -> the whole replica is torn down on both nodes
   and restarted with backoff, counted in the restarts metric;
3. a spec change (maxModelLen) -> every member converges to the new spec hash;
4. the follower's cable cut -> the leader's status names the missing member;
5. ``mn-a`` gets ``drainTimeoutSeconds`` (a spec change), then is deleted -> the leader
   reports it Draining, its engine drains with every Ray rank answering, the follower's
   Ray worker outlives the engine; then no process of it is left on any host; ``mn-b``'s
   pid is unchanged.

Needs root, ``ip netns`` and ray in the engine environment. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from testrigs.multinode_cluster import (
    REPO,
    MultiNodeCluster,
    cluster_yaml,
    deployment_yaml,
    ray_unavailable_reason,
    wait_for,
)
from testrigs.netns import NetnsHost, netns_unavailable_reason

pytestmark = [pytest.mark.system, pytest.mark.netns, pytest.mark.ray]

A, B = "mn-a", "mn-b"
RESTARTS = "reconciler_engine_restarts_total"


def a_yaml(max_model_len: int = 1024) -> str:
    return deployment_yaml(A, nodes=["h1", "h2"], pipeline=2, port=8000,
                           max_model_len=max_model_len)


@pytest.fixture(scope="module")
def mn() -> Iterator[MultiNodeCluster]:
    reason = netns_unavailable_reason() or ray_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = MultiNodeCluster(3, gpus_per_node=1, backoff_initial_s=3)
    cluster.setup()
    try:
        hosts = cluster.nodes
        cluster.push({
            "cluster.yaml": cluster_yaml(hosts, gpus=1),
            "a.yaml": a_yaml(),
            "b.yaml": deployment_yaml(B, nodes=["h3"], pipeline=1, port=8010),
        }, "two deployments")
        cluster.start_daemons()
        yield cluster
    finally:
        cluster.teardown()


def roles(mn: MultiNodeCluster) -> tuple[NetnsHost, NetnsHost]:
    r = wait_for("mn-a placed", 30, lambda: mn.replica(mn.host("h1"), A))
    leader, follower = r["nodes"]
    return mn.host(leader), mn.host(follower)


def running(members: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    return next((m for m in members if m["role"] == role and m["running"]), None)


def ready_at(mn: MultiNodeCluster, leader: NetnsHost, follower: NetnsHost,
             spec: str | None = None) -> dict[str, Any] | None:
    """The leader's replica once Ready with every member (both nodes) at one hash."""
    r = mn.replica(leader, A)
    if r is None or r["state"] != "Ready" or (spec is not None and r["specHash"] != spec):
        return None
    f = mn.replica(follower, A)
    if f is None or f["state"] != "Ready":
        return None
    head, engine = running(r["members"], "ray-head"), running(r["members"], "engine")
    worker = running(f["members"], "ray-worker")
    if head is None or engine is None or worker is None:
        return None
    if {head["specHash"], engine["specHash"], worker["specHash"]} != {r["specHash"]}:
        return None
    return r


def pids(mn: MultiNodeCluster, leader: NetnsHost, follower: NetnsHost) -> dict[str, int]:
    out = {}
    for host, slug in ((leader, f"{A}.0.ray-head"), (leader, f"{A}.0.engine"),
                       (follower, f"{A}.0.ray-worker"), (mn.host("h3"), f"{B}.0.engine")):
        rec = mn.member_record(host, slug)
        out[slug] = int(rec["pid"]) if rec else 0
    return out


def backoffs(mn: MultiNodeCluster, host: NetnsHost) -> int:
    """How often the host's daemon logged mn-a/0 entering CrashLoopBackOff."""
    n = 0
    for line in (mn.root / f"{host.name}.daemon.log").read_text().splitlines():
        with contextlib.suppress(ValueError):
            d = json.loads(line)
            n += (d.get("msg") == "replica state" and d.get("replica") == f"{A}/0"
                  and d.get("to") == "CrashLoopBackOff")
    return n


@pytest.mark.timeout(150)
def test_1_two_node_replica_becomes_ready(mn: MultiNodeCluster) -> None:
    t0 = time.monotonic()
    leader, follower = roles(mn)
    r = wait_for("the 2-node replica Ready on both nodes", 120,
                 lambda: ready_at(mn, leader, follower), on_fail=mn.logs)
    print(f"mn-a Ready {time.monotonic() - t0:.1f} s after the daemons started")
    assert r["role"] == "leader" and r["nodes"] == [leader.name, follower.name]
    assert r["ray"]["members"] == sorted([leader.ip, follower.ip])
    assert r["ray"]["lost"] == [] and r["ray"]["mismatched"] == []
    f = mn.replica(follower, A)
    assert f is not None and f["role"] == "follower" and "led by the leader" in f["reason"]
    b = wait_for("mn-b Ready", 30, lambda: (x := mn.replica(mn.host("h3"), B)) and
                 x["state"] == "Ready" and x)
    assert b["role"] == "single" and b["ray"] is None

    # `reconciler status --cluster` (run on the leader's host) shows roles and members
    out = mn.net.run(leader, [sys.executable, "-m", "reconciler", "status", "--url",
                              f"http://{leader.ip}:9400", "--cluster"],
                     {"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]}, timeout=30,
                     cwd=str(REPO))
    print(out.stdout)
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith(f"{A}/0"))
    assert "leader" in row and f"{leader.name}:head+engine" in row, out.stdout
    assert f"{follower.name}:worker" in row and "2/2" in row, out.stdout


@pytest.mark.timeout(200)
def test_2_follower_death_restarts_the_whole_replica(mn: MultiNodeCluster) -> None:
    leader, follower = roles(mn)
    wait_for("Ready before the kill", 60, lambda: ready_at(mn, leader, follower))
    before = pids(mn, leader, follower)
    restarts = mn.metric(leader, RESTARTS, deployment=A)
    backoffs_before = {h.name: backoffs(mn, h) for h in (leader, follower)}
    t0 = time.monotonic()
    os.kill(before[f"{A}.0.ray-worker"], signal.SIGKILL)  # only `ray start`, never `ray stop`

    seen: list[str] = []  # the leader's replica states on the way

    def restarted() -> bool:
        r = mn.replica(leader, A)
        if r is not None and (not seen or seen[-1] != r["state"]):
            seen.append(r["state"])
        now = pids(mn, leader, follower)
        return all(now[k] not in (0, before[k]) for k in list(now)[:3]) and bool(
            ready_at(mn, leader, follower))

    wait_for("the replica torn down on both nodes and Ready again", 150, restarted,
             on_fail=mn.logs)
    print(f"replica Ready again {time.monotonic() - t0:.1f} s after the kill; leader's "
          f"states: {' -> '.join(seen)}")
    # restarted after a backoff, not at once: each daemon logs every replica state change
    # (the leader's CrashLoopBackOff can be shorter than a status poll: its stop's grace
    # period counts towards the backoff)
    for host in (leader, follower):
        assert backoffs(mn, host) > backoffs_before[host.name], host.name
    assert mn.metric(leader, RESTARTS, deployment=A) >= restarts + 1
    assert mn.metric(follower, RESTARTS, deployment=A) >= 1
    assert pids(mn, leader, follower)[f"{B}.0.engine"] == before[f"{B}.0.engine"]
    log = (mn.root / f"{leader.name}.daemon.log").read_text()
    assert "fate sharing" in log


@pytest.mark.timeout(150)
def test_3_spec_change_converges_every_member(mn: MultiNodeCluster) -> None:
    leader, follower = roles(mn)
    old = wait_for("Ready before the change", 90, lambda: ready_at(mn, leader, follower))
    t0 = time.monotonic()
    mn.push({"a.yaml": a_yaml(max_model_len=2048)}, "mn-a: maxModelLen 2048")
    new = wait_for("the new spec hash applied", 30,
                   lambda: (x := mn.replica(leader, A)) and x["specHash"] != old["specHash"]
                   and x["specHash"])
    wait_for("every member at the new hash, Ready", 120,
             lambda: ready_at(mn, leader, follower, new), on_fail=mn.logs)
    print(f"converged to {new} {time.monotonic() - t0:.1f} s after the push")


@pytest.mark.timeout(120)
def test_4_cut_cable_names_the_missing_member(mn: MultiNodeCluster) -> None:
    leader, follower = roles(mn)
    wait_for("Ready before the cut", 90, lambda: ready_at(mn, leader, follower))
    t0 = time.monotonic()
    mn.net.link_down(follower)
    try:
        missing = f"{follower.name} ({follower.ip})"
        r = wait_for(f"the leader's status to name {missing}", 60,
                     lambda: (x := mn.replica(leader, A)) and x["state"] != "Ready"
                     and missing in x["reason"] and x, on_fail=mn.logs)
        print(f"leader names the missing member {time.monotonic() - t0:.1f} s after the "
              f"cut: {r['state']}: {r['reason']}")
    finally:
        mn.net.link_up(follower)


def a_drained_yaml() -> str:
    """mn-a with a drain: its engine (the Ray test engine) keeps every rank busy for
    DRAIN_HOLD_S after SIGTERM, as vLLM finishing requests in flight would."""
    text = deployment_yaml(A, nodes=["h1", "h2"], pipeline=2, port=8000, drain_s=DRAIN_S)
    return text.replace("engine: {maxModelLen: 1024}", "engine: {maxModelLen: 1024, "
                        f"extraArgs: ['--drain-seconds', '{DRAIN_HOLD_S:g}']}}")


DRAIN_S, DRAIN_HOLD_S = 20, 4.0


@pytest.mark.timeout(240)
def test_5_delete_drains_the_leader_engine_first_leaves_nothing_and_spares_the_other(
        mn: MultiNodeCluster) -> None:
    """Deleting a multi-node replica with a drain: the leader reports it Draining, its
    engine gets SIGTERM and drains with every Ray rank still answering (the follower's
    Ray worker stays until the engine has exited), then every process of it goes."""
    leader, follower = roles(mn)
    old = wait_for("Ready before the drain is set", 90, lambda: ready_at(mn, leader, follower))
    mn.push({"a.yaml": a_drained_yaml()}, "mn-a: drainTimeoutSeconds")
    new = wait_for("the drained spec applied", 30,
                   lambda: (x := mn.replica(leader, A)) and x["specHash"] != old["specHash"]
                   and x["specHash"])
    wait_for("Ready with the drain", 150, lambda: ready_at(mn, leader, follower, new),
             on_fail=mn.logs)
    h3 = mn.host("h3")
    b_pid = int((mn.member_record(h3, f"{B}.0.engine") or {"pid": 0})["pid"])
    assert b_pid and mn.marked_processes(f"{A}.0.")  # mn-a still has processes somewhere
    engine_log = mn.state_dir(leader) / "logs" / f"{A}.0.engine.log"
    log_from = engine_log.stat().st_size
    t0 = time.monotonic()
    mn.push({"a.yaml": None}, "delete mn-a")
    states: list[str] = []
    samples, last, gap = 0, 0.0, 0.0
    engine_gone_at = worker_gone_at = None
    while time.monotonic() - t0 < 90:
        r = mn.replica(leader, A)
        state = r["state"] if r is not None else "-"
        if not states or states[-1] != state:
            states.append(state)
        engine = bool(mn.marked_processes(f"{A}.0.engine"))
        worker = bool(mn.marked_processes(f"{A}.0.ray-worker"))
        samples += 1
        now = time.monotonic() - t0
        gap, last = max(gap, now - last), now
        if not engine and engine_gone_at is None:
            engine_gone_at = now
        if not worker and worker_gone_at is None:
            worker_gone_at = now
        # the follower's Ray worker never goes while the leader's engine runs
        assert worker or not engine, (now, states, mn.logs())
        if not mn.marked_processes(f"{A}.0."):
            # (everything may have gone between the samples above and this look)
            engine_gone_at = engine_gone_at or time.monotonic() - t0
            worker_gone_at = worker_gone_at or time.monotonic() - t0
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"mn-a not gone: {states}\n{mn.logs()}")
    print(f"mn-a gone everywhere {time.monotonic() - t0:.1f} s after the push; leader's "
          f"states {' -> '.join(states)}; engine gone at {engine_gone_at:.1f} s, follower's "
          f"worker at {worker_gone_at:.1f} s ({samples} samples, at most {gap:.2f} s apart)")
    assert "Draining" in states and states.index("Draining") < states.index("-"), states
    assert engine_gone_at is not None and worker_gone_at is not None
    assert worker_gone_at >= engine_gone_at
    drained = engine_log.read_text(errors="replace")[log_from:]
    assert '"msg": "drained"' in drained and "rank died" not in drained, drained[-2000:]
    assert mn.member_record(mn.host("h1"), f"{A}.0.ray-head") is None
    b = mn.replica(h3, B)
    assert b is not None and b["state"] == "Ready"
    assert int((mn.member_record(h3, f"{B}.0.engine") or {"pid": 0})["pid"]) == b_pid
    assert mn.marked_processes(f"{B}.0.") == {"h3": [b_pid]}
