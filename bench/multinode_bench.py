"""Multi-node deployments: time from `git push` to a Ready replica, and memory per test host.

Three network-namespace test hosts, each with its own daemon, fetching from `git daemon` on
the test network (testrigs/multinode_cluster.py; needs root and ray in .venv-engine).
For a 2-node and a 3-node replica (pipeline parallel 2 / 3, one simulated GPU per node, the
Ray test engine standing in for vLLM), each trial pushes the deployment, waits until the
leader's /status says Ready with every member at the pushed hash, records the resident
memory (sum of RSS) of the Ray and engine processes on each host (every process carrying
the RECONCILER_MEMBER marker in its environment; the daemon itself is not counted), then
deletes the deployment and waits until none of its processes is left.

Run: .venv/bin/python bench/multinode_bench.py [--trials 3] [--out docs/multinode-bench.md]
Prints a Markdown table (and writes it with --out).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from testrigs.multinode_cluster import (
    MultiNodeCluster,
    cluster_yaml,
    deployment_yaml,
    ray_unavailable_reason,
    wait_for,
)
from testrigs.netns import netns_unavailable_reason

REPO = Path(__file__).resolve().parents[1]


def trial(mn: MultiNodeCluster, name: str, n: int, port: int) -> tuple[float, list[float]]:
    hosts = [h.name for h in mn.nodes[:n]]
    leader_hint = mn.nodes[0]
    t0 = time.monotonic()
    mn.push({f"{name}.yaml": deployment_yaml(name, nodes=hosts, pipeline=n, port=port)},
            f"add {name}")

    def ready() -> bool:
        r = mn.replica(leader_hint, name)
        if r is None:
            return False
        leader = mn.host(r["nodes"][0])
        lr = mn.replica(leader, name)
        return bool(lr and lr["state"] == "Ready" and lr["ray"]
                    and len(lr["ray"]["members"]) == n)

    wait_for(f"{name} Ready", 240, ready, interval=0.25, on_fail=mn.logs)
    took = time.monotonic() - t0
    time.sleep(2)  # let the engine's first ping rounds settle before reading memory
    r = mn.replica(leader_hint, name)
    assert r is not None
    order = [mn.host(x) for x in r["nodes"]]  # leader first
    rss = [mn.rss_mib(h) for h in order]
    mn.push({f"{name}.yaml": None}, f"delete {name}")
    wait_for(f"{name} gone", 120, lambda: not mn.marked_processes(f"{name}.0."),
             on_fail=mn.logs)
    return took, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    reason = netns_unavailable_reason() or ray_unavailable_reason()
    if reason:
        print(f"skipped: {reason}", file=sys.stderr)
        return 2
    rows = []
    with MultiNodeCluster(3, gpus_per_node=1) as mn:
        mn.push({"cluster.yaml": cluster_yaml(mn.nodes, gpus=1)}, "cluster")
        mn.start_daemons()
        wait_for("daemons up", 60, lambda: all(mn.status(h)["node"] for h in mn.nodes))
        for n in (2, 3):
            times, mems = [], []
            for i in range(args.trials):
                took, rss = trial(mn, f"b{n}n{i}", n, 8000 + 10 * n + i)
                times.append(took)
                mems.append(rss)
                print(f"{n}-node trial {i + 1}: ready {took:.1f} s, RSS MiB per host "
                      f"{[round(x) for x in rss]}", file=sys.stderr)
            per_host = [statistics.median(m[j] for m in mems) for j in range(n)]
            rows.append((n, times, per_host))
    head = ["| replica | push -> Ready (median) | trials (s) | RSS leader | RSS follower 1 "
            "| RSS follower 2 |", "|---|---|---|---|---|---|"]
    lines = head + [
        f"| {n}-node | {statistics.median(t):.1f} s | {', '.join(f'{x:.1f}' for x in t)} | "
        + " | ".join(f"{x:.0f} MiB" for x in per_host) + (" | -" if n == 2 else "") + " |"
        for n, t, per_host in rows
    ]
    cpu = os.cpu_count()
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        args.out.write_text(
            "# Multi-node deployments: push to Ready, memory per host\n\n"
            f"Command: `.venv/bin/python bench/multinode_bench.py --trials {args.trials} "
            f"--out {args.out}`\n\n"
            f"Machine: {cpu} cores, {platform.machine()}, Python {platform.python_version()} "
            "(daemon), Ray 2.60 in .venv-engine. Three network-namespace test hosts, one "
            "daemon each (poll interval 1 s, resync 1 s), `git daemon` on the test network, "
            "one simulated GPU per host, the Ray test engine in place of vLLM (no model load:"
            " the numbers are the reconciler's and Ray's share of a start). Each trial pushes "
            "a new deployment and waits for the leader's /status to say Ready with every "
            "member joined; RSS is the sum over the processes carrying the "
            "RECONCILER_MEMBER marker on a host (Ray head or worker with its helpers, the "
            "engine and its Ray actors), read 2 s after Ready, median over the trials. The "
            "leader runs the Ray head and the engine (the driver), followers a Ray worker "
            "each.\n\n"
            f"{table}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
