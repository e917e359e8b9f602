"""diff_revisions: per node, what starts, stops or is replaced, and why (pure)."""

from __future__ import annotations

from reconciler.core.revision_diff import diff_revisions
from reconciler.core.vocabulary import ReplicaKey
from testrigs.builders import cluster, deployment, desired, node


def _changes(old: object, new: object) -> list[tuple[str, str, str, str]]:
    d = diff_revisions(old, new)  # type: ignore[arg-type]
    return [(c.node, c.kind, str(c.member), c.detail) for c in d.changes]


C = cluster(node("n0", 4), node("n1", 4))


def test_same_revision_changes_nothing() -> None:
    s = desired(C, deployment("a", replicas=2, parallelism={"tensor": 4}))
    d = diff_revisions(s, s)
    assert d.empty and not d.unschedulable


def test_replace_names_the_fields_that_moved_the_hash() -> None:
    old = desired(C, deployment("a", engine={"maxModelLen": 1024}))
    new = desired(C, deployment("a", engine={"maxModelLen": 2048}))
    ((_, kind, member, detail),) = _changes(old, new)
    assert (kind, member) == ("replace", "a/0/engine")
    assert detail.startswith("spec changed (engine.maxModelLen): hash ")


def test_fields_no_process_sees_replace_nothing() -> None:
    old = desired(C, deployment("a"))
    new = desired(C, deployment(
        "a", model={"path": "/models/a", "servedName": "a", "weightsDtype": "bfloat16"},
        fit={"override": True, "reason": "measured"}, rollout={"strategy": "Recreate"},
    ))
    assert diff_revisions(old, new).empty


def test_start_and_stop_say_why() -> None:
    old = desired(C, deployment("a", replicas=2, parallelism={"tensor": 2}),
                  deployment("gone", port=8010))
    new = desired(C, deployment("a", replicas=1, parallelism={"tensor": 2}),
                  deployment("new", port=8020))
    details = {(k, m): d for _, k, m, d in _changes(old, new)}
    assert details[("stop", "a/1/engine")] == "scaled down to 1 replica(s)"
    assert details[("stop", "gone/0/engine")] == "deployment removed"
    assert details[("start", "new/0/engine")] == "new deployment"


def test_unschedulable_in_the_new_revision_is_reported() -> None:
    old = desired(C, deployment("a", parallelism={"tensor": 4, "pipeline": 2}))
    drained = cluster(node("n0", 4), {**node("n1", 4), "drain": True})
    new = desired(drained, deployment("a", parallelism={"tensor": 4, "pipeline": 2}))
    d = diff_revisions(old, new)
    reason = d.unschedulable[ReplicaKey("a", 0)]
    assert "only 1 of 2 matching nodes take replicas (n1 drained)" in reason
    assert {(c.node, c.kind) for c in d.changes} == {("n0", "stop"), ("n1", "stop")}
