"""Where a crashed engine's restart is decided: crash -> failure -> backoff -> restart.

Read top to bottom, this is the whole path of a failure:
1. `reap_exited`: a process that exited is forgotten; at the wanted spec hash its exit is
   a failure of the replica (`failed_now`).
2. `stop_if_failing`: a running process that stays unready past its startup timeout, or
   unhealthy past the grace period, is stopped as a failure too.
3. `restart_wait`: before any start, the replica's failures (the one restart counter,
   `RestartRecord.failures`, plus this tick's) give the backoff delay; while it runs the
   replica is CrashLoopBackOff. The first restart of a single-node engine is immediate.
4. `after_failure` / `after_ready`: the records apply.py persists when a failure or
   readiness happened. The forgiveness rule (a healthy period of `reset_after_s` wipes
   the failures) is `BackoffPolicy.effective_failures`, used by both 3 and 4.
Fate sharing (a multi-node group restarts as one) lives in fate_sharing.py; it adds
failures through the same `PlanWork.stop(..., failure=True)`.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.core.backoff import BackoffPolicy
from reconciler.core.launch import NodeContext, startup_timeout
from reconciler.core.members import PlanWork, Wanted
from reconciler.core.vocabulary import (
    Desired,
    Inventory,
    MarkReady,
    MemberKey,
    ObservedState,
    ProcessObservation,
    Reap,
    ReplicaKey,
    ReplicaState,
    RestartRecord,
)


def reap_exited(
    work: PlanWork,
    wanted: dict[MemberKey, Wanted],
    observed: ObservedState,
    inventory: Inventory,
) -> None:
    """Forget processes that exited, counting an exit at the wanted hash as a failure;
    prune owned members with no process that are no longer wanted."""
    for member, proc in sorted(observed.processes.items()):
        if proc.running:
            continue
        w = wanted.get(member)
        expected = w is not None and w.spec_hash == proc.spec_hash
        code = "unknown" if proc.exit_code is None else str(proc.exit_code)
        reason = f"{member}: exited (code {code})"
        if proc.detail:
            reason += f": {proc.detail}"
        work.actions.append(Reap(member, reason, failure=expected))
        if expected:
            work.failed_now.add(member.replica)
    # the daemon died after a confirmed stop and before the inventory write: prune the
    # inventory entry, no failure
    for member in sorted(inventory.members):
        if member not in observed.processes and member not in wanted:
            work.actions.append(
                Reap(member, f"{member}: owned but has no process (stopped before a crash)",
                     failure=False)
            )


def stop_if_failing(
    work: PlanWork,
    w: Wanted,
    proc: ProcessObservation,
    desired: Desired,
    now: float,
    node: NodeContext,
) -> None:
    """A running member at the wanted hash that never became ready in time, or stayed
    unhealthy past the grace period, is stopped as a failure (restarted after backoff)."""
    member = w.member
    timeout = startup_timeout(desired.cluster, w.dep)
    if proc.health == "starting" and now - proc.started_at > timeout:
        work.stop(
            member,
            f"{member.replica}: not ready {timeout:.0f}s after start (startup timeout)",
            failure=True,
        )
    elif (
        proc.health == "unhealthy"
        and proc.unhealthy_since is not None
        and now - proc.unhealthy_since > node.unhealthy_grace_s
    ):
        work.stop(
            member,
            f"{member.replica}: unhealthy for {now - proc.unhealthy_since:.0f}s "
            f"({proc.detail or 'health probe failing'})",
            failure=True,
        )


def restart_wait(
    w: Wanted,
    failed_now: bool,
    record: RestartRecord | None,
    now: float,
    backoff: BackoffPolicy,
) -> tuple[ReplicaState, str] | None:
    """CrashLoopBackOff and why, while the replica's restart backoff runs; else None."""
    key = w.member.replica
    failures, last, why = 0, now, "failed"
    if record is not None:
        failures = backoff.effective_failures(record, now)
        last = record.last_failure_at if record.last_failure_at is not None else now
        why = record.last_reason or "failed"
    if failed_now:
        failures += 1
        last = now
    if failures == 0:
        return None
    delay = backoff.delay(key, failures)
    if w.placement.multi_node and (w.member.role != "engine" or w.mp_multi):
        # A multi-node group does not re-form at once, not even after its first
        # failure: its Ray nodes start again no sooner than the initial backoff after
        # the failure tick, so that followers see the leader's head go and leave the
        # old cluster, and the leader sees a lost member, before anyone joins again
        # (a worker attached to a dead head looks joined until its raylet gives up,
        # RAY_gcs_rpc_server_reconnect_timeout_s, 60 s by default). The time the stop
        # itself takes counts towards it. The same for every rank of an mp multi-node
        # replica: a leader engine restarted at once would look unchanged to its
        # followers, whose ranks still belong to the dead group.
        delay = max(delay, backoff.initial_s)
    at = last + delay
    if at > now:
        return "CrashLoopBackOff", f"restart {failures} in {at - now:.0f}s ({why})"
    return None


def mark_ready(work: PlanWork, key: ReplicaKey, inventory: Inventory) -> None:
    """Record when a replica became ready (the forgiveness clock), once per ready period."""
    record = inventory.restarts.get(key)
    if record is None or record.ready_since is None:
        work.actions.append(MarkReady(key, f"{key}: ready"))


def after_failure(
    old: RestartRecord | None, now: float, reason: str, backoff: BackoffPolicy
) -> RestartRecord:
    """The record after one more failure: forgiven failures start over at one."""
    old = old or RestartRecord()
    return RestartRecord(
        failures=backoff.effective_failures(old, now) + 1,
        last_failure_at=now,
        ready_since=None,
        total_restarts=old.total_restarts + 1,
        last_reason=reason,
    )


def after_ready(old: RestartRecord | None, now: float) -> RestartRecord | None:
    """The record once the replica is ready; None when it was already ready."""
    old = old or RestartRecord()
    if old.ready_since is not None:
        return None
    return replace(old, ready_since=now)
