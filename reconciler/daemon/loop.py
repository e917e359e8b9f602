"""The daemon: one reconcile worker, woken by timers and events; status, metrics, signals.

Threads and who may do what:

- **reconcile worker** (one): the only thread that fetches, ticks (observe, plan, apply),
  reloads the node config and pings the systemd watchdog. Sync and tick therefore never
  run concurrently. After each iteration it takes a snapshot (status document + metrics)
  under `_lock`.
- **scheduler** (apscheduler BackgroundScheduler): a fetch job every poll interval and a
  resync job every resync interval, each with jitter. Jobs only set flags and wake the
  worker.
- **HTTP listener** (reconciler.daemon.http_api): reads the last snapshot under `_lock`; a webhook
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

import contextlib
import datetime as _dt
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from reconciler.control.apply import ApplyConfig
from reconciler.control.reconcile import Ports, Reconciler, TickResult
from reconciler.core.backoff import BackoffPolicy
from reconciler.core.launch import NodeContext
from reconciler.core.vocabulary import LaunchSpec, MemberKey, ProcessObservation
from reconciler.daemon.http_api import HttpApi
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.sdnotify import Notifier
from reconciler.daemon.status import (
    Conditions,
    ErrorEntry,
    Snapshot,
    build_status,
    compute_conditions,
    gpu_account,
    is_stalled,
    local_replicas,
    one_line,
)
from reconciler.desired.node_config import load_node_config, read_secret
from reconciler.desired.source_sync import SourceFailure, SourceSync
from reconciler.ports.clock import Clock, SystemClock
from reconciler.ports.git_source import (
    GitPythonSource,
    GitSource,
    GitSourceConfig,
    LocalRefWatcher,
    is_local_url,
)
from reconciler.ports.gpus import GpuPort, gpu_port_from_config
from reconciler.ports.inventory import InventoryStore
from reconciler.ports.peers import HttpPeers, PeerAddress, PeerPort
from reconciler.ports.processes import LocalProcessPort, ProcessPort
from reconciler.ports.ray_nodes import RayPort, SubprocessRayPort
from schemas.nodeconfig import NodeConfig

log = logging.getLogger(__name__)

WEDGE_ENV = "RECONCILER_TEST_WEDGE_FILE"
RESTART_ONLY_FIELDS = ("node_name", "state_dir", "listen")


@dataclass
class DaemonPorts:
    """What the daemon talks to. Tests pass fakes; `Daemon` builds the real ones."""

    source: GitSource
    gpus: GpuPort
    processes: ProcessPort
    clock: Clock = field(default_factory=SystemClock)
    peers: PeerPort | None = None
    ray: RayPort | None = None
    watch_repo: Path | None = None  # a local repository whose refs wake the fetch


class _BeatingProcesses:
    """The process port, with a watchdog beat before and after every call.

    Calls come from the worker thread only, so a beat here is loop progress."""

    def __init__(self, inner: ProcessPort, beat: Callable[[], None]) -> None:
        self.inner = inner
        self._beat = beat

    def list(self) -> list[ProcessObservation]:
        self._beat()
        try:
            return self.inner.list()
        finally:
            self._beat()

    def start(self, launch: LaunchSpec) -> ProcessObservation:
        self._beat()
        try:
            return self.inner.start(launch)
        finally:
            self._beat()

    def stop(self, member: MemberKey, grace_s: float) -> bool:
        self._beat()
        try:
            return self.inner.stop(member, grace_s)
        finally:
            self._beat()

    def forget(self, member: MemberKey) -> None:
        self.inner.forget(member)
        self._beat()

    def log_path(self, member: MemberKey) -> Path:
        return self.inner.log_path(member)

    def owned_pids(self) -> frozenset[int]:
        return self.inner.owned_pids()


def node_context(config: NodeConfig) -> NodeContext:
    engine = config.engine
    b = config.backoff
    return NodeContext(
        name=config.node_name,
        python=str(engine.python),
        ray=str(engine.ray_executable()),
        api_server_module=engine.api_server_module,
        cli_argv=tuple(engine.cli_argv),
        env=dict(engine.env),
        state_dir=str(config.state_dir),
        allowed_model_roots=tuple(str(r) for r in engine.allowed_model_roots),
        unhealthy_grace_s=engine.unhealthy_grace_period_seconds,
        backoff=BackoffPolicy(
            initial_s=b.initial_seconds,
            max_s=b.max_seconds,
            reset_after_s=b.reset_after_seconds,
            jitter=b.jitter,
        ),
    )


def apply_config(config: NodeConfig) -> ApplyConfig:
    return ApplyConfig(
        stop_grace_s=config.engine.stop_grace_period_seconds,
        reset_after_s=config.backoff.reset_after_seconds,
    )


def git_source_config(config: NodeConfig) -> GitSourceConfig:
    s = config.source
    return GitSourceConfig(
        url=s.url,
        branch=s.branch,
        checkout_dir=config.state_dir / "source",
        path=s.path,
        timeout_s=s.timeout_seconds,
        token_file=s.token_file,
        ssh_key_file=s.ssh_key_file,
        signature_policy=s.signature.policy,
        allowed_signers_file=s.signature.allowed_signers_file,
        gpg_home=s.signature.gpg_home,
        allow_non_fast_forward=s.allow_non_fast_forward,
    )


def local_repo_path(url: str) -> Path | None:
    if not is_local_url(url):
        return None
    return Path(url.removeprefix("file://")).expanduser()


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
        self._lock = threading.Lock()  # guards the snapshot and the request flags
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._fetch_due = True
        self._reload_due = False
        self._errors: deque[ErrorEntry] = deque(maxlen=20)
        self._status: dict[str, Any] | None = None
        self._conditions = Conditions()
        self._started_wall = time.time()
        self._progress = time.monotonic()  # last sign of life of the worker loop
        self._ready_sent = False
        self._last_status_line = ""
        self._reloaded_at: float | None = None
        self._refusal: SourceFailure | None = None
        self._fetch_error: SourceFailure | None = None
        self._last_fetch_success: float | None = None
        self._secret_values: tuple[str, ...] = ()
        self._webhook_secret: bytes | None = None
        self._worker: threading.Thread | None = None
        self._watcher: LocalRefWatcher | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._override = ports_override is not None

        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._load_secrets(config)
        ports = ports_override if ports_override is not None else self._real_ports(config)
        if getattr(ports.processes, "on_exit", "absent") is None:
            ports.processes.on_exit = self._on_engine_exit  # type: ignore[attr-defined]
        self.ports = ports
        self.processes = ports.processes
        self.sync = SourceSync(ports.source, config.state_dir)
        self.reconciler = Reconciler(
            node=node_context(config),
            ports=Ports(
                gpus=ports.gpus,
                processes=_BeatingProcesses(ports.processes, self._beat),
                clock=ports.clock,
                ray=ports.ray,
                peers=ports.peers,
            ),
            inventory=InventoryStore(config.state_dir),
            desired=lambda: self.sync.desired,
            apply_config=apply_config(config),
            secret_env=self._secret_env,
        )
        self.api: HttpApi | None = None
        if listen:
            self.api = HttpApi(
                config.listen.address,
                config.listen.port,
                metrics=self.metrics,
                status=self.status,
                healthz=self.healthz,
                webhook_secret=lambda: self._webhook_secret,
                on_webhook=lambda: self.request_fetch("webhook"),
            )

    # --- construction ------------------------------------------------------------------

    def _real_ports(self, config: NodeConfig) -> DaemonPorts:
        clock = SystemClock()
        processes = LocalProcessPort(
            config.state_dir,
            config.engine.log_max_bytes,
            config.engine.log_backups,
            on_exit=self._on_engine_exit,
            clock=clock,
            on_health=lambda member: self.wake("engine-health"),
        )
        return DaemonPorts(
            source=GitPythonSource(git_source_config(config)),
            gpus=gpu_port_from_config(config.simulate_gpus, config.node_name),
            processes=processes,
            clock=clock,
            peers=HttpPeers(self._peer_addresses),
            # the engine env's python reads the head's GCS (the daemon never imports ray);
            # answers are reused for 1 s so a fast tick loop doesn't spawn one per tick
            ray=SubprocessRayPort(str(config.engine.python), cache_s=1.0),
            watch_repo=local_repo_path(config.source.url),
        )

    def _peer_addresses(self) -> list[PeerAddress]:
        desired = self.sync.desired
        if desired is None:
            return []
        return [
            PeerAddress(n.name, n.address, n.status_port)
            for n in desired.cluster.spec.nodes
            if n.name != self.config.node_name
        ]

    def _load_secrets(self, config: NodeConfig) -> None:
        """Read the secrets the config names; they are also what logs must never show."""
        values: list[str] = []
        webhook = read_secret(config.webhook.secret_file)
        if webhook is not None:
            values.append(webhook)
        token = read_secret(config.source.token_file)
        if token is not None:
            values.append(token)
        for name, path in config.engine.secret_env_files.items():
            try:
                value = read_secret(path)
            except OSError as exc:
                log.error("secret env file unreadable", extra={"env": name, "file": str(path),
                                                               "error": exc.strerror})
                continue
            if value is not None:
                values.append(value)
        self._webhook_secret = webhook.encode() if webhook is not None else None
        self._secret_values = tuple(values)

    def secret_values(self) -> tuple[str, ...]:
        """For the log redaction filter."""
        return self._secret_values

    def _secret_env(self) -> Mapping[str, str]:
        env: dict[str, str] = {}
        for name, path in self.config.engine.secret_env_files.items():
            try:
                value = read_secret(path)
            except OSError as exc:
                log.error("secret env file unreadable", extra={"env": name, "file": str(path),
                                                               "error": exc.strerror})
                continue
            if value is not None:
                env[name] = value
        return env

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

    def status(self) -> dict[str, Any]:
        with self._lock:
            if self._status is not None:
                return self._status
        return self._build_status_now()

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
        self._start_scheduler()
        self._start_watcher()
        self._worker = threading.Thread(target=self._work, name="reconcile", daemon=True)
        self._worker.start()

    def _start_scheduler(self) -> None:
        cfg = self.config
        sched = BackgroundScheduler(
            timezone=_dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        poll = cfg.source.poll_interval_seconds
        resync = cfg.resync_interval_seconds
        sched.add_job(lambda: self.request_fetch("poll"), "interval", seconds=poll,
                      jitter=poll * 0.1, id="fetch")
        sched.add_job(lambda: self.wake("resync"), "interval", seconds=resync,
                      jitter=resync * 0.1, id="resync")
        sched.start()
        self._scheduler = sched

    def _reschedule(self, old: NodeConfig, new: NodeConfig) -> None:
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

    def _start_watcher(self) -> None:
        repo = self.ports.watch_repo
        if repo is None:
            return
        try:
            self._watcher = LocalRefWatcher(repo, lambda: self.request_fetch("git-ref"))
        except (ValueError, OSError) as exc:
            log.warning("cannot watch local repo", extra={"repo": str(repo), "error": str(exc)})
            return
        self._watcher.start()

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
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.shutdown(wait=False)
        if self._watcher is not None:
            self._watcher.stop()
        stop_engines = self.config.stop_engines_on_exit
        if self._worker is not None:
            # a tick in progress finishes its current port call; with engines left
            # running there is no need to wait long for it
            grace = self.config.engine.stop_grace_period_seconds + 15 if stop_engines else 10
            self._worker.join(timeout=grace)
            if self._worker.is_alive():
                log.warning("reconcile worker still busy at exit")
        if stop_engines:
            self._stop_all_engines()
        else:
            running = [p.member for p in self._safe_list() if p.running]
            if running:
                log.info("leaving engines running", extra={"members": [str(m) for m in running]})
        if self.api is not None:
            self.api.stop()
        close = getattr(self.processes, "close", None)
        if callable(close):
            close()
        self.notifier.close()
        log.info("stopped")

    def _safe_list(self) -> list[ProcessObservation]:
        try:
            return self.processes.list()
        except Exception:
            log.exception("listing processes failed")
            return []

    def _stop_all_engines(self) -> None:
        grace = self.config.engine.stop_grace_period_seconds
        # engines before Ray nodes: a driver must not outlive its cluster by accident
        members = sorted(
            (p.member for p in self._safe_list() if p.running),
            key=lambda m: (m.role != "engine", m),
        )
        for member in members:
            ok = self.processes.stop(member, grace)
            if ok:
                self.reconciler.inventory.remove_member(member)
            log.info("stopped at exit", extra={"member": str(member), "confirmed": ok})

    # --- the worker ---------------------------------------------------------------------

    def _beat(self) -> None:
        """Loop progress; pings the watchdog when half its interval has passed."""
        self._progress = time.monotonic()
        if self.notifier.watchdog_due():
            self.notifier.watchdog()

    def _wait_timeout(self) -> float | None:
        wd = self.notifier.watchdog_s if self.notifier.enabled else None
        return wd / 2 if wd else None

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
        sync = self.sync
        before_fetch = sync.fetched_at
        before_failure = sync.failure
        now = self.ports.clock.now()
        try:
            sync.sync(now)
        except Exception as exc:
            log.exception("sync failed")
            self._fetch_error = SourceFailure("SyncError", str(exc), None, True)
            self.metrics.fetch_failed("SyncError")
            self._error("source", str(exc))
            return
        failure = sync.failure
        if sync.fetched_at != before_fetch:
            self._fetch_error = None
            self._last_fetch_success = time.time()
            self.metrics.fetch_succeeded(self._last_fetch_success)
            if failure is not None and failure is not before_failure:
                prev = self._refusal
                # once per refused revision: a fetch failure in between makes SourceSync
                # judge the same commit again
                if prev is None or (prev.revision, prev.reason) != (
                    failure.revision, failure.reason
                ):
                    self.metrics.revision_refused(failure.reason)
                    self._error("source", f"{failure.reason}: {failure.message}")
                self._refusal = failure
        elif failure is not None:
            self._fetch_error = failure
            self.metrics.fetch_failed(failure.reason)
            self._error("source", f"{failure.reason}: {failure.message}")
        if (
            sync.good is not None
            and sync.attempted is not None
            and sync.good.revision == sync.attempted.revision
        ):
            self._refusal = None

    def _error(self, source: str, message: str) -> None:
        with self._lock:
            self._errors.append(ErrorEntry(time.time(), source, message))

    def _snapshot(self) -> Snapshot:
        cfg = self.config
        sync = self.sync
        with self._lock:
            errors = tuple(self._errors)
        return Snapshot(
            node=cfg.node_name,
            now=time.time(),
            started_at=self._started_wall,
            source_url=cfg.source.url,
            branch=cfg.source.branch,
            path=cfg.source.path,
            fetched=sync.fetched,
            attempted=sync.attempted,
            good=sync.good,
            applied=self.reconciler.inventory.current.applied_revision,
            failure=self._refusal if self._refusal is not None else self._fetch_error,
            last_fetch_success=self._last_fetch_success,
            desired=sync.desired,
            tick=self.reconciler.last,
            errors=errors,
            reloaded_at=self._reloaded_at,
            restarts={
                key: rec.total_restarts
                for key, rec in self.reconciler.inventory.current.restarts.items()
            },
        )

    def _build_status_now(self) -> dict[str, Any]:
        # Before the first publish only; Conditions is the worker's, so use a fresh one.
        return build_status(self._snapshot(), Conditions())

    def _publish(self) -> None:
        snap = self._snapshot()
        status = build_status(snap, self._conditions)
        conds = compute_conditions(snap)
        ready = any(c.type == "Ready" and c.status == "True" for c in conds)
        m = self.metrics
        m.revisions(snap.attempted.revision if snap.attempted else None, snap.applied)
        deployments = list(snap.desired.deployments) if snap.desired is not None else []
        m.replica_states(
            deployments, [(s.replica.deployment, s.state) for s in local_replicas(snap)]
        )
        m.restarts(self.reconciler.restarts_total)
        m.illegal(self.reconciler.illegal_transitions)
        account = gpu_account(snap.desired, snap.tick.observed if snap.tick else None, snap.node)
        m.gpu_counts(account.counts, account.simulated)
        m.conditions(stalled=is_stalled(snap.failure), ready=ready)
        with self._lock:
            self._status = status
        line = one_line(status)
        if not self._ready_sent:
            self.notifier.ready(line)
            self._ready_sent = True
            self._last_status_line = line
            log.info("ready", extra={"status": line})
        elif line != self._last_status_line:
            self.notifier.status(line)
            self._last_status_line = line

    # --- reload -------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the node config file (worker thread). A bad file keeps the old config."""
        if self.config_path is None:
            log.warning("reload asked but no config file is known")
            return False
        self.notifier.reloading()
        try:
            new = load_node_config(self.config_path)
            self._load_secrets(new)
        except Exception as exc:
            log.error("config reload failed; keeping the old config",
                      extra={"file": str(self.config_path), "error": str(exc)})
            self._error("config", f"reload failed: {exc}")
            self._load_secrets(self.config)
            self.notifier.ready()
            return False
        old = self.config
        kept = {
            f: getattr(old, f) for f in RESTART_ONLY_FIELDS if getattr(new, f) != getattr(old, f)
        }
        if kept:
            log.warning("config fields changed that need a restart; kept for now",
                        extra={"fields": sorted(kept)})
            new = new.model_copy(update=kept)
        self.config = new
        self.reconciler.node = node_context(new)
        self.reconciler.apply_config = apply_config(new)
        if isinstance(self.processes, LocalProcessPort):
            self.processes.log_max_bytes = new.engine.log_max_bytes
            self.processes.log_backups = new.engine.log_backups
        if not self._override:
            if new.source != old.source:
                self.sync.source = GitPythonSource(git_source_config(new))
                self.ports.source = self.sync.source
                self._restart_watcher(local_repo_path(new.source.url))
            if new.simulate_gpus != old.simulate_gpus:
                gpus = gpu_port_from_config(new.simulate_gpus, new.node_name)
                self.ports.gpus = gpus
                self.reconciler.ports.gpus = gpus
            if new.engine.python != old.engine.python:
                ray = SubprocessRayPort(str(new.engine.python), cache_s=1.0)
                self.ports.ray = ray
                self.reconciler.ports.ray = ray
        self._reschedule(old, new)
        self._reloaded_at = time.time()
        log.info("config reloaded", extra={"file": str(self.config_path)})
        self.notifier.ready()
        return True

    def _restart_watcher(self, repo: Path | None) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.ports.watch_repo = repo
        if self._scheduler is not None:  # only when running
            self._start_watcher()

    # --- one-shot -----------------------------------------------------------------------

    def run_once(self) -> dict[str, Any]:
        """One fetch and one tick in the calling thread; returns the status document."""
        with self._lock:
            self._fetch_due = True
        self.iterate()
        close = getattr(self.processes, "close", None)
        if callable(close):
            close()
        return self.status()
