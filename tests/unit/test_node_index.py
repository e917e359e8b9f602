"""The label index answers exactly what a scan of every node answers, and the per-rule
numbers (GPU counts, slots, names, memory) are those of the nodes it returns."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.core.topology import candidate_nodes, node_stats
from schemas.v1alpha1 import Cluster, ModelDeployment, Node
from testrigs.builders import cluster, deployment

LABELS = st.dictionaries(st.sampled_from(["pool", "rack", "gpu"]),
                         st.sampled_from(["a", "b", "c"]), max_size=3)
NODES = st.lists(st.tuples(LABELS, st.sampled_from([0, 1, 2, 4, 8]),
                           st.sampled_from([24.0, 40.0, 80.0])), min_size=1, max_size=30)
RULES = st.one_of(
    st.builds(lambda s: {"nodeSelector": s}, LABELS),
    st.builds(lambda ns: {"nodes": ns}, st.lists(st.sampled_from(
        [f"n{i}" for i in range(35)]), min_size=1, max_size=5, unique=True)),
)


def _cluster(spec: list[tuple[dict[str, str], int, float]]) -> Cluster:
    nodes: list[dict[str, Any]] = []
    for i, (labels, count, mem) in enumerate(spec):
        nodes.append({"name": f"n{i}", "address": f"198.18.1.{i + 1}", "labels": labels,
                      "gpus": {"count": count, "memoryGib": mem}})
    return cluster(*nodes)


def _scan(c: Cluster, dep: ModelDeployment) -> list[Node]:
    placement = dep.spec.placement
    if placement.nodes is not None:
        return [n for n in c.spec.nodes if n.name in set(placement.nodes)]
    selector = placement.node_selector or {}
    return [n for n in c.spec.nodes
            if all(n.labels.get(k) == v for k, v in selector.items())]


@settings(max_examples=200, deadline=None)
@given(spec=NODES, rules=st.lists(RULES, min_size=1, max_size=6),
       per_node=st.sampled_from([1, 2, 4, 8]))
def test_same_as_a_scan(spec: list[tuple[dict[str, str], int, float]],
                        rules: list[dict[str, Any]], per_node: int) -> None:
    c = _cluster(spec)
    for i, rule in enumerate(rules * 2):  # twice: the second round comes from the cache
        dep = deployment(f"d{i}", placement=rule)
        got = candidate_nodes(c, dep)
        want = _scan(c, dep)
        assert list(got) == want
        stats = node_stats(c, got)
        assert stats.counts == [n.gpus.count for n in want]
        assert stats.names == {n.name for n in want}
        assert stats.slots(per_node) == sum(n.gpus.count // per_node for n in want)
        eligible = [n.gpus.memory_gib for n in want if n.gpus.count >= per_node]
        assert stats.min_memory_gib(per_node) == (min(eligible) if eligible else 0.0)


def test_a_new_cluster_object_gets_its_own_index() -> None:
    dep = deployment("d", placement={"nodeSelector": {"pool": "a"}})
    first = _cluster([({"pool": "a"}, 8, 80.0), ({"pool": "b"}, 8, 80.0)])
    second = _cluster([({"pool": "b"}, 8, 80.0), ({"pool": "a"}, 8, 80.0)])
    assert [n.name for n in candidate_nodes(first, dep)] == ["n0"]
    assert [n.name for n in candidate_nodes(second, dep)] == ["n1"]
    assert [n.name for n in candidate_nodes(first, dep)] == ["n0"]


def test_stats_of_other_sequences_are_computed_afresh() -> None:
    c = _cluster([({}, 8, 80.0), ({}, 2, 40.0)])
    nodes = list(c.spec.nodes)
    assert node_stats(c, nodes).slots(2) == 5
    assert node_stats(c, nodes[1:]).slots(2) == 1
