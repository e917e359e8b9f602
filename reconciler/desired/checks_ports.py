"""Ports the schema accepts but the nodes cannot use: a daemon's status port inside the
Ray range, and Ray blocks too small for the port layout of one Ray cluster."""

from __future__ import annotations

from reconciler.core.errors import Problem
from reconciler.core.ray_argv import MIN_WORKER_PORTS, RESERVED_PORTS
from reconciler.desired.yaml_positions import Document
from schemas.v1alpha1 import Cluster

MIN_RAY_BLOCK = RESERVED_PORTS + MIN_WORKER_PORTS


def check_ports(cluster_doc: Document, cluster: Cluster) -> list[Problem]:
    problems: list[Problem] = []
    ports = cluster.spec.ports
    for i, node in enumerate(cluster.spec.nodes):
        if node.status_port in ports.ray:
            problems.append(
                cluster_doc.problem(
                    ("spec", "nodes", i, "statusPort"),
                    f"status port {node.status_port} lies inside the Ray port range "
                    f"{ports.ray.start}-{ports.ray.end}: a Ray replica placed here would "
                    "collide with the daemon; pick a port outside the engine and Ray ranges",
                )
            )
    if ports.ray_block_size < MIN_RAY_BLOCK:
        problems.append(
            cluster_doc.problem(
                ("spec", "ports", "rayBlockSize"),
                f"{ports.ray_block_size} ports per Ray block; one Ray cluster needs at least "
                f"{MIN_RAY_BLOCK} ({RESERVED_PORTS} fixed + {MIN_WORKER_PORTS} worker ports): "
                f"set rayBlockSize to {MIN_RAY_BLOCK} or more",
            )
        )
    return problems
