"""The checks beyond schema and cross_checks, one module per category of mistake that
the schema accepts and a node would only fail on later (issue 13)."""

from __future__ import annotations

from reconciler.core.errors import Problem
from reconciler.desired.checks_args import check_extra_args
from reconciler.desired.checks_model import check_hub_id, check_parallel_split
from reconciler.desired.checks_names import check_names
from reconciler.desired.checks_network import check_network
from reconciler.desired.checks_ports import check_ports
from reconciler.desired.yaml_positions import Document
from schemas.v1alpha1 import Cluster, ModelDeployment


def more_checks(
    cluster_doc: Document,
    cluster: Cluster,
    deployments: list[tuple[Document, ModelDeployment]],
) -> list[Problem]:
    problems = check_network(cluster_doc, cluster) + check_ports(cluster_doc, cluster)
    for doc, dep in deployments:
        problems += check_extra_args(doc, dep)
        problems += check_hub_id(doc, dep)
        problems += check_parallel_split(doc, dep)
        problems += check_names(doc, cluster, dep)
    return problems
