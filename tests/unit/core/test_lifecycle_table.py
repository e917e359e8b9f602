"""The lifecycle table, edge by edge: every listed edge is allowed, every other pair of
different states is refused where the state would change (advance keeps the old state
and reports the refusal), and plan() refuses a proposed state outside the table."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from reconciler.core import lifecycle
from reconciler.core.errors import PermanentError, ReconcilerError
from reconciler.core.lifecycle import STATES, TRANSITIONS, IllegalTransition, advance, transition
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import Inventory, RefusedTransition, ReplicaKey, ReplicaState
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc

KEY = ReplicaKey("llama", 0)

EDGES = [pytest.param(old, new, id=f"{old}->{new}") for old, new in TRANSITIONS]
ILLEGAL = [
    pytest.param(old, new, id=f"{old}->{new}")
    for old, new in itertools.product(STATES, STATES)
    if old != new and (old, new) not in TRANSITIONS
]


def test_states_are_the_seven_replica_states() -> None:
    assert set(STATES) == {
        "Pending", "Starting", "Ready", "Draining", "Stopped", "Failed", "CrashLoopBackOff",
    }
    assert len(EDGES) + len(ILLEGAL) == len(STATES) * (len(STATES) - 1)


@pytest.mark.parametrize(("old", "new"), EDGES)
def test_every_edge_is_allowed_and_says_why(old: ReplicaState, new: ReplicaState) -> None:
    kind, why = TRANSITIONS[(old, new)]
    assert kind in ("active", "passive")
    assert why.strip()
    assert transition(old, new) == new
    moved = advance({KEY: old}, {KEY: new})
    assert moved.states == {KEY: new}
    assert moved.refused == ()


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_every_other_pair_is_refused(old: ReplicaState, new: ReplicaState) -> None:
    assert not lifecycle.allowed(old, new)
    with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
        transition(old, new)
    moved = advance({KEY: old}, {KEY: new})
    assert moved.states == {KEY: old}, "a refused change keeps the old state"
    assert moved.refused == (RefusedTransition(KEY, old, new),)


@pytest.mark.parametrize("state", [pytest.param(s, id=s) for s in STATES])
def test_staying_put_and_first_sight_are_always_allowed(state: ReplicaState) -> None:
    assert transition(state, state) == state
    assert transition(None, state) == state
    assert advance({}, {KEY: state}).states == {KEY: state}


@pytest.mark.parametrize(
    "state", [pytest.param(s, id=s) for s in STATES if s != "Stopped"]
)
def test_every_state_can_leave_to_stopped(state: ReplicaState) -> None:
    # a replica that leaves the record passes to Stopped: that edge must exist for all
    assert (state, "Stopped") in TRANSITIONS
    assert lifecycle.stopped({KEY: state}, {}) == [(KEY, state)]


def test_unchecked_replicas_are_recorded_as_proposed() -> None:
    moved = advance({KEY: "Ready"}, {KEY: "Pending"}, unchecked=frozenset({KEY}))
    assert moved.states == {KEY: "Pending"} and moved.refused == ()


def test_illegal_transition_is_a_permanent_reconciler_error() -> None:
    assert issubclass(IllegalTransition, PermanentError)
    assert issubclass(IllegalTransition, ReconcilerError)


def test_every_edge_has_a_comment_in_the_source() -> None:
    # "why" twice: the string in the table, and a comment line above the edge
    lines = Path(lifecycle.__file__).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("TRANSITIONS"))
    for i, line in enumerate(lines[start:], start):
        if line.strip() == "}":
            break
        if line.lstrip().startswith("(\""):
            assert lines[i - 1].lstrip().startswith(("#", '("')), line
            j = i
            while lines[j - 1].lstrip().startswith('("'):
                j -= 1
            assert lines[j - 1].lstrip().startswith("#"), f"edge without a comment: {line}"


def test_plan_refuses_a_state_change_outside_the_table() -> None:
    # Last tick recorded the replica Pending; now its engine answers ready. Pending ->
    # Ready skips Starting: refused where the state would change, the replica stays
    # Pending (the reason says so) and the refusal is reported for the metric.
    c = cluster(node("n0"))
    d = deployment("llama")
    o = observed("n0", gpus(8), proc("llama", spec_hash=spec_hash(c, d), gpus=(0,)))
    p = plan(desired(c, d), o, Inventory(), 100.0, ctx("n0"), previous={KEY: "Pending"})
    assert p.replicas[KEY].state == "Pending"
    assert "Pending -> Ready refused by the lifecycle table" in p.replicas[KEY].reason
    assert p.refused == (RefusedTransition(KEY, "Pending", "Ready"),)
    # the same observation with Starting recorded last tick is a legal edge
    p = plan(desired(c, d), o, Inventory(), 100.0, ctx("n0"), previous={KEY: "Starting"})
    assert p.replicas[KEY].state == "Ready" and p.refused == ()
