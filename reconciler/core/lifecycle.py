"""Replica states and the transitions allowed between them, enforced in one place.

Like Ray's autoscaler v2, transitions the reconciler merely *sees* (an engine became
ready, a process died) are passive; those it *causes* (start, stop) are active. Every
state change goes through `advance()`, which refuses an edge not in the table: the
replica keeps its old state, the refusal is reported (and counted by the daemon as
`reconciler_illegal_transitions_total{from,to}`), so a bug that would, say, jump from
Pending to Ready without a start shows up as a refusal, never as a lie in status.

plan() proposes each replica's state from what it observes and decides; `advance()`
takes the states of the previous tick and the proposal and returns what is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from reconciler.core.errors import PermanentError
from reconciler.core.vocabulary import RefusedTransition, ReplicaKey, ReplicaState

Kind = Literal["active", "passive"]
STATES: tuple[ReplicaState, ...] = get_args(ReplicaState)

# (from, to) -> (kind, why the edge exists). Draining, Stopped and Failed are rarely
# *recorded*: apply stops synchronously and plan() reaps an exit in the tick that sees
# it, so several edges below say "passed through within one tick".
TRANSITIONS: dict[tuple[ReplicaState, ReplicaState], tuple[Kind, str]] = {
    # waited for GPUs, the rollout, the Ray head or the leader; now we launch it
    ("Pending", "Starting"): ("active", "we started its processes"),
    # the desired state changed before it ever started (deleted, scaled down, suspended)
    ("Pending", "Stopped"): ("active", "no longer wanted before it started"),
    # a start failed at once (port taken, executable missing): backoff decides the retry
    ("Pending", "CrashLoopBackOff"): ("passive", "the start failed; waiting for backoff"),
    # the health probe answered and the served model is listed
    ("Starting", "Ready"): ("passive", "health 200 and model listed"),
    # the process exited or timed out while loading
    ("Starting", "Failed"): ("passive", "exited or startup timeout while loading"),
    # a newer spec or deletion arrived while it was loading
    ("Starting", "Draining"): ("active", "we asked it to stop while loading"),
    # its process vanished before any health answer and the restart must wait for
    # something other than backoff (GPUs, the leader, the Ray head)
    ("Starting", "Pending"): ("passive", "its process vanished before any health answer"),
    # died while loading and the next restart must wait (second failure onwards):
    # Failed is passed through within the tick
    ("Starting", "CrashLoopBackOff"): ("passive", "died while loading; waiting for backoff"),
    # stopped while loading, Draining passed through within the tick (apply stops
    # synchronously), seen next as gone
    ("Starting", "Stopped"): ("active", "stopped while loading, within one tick"),
    # health kept failing after it had been ready, or the process died
    ("Ready", "Failed"): ("passive", "died or unhealthy past the grace period"),
    # spec change, deletion, suspend, move: we stop it on purpose
    ("Ready", "Draining"): ("active", "we asked it to stop"),
    # a transient probe failure while ready sends it back to checking; also a crash
    # restarted in the same tick (first failure: no delay)
    ("Ready", "Starting"): ("passive", "health probe stopped answering, or restarted at once"),
    # died while serving and the next restart must wait (second failure onwards)
    ("Ready", "CrashLoopBackOff"): ("passive", "died while serving; waiting for backoff"),
    # stopped or died within the tick and its start now waits on something other than
    # backoff: GPUs gone, a multi-node follower waiting for its leader's new group,
    # Recreate waiting for old members
    ("Ready", "Pending"): ("passive", "stopped or died; the restart waits for a resource"),
    # deleted, suspended, scaled down or moved away: Draining passed through within the
    # tick (apply stops synchronously)
    ("Ready", "Stopped"): ("active", "stopped within one tick (Draining passed through)"),
    # the stop was confirmed: process gone, port and GPUs free
    ("Draining", "Stopped"): ("passive", "exit confirmed"),
    # SIGTERM ignored past the grace period, SIGKILL still not confirmed
    ("Draining", "Failed"): ("passive", "stop not confirmed"),
    # a drain (rollout.drainTimeoutSeconds) ended: the old engine stopped and its
    # replacement started in the same tick
    ("Draining", "Starting"): ("active", "drained, stopped and replaced within one tick"),
    # drained and stopped; the replacement waits (Recreate, GPUs, backoff)
    ("Draining", "Pending"): ("active", "drained and stopped; the start waits"),
    # the change that drained it was reverted before its SIGTERM: it serves on
    ("Draining", "Ready"): ("active", "drain called off before the stop"),
    # it died while draining and its restart waits for backoff
    ("Draining", "CrashLoopBackOff"): ("passive", "died while draining; waiting for backoff"),
    # a failure always goes through backoff before the next start
    ("Failed", "CrashLoopBackOff"): ("active", "restart scheduled after a delay"),
    # the first restart is immediate (backoff delay 0)
    ("Failed", "Starting"): ("active", "restarted at once (first failure)"),
    # a failed replica no longer wanted is just forgotten
    ("Failed", "Stopped"): ("active", "no longer wanted after failing"),
    # the backoff delay passed; we start it again
    ("CrashLoopBackOff", "Starting"): ("active", "backoff delay passed, restarted"),
    # deleted or suspended while waiting to restart
    ("CrashLoopBackOff", "Stopped"): ("active", "no longer wanted while backing off"),
    # a newer spec arrived while it waited, or the delay passed and the start now waits
    # for a resource: back to waiting on the new terms
    ("CrashLoopBackOff", "Pending"): ("passive", "new spec or a resource to wait for"),
    # a stopped replica wanted again (scale up, unsuspend, re-added) and waiting
    ("Stopped", "Pending"): ("active", "wanted again"),
    # a stopped replica wanted again and started in the same tick
    ("Stopped", "Starting"): ("active", "wanted again and started at once"),
}


class IllegalTransition(PermanentError):
    """A replica state change that is not an edge of TRANSITIONS."""

    reason = "IllegalTransition"

    def __init__(self, old: ReplicaState, new: ReplicaState) -> None:
        super().__init__(f"{old} -> {new} is not an allowed replica transition")
        self.old = old
        self.new = new


def allowed(old: ReplicaState, new: ReplicaState) -> bool:
    return old == new or (old, new) in TRANSITIONS


def transition(old: ReplicaState | None, new: ReplicaState) -> ReplicaState:
    """Validate one state change; None means first sight (any state may be first seen)."""
    if old is None or allowed(old, new):
        return new
    raise IllegalTransition(old, new)


@dataclass(frozen=True)
class Advance:
    states: dict[ReplicaKey, ReplicaState]  # what is recorded for this tick
    refused: tuple[RefusedTransition, ...]


def advance(
    previous: Mapping[ReplicaKey, ReplicaState],
    proposed: Mapping[ReplicaKey, ReplicaState],
    unchecked: frozenset[ReplicaKey] = frozenset(),
) -> Advance:
    """Move every proposed replica from its previous state through the table.

    A refused edge keeps the previous state. Replicas in `unchecked` (not this node's:
    unschedulable anywhere) are recorded as proposed, since this node never ran them.
    A replica absent from `proposed` leaves the record; it passes to Stopped, an edge
    every state has (the table test asserts so)."""
    states: dict[ReplicaKey, ReplicaState] = {}
    refused: list[RefusedTransition] = []
    for key, new in proposed.items():
        old = previous.get(key)
        if key in unchecked:
            states[key] = new
            continue
        try:
            states[key] = transition(old, new)
        except IllegalTransition:
            assert old is not None
            states[key] = old
            refused.append(RefusedTransition(key, old, new))
    return Advance(states, tuple(sorted(refused)))


def stopped(
    previous: Mapping[ReplicaKey, ReplicaState], current: Mapping[ReplicaKey, ReplicaState]
) -> list[tuple[ReplicaKey, ReplicaState]]:
    """Replicas that left the record this tick, with their last state (-> Stopped)."""
    return [
        (key, old)
        for key, old in sorted(previous.items())
        if key not in current and transition(old, "Stopped") != old
    ]
