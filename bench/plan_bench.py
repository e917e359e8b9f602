"""Plan time for large clusters, one core: 10/100/1,000 nodes x 20/200/2,000 deployments.

Run: .venv/bin/python bench/plan_bench.py [--repeat N]
Prints a Markdown table of median and p90 wall time for one node's plan(): placement of the
whole cluster (every node computes it) plus that node's actions.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

from reconciler.core.plan import plan
from reconciler.core.vocabulary import Inventory, ObservedState
from reconciler.desired.state import DesiredState
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node


def make_state(n_nodes: int, n_deps: int) -> DesiredState:
    nodes = [node(f"n{i}", gpus=8, ip=f"10.{i // 250}.{i % 250}.1", pool=f"p{i % 4}")
             for i in range(n_nodes)]
    c = cluster(*nodes, ports={"engine": {"start": 1024, "end": 60000},
                               "ray": {"start": 60001, "end": 65000}, "rayBlockSize": 20})
    deps = []
    for j in range(n_deps):
        tp = (1, 2, 4, 8)[j % 4]
        deps.append(deployment(f"d{j}", port=1024 + j * 4, replicas=1 + j % 2,
                               parallelism={"tensor": tp},
                               placement={"nodeSelector": {"pool": f"p{j % 4}"}}))
    return desired(c, *deps)


def measure(state: DesiredState, repeat: int) -> tuple[float, float]:
    obs = ObservedState(node="n0", gpus=gpus(8), processes={})
    inv = Inventory()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        plan(state, obs, inv, 0.0, ctx("n0"))
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    print("| nodes | deployments | replicas | median ms | p90 ms |")
    print("|---:|---:|---:|---:|---:|")
    for n_nodes, n_deps in [(10, 20), (100, 200), (1000, 2000)]:
        state = make_state(n_nodes, n_deps)
        replicas = sum(d.spec.replicas for d in state.deployments.values())
        med, p90 = measure(state, args.repeat)
        print(f"| {n_nodes} | {n_deps} | {replicas} | {med * 1000:.1f} | {p90 * 1000:.1f} |")


if __name__ == "__main__":
    main()
