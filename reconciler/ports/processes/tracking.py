"""What a process port knows about one member beyond its state file, and the rules that
turn /proc and probe results into the member's observed state.

No threads and no locks here: the port calls these under its own lock.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core.crash_reasons import classify
from reconciler.core.vocabulary import Health, ProcessObservation
from reconciler.ports.processes.log_rotation import last_log_line, log_tail_lines
from reconciler.ports.processes.members import leader_alive
from reconciler.ports.processes.probe import probe_engine
from reconciler.ports.processes.proc import age_seconds, read_environ
from reconciler.ports.processes.sockets import is_listening, probe_host
from reconciler.ports.processes.state_files import EngineRecord

# Once ready, an engine gets /health each interval and the model list only this often:
# every request is a line in the engine's access log.
FULL_PROBE_EVERY_S = 30.0


@dataclass
class Tracked:
    """What this daemon knows about one member beyond its state file."""

    record: EngineRecord
    popen: subprocess.Popen[bytes] | None = None  # set when this port instance started it
    health: Health = "starting"
    detail: str = ""
    unhealthy_since: float | None = None
    exited: bool = False
    exit_code: int | None = None
    exit_notified: bool = False
    stopping: bool = False
    last_full_probe: float = -1e9  # time.monotonic() of the last /health + /v1/models
    halt: threading.Event = field(default_factory=threading.Event)
    prober: threading.Thread | None = None

    @property
    def was_ready(self) -> bool:
        return self.record.ready_at is not None


def check_exit(tracked: Tracked, log_path: Path) -> None:
    """Record the exit of the leader (child: via poll; adopted: via /proc)."""
    if tracked.exited:
        return
    if tracked.popen is not None:
        code = tracked.popen.poll()
        if code is None and leader_alive(tracked.record):
            return
        if code is None:
            code = tracked.popen.wait()  # a zombie: reap it now
        tracked.exit_code = code
    elif leader_alive(tracked.record):
        return
    tracked.exited = True
    tracked.health = "unhealthy"
    # The cause, not the last line: vLLM's API server exits 0 after its engine died and
    # ends on a resource_tracker warning (core/crash_reasons.py reads the whole tail)
    reason = classify(log_tail_lines(log_path), tracked.exit_code)
    tracked.detail = reason.describe()
    if not reason.line:
        line = last_log_line(log_path)
        if line:
            tracked.detail += f"; last log line: {line}"


def engine_api_key(pid: int) -> str | None:
    """The key an engine demands (VLLM_API_KEY, set from engine.secretEnvFiles: the one
    gateways hold), read from its own environment so that no state file holds it."""
    env = read_environ(pid) if pid > 0 else None
    return (env or {}).get("VLLM_API_KEY") or None


def probe(tracked: Tracked) -> tuple[bool, str]:
    """(ready, detail) of one probe of the member, by its role (network I/O, no lock)."""
    rec = tracked.record
    if rec.port == 0:
        # serves nothing (a headless mp follower rank): ready while it runs
        return True, ""
    if rec.member.role in ("engine", "surge"):
        full = (
            tracked.health != "ready"
            or time.monotonic() - tracked.last_full_probe >= FULL_PROBE_EVERY_S
        )
        ok, detail = probe_engine(
            probe_host(rec.host), rec.port, rec.served_name, rec.probe_timeout_s, models=full,
            api_key=engine_api_key(rec.pid) if full else None,
        )
        if ok and full:
            tracked.last_full_probe = time.monotonic()
        return ok, detail
    ok = is_listening(rec.port)
    return ok, "" if ok else f"port {rec.port} is not listening yet"


def apply_probe(tracked: Tracked, ok: bool, detail: str, now: float) -> bool:
    """Record one probe result; True when the member was seen ready for the first time
    (the caller writes ready_at into its state file)."""
    if ok:
        tracked.health, tracked.detail, tracked.unhealthy_since = "ready", "", None
        return tracked.record.ready_at is None
    if tracked.was_ready:
        if tracked.health != "unhealthy":
            tracked.unhealthy_since = now
        tracked.health, tracked.detail = "unhealthy", detail
    else:
        tracked.health, tracked.detail = "starting", detail
    return False


def observe(t: Tracked, now: float) -> ProcessObservation:
    rec = t.record
    started_at = rec.started_at
    if not t.exited:
        # Age from the kernel's monotonic start ticks, placed on the daemon's clock:
        # a wall-clock jump then moves "now" and "started_at" together, so it can
        # neither fire a startup timeout early nor postpone it.
        age = age_seconds(rec.start_ticks)
        if age is not None:
            started_at = now - age
    return ProcessObservation(
        member=rec.member,
        spec_hash=rec.spec_hash,
        pid=rec.pid,
        running=not t.exited,
        started_at=started_at,
        port=rec.port,
        gpus=rec.gpus,
        health=t.health,
        exit_code=t.exit_code if t.exited else None,
        unhealthy_since=t.unhealthy_since if t.health == "unhealthy" else None,
        detail=t.detail,
        drain_s=rec.drain_s,
        leader=rec.leader,
    )
