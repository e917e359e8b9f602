"""Which of this node's GPUs are assigned, free, held by strangers, unhealthy or missing.

Shared by the status document and the `reconciler_gpus{state}` metric, so both count alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.core.vocabulary import GpuInventory, ObservedState
from reconciler.desired.state import DesiredState
from schemas import status as doc


@dataclass(frozen=True)
class GpuAccount:
    counts: Mapping[str, int]
    devices: list[doc.GpuDevice]
    declared: doc.GpuDeclared | None
    simulated: bool


def gpu_account(desired: DesiredState | None, observed: ObservedState | None,
                node: str) -> GpuAccount:
    inv = observed.gpus if observed is not None else GpuInventory(available=False)
    declared: doc.GpuDeclared | None = None
    if desired is not None:
        for n in desired.cluster.spec.nodes:
            if n.name == node:
                declared = doc.GpuDeclared(
                    count=n.gpus.count, model=n.gpus.model, memory_gib=n.gpus.memory_gib
                )
    assigned: set[int] = set()
    foreign_pids: frozenset[int] = frozenset()
    if observed is not None:
        for p in observed.processes.values():
            if p.running:
                assigned.update(p.gpus)
        foreign_pids = observed.foreign_pids
    counts = {"assigned": 0, "free": 0, "foreign": 0, "missing": 0, "unhealthy": 0,
              "unmanaged": 0}
    devices = []
    unmanaged = {g.index for g in inv.unmanaged}
    for g in sorted((*inv.gpus, *inv.unmanaged), key=lambda g: g.index):
        strangers = sorted(pid for pid in g.process_pids if pid in foreign_pids)
        state: doc.GpuState
        if g.index in unmanaged:
            state = "unmanaged"  # managedGpus gives it to someone else: not ours to judge
        elif not g.healthy:
            state = "unhealthy"
        elif strangers:
            state = "foreign"
        elif g.index in assigned:
            state = "assigned"
        else:
            state = "free"
        counts[state] += 1
        devices.append(
            doc.GpuDevice(
                index=g.index,
                uuid=g.uuid,
                name=g.name,
                memory_total_mib=g.memory_total_mib,
                memory_used_mib=g.memory_used_mib,
                utilization_pct=g.utilization_pct,
                temperature_c=g.temperature_c,
                healthy=g.healthy,
                health_detail=g.health_detail,
                state=state,
                foreign_pids=strangers,
            )
        )
    if declared is not None:
        counts["missing"] = max(0, declared.count - len(inv.gpus))
    return GpuAccount(counts, devices, declared, inv.simulated)
