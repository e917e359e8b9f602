"""Placement with and without the placement lock, one core: what every node pays per
revision for stickiness. Also the revision diff of the whole cluster (what CI pays).

Run: .venv/bin/python bench/lock_bench.py [--repeat N]
Prints a Markdown table of medians: place() without a lock, place() with every replica
locked (the steady state once `reconciler lock` is committed), and diff_revisions() of a
revision against itself (both placements and every node's members built: what CI pays).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from plan_bench import make_state

from reconciler.core.placement import place
from reconciler.core.revision_diff import diff_revisions
from reconciler.desired.placement_lock import lock_of


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    print("| nodes | deployments | replicas | place, no lock ms | place, all locked ms "
          "| diff (all nodes) ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n_nodes, n_deps in [(10, 20), (100, 200), (1000, 2000)]:
        state = make_state(n_nodes, n_deps)
        placement = place(state)
        locked = replace(state, placement_lock=lock_of(placement))
        assert place(locked).replicas == placement.replicas  # a current lock changes nothing
        replicas = sum(d.spec.replicas for d in state.deployments.values())
        plain = median_ms(partial(place, state), args.repeat)
        with_lock = median_ms(partial(place, locked), args.repeat)
        diff = median_ms(partial(diff_revisions, locked, locked), max(1, args.repeat // 3))
        print(f"| {n_nodes:,} | {n_deps:,} | {replicas:,} | {plain:.1f} | {with_lock:.1f} "
              f"| {diff:.0f} |")


if __name__ == "__main__":
    main()
