"""Reading /proc: process identity (stat), environment, command line, age and name.

A process is identified by its pid *and* its start ticks (field 22 of stat): a pid alone
may have been reused by a stranger since we wrote it down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Env markers set by reconciler.core.launch (repeated here: ports import nothing from the core).
MARKER_MEMBER = "RECONCILER_MEMBER"
MARKER_SPEC_HASH = "RECONCILER_SPEC_HASH"
# Set by the port on every child: which state dir owns it and what it serves. With them a
# restarted daemon finds (and adopts) a member whose state file was never written (killed
# between start and write) or was lost, and never touches another daemon's.
MARKER_STATE_DIR = "RECONCILER_STATE_DIR"
MARKER_PORT = "RECONCILER_PORT"
MARKER_HOST = "RECONCILER_HOST"
MARKER_SERVED_NAME = "RECONCILER_SERVED_NAME"
# how the member drains (LaunchSpec.drain_s, "" for none) and its replica's leader node:
# a restarted daemon still drains a member whose deployment is gone from git
MARKER_DRAIN_S = "RECONCILER_DRAIN_S"
MARKER_LEADER = "RECONCILER_LEADER"


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that ownership and tree walks need."""

    pid: int
    comm: str
    state: str  # R, S, D, Z (zombie), X (dead), ...
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # field 22: clock ticks after boot; with the pid, a unique identity

    @property
    def gone(self) -> bool:
        return self.state in ("Z", "X")


def read_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """Parse /proc/<pid>/stat; None if there is no such process (or it can't be read)."""
    try:
        data = (proc / str(pid) / "stat").read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    # comm (field 2) is in parentheses and may itself hold spaces and parentheses
    left, right = data.find("("), data.rfind(")")
    if left < 0 or right < left:
        return None
    rest = data[right + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            comm=data[left + 1 : right],
            state=rest[0],
            ppid=int(rest[1]),
            pgrp=int(rest[2]),
            session=int(rest[3]),
            start_ticks=int(rest[19]),
        )
    except (IndexError, ValueError):
        return None


def all_pids(proc: Path = Path("/proc")) -> list[int]:
    try:
        return [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []


def same_process(
    pid: int, start_ticks: int, stats: Mapping[int, ProcStat] | None = None
) -> bool:
    """Is `pid` still the live process that started at `start_ticks` (no zombie)?"""
    st = stats.get(pid) if stats is not None else read_stat(pid)
    return st is not None and st.start_ticks == start_ticks and not st.gone


def all_stats() -> dict[int, ProcStat]:
    stats: dict[int, ProcStat] = {}
    for pid in all_pids():
        st = read_stat(pid)
        if st is not None:
            stats[pid] = st
    return stats


def has_markers(pid: int, slug: str, spec_hash: str) -> bool:
    """Does the process carry our env markers for this member (inherited from the leader)?"""
    env = read_environ(pid)
    return (
        env is not None
        and env.get(MARKER_MEMBER) == slug
        and env.get(MARKER_SPEC_HASH) == spec_hash
    )


def read_environ(pid: int) -> dict[str, str] | None:
    """A process's initial environment from /proc, None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(os.fsdecode(a) for a in raw.split(b"\0")[:-1])


def wall_start(start_ticks: int) -> float | None:
    """The wall-clock time a process started, from its start ticks and the boot time."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return None


def age_seconds(start_ticks: int) -> float | None:
    """Seconds since a process started, on the kernel's monotonic clock (/proc/uptime)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(errors="replace").strip()
    except OSError:
        return "?"

