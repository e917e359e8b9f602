"""The daemon: one reconcile worker, woken by timers and events; status, metrics, signals.

This module only loops. What the ports are and how they are configured is
reconciler.daemon.wiring; what a sync brought (a refused revision, a fetch error) is
reconciler.desired.source_sync.SourceHealth; the status document and its conditions are
reconciler.daemon.status and .conditions.

Threads and who may do what:

- **reconcile worker** (one): the only thread that fetches, ticks (observe, plan, apply),
  reloads the node config and pings the systemd watchdog. Sync and tick therefore never
  run concurrently. After each iteration it publishes a snapshot (status document,
  metrics, sd_notify line: reconciler.daemon.publish). While a drain is pending (a stop
  announced, or a follower waiting for its leader's engine) it ticks every
  DRAIN_RECHECK_S on its own, so the SIGTERM follows the announce by seconds, not by a
  resync interval.
- **scheduler** (apscheduler BackgroundScheduler): a fetch job every poll interval and a
  resync job every resync interval, each with jitter. Jobs only set flags and wake the
  worker.
- **HTTP listener** (reconciler.daemon.http_api): reads the last published status; a webhook
  only requests a fetch. A slow engine start or stop in the worker never blocks a scrape.
- **wake-ups**: LocalRefWatcher (a repo on the local file system), the process port's
  exit callback, the webhook, SIGHUP. None of them carries truth; each only makes the
  next iteration come sooner (level-triggered).
- **main thread**: `run()` installs signal handlers and waits. SIGTERM / SIGINT end the
  daemon and leave engines running, to be adopted by the next start (unless the node
  config says `stopEnginesOnExit`). SIGHUP re-reads the node config file; a bad file is
  logged and the old config stays.

Watchdog: with WATCHDOG_USEC set, the worker pings WATCHDOG=1 at half the interval, from
its own loop only: between iterations while idle, and around every process-port call
during a tick. A wedged loop (a deadlock, a hung read) stops pinging and systemd restarts
the daemon. WatchdogSec must exceed the longest single port call (a stop waits up to the
stop grace period plus the SIGKILL wait).

Test-only hook: if the environment variable RECONCILER_TEST_WEDGE_FILE names a file that
exists, the worker sleeps (without pinging) until the file is removed. It exists so that
tests can wedge the loop on purpose; never set it in production.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler.control import exit as exit_policy
from reconciler.control.reconcile import Ports, Reconciler, TickResult
from reconciler.core.vocabulary import MemberKey
from reconciler.daemon import wiring
from reconciler.daemon.conditions import Conditions
from reconciler.daemon.history import History
from reconciler.daemon.http_api import HttpApi
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.publish import Publisher, take_snapshot
from reconciler.daemon.sdnotify import Notifier
from reconciler.daemon.snapshot import ErrorEntry, Snapshot
from reconciler.daemon.status import build_status
from reconciler.daemon.wakeups import WakeSources
from reconciler.daemon.wiring import DaemonPorts, Secrets
from reconciler.desired.source_sync import SourceHealth, SourceSync
from reconciler.ports.inventory import InventoryStore
from schemas.nodeconfig import NodeConfig
from schemas.status import NodeStatus

log = logging.getLogger(__name__)
# while a drain is pending, ticks come this often (else: events and the resync timer)
DRAIN_RECHECK_S = 1.0

WEDGE_ENV = "RECONCILER_TEST_WEDGE_FILE"


class Daemon:
    def __init__(
        self,
        config: NodeConfig,
        *,
        ports_override: DaemonPorts | None = None,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        listen: bool = True,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.metrics = Metrics()
        self._lock = threading.Lock()  # guards the error log and the request flags
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._fetch_due = True
        self._reload_due = False
        self._errors: deque[ErrorEntry] = deque(maxlen=20)
        self.publisher = Publisher(self.metrics, self.notifier)
        self.history = History()  # the console's plots: an hour in memory
        self._started_wall = time.time()
        self._progress = time.monotonic()  # last sign of life of the worker loop
        self._reloaded_at: float | None = None
        self._worker: threading.Thread | None = None
        self.wakeups = WakeSources(self.request_fetch, self.wake)
        self._override = ports_override is not None

        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.secrets = Secrets.load(config)
        ports = ports_override if ports_override is not None else wiring.real_ports(
            config,
            on_exit=self._on_engine_exit,
            on_health=lambda member: self.wake("engine-health"),
            peers=lambda: wiring.peer_addresses(self.sync.desired, self.config.node_name),
        )
        if getattr(ports.processes, "on_exit", "absent") is None:
            ports.processes.on_exit = self._on_engine_exit  # type: ignore[attr-defined]
        self.ports = ports
        self.processes = ports.processes
        self.sync = SourceSync(ports.source, config.state_dir, config.source.max_files)
        self.source_health = SourceHealth(self.sync)
        self.reconciler = Reconciler(
            node=wiring.node_context(config),
            ports=Ports(
                gpus=ports.gpus,
                processes=wiring.BeatingProcesses(ports.processes, self._beat),
                clock=ports.clock,
                ray=ports.ray,
                peers=ports.peers,
            ),
            inventory=InventoryStore(config.state_dir),
            desired=lambda: self.sync.desired,
            apply_config=wiring.apply_config(config),
            secret_env=lambda: wiring.secret_env(self.config),
        )
        self.api: HttpApi | None = None
        if listen:
            self.api = HttpApi(
                config.listen.address,
                config.listen.port,
                metrics=self.metrics,
                status=self.node_status,
                healthz=self.healthz,
                webhook_secret=lambda: self.secrets.webhook,
                on_webhook=lambda: self.request_fetch("webhook"),
                history=self.history.view,
                state_dir=config.state_dir,
            )

    def secret_values(self) -> tuple[str, ...]:
        """For the log redaction filter."""
        return self.secrets.values

    # --- wake-ups (any thread) ----------------------------------------------------------

    def request_fetch(self, why: str) -> None:
        with self._lock:
            self._fetch_due = True
        log.debug("wake", extra={"why": why, "fetch": True})
        self._wake.set()

    def wake(self, why: str) -> None:
        log.debug("wake", extra={"why": why})
        self._wake.set()

    def request_reload(self) -> None:
        with self._lock:
            self._reload_due = True
        self._wake.set()

    def _on_engine_exit(self, member: MemberKey) -> None:
        log.info("engine exited", extra={"member": str(member)})
        self.wake("engine-exit")

    # --- readers (HTTP threads) ---------------------------------------------------------

    def node_status(self) -> NodeStatus:
        last = self.publisher.last()
        if last is not None:
            return last
        # before the first publish only; Conditions is the worker's, so use a fresh one
        return build_status(self._snapshot(), Conditions())

    def status(self) -> dict[str, Any]:
        """The status document as served (JSON types, camelCase)."""
        return self.node_status().model_dump(mode="json")

    def healthz(self) -> tuple[bool, str]:
        if self._stopping.is_set():
            return False, "stopping"
        age = time.monotonic() - self._progress
        limit = max(120.0, 3 * self.config.resync_interval_seconds)
        if self._worker is not None and not self._worker.is_alive():
            return False, "reconcile worker is not running"
        if age > limit:
            return False, f"reconcile loop made no progress for {age:.0f}s"
        return True, "ok"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self.api is not None:
            self.api.start()
        self.wakeups.start(self.config, self.ports.watch_repo)
        self._worker = threading.Thread(target=self._work, name="reconcile", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Ask the daemon to end (any thread, signal handlers included)."""
        self._stopping.set()
        self._wake.set()

    def run(self) -> int:
        """Start, block until stopped (SIGTERM/SIGINT), shut down. Returns the exit code."""
        main = threading.current_thread() is threading.main_thread()
        previous: dict[signal.Signals, Any] = {}
        if main:
            for sig, handler in (
                (signal.SIGTERM, self._on_stop_signal),
                (signal.SIGINT, self._on_stop_signal),
                (signal.SIGHUP, self._on_hup),
            ):
                previous[sig] = signal.signal(sig, handler)
        try:
            self.start()
            while not self._stopping.wait(1.0):
                if self._worker is not None and not self._worker.is_alive():
                    log.error("reconcile worker died")
                    self._stopping.set()
                    return 1
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal", extra={"signal": signal.Signals(signum).name, "action": "stop"})
        self.stop()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        log.info("signal", extra={"signal": "SIGHUP", "action": "reload"})
        self.request_reload()

    def shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        self.notifier.stopping()
        self.wakeups.stop()
        stop_engines = self.config.stop_engines_on_exit
        if self._worker is not None:
            # a tick in progress finishes its current port call; with engines left
            # running there is no need to wait long for it
            grace = self.config.engine.stop_grace_period_seconds + 15 if stop_engines else 10
            self._worker.join(timeout=grace)
            if self._worker.is_alive():
                log.warning("reconcile worker still busy at exit")
        if stop_engines:
            exit_policy.stop_all(self.processes, self.reconciler.inventory,
                                 self.config.engine.stop_grace_period_seconds)
        else:
            exit_policy.leave_running(self.processes)
        if self.api is not None:
            self.api.stop()
        close = getattr(self.processes, "close", None)
        if callable(close):
            close()
        self.notifier.close()
        log.info("stopped")

    # --- the worker ---------------------------------------------------------------------

    def _beat(self) -> None:
        """Loop progress; pings the watchdog when half its interval has passed."""
        self._progress = time.monotonic()
        if self.notifier.watchdog_due():
            self.notifier.watchdog()

    def _wait_timeout(self) -> float | None:
        wd = self.notifier.watchdog_s if self.notifier.enabled else None
        timeout = wd / 2 if wd else None
        if self.reconciler.draining:
            # a drain is being announced, or a member waits for its leader's engine to
            # drain (core/drain.py): look again each second, not at the next resync
            timeout = min(timeout or DRAIN_RECHECK_S, DRAIN_RECHECK_S)
        return timeout

    def _test_wedge(self) -> None:
        path = os.environ.get(WEDGE_ENV)
        if not path:
            return
        while os.path.exists(path) and not self._stopping.is_set():
            time.sleep(0.05)  # wedged on purpose: no beat, no ping

    def _work(self) -> None:
        self._wake.set()  # the first iteration runs at once and fetches
        while True:
            woke = self._wake.wait(self._wait_timeout())
            if self._stopping.is_set():
                return
            self._test_wedge()
            if not woke:
                self._beat()  # idle: the loop is alive
                if not self.reconciler.draining:
                    continue
            self._wake.clear()
            try:
                self.iterate()
            except Exception as exc:  # the loop must survive anything
                log.exception("reconcile iteration failed")
                self._error("tick", f"{type(exc).__name__}: {exc}")
            self._beat()

    def iterate(self) -> TickResult | None:
        """One pass: maybe reload, maybe fetch, tick, publish. Worker thread (or --once)."""
        with self._lock:
            reload_due, self._reload_due = self._reload_due, False
            fetch_due, self._fetch_due = self._fetch_due, False
        if reload_due:
            self.reload()
            fetch_due = True
        if fetch_due:
            self._sync()
        self._beat()
        started = time.monotonic()
        result: TickResult | None = None
        try:
            result = self.reconciler.tick()
        except Exception as exc:
            log.exception("tick failed")
            self._error("tick", f"{type(exc).__name__}: {exc}")
            self.metrics.tick(False, time.monotonic() - started)
        else:
            for err in result.errors:
                self._error("apply", err)
            self.metrics.tick(not result.errors, result.duration_s)
            quiet = not result.plan.actions and not result.errors
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "reconciled",
                extra={
                    "reconcile_id": result.reconcile_id,
                    "revision": result.revision,
                    "actions": len(result.plan.actions),
                    "errors": len(result.errors),
                    "duration_s": round(result.duration_s, 4),
                    "converged": result.converged,
                },
            )
        self._publish()
        return result

    def _sync(self) -> None:
        outcome = self.source_health.sync(self.ports.clock.now(), time.time())
        health = self.source_health
        if outcome.fetched and health.last_fetch_success is not None:
            self.metrics.fetch_succeeded(health.last_fetch_success)
        if outcome.new_refusal is not None:
            self.metrics.revision_refused(outcome.new_refusal.reason)
        if outcome.fetch_failure is not None:
            self.metrics.fetch_failed(outcome.fetch_failure.reason)
        if outcome.error is not None:
            self._error("source", outcome.error)

    def _error(self, source: str, message: str) -> None:
        with self._lock:
            self._errors.append(ErrorEntry(time.time(), source, message))

    def _snapshot(self) -> Snapshot:
        with self._lock:
            errors = tuple(self._errors)
        return take_snapshot(self.config, self.source_health, self.reconciler, errors=errors,
                             started_at=self._started_wall, reloaded_at=self._reloaded_at)

    def _publish(self) -> None:
        status = self.publisher.publish(
            self._snapshot(),
            restarts_total=self.reconciler.restarts_total,
            illegal_transitions=self.reconciler.refused_transitions,
        )
        self.history.record(status)

    # --- reload -------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the node config file (worker thread). A bad file keeps the old config."""
        if self.config_path is None:
            log.warning("reload asked but no config file is known")
            return False
        self.notifier.reloading()
        old = self.config
        try:
            new, secrets = wiring.reread_config(self.config_path, old)
        except Exception as exc:
            log.error("config reload failed; keeping the old config",
                      extra={"file": str(self.config_path), "error": str(exc)})
            self._error("config", f"reload failed: {exc}")
            self.notifier.ready()
            return False
        self.config = new
        self.secrets = secrets
        self.reconciler.node = wiring.node_context(new)
        self.reconciler.apply_config = wiring.apply_config(new)
        if not self._override and wiring.rewire(self.ports, old, new):
            self.sync.source = self.ports.source
            self.wakeups.rewatch(self.ports.watch_repo)
        self.reconciler.ports.gpus = self.ports.gpus
        self.reconciler.ports.ray = self.ports.ray
        self.wakeups.reschedule(old, new)
        self._reloaded_at = time.time()
        log.info("config reloaded", extra={"file": str(self.config_path)})
        self.notifier.ready()
        return True

    # --- one-shot -----------------------------------------------------------------------

    def run_once(self) -> NodeStatus:
        """One fetch and one tick in the calling thread; returns the status document."""
        with self._lock:
            self._fetch_due = True
        self.iterate()
        close = getattr(self.processes, "close", None)
        if callable(close):
            close()
        return self.node_status()
