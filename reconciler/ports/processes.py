"""The engine-process port: start, find, probe and stop the processes this node owns.

One port serves every member role (vLLM engines, Ray head and worker nodes): each is a
child in its own session and process group, with a log file and a state file under the
state dir. Ownership is the state file (pid + process start time + spec hash); a
process without one is never touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from reconciler.model import LaunchSpec, MemberKey, ProcessObservation


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
