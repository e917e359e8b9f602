"""maxSurge: a single-node replica's new engine starts beside the old one. Pure.

For one replica of a deployment with rollout.maxSurge 1, when its spec changes:
 1. the old engine serves at the old hash: a surge engine (role "surge") starts at the
    new hash on free GPUs of the same node and the surge port (spec.port + replicas);
    the old one serves on;
 2. the surge engine is Ready: the old engine is retired (drained first when
    drainTimeoutSeconds is set): the replica shows Draining, and gateways send its
    traffic to the surge engine (routing reads the members of a replica that is not
    Ready);
 3. the replica's own engine starts at the new hash in place (its port, its GPUs);
 4. once that is Ready the surge engine is no longer wanted and is retired the same way.
Without free GPUs, or with the surge port held by someone else, the replica is replaced
in place as without surge. Multi-node replicas are always replaced in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from reconciler.core.members import Wanted
from reconciler.core.vocabulary import MemberKey, ObservedState, ReplicaKey
from schemas.v1alpha1 import ModelDeployment


def surge_port(dep: ModelDeployment) -> int:
    """The port after the replicas' own (topology.port_block claims it)."""
    return dep.spec.port + max(dep.spec.replicas, 1)


def surge_key(replica: ReplicaKey) -> MemberKey:
    return MemberKey(replica, "surge")


def wanted_surges(wanted: Mapping[MemberKey, Wanted], observed: ObservedState,
                  usable: frozenset[int]) -> dict[MemberKey, Wanted]:
    """The surge engines this node should run now."""
    held = {g for p in observed.processes.values() if p.running for g in p.gpus}
    free = len(usable - held)
    out: dict[MemberKey, Wanted] = {}
    for m, w in sorted(wanted.items()):
        if m.role != "engine" or w.placement.multi_node or w.dep.spec.rollout.max_surge < 1:
            continue
        engine = observed.processes.get(m)
        sk = surge_key(m.replica)
        surge = observed.processes.get(sk)
        surge_new = surge is not None and surge.running and surge.spec_hash == w.spec_hash
        running = engine is not None and engine.running
        new_ready = running and engine is not None and engine.spec_hash == w.spec_hash \
            and engine.health == "ready"
        old_serving = running and engine is not None and engine.spec_hash != w.spec_hash \
            and engine.health == "ready"
        port = surge_port(w.dep)
        if surge_new and not new_ready:
            want = True  # serving (or loading) until the replica's own engine is Ready
        elif (old_serving and not surge_new and free >= w.gpus_needed
              and port not in observed.busy_ports):
            want = True
            free -= w.gpus_needed
        else:
            want = False
        if want:
            out[sk] = Wanted(sk, replace(w.placement, port=port), w.dep, w.spec_hash,
                             w.gpus_needed)
    return out


def holds_old(member: MemberKey, surges: Mapping[MemberKey, Wanted],
              observed: ObservedState) -> bool:
    """The old engine of this replica keeps serving: its surge is wanted, not Ready yet."""
    sk = surge_key(member.replica)
    if member.role != "engine" or sk not in surges:
        return False
    p = observed.processes.get(sk)
    return not (p is not None and p.running and p.health == "ready"
                and p.spec_hash == surges[sk].spec_hash)
