"""Replica states and the transitions allowed between them, enforced in one place.

Like Ray's autoscaler v2, transitions the reconciler merely *sees* (an engine became
ready, a process died) are passive; those it *causes* (start, stop) are active. Both go
through `transition()`, which refuses an edge not in the table, so a bug that would,
say, jump from Stopped to Ready without a start shows up as an error, not a lie in status.
"""

from __future__ import annotations

from typing import Literal

from reconciler.core.vocabulary import ReplicaState

Kind = Literal["active", "passive"]

# (from, to) -> (kind, why the edge exists)
TRANSITIONS: dict[tuple[ReplicaState, ReplicaState], tuple[Kind, str]] = {
    # waiting for GPUs, the rollout, the Ray head or backoff, then we launch it
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
    # health kept failing after it had been ready, or the process died
    ("Ready", "Failed"): ("passive", "died or unhealthy past the grace period"),
    # spec change, deletion, suspend, move: we stop it on purpose
    ("Ready", "Draining"): ("active", "we asked it to stop"),
    # a transient probe failure while ready sends it back to checking
    ("Ready", "Starting"): ("passive", "health probe stopped answering"),
    # the stop was confirmed: process gone, port and GPUs free
    ("Draining", "Stopped"): ("passive", "exit confirmed"),
    # SIGTERM ignored past the grace period, SIGKILL still not confirmed
    ("Draining", "Failed"): ("passive", "stop not confirmed"),
    # a failure always goes through backoff before the next start
    ("Failed", "CrashLoopBackOff"): ("active", "restart scheduled after a delay"),
    # first restart is immediate (backoff delay 0)
    ("Failed", "Starting"): ("active", "restarted at once (first failure)"),
    # a failed replica no longer wanted is just forgotten
    ("Failed", "Stopped"): ("active", "no longer wanted after failing"),
    # the backoff delay passed; we start it again
    ("CrashLoopBackOff", "Starting"): ("active", "backoff delay passed, restarted"),
    # deleted or suspended while waiting to restart
    ("CrashLoopBackOff", "Stopped"): ("active", "no longer wanted while backing off"),
    # a stopped replica wanted again (scale up, unsuspend, re-added)
    ("Stopped", "Pending"): ("active", "wanted again"),
    ("Stopped", "Starting"): ("active", "wanted again and started at once"),
    # a newer spec arrived while it waited: back to waiting on the new terms
    ("CrashLoopBackOff", "Pending"): ("passive", "new spec while backing off"),
    ("Starting", "Pending"): ("passive", "its process vanished before any health answer"),
    # died and the next restart must wait (second failure onwards): Failed is implied
    ("Starting", "CrashLoopBackOff"): ("passive", "died while loading; waiting for backoff"),
    ("Ready", "CrashLoopBackOff"): ("passive", "died while serving; waiting for backoff"),
    # apply stops synchronously: a replica can pass Draining within one tick and be seen
    # next as gone (deleted, suspended, scaled down, moved to another node)
    ("Ready", "Stopped"): ("active", "stopped within one tick (Draining passed through)"),
    ("Starting", "Stopped"): ("active", "stopped while loading, within one tick"),
}


class IllegalTransition(Exception):
    pass


def allowed(old: ReplicaState, new: ReplicaState) -> bool:
    return old == new or (old, new) in TRANSITIONS


def transition(old: ReplicaState | None, new: ReplicaState) -> ReplicaState:
    """Validate a state change; None means first sight (any state may be first seen)."""
    if old is None or allowed(old, new):
        return new
    raise IllegalTransition(f"{old} -> {new} is not an allowed replica transition")
