"""The spec hash: a replica is replaced exactly when something its engine sees changes.

Fields that do not reach the engine (replica count, rollout strategy, probe periods,
suspend, placement) are left out, so editing them never restarts a running engine.
"""

from __future__ import annotations

import hashlib
import json

from schemas.v1alpha1 import Cluster, ModelDeployment

HASH_LENGTH = 12


def spec_hash(cluster: Cluster, dep: ModelDeployment) -> str:
    spec = dep.spec
    material = {
        "model": spec.model.model_dump(mode="json", exclude={"architecture"}),
        "parallelism": spec.parallelism.model_dump(mode="json"),
        "executor": spec.executor,
        "engine": spec.engine.model_dump(mode="json"),
        "port": spec.port,
        "network": cluster.spec.network.model_dump(mode="json"),
        "defaults": cluster.spec.engine_defaults.model_dump(
            mode="json", exclude={"startup_timeout_seconds"}
        ),
        "rayBlockSize": cluster.spec.ports.ray_block_size,
    }
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:HASH_LENGTH]
