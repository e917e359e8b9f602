"""The state file codec: one JSON file per member under <state dir>/engines/.

The state file is what makes a process ours (pid + start ticks); it also carries what a
daemon needs to keep probing a member it did not start (after its own restart).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.core.launch import drain_from_argv
from reconciler.core.vocabulary import MemberKey, ProcessObservation
from reconciler.ports.processes.proc import same_process

STATE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class EngineRecord:
    """The state file of one member: what makes a process ours (pid + start ticks)."""

    member: MemberKey
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    spec_hash: str
    port: int
    gpus: tuple[int, ...]
    started_at: float  # wall clock (the daemon's Clock)
    host: str | None = None
    served_name: str = ""
    probe_timeout_s: float = 2.0
    probe_period_s: float = 5.0
    ready_at: float | None = None  # first time it was seen ready (survives a daemon restart)
    exit_code: int | None = None  # written by the waiter of the daemon that started it
    drain_s: float | None = None  # LaunchSpec.drain_s
    leader: str = ""  # LaunchSpec.leader

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_FORMAT_VERSION,
            "member": self.member.slug,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "argv": list(self.argv),
            "spec_hash": self.spec_hash,
            "port": self.port,
            "gpus": list(self.gpus),
            "started_at": self.started_at,
            "host": self.host,
            "served_name": self.served_name,
            "probe_timeout_s": self.probe_timeout_s,
            "probe_period_s": self.probe_period_s,
            "ready_at": self.ready_at,
            "exit_code": self.exit_code,
            "drain_s": self.drain_s,
            "leader": self.leader,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineRecord:
        return cls(
            member=MemberKey.from_slug(str(data["member"])),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            argv=tuple(str(a) for a in data["argv"]),
            spec_hash=str(data["spec_hash"]),
            port=int(data["port"]),
            gpus=tuple(int(g) for g in data["gpus"]),
            started_at=float(data["started_at"]),
            host=None if data.get("host") is None else str(data["host"]),
            served_name=str(data.get("served_name", "")),
            probe_timeout_s=float(data.get("probe_timeout_s", 2.0)),
            probe_period_s=float(data.get("probe_period_s", 5.0)),
            ready_at=None if data.get("ready_at") is None else float(data["ready_at"]),
            exit_code=None if data.get("exit_code") is None else int(data["exit_code"]),
            # a file written before drains were recorded: the engine's own argv says
            drain_s=float(data["drain_s"]) if data.get("drain_s") is not None
            else None if "drain_s" in data
            else drain_from_argv(tuple(str(a) for a in data["argv"])),
            leader=str(data.get("leader") or ""),
        )


    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode() + b"\n"


def load_record(path: Path) -> EngineRecord:
    """Read one state file; OSError, ValueError, KeyError or TypeError when unreadable."""
    return EngineRecord.from_json(json.loads(path.read_bytes()))


def state_file_members(engines_dir: Path) -> list[tuple[MemberKey, Path]]:
    """(member, path) of every state file whose name is a member slug, sorted."""
    found: list[tuple[MemberKey, Path]] = []
    for path in sorted(engines_dir.glob("*.json")):
        try:
            found.append((MemberKey.from_slug(path.stem), path))
        except ValueError:
            continue
    return found


def read_state_files(state_dir: Path) -> list[ProcessObservation]:
    """What the state dir says this node owns, without probing, threads or signals (for
    a dry-run `plan` beside a running daemon). Liveness is checked through /proc (pid +
    start ticks); health is the last one recorded: "ready" if the member was ever seen
    ready by a daemon, else "starting". Unreadable files are reported as exited."""
    found: list[ProcessObservation] = []
    for member, path in state_file_members(Path(state_dir) / "engines"):
        try:
            rec = load_record(path)
        except (OSError, ValueError, KeyError, TypeError):
            found.append(
                ProcessObservation(
                    member, "", 0, False, 0.0, 0, (), "unhealthy", detail="state file unreadable"
                )
            )
            continue
        running = rec.pid > 0 and same_process(rec.pid, rec.start_ticks)
        found.append(
            ProcessObservation(
                member=rec.member,
                spec_hash=rec.spec_hash,
                pid=rec.pid,
                running=running,
                started_at=rec.started_at,
                port=rec.port,
                gpus=rec.gpus,
                health=("ready" if rec.ready_at is not None else "starting")
                if running
                else "unhealthy",
                exit_code=None if running else rec.exit_code,
                drain_s=rec.drain_s,
                leader=rec.leader,
            )
        )
    return found
