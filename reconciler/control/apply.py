"""Execute a Plan through the ports. The only writer. Errors are data, not exceptions:
each action yields a result that the next tick (and status) can see."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from reconciler.core.backoff import BackoffPolicy
from reconciler.core.errors import EngineStartError
from reconciler.core.restarts import after_failure, after_ready
from reconciler.core.vocabulary import (
    Action,
    Drain,
    MarkReady,
    MemberKey,
    OwnedMember,
    Plan,
    Reap,
    ReplicaKey,
    Start,
    Stop,
)
from reconciler.ports.crashpoints import crash_point
from reconciler.ports.inventory import InventoryStore
from reconciler.ports.processes import ProcessPort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionResult:
    action: Action
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class ApplyConfig:
    stop_grace_s: float = 30.0


def apply(
    plan: Plan,
    processes: ProcessPort,
    inventory: InventoryStore,
    now: float,
    config: ApplyConfig,
    secret_env: Callable[[], Mapping[str, str]] = dict,
    *,
    backoff: BackoffPolicy,
) -> list[ActionResult]:
    """`backoff`: the node's policy (NodeContext.backoff), whose forgiveness rule the
    restart records follow."""
    results: list[ActionResult] = []
    failed_stops: set[MemberKey] = set()
    for action in plan.actions:
        if isinstance(action, Reap):
            processes.forget(action.member)
            inventory.remove_member(action.member)
            if action.failure:
                _record_failure(inventory, action.member.replica, now, action.reason, backoff)
            log.info("reaped", extra={"member": str(action.member), "reason": action.reason})
            results.append(ActionResult(action, True))
        elif isinstance(action, Stop):
            began = time.monotonic()
            # a draining engine (vLLM --shutdown-timeout) gets its drain on top of the grace
            ok = processes.stop(action.member, config.stop_grace_s + action.drain_s)
            if ok:
                crash_point("engine-stopped")  # test-only: killed before the inventory update
                inventory.remove_member(action.member)
                if action.failure:
                    # the backoff runs from when the stop completed: a long grace must not
                    # use the delay up and let the member come straight back
                    done = now + (time.monotonic() - began)
                    _record_failure(inventory, action.member.replica, done, action.reason, backoff)
                log.info("stopped", extra={"member": str(action.member), "reason": action.reason})
                results.append(ActionResult(action, True))
            else:
                failed_stops.add(action.member)
                log.error("stop not confirmed", extra={"member": str(action.member)})
                results.append(ActionResult(action, False, f"{action.member}: stop not confirmed"))
        elif isinstance(action, Drain):
            # nothing to do but say so: the plan's status shows the replica Draining,
            # which takes it out of every gateway's table; the Stop comes later
            log.info("draining", extra={"member": str(action.member), "reason": action.reason})
            results.append(ActionResult(action, True))
        elif isinstance(action, MarkReady):
            ready = after_ready(inventory.current.restarts.get(action.replica), now)
            if ready is not None:
                inventory.put_restart(action.replica, ready)
            results.append(ActionResult(action, True))
        elif isinstance(action, Start):
            results.append(
                _start(action, processes, inventory, now, backoff, failed_stops, secret_env)
            )
    return results


def _start(
    action: Start,
    processes: ProcessPort,
    inventory: InventoryStore,
    now: float,
    backoff: BackoffPolicy,
    failed_stops: set[MemberKey],
    secret_env: Callable[[], Mapping[str, str]],
) -> ActionResult:
    launch = action.launch
    if launch.member in failed_stops:
        return ActionResult(action, False, f"{launch.member}: predecessor still running")
    # Record the intent before the process exists: a crash between the two leaves an
    # inventory entry that the next tick resolves, never an engine nobody owns.
    inventory.add_member(OwnedMember(launch.member, launch.spec_hash, launch.gpus, launch.port))
    try:
        secrets = secret_env()
        if secrets:
            launch = replace(launch, env={**secrets, **launch.env})
        processes.start(launch)
    except EngineStartError as exc:
        inventory.remove_member(launch.member)
        _record_failure(inventory, launch.member.replica, now, str(exc), backoff)
        log.error("start failed", extra={"member": str(launch.member), "error": str(exc)})
        return ActionResult(action, False, str(exc))
    except OSError as exc:
        inventory.remove_member(launch.member)
        message = f"{launch.member}: cannot start {launch.argv[0]}: {exc.strerror or exc}"
        _record_failure(inventory, launch.member.replica, now, message, backoff)
        log.error("start failed", extra={"member": str(launch.member), "error": message})
        return ActionResult(action, False, message)
    log.info("started", extra={"member": str(launch.member), "reason": action.reason})
    return ActionResult(action, True)


def _record_failure(
    inventory: InventoryStore, key: ReplicaKey, at: float, reason: str, backoff: BackoffPolicy
) -> None:
    old = inventory.current.restarts.get(key)
    inventory.put_restart(key, after_failure(old, at, reason, backoff))
