"""The processes of one member: its leader, the leader's descendants and the rest of the
session we created at start. Found through /proc, signalled by pid + start ticks so a
reused pid is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping

from reconciler.ports.processes.proc import ProcStat, all_stats, has_markers, same_process
from reconciler.ports.processes.state_files import EngineRecord

__all__ = ["leader_alive", "member_processes", "signal_group", "signal_member", "wait_gone"]


def leader_alive(rec: EngineRecord, stats: Mapping[int, ProcStat] | None = None) -> bool:
    """Is the leader still the process we started (same pid and start ticks, no zombie)?"""
    return rec.pid > 0 and same_process(rec.pid, rec.start_ticks, stats)


def member_processes(
    rec: EngineRecord, stats: Mapping[int, ProcStat] | None = None
) -> dict[int, int]:
    """pid -> start ticks of the member's processes: the leader (if still the same
    process), its descendants, and members of its session that carry our env markers
    (descendants orphaned when the leader died)."""
    if rec.pid <= 0:
        return {}
    stats = stats if stats is not None else all_stats()
    found: dict[int, int] = {}
    if leader_alive(rec, stats):
        found[rec.pid] = rec.start_ticks
        children: dict[int, list[int]] = {}
        for st in stats.values():
            children.setdefault(st.ppid, []).append(st.pid)
        todo = [rec.pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found and not stats[child].gone:
                    found[child] = stats[child].start_ticks
                    todo.append(child)
    slug = rec.member.slug
    # The session we created at start (sid = the engine's pid) still holds its
    # children after the engine dies: vLLM's EngineCore and workers are re-parented to
    # init and do not carry our env markers (vLLM spawns them with its own env). They
    # are ours when the session leader is our process or gone; a live stranger that
    # reused the pid as a session leader has other start ticks, and its session is
    # left alone unless its members carry our markers.
    leader = stats.get(rec.pid)
    session_ours = leader is None or leader.gone or leader.start_ticks == rec.start_ticks
    for st in stats.values():
        if (
            st.session == rec.pid
            and st.pid not in found
            and not st.gone
            and st.start_ticks >= rec.start_ticks
            and (session_ours or has_markers(st.pid, slug, rec.spec_hash))
        ):
            found[st.pid] = st.start_ticks
    return found


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def signal_member(rec: EngineRecord, targets: Mapping[int, int], sig: signal.Signals) -> None:
    if leader_alive(rec):
        signal_group(rec.pid, sig)  # the group also catches processes forked just now
    for pid, ticks in targets.items():
        if same_process(pid, ticks):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def wait_gone(rec: EngineRecord, targets: Mapping[int, int], timeout: float) -> dict[int, int]:
    """Wait until none of `targets` (nor new members of the group) is alive; return
    those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid: ticks for pid, ticks in targets.items() if same_process(pid, ticks)}
        alive.update(member_processes(rec))
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)
