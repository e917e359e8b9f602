"""Properties of placement and planning over generated clusters (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Inventory,
    MemberKey,
    ObservedState,
    PeerReplica,
    ProcessObservation,
    RayView,
    Start,
)
from reconciler.desired.state import DesiredState
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def clusters(draw: st.DrawFn) -> DesiredState:
    n_nodes = draw(st.integers(1, 5))
    sizes = [draw(st.sampled_from([1, 2, 4, 8])) for _ in range(n_nodes)]
    nodes = [node(f"n{i}", gpus=g, pool="a" if i % 2 else "b") for i, g in enumerate(sizes)]
    c = cluster(*nodes)
    deps = []
    port = 8000
    for j in range(draw(st.integers(0, 5))):
        tp = draw(st.sampled_from([1, 2, 4, 8]))
        pp = draw(st.sampled_from([1, 1, 2]))
        replicas = draw(st.integers(0, 3))
        selector = draw(st.sampled_from([None, {"pool": "a"}, {"pool": "b"}]))
        spec: dict[str, object] = {
            "replicas": replicas,
            "parallelism": {"tensor": tp, "pipeline": pp},
            "engine": {"maxModelLen": draw(st.sampled_from([1024, 2048]))},
        }
        if selector:
            spec["placement"] = {"nodeSelector": selector}
        deps.append(deployment(f"d{j}", port=port, **spec))
        port += 4
    return desired(c, *deps)


@given(clusters())
@SETTINGS
def test_placement_never_overcommits_declared_gpus(state: DesiredState) -> None:
    placement = place(state)
    used: dict[str, int] = {}
    for p in placement.replicas.values():
        assert len(set(p.nodes)) == len(p.nodes)
        for n in p.nodes:
            used[n] = used.get(n, 0) + p.gpus_per_node
    for n in state.cluster.spec.nodes:
        assert used.get(n.name, 0) <= n.gpus.count
    blocks = [p.ray_block for p in placement.replicas.values() if p.ray_block is not None]
    assert len(blocks) == len(set(blocks))


def _observed(state: DesiredState, name: str) -> ObservedState:
    decl = next(n for n in state.cluster.spec.nodes if n.name == name)
    return ObservedState(node=name, gpus=gpus(decl.gpus.count), processes={})


@given(clusters())
@SETTINGS
def test_plan_is_deterministic(state: DesiredState) -> None:
    for n in state.cluster.spec.nodes:
        a = plan(state, _observed(state, n.name), Inventory(), 5.0, ctx(n.name))
        b = plan(state, _observed(state, n.name), Inventory(), 5.0, ctx(n.name))
        assert a == b


@given(clusters())
@SETTINGS
def test_no_gpu_claimed_twice_on_a_node(state: DesiredState) -> None:
    for n in state.cluster.spec.nodes:
        p = plan(state, _observed(state, n.name), Inventory(), 0.0, ctx(n.name))
        claimed = [g for a in p.actions if isinstance(a, Start) for g in a.launch.gpus]
        assert len(claimed) == len(set(claimed))
        assert all(0 <= g < n.gpus.count for g in claimed)


def _run(state: DesiredState, name: str, obs: ObservedState, started: list[Start]) -> ObservedState:
    """Pretend every Start came up healthy, as a converged node would report."""
    procs = dict(obs.processes)
    for s in started:
        procs[s.member] = ProcessObservation(
            member=s.member, spec_hash=s.launch.spec_hash, pid=1000 + len(procs),
            running=True, started_at=0.0, port=s.launch.port, gpus=s.launch.gpus,
            health="ready",
        )
    return replace(obs, processes=procs)


@given(clusters())
@SETTINGS
def test_applying_a_plan_then_replanning_converges(state: DesiredState) -> None:
    placement = place(state)
    for n in state.cluster.spec.nodes:
        obs = _observed(state, n.name)
        for _ in range(4):  # ray head -> ray view -> engine, at most a few rounds
            p = plan(state, obs, Inventory(), 0.0, ctx(n.name))
            starts = [a for a in p.actions if isinstance(a, Start)]
            if not starts:
                break
            obs = _run(state, n.name, obs, starts)
            # what the other nodes and Ray would report once everyone converged
            peers = {}
            ray = {}
            for key, rp in placement.replicas.items():
                if rp.multi_node:
                    h = spec_hash(state.cluster, state.deployments[key.deployment])
                    peers[key] = PeerReplica(h, ready=True, head_up=True)
                    ray[key] = RayView(tuple(rp.nodes), float(rp.gpus_per_node * len(rp.nodes)))
            obs = replace(obs, peers=peers, ray=ray)
        final = plan(state, obs, Inventory(), 0.0, ctx(n.name))
        assert final.empty, [getattr(a, "reason", a) for a in final.actions]
        for key, rp in placement.replicas.items():
            if n.name in rp.nodes and not rp.multi_node:
                assert MemberKey(key, "engine") in obs.processes
