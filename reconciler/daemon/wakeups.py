"""The timers and the ref watcher that wake the reconcile worker.

None of them carries truth: a fetch job every poll interval and a resync job every
resync interval (apscheduler, each with 10 % jitter so that a fleet does not poll in
step), and a watcher on a local repository's refs. Each only calls back into the loop.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
from collections.abc import Callable
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.ports.local_watch import LocalRefWatcher
from schemas.nodeconfig import NodeConfig

log = logging.getLogger(__name__)


class WakeSources:
    def __init__(self, request_fetch: Callable[[str], None], wake: Callable[[str], None]) -> None:
        self._request_fetch = request_fetch
        self._wake = wake
        self._scheduler: BackgroundScheduler | None = None
        self._watcher: LocalRefWatcher | None = None

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    def start(self, config: NodeConfig, watch_repo: Path | None) -> None:
        sched = BackgroundScheduler(
            timezone=_dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        poll = config.source.poll_interval_seconds
        resync = config.resync_interval_seconds
        sched.add_job(lambda: self._request_fetch("poll"), "interval", seconds=poll,
                      jitter=poll * 0.1, id="fetch")
        sched.add_job(lambda: self._wake("resync"), "interval", seconds=resync,
                      jitter=resync * 0.1, id="resync")
        sched.start()
        self._scheduler = sched
        self._start_watcher(watch_repo)

    def reschedule(self, old: NodeConfig, new: NodeConfig) -> None:
        if self._scheduler is None:
            return
        if old.source.poll_interval_seconds != new.source.poll_interval_seconds:
            poll = new.source.poll_interval_seconds
            self._scheduler.reschedule_job("fetch", trigger="interval", seconds=poll,
                                           jitter=poll * 0.1)
        if old.resync_interval_seconds != new.resync_interval_seconds:
            resync = new.resync_interval_seconds
            self._scheduler.reschedule_job("resync", trigger="interval", seconds=resync,
                                           jitter=resync * 0.1)

    def _start_watcher(self, repo: Path | None) -> None:
        if repo is None:
            return
        try:
            self._watcher = LocalRefWatcher(repo, lambda: self._request_fetch("git-ref"))
        except (ValueError, OSError) as exc:
            log.warning("cannot watch local repo", extra={"repo": str(repo), "error": str(exc)})
            return
        self._watcher.start()

    def rewatch(self, repo: Path | None) -> None:
        """The source changed (config reload): watch the new repository, if local."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._scheduler is not None:  # only when running
            self._start_watcher(repo)

    def stop(self) -> None:
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.shutdown(wait=False)
        if self._watcher is not None:
            self._watcher.stop()
