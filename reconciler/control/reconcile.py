"""One reconcile tick: observe, plan (pure), apply, record. Level-triggered.

Every tick reads the whole desired and observed state; wake-ups (webhook, file change,
engine exit) only make the next tick come sooner.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.control.apply import ActionResult, ApplyConfig, apply
from reconciler.control.observe import observe
from reconciler.control.reconcile_id import current_reconcile_id
from reconciler.core.launch import NodeContext
from reconciler.core.lifecycle import IllegalTransition, transition
from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.vocabulary import ObservedState, Plan, ReplicaKey, ReplicaState
from reconciler.desired.state import DesiredState
from reconciler.ports.clock import Clock
from reconciler.ports.gpus import GpuPort
from reconciler.ports.inventory import InventoryStore
from reconciler.ports.peers import PeerPort
from reconciler.ports.processes import ProcessPort
from reconciler.ports.ray_nodes import RayPort

log = logging.getLogger(__name__)


@dataclass
class Ports:
    gpus: GpuPort
    processes: ProcessPort
    clock: Clock
    ray: RayPort | None = None
    peers: PeerPort | None = None


@dataclass(frozen=True)
class TickResult:
    reconcile_id: str
    revision: str | None
    plan: Plan
    observed: ObservedState
    results: tuple[ActionResult, ...]
    started_at: float
    duration_s: float

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.results if not r.ok]

    @property
    def converged(self) -> bool:
        return (
            self.plan.empty
            and not self.errors
            and all(
                s.state in ("Ready",) or (s.state == "Pending" and not s.nodes)
                for s in self.plan.replicas.values()
            )
        )


@dataclass
class Reconciler:
    node: NodeContext
    ports: Ports
    inventory: InventoryStore
    desired: Callable[[], DesiredState | None]
    apply_config: ApplyConfig = field(default_factory=ApplyConfig)
    secret_env: Callable[[], Mapping[str, str]] = dict
    states: dict[ReplicaKey, ReplicaState] = field(default_factory=dict)
    illegal_transitions: int = 0
    restarts_total: dict[str, int] = field(default_factory=dict)  # deployment -> count
    last: TickResult | None = None

    def tick(self) -> TickResult:
        reconcile_id = uuid.uuid4().hex[:12]
        token = current_reconcile_id.set(reconcile_id)
        try:
            return self._tick(reconcile_id)
        finally:
            current_reconcile_id.reset(token)

    def _tick(self, reconcile_id: str) -> TickResult:
        started = time.monotonic()
        now = self.ports.clock.now()
        self.inventory.clamp_future(now)
        desired = self.desired()
        placement = place(desired) if desired is not None else None
        observed = observe(
            self.node.name,
            self.ports.gpus,
            self.ports.processes,
            self.ports.ray,
            self.ports.peers,
            desired,
            placement,
        )
        the_plan = plan(desired, observed, self.inventory.current, now, self.node)
        for action in the_plan.actions:
            log.info(
                "planned",
                extra={
                    "reconcile_id": reconcile_id,
                    "action": type(action).__name__,
                    "reason": getattr(action, "reason", ""),
                },
            )
        results = apply(
            the_plan,
            self.ports.processes,
            self.inventory,
            now,
            self.apply_config,
            self.secret_env,
        )
        for r in results:
            failure = getattr(r.action, "failure", False) or not r.ok
            member = getattr(r.action, "member", None)
            if failure and member is not None and type(r.action).__name__ != "Start":
                dep = member.replica.deployment
                self.restarts_total[dep] = self.restarts_total.get(dep, 0) + 1
        self._record_states(the_plan, reconcile_id)
        if (
            desired is not None
            and the_plan.empty
            and all(r.ok for r in results)
            and all(s.state == "Ready" for s in the_plan.replicas.values() if s.nodes)
        ):
            self.inventory.set_applied(desired.revision)
        result = TickResult(
            reconcile_id=reconcile_id,
            revision=desired.revision if desired else None,
            plan=the_plan,
            observed=observed,
            results=tuple(results),
            started_at=now,
            duration_s=time.monotonic() - started,
        )
        self.last = result
        return result

    def _record_states(self, the_plan: Plan, reconcile_id: str) -> None:
        seen: dict[ReplicaKey, ReplicaState] = {}
        for key, status in the_plan.replicas.items():
            if not status.nodes:
                seen[key] = status.state
                continue
            seen[key] = self._move(key, status.state, reconcile_id)
        for key, old in self.states.items():
            if key not in seen and old != "Stopped":
                self._move(key, "Stopped", reconcile_id)
        self.states = {k: v for k, v in seen.items()}

    def _move(self, key: ReplicaKey, new: ReplicaState, reconcile_id: str) -> ReplicaState:
        old = self.states.get(key)
        try:
            transition(old, new)
        except IllegalTransition as exc:
            # status must show what is observed; the broken edge is a bug to report
            self.illegal_transitions += 1
            log.error(
                "illegal transition",
                extra={"reconcile_id": reconcile_id, "replica": str(key), "error": str(exc)},
            )
        if old != new:
            log.info(
                "replica state",
                extra={"reconcile_id": reconcile_id, "replica": str(key), "from": old, "to": new},
            )
        return new
