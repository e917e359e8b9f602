"""One home per fact, through whole ticks: the placement is computed once per tick and
handed to plan(); the restart metric is a view of the restart records (a failed start
counts, an unconfirmed stop does not); the inventory keeps what core/restarts.py says."""

from __future__ import annotations

from pathlib import Path

import pytest

import reconciler.control.reconcile as reconcile_module
import reconciler.core.plan as plan_module
from reconciler.core.errors import EngineStartFailed
from reconciler.core.placement import place
from reconciler.core.vocabulary import Placement, ReplicaKey
from reconciler.desired.state import DesiredState
from reconciler.testing.git_source import FakeGitSource
from tests.integration.test_reconcile_fakes import CLUSTER, ENGINE_A, Node, deployment

KEY = ReplicaKey("a", 0)


def test_the_placement_is_computed_once_per_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def counting_place(desired: DesiredState) -> Placement:
        calls.append(desired.revision)
        return place(desired)

    def no_place(desired: DesiredState) -> Placement:
        raise AssertionError("plan() placed again: the tick's placement was not handed over")

    monkeypatch.setattr(reconcile_module, "place", counting_place)
    monkeypatch.setattr(plan_module, "place", no_place)
    source = FakeGitSource()
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.tick()
    n.tick()
    assert len(calls) == 2
    assert n.procs.start_count(ENGINE_A) == 1


def test_the_restart_metric_is_a_view_of_the_restart_records(tmp_path: Path) -> None:
    source = FakeGitSource()
    source.commit({"cluster.yaml": CLUSTER, "a.yaml": deployment("a", 8000)})
    n = Node(tmp_path, source)
    n.procs.fail_next_start(ENGINE_A, EngineStartFailed("a/0/engine: port 8000 is taken"))
    n.tick()
    record = n.inventory.current.restarts[KEY]
    assert record.total_restarts == 1 and record.failures == 1
    assert record.last_reason == "a/0/engine: port 8000 is taken"
    assert n.rec.restarts_total == {"a": 1}, "a failed start is a restart to come"
    n.tick()  # first failure: started again at once
    assert n.procs.start_count(ENGINE_A) == 1
    n.procs.set_health(ENGINE_A, "ready")
    n.tick()
    assert n.inventory.current.restarts[KEY].ready_since is not None
    # a stop that is not confirmed is no failure of the engine: nothing counted
    source.commit({"a.yaml": deployment("a", 8000, max_len=2048)}, subject="change")
    n.procs.fail_stops(ENGINE_A)
    n.tick()
    assert n.rec.last is not None and n.rec.last.errors
    assert n.inventory.current.restarts[KEY].total_restarts == 1
    assert n.rec.restarts_total == {"a": 1}
