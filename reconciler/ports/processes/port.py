"""The engine-process port: start, find, probe and stop the processes this node owns.

One port serves every member role (vLLM engines, Ray head and worker nodes): each is a
child in its own session and process group, with a log file and a state file under the
state dir. Ownership is the state file (pid + process start time + spec hash); a
process without one is never touched.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from reconciler.core.errors import EngineStartFailed, EngineStartRefused
from reconciler.core.vocabulary import LaunchSpec, MemberKey, ProcessObservation
from reconciler.ports.clock import Clock, SystemClock
from reconciler.ports.crashpoints import crash_point
from reconciler.ports.files import atomic_write
from reconciler.ports.processes.adoption import recover_unrecorded
from reconciler.ports.processes.members import (
    member_processes,
    signal_group,
    signal_member,
    wait_gone,
)
from reconciler.ports.processes.proc import (
    all_stats,
    read_stat,
)
from reconciler.ports.processes.sockets import check_port_free, wait_port_free
from reconciler.ports.processes.spawn import child_env, spawn
from reconciler.ports.processes.state_files import EngineRecord, load_record
from reconciler.ports.processes.threads import MemberThreads
from reconciler.ports.processes.tracking import (
    Tracked,
)

log = logging.getLogger(__name__)


class ProcessPort(Protocol):
    def list(self) -> list[ProcessObservation]:
        """Every owned member, alive or exited, with its latest health. No side effects
        beyond reading state files and probing."""
        ...

    def start(self, launch: LaunchSpec) -> ProcessObservation:
        """Start the member; raises EngineStartError (e.g. port taken by a stranger)."""
        ...

    def stop(self, member: MemberKey, grace_s: float) -> bool:
        """SIGTERM the group, wait up to grace_s, then SIGKILL. True once confirmed gone
        (and its port free); its state file is removed then."""
        ...

    def forget(self, member: MemberKey) -> None:
        """Drop the state of a member whose process already exited."""
        ...

    def log_path(self, member: MemberKey) -> Path: ...

    def owned_pids(self) -> frozenset[int]:
        """Pids of owned processes and all their descendants (to tell foreign GPU users)."""
        ...


class LocalProcessPort(MemberThreads):
    """Engine and Ray processes as children of this daemon, owned through state files.

    Files under ``state_dir``: ``engines/<slug>.json`` (one state file per member, written
    atomically) and ``logs/<slug>.log`` (+ ``.1`` ... ``.<log_backups>``).

    Threads (threads.py): a *waiter* per child this instance started and a *prober* per
    known member. ``list()`` only reads state files, /proc and the probers' last results:
    it never waits for a slow engine.

    Logs: the child writes straight into its log file (O_APPEND), and the prober rotates
    it by copy-truncate once it exceeds ``log_max_bytes``. Not a pipe pumped by a daemon
    thread: the engine must outlive the daemon (restart, upgrade, kill -9) and a pipe
    whose reader died makes the engine's next write fail with EPIPE/SIGPIPE; a file keeps
    working and an adopting daemon keeps rotating it. The cost: lines written between the
    copy and the truncation are lost, and the file may pass the limit by what is written
    in one probe interval.

    Exit codes follow ``subprocess``: negative N means killed by signal N. They are known
    for children of this instance (and persisted into the state file for the next
    daemon); for adopted processes they are None.
    """

    def __init__(
        self,
        state_dir: Path,
        log_max_bytes: int,
        log_backups: int,
        base_env: Mapping[str, str] | None = None,
        on_exit: Callable[[MemberKey], None] | None = None,
        *,
        clock: Clock | None = None,
        probe_interval_s: float = 1.0,
        kill_wait_s: float = 10.0,
        on_health: Callable[[MemberKey], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.engines_dir = self.state_dir / "engines"
        self.logs_dir = self.state_dir / "logs"
        self.engines_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.base_env = dict(base_env or {})
        self.on_exit = on_exit
        # called (from a prober thread) when a member's health changes, e.g. starting ->
        # ready: without it the daemon would see a new Ready only at its next resync
        self.on_health = on_health
        self.clock: Clock = clock or SystemClock()
        self.probe_interval_s = probe_interval_s
        self.kill_wait_s = kill_wait_s
        self._lock = threading.RLock()
        self._tracked: dict[MemberKey, Tracked] = {}
        self._closed = False
        self._state_marker = str(self.state_dir.resolve())
        # what the start-up adoption did (adoption.py), for tests and logs
        self.recovered: list[str] = recover_unrecorded(
            self.engines_dir, self._state_marker, self._write_record, self.clock.now,
            self.kill_wait_s,
        )
        self._refresh()  # adopt what the state dir says we own; probes start at once

    # --- the Protocol ----------------------------------------------------------------------

    def list(self) -> list[ProcessObservation]:
        self._refresh()
        with self._lock:
            tracked = sorted(self._tracked.values(), key=lambda t: t.record.member)
            for t in tracked:
                self._check_exit(t)
            return [self._observe(t) for t in tracked]

    def start(self, launch: LaunchSpec) -> ProcessObservation:
        if self._closed:
            raise EngineStartRefused("the process port is closed")
        member = launch.member
        self._refresh()
        with self._lock:
            old = self._tracked.get(member)
            if old is not None:
                self._check_exit(old)
                if not old.exited:
                    raise EngineStartRefused(
                        f"{member} is already running as pid {old.record.pid}"
                    )
        if old is not None:
            self.forget(member)
        if not launch.argv:
            raise EngineStartRefused(f"{member}: empty command line")
        # port 0: a member that serves nothing (a headless mp follower rank)
        taken = check_port_free(launch.host, launch.port) if launch.port else None
        if taken is not None:
            raise EngineStartFailed(f"{member}: {taken}")

        env = child_env(launch, self.base_env, self._state_marker)
        for stale in launch.stale_files:
            Path(stale).unlink(missing_ok=True)
        popen = spawn(launch, env, self.log_path(member), self.state_dir)

        crash_point("engine-started")  # test-only: a daemon killed before the state file
        # Not reaped before the waiter starts, so /proc/<pid>/stat exists (maybe a zombie).
        stat = read_stat(popen.pid)
        record = EngineRecord(
            member=member,
            pid=popen.pid,
            start_ticks=stat.start_ticks if stat is not None else -1,
            argv=tuple(launch.argv),
            spec_hash=launch.spec_hash,
            port=launch.port,
            gpus=tuple(launch.gpus),
            started_at=self.clock.now(),
            host=launch.host,
            served_name=launch.served_name,
            probe_timeout_s=launch.probe_timeout_s,
            probe_period_s=launch.probe_period_s,
            drain_s=launch.drain_s,
            leader=launch.leader,
        )
        tracked = Tracked(record=record, popen=popen)
        with self._lock:  # a concurrent _refresh must not adopt it as a stranger's
            try:
                self._write_record(record)
            except OSError as exc:
                signal_group(popen.pid, signal.SIGKILL)
                popen.wait()
                raise EngineStartFailed(f"{member}: cannot write its state file: {exc}") from exc
            previous = self._tracked.get(member)
            if previous is not None:
                previous.halt.set()
            self._tracked[member] = tracked
            self._start_prober(tracked)
        threading.Thread(
            target=self._wait_child, args=(tracked,), name=f"wait-{member.slug}", daemon=True
        ).start()
        log.info("started member", extra={"member": str(member), "pid": popen.pid})
        return self._observe(tracked)

    def stop(self, member: MemberKey, grace_s: float) -> bool:
        self._refresh()
        with self._lock:
            tracked = self._tracked.get(member)
            if tracked is None:
                return True  # nothing of ours
            tracked.stopping = True
        rec = tracked.record
        targets = member_processes(rec)
        if targets:
            signal_member(rec, targets, signal.SIGTERM)
            alive = wait_gone(rec, targets, grace_s)
            if alive:
                log.warning(
                    "member ignored SIGTERM, sending SIGKILL",
                    extra={"member": str(member), "pids": sorted(alive)},
                )
                signal_member(rec, alive, signal.SIGKILL)
                alive = wait_gone(rec, alive, self.kill_wait_s)
            if alive:
                log.error(
                    "member survived SIGKILL", extra={"member": str(member), "pids": sorted(alive)}
                )
                with self._lock:
                    tracked.stopping = False
                return False
        if tracked.popen is not None:
            try:
                tracked.popen.wait(timeout=self.kill_wait_s)  # reaped (by us or the waiter)
            except subprocess.TimeoutExpired:
                return False
        if not wait_port_free(rec.host, rec.port):
            with self._lock:
                tracked.stopping = False
            return False
        self._drop(member)
        return True

    def forget(self, member: MemberKey) -> None:
        """Drop an exited member. Leftovers of its group (e.g. a worker process orphaned by
        a crashed server) are killed first: they may still hold GPU memory."""
        self._refresh()
        with self._lock:
            tracked = self._tracked.get(member)
            if tracked is None:
                self._state_path(member).unlink(missing_ok=True)
                return
            self._check_exit(tracked)
            if not tracked.exited:
                # never drop ownership of a live process: the next list() shows it running
                log.error("forget of a running member refused", extra={"member": str(member)})
                return
        leftovers = member_processes(tracked.record)
        if leftovers:
            signal_member(tracked.record, leftovers, signal.SIGKILL)
            wait_gone(tracked.record, leftovers, self.kill_wait_s)
        self._drop(member)

    def log_path(self, member: MemberKey) -> Path:
        return self.logs_dir / f"{member.slug}.log"

    def owned_pids(self) -> frozenset[int]:
        self._refresh()
        with self._lock:
            records = [t.record for t in self._tracked.values()]
        stats = all_stats()
        pids: set[int] = set()
        for rec in records:
            pids.update(member_processes(rec, stats))
        return frozenset(pids)

    # --- extras ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the probers (not the processes: engines outlive the daemon)."""
        with self._lock:
            self._closed = True
            tracked = list(self._tracked.values())
        for t in tracked:
            t.halt.set()
        for t in tracked:
            if t.prober is not None and t.prober is not threading.current_thread():
                t.prober.join(timeout=5)

    def record(self, member: MemberKey) -> EngineRecord | None:
        with self._lock:
            t = self._tracked.get(member)
            return None if t is None else t.record

    # --- internals ------------------------------------------------------------------------

    def _state_path(self, member: MemberKey) -> Path:
        return self.engines_dir / f"{member.slug}.json"

    def _write_record(self, record: EngineRecord) -> None:
        with self._lock:
            atomic_write(self._state_path(record.member), record.encode())

    def _update_record(self, tracked: Tracked, **changes: Any) -> None:
        """Rewrite the state file with `changes`, unless it was dropped meanwhile or this
        port is closed (a new port may own the state dir by then: a restarted daemon)."""
        with self._lock:
            tracked.record = replace(tracked.record, **changes)
            if self._closed or self._tracked.get(tracked.record.member) is not tracked:
                return
            path = self._state_path(tracked.record.member)
            try:
                on_disk = load_record(path)
            except (OSError, ValueError, KeyError, TypeError):
                return
            if on_disk.pid != tracked.record.pid:
                return
            try:
                self._write_record(tracked.record)
            except OSError as exc:
                log.warning(
                    "cannot update state file", extra={"path": str(path), "error": str(exc)}
                )

    def _refresh(self) -> None:
        """Sync the tracked set with the state files: adopt new ones, drop vanished ones."""
        found: dict[MemberKey, EngineRecord | None] = {}
        for path in sorted(self.engines_dir.glob("*.json")):
            try:
                member = MemberKey.from_slug(path.stem)
            except ValueError:
                log.warning("ignoring a state file of unknown name", extra={"path": str(path)})
                continue
            try:
                found[member] = load_record(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable state file", extra={"path": str(path), "error": str(exc)})
                found[member] = None
        with self._lock:
            for member in list(self._tracked):
                gone = self._tracked[member]
                if member not in found and gone.popen is None:
                    # dropped by another port instance over the same state dir
                    gone.halt.set()
                    del self._tracked[member]
            for member, rec in found.items():
                t: Tracked | None = self._tracked.get(member)
                if rec is None:
                    # an exited record with pid 0: the core reaps it through forget()
                    if t is None:
                        broken = EngineRecord(member, 0, -1, (), "", 0, (), 0.0)
                        self._tracked[member] = Tracked(
                            record=broken, exited=True, detail="state file unreadable"
                        )
                    continue
                if t is not None and t.record.pid == rec.pid:
                    continue
                if t is not None:
                    t.halt.set()
                adopted = Tracked(record=rec, exit_code=rec.exit_code)
                self._tracked[member] = adopted
                self._check_exit(adopted)
                if not adopted.exited and not self._closed:
                    log.info("adopted member", extra={"member": str(member), "pid": rec.pid})
                    self._start_prober(adopted)

    def _drop(self, member: MemberKey) -> None:
        with self._lock:
            tracked = self._tracked.pop(member, None)
            self._state_path(member).unlink(missing_ok=True)
        if tracked is not None:
            tracked.halt.set()


