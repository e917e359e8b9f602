"""What this node owns, persisted atomically under the state dir.

Write to a temporary file, fsync it, rename over the old one, fsync the directory: a
crash leaves either the old or the new inventory, never half of one. A member is
removed only after its stop is confirmed, so nothing we started is ever forgotten.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.core.vocabulary import Inventory, MemberKey, OwnedMember, ReplicaKey, RestartRecord
from reconciler.ports.files import atomic_write

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def to_json(inv: Inventory) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "appliedRevision": inv.applied_revision,
        "members": {
            m.slug: {"specHash": o.spec_hash, "gpus": list(o.gpus), "port": o.port}
            for m, o in sorted(inv.members.items())
        },
        "restarts": {
            str(k): {
                "failures": r.failures,
                "lastFailureAt": r.last_failure_at,
                "readySince": r.ready_since,
                "totalRestarts": r.total_restarts,
                "lastReason": r.last_reason,
            }
            for k, r in sorted(inv.restarts.items())
        },
    }


def from_json(data: dict[str, Any]) -> Inventory:
    members = {}
    for slug, raw in data.get("members", {}).items():
        m = MemberKey.from_slug(slug)
        members[m] = OwnedMember(
            m, str(raw["specHash"]), tuple(int(i) for i in raw["gpus"]), int(raw["port"])
        )
    restarts = {}
    for key, raw in data.get("restarts", {}).items():
        restarts[ReplicaKey.parse(key)] = RestartRecord(
            failures=int(raw.get("failures", 0)),
            last_failure_at=raw.get("lastFailureAt"),
            ready_since=raw.get("readySince"),
            total_restarts=int(raw.get("totalRestarts", 0)),
            last_reason=str(raw.get("lastReason", "")),
        )
    return Inventory(
        members=members, restarts=restarts, applied_revision=data.get("appliedRevision")
    )


class InventoryStore:
    """The inventory file; every change is written through before it is relied upon."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "inventory.json"
        self.current = self._load()

    def _load(self) -> Inventory:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Inventory()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            return from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Keep the bad file for a person to look at; engines are re-found through
            # their own state files, so an empty inventory loses backoff history only.
            broken = self.path.with_name(self.path.name + ".corrupt")
            os.replace(self.path, broken)
            log.error(
                "inventory corrupt, starting empty", extra={"path": str(broken), "error": str(exc)}
            )
            return Inventory()

    def save(self, inv: Inventory) -> None:
        atomic_write(self.path, json.dumps(to_json(inv), indent=1).encode())
        self.current = inv

    def add_member(self, owned: OwnedMember) -> None:
        members = dict(self.current.members)
        members[owned.member] = owned
        self.save(replace(self.current, members=members))

    def remove_member(self, member: MemberKey) -> None:
        if member not in self.current.members:
            return
        members = dict(self.current.members)
        del members[member]
        self.save(replace(self.current, members=members))

    def put_restart(self, key: ReplicaKey, record: RestartRecord) -> None:
        """Persist a replica's restart record as given: the rules that compute it
        (failures, forgiveness, readiness) live in reconciler.core.restarts."""
        restarts = dict(self.current.restarts)
        restarts[key] = record
        self.save(replace(self.current, restarts=restarts))

    def forget_replica(self, key: ReplicaKey) -> None:
        if key in self.current.restarts:
            restarts = dict(self.current.restarts)
            del restarts[key]
            self.save(replace(self.current, restarts=restarts))

    def set_applied(self, revision: str) -> None:
        if self.current.applied_revision != revision:
            self.save(replace(self.current, applied_revision=revision))

    def clamp_future(self, now: float, slack_s: float = 1.0) -> list[ReplicaKey]:
        """Pull times recorded "in the future" back to `now`: the wall clock went back.

        Without this a backward jump of an hour makes a crash-looping replica wait an
        hour (its last failure looks an hour away). Returns the replicas changed."""
        changed: dict[ReplicaKey, RestartRecord] = {}
        for key, r in self.current.restarts.items():
            last = r.last_failure_at
            ready = r.ready_since
            if (last is not None and last > now + slack_s) or (
                ready is not None and ready > now + slack_s
            ):
                changed[key] = replace(
                    r,
                    last_failure_at=None if last is None else min(last, now),
                    ready_since=None if ready is None else min(ready, now),
                )
        if changed:
            self.save(replace(self.current, restarts={**self.current.restarts, **changed}))
            log.warning("clock went back: restart times clamped to now",
                        extra={"replicas": [str(k) for k in changed]})
        return list(changed)
