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
from reconciler.core import lifecycle
from reconciler.core.launch import NodeContext
from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.vocabulary import (
    Inventory,
    MemberKey,
    ObservedState,
    Plan,
    RefusedTransition,
    ReplicaKey,
    ReplicaState,
)
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
    def refused_transitions(self) -> tuple[RefusedTransition, ...]:
        """State changes the lifecycle table refused this tick (each one a bug)."""
        return self.plan.refused

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
    # (from, to) -> refusals since the daemon started: reconciler_illegal_transitions_total
    refused_transitions: dict[tuple[str, str], int] = field(default_factory=dict)
    # deployment -> restarts since the daemon started: reconciler_engine_restarts_total.
    # A view of the one restart counter (RestartRecord.total_restarts), not a second one.
    restarts_total: dict[str, int] = field(default_factory=dict)
    last: TickResult | None = None
    # members whose drain is being announced, and since when (each plan hands it on)
    draining: dict[MemberKey, float] = field(default_factory=dict)

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
        the_plan = plan(
            desired,
            observed,
            self.inventory.current,
            now,
            self.node,
            placement=placement,
            previous=self.states,
            draining=self.draining,
        )
        for action in the_plan.actions:
            log.info(
                "planned",
                extra={
                    "reconcile_id": reconcile_id,
                    "action": type(action).__name__,
                    "reason": getattr(action, "reason", ""),
                },
            )
        before = self.inventory.current
        results = apply(
            the_plan,
            self.ports.processes,
            self.inventory,
            now,
            self.apply_config,
            self.secret_env,
            backoff=self.node.backoff,
        )
        self._count_restarts(before, self.inventory.current)
        self._record_states(the_plan, reconcile_id)
        self.draining = dict(the_plan.draining)
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

    def _count_restarts(self, before: Inventory, after: Inventory) -> None:
        for key, record in after.restarts.items():
            old = before.restarts.get(key)
            added = record.total_restarts - (old.total_restarts if old else 0)
            if added > 0:
                self.restarts_total[key.deployment] = (
                    self.restarts_total.get(key.deployment, 0) + added
                )

    def _record_states(self, the_plan: Plan, reconcile_id: str) -> None:
        """plan() moved every state through the lifecycle table; record the result."""
        for r in the_plan.refused:
            edge = (r.old, r.new)
            self.refused_transitions[edge] = self.refused_transitions.get(edge, 0) + 1
            log.error(
                "illegal transition refused",
                extra={"reconcile_id": reconcile_id, "replica": str(r.replica),
                       "from": r.old, "to": r.new},
            )
        states = {k: s.state for k, s in the_plan.replicas.items()}
        for key, new in states.items():
            old = self.states.get(key)
            if old != new and the_plan.replicas[key].nodes:
                log.info(
                    "replica state",
                    extra={"reconcile_id": reconcile_id, "replica": str(key), "from": old,
                           "to": new},
                )
        for key, old in lifecycle.stopped(self.states, states):
            log.info(
                "replica state",
                extra={"reconcile_id": reconcile_id, "replica": str(key), "from": old,
                       "to": "Stopped"},
            )
        self.states = states
