"""The desired state of one revision: its documents, loaded and validated.

The core never imports this module: it reads a revision through the structural
`reconciler.core.vocabulary.Desired` protocol, which this dataclass satisfies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.core.vocabulary import LockedPlacement, ReplicaKey
from schemas.v1alpha1 import Cluster, ModelDeployment


@dataclass(frozen=True)
class DesiredState:
    """One revision's documents, validated. `deployments` is ordered by name."""

    revision: str
    cluster: Cluster
    deployments: Mapping[str, ModelDeployment]
    sources: Mapping[str, tuple[str, int]] = field(default_factory=dict)  # name -> file, line
    # placement.lock.yaml beside the Cluster document: where replicas stay while valid
    placement_lock: Mapping[ReplicaKey, LockedPlacement] = field(default_factory=dict)
