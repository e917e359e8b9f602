"""Per-node GPU index assignment: stable across ticks and daemon restarts.

A member keeps the indices recorded in the inventory while they stay usable, so a
replaced engine lands on the GPUs its predecessor freed. New members take the lowest
usable indices. Unusable: not observed, unhealthy, or held by a process we don't own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.core.vocabulary import MemberKey


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
