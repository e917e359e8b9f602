"""A stateful in-memory fake of the process port (same behaviour as LocalProcessPort).

Processes live in a :class:`FakeHost`; a new :class:`FakeProcessPort` over the same host
is a restarted daemon: it adopts the members the host still has (their exit codes are
then unknown, as for real adopted processes) and stops them like its own.

Test helpers: :meth:`FakeProcessPort.set_health`, :meth:`~FakeProcessPort.crash`,
:meth:`~FakeProcessPort.hang`, :meth:`~FakeProcessPort.take_port`,
:meth:`~FakeProcessPort.fail_stops`, :meth:`~FakeProcessPort.ignore_sigterm`, and the
counters ``starts`` / ``stops`` (per member) with ``start_count()`` / ``stop_count()``, and
``stop_log`` (when each stop was asked for, with what grace).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core.errors import EngineStartError, EngineStartFailed, EngineStartRefused
from reconciler.core.vocabulary import Health, LaunchSpec, MemberKey, ProcessObservation
from reconciler.ports.clock import Clock, SystemClock

__all__ = ["FakeHost", "FakeProcess", "FakeProcessPort"]


@dataclass
class FakeProcess:
    launch: LaunchSpec
    pid: int
    started_at: float
    owner: int  # id of the FakeProcessPort that started it (its "parent")
    running: bool = True
    health: Health = "starting"
    was_ready: bool = False
    unhealthy_since: float | None = None
    exit_code: int | None = None
    detail: str = ""
    ignores_sigterm: bool = False
    children: tuple[int, ...] = ()


@dataclass
class FakeHost:
    """The machine: processes by member, ports taken by strangers, pid allocation."""

    processes: dict[MemberKey, FakeProcess] = field(default_factory=dict)
    strangers: dict[int, str] = field(default_factory=dict)  # port -> "pid 123 (nginx)"
    pids: itertools.count[int] = field(default_factory=lambda: itertools.count(10_000))
    lock: threading.RLock = field(default_factory=threading.RLock)


class FakeProcessPort:
    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        host: FakeHost | None = None,
        clock: Clock | None = None,
        on_exit: Callable[[MemberKey], None] | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else Path("/nonexistent")
        self.host = host if host is not None else FakeHost()
        self.clock: Clock = clock or SystemClock()
        self.on_exit = on_exit
        self.base_env = dict(base_env or {})
        self.starts: Counter[MemberKey] = Counter()
        self.stops: Counter[MemberKey] = Counter()
        self.forgotten: list[MemberKey] = []
        self.envs: dict[MemberKey, dict[str, str]] = {}  # the env each start would get
        self.sigkills: Counter[MemberKey] = Counter()
        # (clock time, member, grace) of every stop asked for, in order
        self.stop_log: list[tuple[float, MemberKey, float]] = []
        self._failing_stops: Counter[MemberKey] = Counter()
        self._start_errors: dict[MemberKey, EngineStartError] = {}

    # --- the Protocol ----------------------------------------------------------------------

    def list(self) -> list[ProcessObservation]:
        with self.host.lock:
            return [self._observe(p) for _, p in sorted(self.host.processes.items())]

    def start(self, launch: LaunchSpec) -> ProcessObservation:
        member = launch.member
        with self.host.lock:
            error = self._start_errors.pop(member, None)
            if error is not None:
                raise error
            old = self.host.processes.get(member)
            if old is not None and old.running:
                raise EngineStartRefused(f"{member} is already running as pid {old.pid}")
            if launch.port in self.host.strangers:
                raise EngineStartFailed(
                    f"{member}: port {launch.port} is taken by {self.host.strangers[launch.port]}"
                )
            for other in self.host.processes.values():
                if other.running and other.launch.port == launch.port:
                    raise EngineStartFailed(
                        f"{member}: port {launch.port} is taken by pid {other.pid} "
                        f"({other.launch.member})"
                    )
            proc = FakeProcess(
                launch=launch,
                pid=next(self.host.pids),
                started_at=self.clock.now(),
                owner=id(self),
            )
            self.host.processes[member] = proc
            self.starts[member] += 1
            self.envs[member] = {**self.base_env, **launch.env}
            return self._observe(proc)

    def stop(self, member: MemberKey, grace_s: float) -> bool:
        with self.host.lock:
            self.stops[member] += 1
            self.stop_log.append((self.clock.now(), member, grace_s))
            if self._failing_stops[member] > 0:
                self._failing_stops[member] -= 1
                return False
            proc = self.host.processes.get(member)
            if proc is None:
                return True
            if proc.running and proc.ignores_sigterm:
                self.sigkills[member] += 1
            del self.host.processes[member]
            return True

    def forget(self, member: MemberKey) -> None:
        with self.host.lock:
            proc = self.host.processes.get(member)
            if proc is None:
                return
            if proc.running:
                return  # never drop ownership of a live process (as the real port)
            del self.host.processes[member]
            self.forgotten.append(member)

    def log_path(self, member: MemberKey) -> Path:
        return self.state_dir / "logs" / f"{member.slug}.log"

    def owned_pids(self) -> frozenset[int]:
        with self.host.lock:
            return frozenset(
                pid
                for p in self.host.processes.values()
                if p.running
                for pid in (p.pid, *p.children)
            )

    # --- test helpers ---------------------------------------------------------------------

    def process(self, member: MemberKey) -> FakeProcess | None:
        with self.host.lock:
            return self.host.processes.get(member)

    def set_health(self, member: MemberKey, health: Health, detail: str = "") -> None:
        """As a probe would see it: "unhealthy" before the first "ready" stays "starting"."""
        with self.host.lock:
            proc = self._running(member)
            if health == "ready":
                proc.was_ready = True
                proc.unhealthy_since = None
            elif health == "unhealthy":
                if not proc.was_ready:
                    health = "starting"
                elif proc.health != "unhealthy":
                    proc.unhealthy_since = self.clock.now()
            else:
                proc.unhealthy_since = None
            proc.health = health
            proc.detail = detail

    def hang(self, member: MemberKey) -> None:
        """The engine stops answering probes (they time out)."""
        self.set_health(member, "unhealthy", "no answer within the probe timeout")

    def crash(self, member: MemberKey, exit_code: int | None = 1, detail: str = "") -> None:
        """The process exits. Its exit code is known only to the port that started it."""
        with self.host.lock:
            proc = self._running(member)
            proc.running = False
            proc.exit_code = exit_code
            proc.detail = detail
            proc.children = ()
        if self.on_exit is not None:
            self.on_exit(member)

    def take_port(self, port: int, who: str = "pid 4242 (nginx)") -> None:
        with self.host.lock:
            self.host.strangers[port] = who

    def free_port(self, port: int) -> None:
        with self.host.lock:
            self.host.strangers.pop(port, None)

    def fail_stops(self, member: MemberKey, times: int = 1) -> None:
        """The next `times` stops of `member` are not confirmed (return False)."""
        self._failing_stops[member] += times

    def fail_next_start(self, member: MemberKey, error: EngineStartError) -> None:
        self._start_errors[member] = error

    def ignore_sigterm(self, member: MemberKey) -> None:
        """Stop still succeeds, through SIGKILL (counted in `sigkills`)."""
        with self.host.lock:
            self._running(member).ignores_sigterm = True

    def add_children(self, member: MemberKey, count: int = 1) -> tuple[int, ...]:
        with self.host.lock:
            proc = self._running(member)
            new = tuple(next(self.host.pids) for _ in range(count))
            proc.children += new
            return new

    def start_count(self, member: MemberKey | None = None) -> int:
        return sum(self.starts.values()) if member is None else self.starts[member]

    def stop_count(self, member: MemberKey | None = None) -> int:
        return sum(self.stops.values()) if member is None else self.stops[member]

    # --- internals ------------------------------------------------------------------------

    def _running(self, member: MemberKey) -> FakeProcess:
        proc = self.host.processes.get(member)
        if proc is None or not proc.running:
            raise KeyError(f"{member} is not running")
        return proc

    def _observe(self, p: FakeProcess) -> ProcessObservation:
        ours = p.owner == id(self)
        return ProcessObservation(
            member=p.launch.member,
            spec_hash=p.launch.spec_hash,
            pid=p.pid,
            running=p.running,
            started_at=p.started_at,
            port=p.launch.port,
            gpus=tuple(p.launch.gpus),
            health=p.health if p.running else "unhealthy",
            exit_code=p.exit_code if (not p.running and ours) else None,
            unhealthy_since=p.unhealthy_since if p.health == "unhealthy" else None,
            detail=p.detail,
            drain_s=p.launch.drain_s,
            leader=p.launch.leader,
        )
