"""The placement lock file (placement.lock.yaml beside the Cluster document).

Read as part of a revision (its problems refuse the revision like any document's);
written only by `reconciler lock`. The file is data about the revision's own placement,
so reading it never needs anything but the revision.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml
from pydantic import ValidationError

from reconciler.core.errors import Problem
from reconciler.core.vocabulary import LockedPlacement, Placement, ReplicaKey
from reconciler.desired.loader import _validation_problems
from reconciler.desired.yaml_positions import read_documents
from schemas.v1alpha1 import API_VERSION, LOCK_FILE, PlacementLock

HEADER = """\
# Written by `reconciler lock`; commit it with the change that moved anything.
# Daemons keep each replica below on these nodes (and Ray port block) while that stays
# valid; `reconciler lock --check` fails when this file is stale.
"""


def lock_path(root: Path) -> Path:
    return (root if root.is_dir() else root.parent) / LOCK_FILE


def read_lock(root: Path) -> tuple[dict[ReplicaKey, LockedPlacement], list[Problem]]:
    """The lock of the cluster directory `root`: entries, or the problems of its file."""
    path = lock_path(root)
    if path.is_symlink():
        return {}, [Problem(str(path), 1, 1, "", "a symbolic link: the daemon's git export "
                            "does not follow symlinks; commit the file itself")]
    if not path.is_file():
        return {}, []
    docs, problems = read_documents(path)
    if problems:
        return {}, problems
    if len(docs) != 1:
        return {}, [Problem(str(path), 1, 1, "", "a lock file holds exactly one document")]
    doc = docs[0]
    try:
        lock = PlacementLock.model_validate(doc.data)
    except ValidationError as exc:
        return {}, _validation_problems(doc, exc)
    out = {
        ReplicaKey.parse(key): LockedPlacement(tuple(entry.nodes), entry.ray_block)
        for key, entry in lock.replicas.items()
    }
    return out, []


def lock_of(placement: Placement) -> dict[ReplicaKey, LockedPlacement]:
    return {
        key: LockedPlacement(p.nodes, p.ray_block) for key, p in placement.replicas.items()
    }


def render_lock(entries: Mapping[ReplicaKey, LockedPlacement]) -> str:
    replicas: dict[str, dict[str, object]] = {}
    for key in sorted(entries):
        entry = entries[key]
        item: dict[str, object] = {"nodes": list(entry.nodes)}
        if entry.ray_block is not None:
            item["rayBlock"] = entry.ray_block
        replicas[str(key)] = item
    body = {"apiVersion": API_VERSION, "kind": "PlacementLock", "replicas": replicas}
    return HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=100)
