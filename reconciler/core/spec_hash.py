"""The spec hash: a replica is replaced exactly when something its processes receive
changes.

The material is what reaches the engine's and Ray's argv and environment: the model
reference and served name, parallelism, executor, the engine settings and env, the port,
the Cluster's network settings, engine defaults and Ray port layout, the drain timeout
(vLLM's --shutdown-timeout). Fields that reach no process (replica count, the rest of
rollout, probes, suspend, placement, the fit estimate's weightsDtype and architecture,
spec.fit) are left out, so editing them never restarts an engine. Node addresses and
the Ray block index are placement, not spec: a move shows as a move.

Fields that joined the material later enter it only when they differ from their old
value (`_LATER`), so that upgrading the daemon restarts no engine whose inputs did not
change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from schemas.v1alpha1 import Cluster, ModelDeployment

HASH_LENGTH = 12
# name -> the value every earlier hash implied (it was not in the material then)
_LATER: dict[str, Any] = {"rayPortsStart": 20000, "drainTimeoutSeconds": None}
# weightsDtype was in the material before it was known to reach no process: its old
# default stands in for it, so the hash neither moves on upgrade nor when it is edited
_WEIGHTS_DTYPE_PLACEHOLDER = "auto"


def hash_material(cluster: Cluster, dep: ModelDeployment) -> dict[str, Any]:
    spec = dep.spec
    model = spec.model.model_dump(mode="json", exclude={"architecture"})
    model["weights_dtype"] = _WEIGHTS_DTYPE_PLACEHOLDER
    material: dict[str, Any] = {
        "model": model,
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
    # the drain timeout reaches vLLM as --shutdown-timeout (the rest of rollout reaches
    # no process)
    later = {"rayPortsStart": cluster.spec.ports.ray.start,
             "drainTimeoutSeconds": spec.rollout.drain_timeout_seconds}
    for key, value in later.items():
        if value != _LATER[key]:
            material[key] = value
    return material


def spec_hash(cluster: Cluster, dep: ModelDeployment) -> str:
    blob = json.dumps(
        hash_material(cluster, dep), sort_keys=True, separators=(",", ":")
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:HASH_LENGTH]


def changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the material's leaves that differ (what made a hash change)."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = prefix + (key if prefix.endswith("env.") else _camel(key))  # env: verbatim
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out


def _camel(key: str) -> str:
    """The field's name as written in YAML (the material uses pydantic's snake_case)."""
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
