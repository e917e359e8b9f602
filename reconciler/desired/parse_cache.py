"""Reuse what the last load made of files a new revision did not change.

A push usually changes one file; a daemon loads the whole revision again, and parsing
YAML is most of that (at 1,000 nodes x 2,000 deployments in 20 files, ~0.6 s of ~0.9 s).
A file whose bytes equal those of a file the previous load read cleanly (no problem, every
document valid) gives the same documents and the same models, wherever it now lies: its
models are reused (they are frozen), and its positions are found again only if a check of
the new revision needs one (reconciler.desired.yaml_positions.ReusedDocument). Everything
that looks across files (names, ports, placement, fit) still runs on the whole revision.

Only the files of the latest load are kept: their bytes and models, about the size of the
revision's text, as its models are held by the revision in force anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.v1alpha1 import Cluster, ModelDeployment


@dataclass(frozen=True)
class ParsedDocument:
    index: int  # within its file
    kind: str
    model: Cluster | ModelDeployment
    root: tuple[int, int]  # the document's own line and column


class ParseCache:
    """Owned by one loader at a time (the daemon's source sync: its worker thread)."""

    def __init__(self) -> None:
        self._kept: dict[bytes, tuple[ParsedDocument, ...]] = {}
        self._next: dict[bytes, tuple[ParsedDocument, ...]] = {}
        self.hits = 0  # files reused by the latest load
        self.misses = 0

    def begin(self) -> None:
        self._next = {}
        self.hits = self.misses = 0

    def get(self, raw: bytes) -> tuple[ParsedDocument, ...] | None:
        found = self._kept.get(raw)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._next[raw] = found
        return found

    def put(self, raw: bytes, docs: tuple[ParsedDocument, ...]) -> None:
        self._next[raw] = docs

    def end(self) -> None:
        """The latest load's clean files replace the previous load's."""
        self._kept, self._next = self._next, {}
