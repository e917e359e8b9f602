"""Adoption of members that no state file owns, at the start of a process port.

A member process carries MARKER_STATE_DIR and MARKER_MEMBER in its environment (inherited
by its children). One that no live state file owns exists when the previous daemon was
killed between starting it and writing its state file, or when its state file was lost or
corrupted. A session leader (a member process proper) is adopted: its state file is
written back from /proc (pid, start ticks, command line, and the spec hash, port, host
and served-name markers the port set at start); a corrupt file is kept as ``.corrupt``.
Of two leaders for one member the older is kept. Anything else (a second leader, children
of a dead leader) is killed. Processes of other state dirs are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from reconciler.core.launch import drain_from_argv
from reconciler.core.vocabulary import MemberKey
from reconciler.ports.processes.members import leader_alive, member_processes
from reconciler.ports.processes.proc import (
    MARKER_DRAIN_S,
    MARKER_HOST,
    MARKER_LEADER,
    MARKER_MEMBER,
    MARKER_PORT,
    MARKER_SERVED_NAME,
    MARKER_SPEC_HASH,
    MARKER_STATE_DIR,
    ProcStat,
    all_stats,
    cmdline,
    read_environ,
    read_stat,
    same_process,
    wall_start,
)
from reconciler.ports.processes.state_files import (
    EngineRecord,
    load_record,
    state_file_members,
)

log = logging.getLogger(__name__)

__all__ = ["record_from_proc", "recover_unrecorded"]


def record_from_proc(
    member: MemberKey, st: ProcStat, env: Mapping[str, str], now: float
) -> EngineRecord:
    """A state file for a live member process, from /proc and the markers in its env."""
    try:
        port = int(env.get(MARKER_PORT) or 0)
    except ValueError:
        port = 0
    gpus = tuple(
        int(g) for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip().isdigit()
    )
    argv = cmdline(st.pid)
    return EngineRecord(
        member=member,
        pid=st.pid,
        start_ticks=st.start_ticks,
        argv=argv,
        spec_hash=env.get(MARKER_SPEC_HASH, ""),
        port=port,
        gpus=gpus,
        started_at=wall_start(st.start_ticks) or now,
        host=env.get(MARKER_HOST) or None,
        served_name=env.get(MARKER_SERVED_NAME, ""),
        drain_s=_drain_marker(env, argv),
        leader=env.get(MARKER_LEADER, ""),
    )


def _drain_marker(env: Mapping[str, str], argv: tuple[str, ...]) -> float | None:
    """The drain marker; a process started before there was one: its argv."""
    if MARKER_DRAIN_S not in env:
        return drain_from_argv(argv)
    try:
        return float(env[MARKER_DRAIN_S]) if env[MARKER_DRAIN_S] else None
    except ValueError:
        return None


def recover_unrecorded(
    engines_dir: Path,
    state_marker: str,
    write_record: Callable[[EngineRecord], None],
    now: Callable[[], float],
    kill_wait_s: float,
) -> list[str]:
    """Adopt or kill the processes of this state dir that no state file owns (see the
    module docstring); returns what was done, one line per process."""
    done: list[str] = []
    records: dict[MemberKey, EngineRecord] = {}
    for member, path in state_file_members(engines_dir):
        try:
            records[member] = load_record(path)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    stats = all_stats()
    owned: set[int] = set()
    for rec in records.values():
        owned.update(member_processes(rec, stats))
    me = os.getpid()
    strays: dict[int, dict[str, str]] = {}
    for pid, st in stats.items():
        if st.gone or pid == me or pid in owned:
            continue
        env = read_environ(pid)
        if env is None or env.get(MARKER_STATE_DIR) != state_marker:
            continue
        if MARKER_MEMBER in env:
            strays[pid] = env
    if not strays:
        return done
    adopted: dict[int, MemberKey] = {}
    for pid in sorted(strays, key=lambda p: (stats[p].start_ticks, p)):
        st, env = stats[pid], strays[pid]
        if st.session != pid:
            continue  # not a member's leader
        try:
            member = MemberKey.from_slug(env[MARKER_MEMBER])
        except ValueError:
            continue
        known = records.get(member)
        if known is not None and leader_alive(known, stats):
            continue  # the member already has an owned (or just adopted) leader
        record = record_from_proc(member, st, env, now())
        path = engines_dir / f"{member.slug}.json"
        if path.exists() and known is None:
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".corrupt"))
        try:
            write_record(record)
        except OSError as exc:
            log.error("cannot write the state file of a found member",
                      extra={"member": str(member), "pid": pid, "error": str(exc)})
            continue
        records[member] = record
        adopted[pid] = member
        done.append(f"adopted {member} pid {pid}")
        log.warning("adopted a member that had no state file",
                    extra={"member": str(member), "pid": pid})
    for member in adopted.values():
        owned.update(member_processes(records[member], stats))
    doomed = {
        pid: stats[pid].start_ticks
        for pid in strays
        if pid not in owned and stats[pid].session not in adopted
    }
    for pid, ticks in sorted(doomed.items()):
        now_st = read_stat(pid)
        if now_st is None or now_st.start_ticks != ticks or now_st.gone:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if now_st.session == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        done.append(f"killed stray pid {pid} ({strays[pid].get(MARKER_MEMBER)})")
        log.warning("killed a stray member process",
                    extra={"pid": pid, "member": strays[pid].get(MARKER_MEMBER)})
    deadline = time.monotonic() + kill_wait_s
    while doomed and time.monotonic() < deadline:
        doomed = {pid: ticks for pid, ticks in doomed.items() if same_process(pid, ticks)}
        if doomed:
            time.sleep(0.05)
    return done
