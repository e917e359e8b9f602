"""The threads of the process port: a waiter per child it started and a prober per member.

The waiter (``Popen.wait``) records the exit code, then calls ``on_exit``. The prober
probes (HTTP for engines, a listening check for Ray nodes), polls /proc for the exit of
adopted processes (not our children, so no waiter), then calls ``on_exit`` too, and
rotates the log. Both take the port's lock for every change of a member's state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.core.vocabulary import MemberKey, ProcessObservation
from reconciler.ports.clock import Clock
from reconciler.ports.processes.log_rotation import rotate_log
from reconciler.ports.processes.tracking import Tracked, apply_probe, check_exit, observe, probe

log = logging.getLogger(__name__)


class MemberThreads:
    """Mixed into LocalProcessPort, which provides the attributes and the two methods
    declared here."""

    _lock: threading.RLock
    clock: Clock
    on_exit: Callable[[MemberKey], None] | None
    on_health: Callable[[MemberKey], None] | None
    probe_interval_s: float
    log_max_bytes: int
    log_backups: int

    def log_path(self, member: MemberKey) -> Path:
        raise NotImplementedError

    def _update_record(self, tracked: Tracked, **changes: Any) -> None:
        raise NotImplementedError

    def _check_exit(self, tracked: Tracked) -> None:
        check_exit(tracked, self.log_path(tracked.record.member))

    def _observe(self, t: Tracked) -> ProcessObservation:
        return observe(t, self.clock.now())

    def _notify_exit(self, tracked: Tracked) -> None:
        with self._lock:
            if tracked.exit_notified:
                return
            tracked.exit_notified = True
        if self.on_exit is not None:
            try:
                self.on_exit(tracked.record.member)
            except Exception:
                log.exception("on_exit callback failed")

    def _wait_child(self, tracked: Tracked) -> None:
        assert tracked.popen is not None
        code = tracked.popen.wait()
        with self._lock:
            self._check_exit(tracked)
            tracked.exit_code = code
            if not tracked.stopping:
                self._update_record(tracked, exit_code=code)
        log.info(
            "member exited",
            extra={"member": str(tracked.record.member), "pid": tracked.record.pid, "code": code},
        )
        tracked.halt.set()
        self._notify_exit(tracked)

    def _start_prober(self, tracked: Tracked) -> None:
        thread = threading.Thread(
            target=self._probe_loop,
            args=(tracked,),
            name=f"probe-{tracked.record.member.slug}",
            daemon=True,
        )
        tracked.prober = thread
        thread.start()

    def _probe_loop(self, tracked: Tracked) -> None:
        log_path = self.log_path(tracked.record.member)
        while not tracked.halt.is_set():
            with self._lock:
                self._check_exit(tracked)
                exited = tracked.exited
            if exited:
                if tracked.popen is None:  # adopted: no waiter will tell the loop
                    self._notify_exit(tracked)
                return
            self._probe_once(tracked)
            try:
                rotate_log(log_path, self.log_max_bytes, self.log_backups)
            except OSError as exc:
                log.warning("log rotation failed", extra={"path": str(log_path), "error": str(exc)})
            # Probe fast while loading (readiness matters), at the deployment's period
            # once ready: every probe costs the daemon CPU and the engine a log line.
            # Children we started report their exit through the waiter at once anyway.
            interval = self.probe_interval_s
            if tracked.health == "ready":
                interval = max(interval, tracked.record.probe_period_s)
            tracked.halt.wait(interval)

    def _probe_once(self, tracked: Tracked) -> None:
        ok, detail = probe(tracked)
        now = self.clock.now()
        with self._lock:
            if tracked.exited or tracked.halt.is_set():
                return
            before = tracked.health
            if apply_probe(tracked, ok, detail, now):
                self._update_record(tracked, ready_at=now)
            changed = tracked.health != before
        if changed and self.on_health is not None:
            try:
                self.on_health(tracked.record.member)
            except Exception:
                log.exception("on_health callback failed")
