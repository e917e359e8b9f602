"""What changes on every node between two revisions: the review of a pull request.

Per node, each member (engine, Ray head, Ray worker) that starts, stops or is replaced,
with the reason: the spec fields that moved its hash, the nodes a replica moves between,
why a replica no longer runs. Compares the converged states of both revisions (see
`converged`), so it does not depend on what any node happens to run now. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconciler.core.converged import ConvergedMember, node_members
from reconciler.core.launch import NodeContext
from reconciler.core.placement import place
from reconciler.core.spec_hash import changed_fields, hash_material
from reconciler.core.vocabulary import Desired, MemberKey, Placement, ReplicaKey

ChangeKind = Literal["start", "stop", "replace"]


@dataclass(frozen=True)
class Change:
    node: str
    kind: ChangeKind
    member: MemberKey
    detail: str


@dataclass(frozen=True)
class Move:
    replica: ReplicaKey
    before: tuple[str, ...]
    after: tuple[str, ...]


@dataclass(frozen=True)
class RevisionDiff:
    nodes: tuple[str, ...]  # every node of either revision, new revision's order first
    changes: tuple[Change, ...]
    moves: tuple[Move, ...]
    unschedulable: dict[ReplicaKey, str]  # in the new revision

    @property
    def empty(self) -> bool:
        return not self.changes and not self.moves


def diff_revisions(
    old: Desired | None, new: Desired, python: str = "python3", ray: str = "ray"
) -> RevisionDiff:
    old_pl = place(old) if old is not None else Placement({}, {})
    new_pl = place(new)
    new_nodes = [n.name for n in new.cluster.spec.nodes]
    old_nodes = [n.name for n in old.cluster.spec.nodes] if old is not None else []
    nodes = new_nodes + [n for n in old_nodes if n not in new_nodes]
    changes: list[Change] = []
    for node in nodes:
        ctx = NodeContext(name=node, python=python, ray=ray)
        before: dict[MemberKey, ConvergedMember] = {}
        after: dict[MemberKey, ConvergedMember] = {}
        if old is not None and node in old_nodes:
            before = {m.member: m for m in node_members(old, old_pl, ctx)}
        if node in new_nodes:
            after = {m.member: m for m in node_members(new, new_pl, ctx)}
        for member in sorted(set(before) | set(after)):
            a, b = before.get(member), after.get(member)
            if a is None and b is not None:
                changes.append(Change(node, "start", member, _why_start(member, old, old_pl)))
            elif b is None and a is not None:
                changes.append(Change(node, "stop", member, _why_stop(member, new, new_pl)))
            elif a is not None and b is not None:
                why = _why_replace(a, b, old, new)
                if why:
                    changes.append(Change(node, "replace", member, why))
    moves = tuple(
        Move(key, old_pl.replicas[key].nodes, p.nodes)
        for key, p in new_pl.replicas.items()
        if key in old_pl.replicas and set(old_pl.replicas[key].nodes) != set(p.nodes)
    )
    return RevisionDiff(tuple(nodes), tuple(changes), moves, dict(new_pl.unschedulable))


def _why_start(member: MemberKey, old: Desired | None, old_pl: Placement) -> str:
    key = member.replica
    if old is None:
        return "the base revision is not valid: everything starts"
    dep = old.deployments.get(key.deployment)
    if dep is None:
        return "new deployment"
    if dep.spec.suspend:
        return "deployment resumed (suspend removed)"
    if key.index >= dep.spec.replicas:
        return f"scaled up from {dep.spec.replicas} replica(s)"
    p = old_pl.replicas.get(key)
    if p is None:
        return f"was {old_pl.unschedulable.get(key, 'not placed')}; placed now"
    return f"moved here (was on {','.join(p.nodes)})"


def _why_stop(member: MemberKey, new: Desired, new_pl: Placement) -> str:
    key = member.replica
    dep = new.deployments.get(key.deployment)
    if dep is None:
        return "deployment removed"
    if dep.spec.suspend:
        return "deployment suspended"
    if key.index >= dep.spec.replicas:
        return f"scaled down to {dep.spec.replicas} replica(s)"
    p = new_pl.replicas.get(key)
    if p is None:
        return new_pl.unschedulable.get(key, "not placed")
    if member.role == "engine" or len(p.nodes) > 1:
        return f"moved to {','.join(p.nodes)}"
    return f"role changed (replica now on {','.join(p.nodes)})"


def _why_replace(a: ConvergedMember, b: ConvergedMember, old: Desired | None, new: Desired) -> str:
    la, lb = a.launch, b.launch
    if (la.argv, dict(la.env), la.gpus, la.port) == (lb.argv, dict(lb.env), lb.gpus, lb.port):
        return ""
    if la.spec_hash != lb.spec_hash and old is not None:
        name = la.member.replica.deployment
        fields = changed_fields(
            hash_material(old.cluster, old.deployments[name]),
            hash_material(new.cluster, new.deployments[name]),
        )
        what = ", ".join(fields) or "hash"
        return f"spec changed ({what}): hash {la.spec_hash} -> {lb.spec_hash}"
    pa, pb = a.placement, b.placement
    if pa.nodes != pb.nodes:
        return f"replica's nodes changed: {','.join(pa.nodes)} -> {','.join(pb.nodes)}"
    if pa.ray_block != pb.ray_block:
        return f"Ray port block {pa.ray_block} -> {pb.ray_block}"
    if la.gpus != lb.gpus:
        return f"GPUs {la.gpus} -> {lb.gpus}"
    return "command line or environment changed (node address or network)"
