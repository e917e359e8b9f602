"""Which other nodes this node asks for their /status each tick: those whose answers can
change its own plan, and no others.

A peer's answer is read by the plan in exactly three places, all about replicas led by
another node:
- a follower of a multi-node replica (Ray worker or vLLM mp rank) reads its leader's
  head/engine to form, share fate and report the replica's state (fate_sharing.py,
  plan._led_status);
- a follower's member being stopped waits for its leader's engine to drain
  (drain.py), also when the replica is no longer placed on it;
- a RollingUpdate reads whether the deployment's earlier replicas are ready at the new
  hash before replacing this node's old-hash member (rollout._ready_at), and those are
  led by whichever nodes the placement put them on.
Everything else is this node's own processes. Asking every node of the Cluster instead
costs each tick one request per node, so a cluster of N nodes makes N^2 requests a tick.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.core.vocabulary import Desired, Placement, ProcessObservation, ReplicaKey


def peers_to_ask(desired: Desired, placement: Placement, node: str,
                 running: Iterable[ProcessObservation] = ()) -> tuple[str, ...]:
    """The leaders, other than `node`, of the replicas `node`'s plan reads; sorted, each
    once. `running`: this node's processes; the leader each was launched under is asked
    too, so a follower of a replica no longer placed here (deleted, moved) can wait for
    its leader's engine to drain before it leaves (core/drain.py)."""
    leaders: set[str] = {p.leader for p in running if p.running and p.leader}
    for p in placement.on_node(node):
        if p.leader != node:
            leaders.add(p.leader)
        dep = desired.deployments.get(p.key.deployment)
        if dep is None or dep.spec.rollout.strategy != "RollingUpdate":
            continue
        for index in range(p.key.index):
            earlier = placement.replicas.get(ReplicaKey(p.key.deployment, index))
            if earlier is not None:
                leaders.add(earlier.leader)
    leaders.discard(node)
    return tuple(sorted(leaders))
