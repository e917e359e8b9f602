"""What the daemon does with its engines when it ends: leave them (the default, adopted
by the next start) or stop every member it owns (`stopEnginesOnExit`)."""

from __future__ import annotations

import logging

from reconciler.core.vocabulary import MemberKey
from reconciler.ports.inventory import InventoryStore
from reconciler.ports.processes import ProcessPort

log = logging.getLogger(__name__)


def running_members(processes: ProcessPort) -> list[MemberKey]:
    """Best effort at exit: a failing list is logged and counts as nothing running."""
    try:
        return [p.member for p in processes.list() if p.running]
    except Exception:
        log.exception("listing processes failed")
        return []


def stop_all(processes: ProcessPort, inventory: InventoryStore, grace_s: float) -> None:
    # engines before Ray nodes: a driver must not outlive its cluster by accident
    members = sorted(running_members(processes), key=lambda m: (m.role != "engine", m))
    for member in members:
        ok = processes.stop(member, grace_s)
        if ok:
            inventory.remove_member(member)
        log.info("stopped at exit", extra={"member": str(member), "confirmed": ok})


def leave_running(processes: ProcessPort) -> None:
    running = running_members(processes)
    if running:
        log.info("leaving engines running", extra={"members": [str(m) for m in running]})
