"""Names that fit the schema but not where they are used downstream.

A multi-node Ray replica carries `<deployment>-<index>` as a Ray node label, and Ray
label values are at most 63 characters: a 63-character deployment name passes the schema
and then makes every plan for the replica fail.
"""

from __future__ import annotations

from reconciler.core.errors import Problem
from reconciler.core.topology import ReplicaShape, replica_shape
from reconciler.desired.yaml_positions import Document
from schemas.v1alpha1 import Cluster, ModelDeployment

RAY_LABEL_MAX = 63


def check_names(doc: Document, cluster: Cluster, dep: ModelDeployment) -> list[Problem]:
    problems: list[Problem] = []
    name = dep.metadata.name
    replicas = dep.spec.replicas
    if replicas and dep.spec.executor == "ray":
        shape = replica_shape(cluster, dep)
        if isinstance(shape, ReplicaShape) and shape.nodes > 1:
            label = f"{name}-{replicas - 1}"
            if len(label) > RAY_LABEL_MAX:
                keep = RAY_LABEL_MAX - 1 - len(str(replicas - 1))
                problems.append(
                    doc.problem(
                        ("metadata", "name"),
                        f"the Ray node label {label!r} of the last replica is {len(label)} "
                        f"characters, Ray allows {RAY_LABEL_MAX}; shorten the name to at "
                        f"most {keep} characters",
                    )
                )
    served = dep.spec.model.served_name
    if any(ch.isspace() or not ch.isprintable() for ch in served):
        problems.append(
            doc.problem(
                ("spec", "model", "servedName"),
                "contains whitespace or a control character: clients must send it verbatim "
                "as the model id; use letters, digits and '-', '_', '.', '/', ':'",
            )
        )
    return problems
