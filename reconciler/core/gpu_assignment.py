"""Per-node GPU index assignment: stable across ticks and daemon restarts.

A member keeps the indices recorded in the inventory while they stay usable, so a
replaced engine lands on the GPUs its predecessor freed. New members take the lowest
usable indices. Unusable: not observed, unhealthy, or held by a process we don't own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.core.vocabulary import Inventory, MemberKey, ObservedState


def assign_gpus(
    needs: Mapping[MemberKey, int],
    usable: Sequence[int],
    previous: Mapping[MemberKey, tuple[int, ...]],
    reserved: frozenset[int] = frozenset(),
) -> tuple[dict[MemberKey, tuple[int, ...]], dict[MemberKey, str]]:
    """Return (assignment, reasons for members that could not get their GPUs).

    `reserved` are indices still held by members on their way out; nobody gets them yet.
    """
    free = [i for i in sorted(set(usable)) if i not in reserved]
    assigned: dict[MemberKey, tuple[int, ...]] = {}
    missing: dict[MemberKey, str] = {}
    # keep what still works, in key order so that conflicts resolve the same way each tick
    for member in sorted(needs):
        count = needs[member]
        prev = previous.get(member, ())
        if count and len(prev) == count and all(i in free for i in prev):
            assigned[member] = prev
            free = [i for i in free if i not in prev]
    for member in sorted(needs):
        count = needs[member]
        if member in assigned:
            continue
        if count == 0:
            assigned[member] = ()
            continue
        if len(free) < count:
            missing[member] = f"needs {count} GPU(s), {len(free)} usable on this node"
            continue
        assigned[member] = tuple(free[:count])
        free = free[count:]
    return assigned, missing


def usable_gpus(observed: ObservedState) -> tuple[list[int], dict[int, str]]:
    """(usable indices, why each other observed GPU is not usable)."""
    usable: list[int] = []
    blocked: dict[int, str] = {}
    if not observed.gpus.available:
        return usable, blocked
    for gpu in observed.gpus.gpus:
        foreign = [pid for pid in gpu.process_pids if pid in observed.foreign_pids]
        if not gpu.healthy:
            blocked[gpu.index] = f"GPU {gpu.index} unhealthy ({gpu.health_detail})"
        elif foreign:
            blocked[gpu.index] = (
                f"GPU {gpu.index} used by a process we don't own (pid {foreign[0]})"
            )
        else:
            usable.append(gpu.index)
    return usable, blocked


def assign_node_gpus(
    needs: Mapping[MemberKey, int],
    keep: frozenset[MemberKey],
    observed: ObservedState,
    inventory: Inventory,
    usable: Sequence[int],
) -> tuple[dict[MemberKey, tuple[int, ...]], dict[MemberKey, str]]:
    """GPUs for the members this node should run. Members in `keep` run as wanted and
    keep exactly what they have; the others get their previous GPUs when still free.

    GPUs of members on their way out (running, not in `needs`) stay reserved, except
    for the same member's successor: apply stops the old process before starting the
    new one (and skips the start if the stop fails), so a replaced engine lands on the
    GPUs it freed."""
    reserved = frozenset(
        i
        for m, proc in observed.processes.items()
        if proc.running and m not in needs
        for i in proc.gpus
    )
    previous = {m: o.gpus for m, o in inventory.members.items()}
    for m, proc in observed.processes.items():
        previous.setdefault(m, proc.gpus)
    fixed = {m: observed.processes[m].gpus for m in keep}
    taken = {i for g in fixed.values() for i in g}
    assignment, missing = assign_gpus(
        {m: n for m, n in needs.items() if m not in fixed},
        [i for i in usable if i not in taken],
        previous,
        reserved,
    )
    assignment.update(fixed)
    return assignment, missing
