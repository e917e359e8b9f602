"""Small builders of desired and observed states for plan tests."""

from __future__ import annotations

from typing import Any

from reconciler.core.launch import NodeContext
from reconciler.core.vocabulary import (
    GpuInventory,
    GpuObservation,
    MemberKey,
    ObservedState,
    PeerReplica,
    ProcessObservation,
    RayView,
    ReplicaKey,
)
from reconciler.desired.state import DesiredState
from schemas.v1alpha1 import Cluster, ModelDeployment

API = "reconciler.dev/v1alpha1"


def node(name: str, gpus: int = 8, ip: str | None = None, **labels: str) -> dict[str, Any]:
    index = int("".join(ch for ch in name if ch.isdigit()) or "0")
    return {
        "name": name,
        "address": ip or f"198.18.0.{10 + index}",
        "labels": labels,
        "gpus": {"count": gpus, "model": "NVIDIA H100 80GB HBM3", "memoryGib": 80},
    }


def cluster(*nodes: dict[str, Any], **spec: Any) -> Cluster:
    return Cluster.model_validate(
        {
            "apiVersion": API,
            "kind": "Cluster",
            "metadata": {"name": "test"},
            "spec": {"nodes": list(nodes), **spec},
        }
    )


def deployment(name: str, port: int = 8000, **spec: Any) -> ModelDeployment:
    body: dict[str, Any] = {
        "model": {"path": f"/models/{name}", "servedName": name},
        "port": port,
    }
    body.update(spec)
    return ModelDeployment.model_validate(
        {"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": name}, "spec": body}
    )


def desired(c: Cluster, *deps: ModelDeployment, revision: str = "r1") -> DesiredState:
    return DesiredState(
        revision=revision, cluster=c, deployments={d.metadata.name: d for d in sorted(
            deps, key=lambda d: d.metadata.name)}
    )


def gpus(count: int, pids: dict[int, tuple[int, ...]] | None = None,
         memory_gib: float = 80, name: str = "NVIDIA H100 80GB HBM3") -> GpuInventory:
    pids = pids or {}
    return GpuInventory(
        gpus=tuple(
            GpuObservation(index=i, uuid=f"GPU-{i}", name=name,
                           memory_total_mib=int(memory_gib * 1024),
                           process_pids=pids.get(i, ()))
            for i in range(count)
        )
    )


def proc(deployment_name: str, index: int = 0, role: str = "engine", *, spec_hash: str,
         health: str = "ready", running: bool = True, gpus: tuple[int, ...] = (0,),
         port: int = 8000, started_at: float = 0.0, pid: int = 1000,
         exit_code: int | None = None, unhealthy_since: float | None = None,
         drain_s: float | None = None, leader: str = "") -> ProcessObservation:
    return ProcessObservation(
        member=MemberKey(ReplicaKey(deployment_name, index), role),  # type: ignore[arg-type]
        spec_hash=spec_hash, pid=pid, running=running, started_at=started_at, port=port,
        gpus=gpus, health=health, exit_code=exit_code,  # type: ignore[arg-type]
        unhealthy_since=unhealthy_since, drain_s=drain_s, leader=leader,
    )


def observed(node_name: str, gpu_inv: GpuInventory, *procs: ProcessObservation,
             foreign: frozenset[int] = frozenset(),
             peers: dict[ReplicaKey, PeerReplica] | None = None,
             ray: dict[ReplicaKey, RayView] | None = None,
             answered: frozenset[str] = frozenset()) -> ObservedState:
    return ObservedState(
        node=node_name, gpus=gpu_inv, processes={p.member: p for p in procs},
        foreign_pids=foreign, peers=peers or {}, ray=ray or {}, peers_answered=answered,
    )


def ctx(name: str) -> NodeContext:
    return NodeContext(name=name, python="/opt/vllm/bin/python", ray="/opt/vllm/bin/ray")
