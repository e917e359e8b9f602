"""Load a directory of desired-state YAML into a validated DesiredState.

All problems are collected (never just the first), each located by file, line,
column and field path. Nothing here raises on bad content except the final
InvalidDesiredState that carries them all.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler.core.errors import InvalidDesiredState, Problem
from reconciler.desired.parse_cache import ParseCache, ParsedDocument
from reconciler.desired.state import DesiredState
from reconciler.desired.yaml_positions import (
    Document,
    FieldPath,
    ReusedDocument,
    documents_of,
    read_documents,
)
from schemas.v1alpha1 import API_VERSION, KINDS, LOCK_FILE, Cluster, ModelDeployment

SKIP_DIRS = {".git", ".github", ".gitea", ".forgejo", "node_modules"}
# Every node reads and parses every YAML file of a revision, on every new revision: the
# limit keeps a path that holds more than desired state (a vendored tree, generated
# files) from costing each node minutes and gigabytes. One file per deployment at
# 10,000 deployments still fits. Node config `source.maxFiles`, CLI `--max-files`.
MAX_FILES = 10_000


def yaml_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found: list[Path] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel[:-1]):
            continue
        # the export leaves out symlinks and submodules: so does this, so that validate
        # and the daemon read the same files (validation reports what it skipped)
        if path.suffix in (".yaml", ".yml") and path.is_file() and not path.is_symlink():
            if path.name == LOCK_FILE:
                continue  # read by desired.placement_lock (validation flags misplaced ones)
            if any((root / Path(*rel[:i]) / ".git").exists() for i in range(1, len(rel))):
                continue
            found.append(path)
    return found


def _validation_problems(doc: Document, exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc: FieldPath = tuple(err["loc"])
        # pydantic reports the failing union member / validator name as a loc part; drop
        # parts that do not exist in the document so the path stays the user's.
        clean: list[str | int] = []
        for part in loc:
            if isinstance(part, str) and (
                part.startswith(("function-", "literal[", "union[")) or part == "[key]"
            ):
                continue
            clean.append(part)
        if any(tuple(clean[: len(bad)]) == bad for bad in doc.unreadable):
            continue  # the YAML reader already said why this value is missing
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see `reconciler schema`)"
        elif err["type"] == "missing":
            message = "required field is missing"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append(doc.problem(tuple(clean), message))
    return problems


def parse_documents(
    files: list[Path], kinds_seen: set[str] | None = None, cache: ParseCache | None = None
) -> tuple[list[tuple[Document, Cluster | ModelDeployment]], list[Problem]]:
    """Validate every document; `kinds_seen` collects the kind of each, valid or not.
    With `cache`, files whose bytes the previous load read cleanly are not parsed again."""
    parsed: list[tuple[Document, Cluster | ModelDeployment]] = []
    problems: list[Problem] = []
    for file in files:
        raw: bytes | None = None
        if cache is not None:
            try:
                raw = file.read_bytes()
            except OSError:
                raw = None  # read_documents words it
            reused = cache.get(raw) if raw is not None else None
            if raw is not None and reused is not None:
                for d in reused:
                    if kinds_seen is not None:
                        kinds_seen.add(d.kind)
                    parsed.append((ReusedDocument(file, d.index, raw, d.root), d.model))
                continue
        first_problem, first_parsed = len(problems), len(parsed)
        docs, file_problems = read_documents(file) if raw is None else documents_of(file, raw)
        problems.extend(file_problems)
        _validate_documents(docs, parsed, problems, kinds_seen)
        if cache is not None and raw is not None and len(problems) == first_problem:
            cache.put(raw, tuple(
                ParsedDocument(doc.index, doc.data["kind"], model, doc.where(()))
                for doc, model in parsed[first_parsed:]
            ))
    return parsed, problems


def _validate_documents(
    docs: list[Document],
    parsed: list[tuple[Document, Cluster | ModelDeployment]],
    problems: list[Problem],
    kinds_seen: set[str] | None,
) -> None:
    for doc in docs:
        if not isinstance(doc.data, dict):
            problems.append(
                doc.problem((), f"a document must be a mapping, not {_kind_of(doc.data)}")
            )
            continue
        api_version = doc.data.get("apiVersion")
        kind = doc.data.get("kind")
        if kinds_seen is not None and isinstance(kind, str):
            kinds_seen.add(kind)
        if api_version is None:
            problems.append(doc.problem((), "missing apiVersion"))
            continue
        if api_version != API_VERSION:
            problems.append(
                doc.problem(
                    ("apiVersion",),
                    f"unsupported apiVersion {api_version!r}; expected {API_VERSION!r}",
                )
            )
            continue
        if kind is None:
            problems.append(doc.problem((), "missing kind"))
            continue
        if kind not in KINDS:
            known = ", ".join(sorted(KINDS))
            problems.append(doc.problem(("kind",), f"unknown kind {kind!r}; known: {known}"))
            continue
        try:
            parsed.append((doc, KINDS[kind].model_validate(doc.data)))
        except ValidationError as exc:
            problems.extend(_validation_problems(doc, exc))


def _kind_of(value: Any) -> str:
    return "a list" if isinstance(value, list) else f"a {type(value).__name__} value"


def too_many_files(root: Path, count: int, limit: int) -> Problem:
    return Problem(
        str(root),
        1,
        1,
        "",
        f"{count} YAML files; the limit is {limit}. It keeps a folder that holds more than "
        "desired state (vendored or generated files) from costing every node the time and "
        "memory of parsing it on each revision. Point the source at the cluster's folder, "
        "or raise the limit: node config source.maxFiles, or --max-files",
    )


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Loading makes hundreds of thousands of small objects, none of them garbage cycles
    worth chasing; each of them would count toward a full collection, which walks every
    live object, the revision still in force included (a daemon holding 1,000 x 2,000
    loaded the next one 4x slower). Reference counting still frees everything; cycles
    (recursive aliases) wait for the next collection after this."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_directory(
    root: Path, revision: str = "local", max_files: int | None = None,
    cache: ParseCache | None = None,
) -> DesiredState:
    """Load and validate everything under `root`; raise InvalidDesiredState listing all problems.

    `max_files`: refuse more YAML files than this (default MAX_FILES). `cache`: what the
    previous load of the same caller made of each file (see parse_cache)."""
    with no_cyclic_gc():
        return _load_directory(root, revision, max_files, cache)


def _load_directory(
    root: Path, revision: str, max_files: int | None, cache: ParseCache | None
) -> DesiredState:
    from reconciler.desired.cross_checks import cross_check

    if not root.exists():
        raise InvalidDesiredState([Problem(str(root), 1, 1, "", "path does not exist")])
    files = yaml_files(root)
    if not files:
        raise InvalidDesiredState([Problem(str(root), 1, 1, "", "no .yaml or .yml files found")])
    limit = MAX_FILES if max_files is None else max_files
    if len(files) > limit:
        raise InvalidDesiredState([too_many_files(root, len(files), limit)])
    kinds_seen: set[str] = set()
    if cache is not None:
        cache.begin()
    parsed, problems = parse_documents(files, kinds_seen, cache)
    if cache is not None:
        cache.end()
    clusters = [(d, m) for d, m in parsed if isinstance(m, Cluster)]
    deployments = [(d, m) for d, m in parsed if isinstance(m, ModelDeployment)]
    # an invalid Cluster document was already reported: "no Cluster" would only mislead
    if not clusters and "Cluster" not in kinds_seen:
        problems.append(
            Problem(str(root), 1, 1, "", "no Cluster document found (need exactly one)")
        )
    for doc, _ in clusters[1:]:
        first = clusters[0][0]
        problems.append(
            doc.problem(
                ("kind",),
                f"a second Cluster document; the first is at {first.file}:{first.where(())[0]}",
            )
        )
    seen: dict[str, Document] = {}
    for doc, dep in deployments:
        name = dep.metadata.name
        if name in seen:
            other = seen[name]
            problems.append(
                doc.problem(
                    ("metadata", "name"),
                    f"duplicate ModelDeployment name {name!r}; also at "
                    f"{other.file}:{other.where(('metadata', 'name'))[0]}",
                )
            )
        else:
            seen[name] = doc
    if clusters:
        cluster_doc, cluster = clusters[0]
        problems.extend(
            cross_check(cluster_doc, cluster, [(seen[n], d) for n, d in _unique(deployments)])
        )
    if problems:
        raise InvalidDesiredState(problems)
    cluster = clusters[0][1]
    ordered = dict(sorted(_unique(deployments)))
    sources = {name: (str(seen[name].file), seen[name].where(())[0]) for name in ordered}
    return DesiredState(revision=revision, cluster=cluster, deployments=ordered, sources=sources)


def _unique(
    deployments: list[tuple[Document, ModelDeployment]],
) -> list[tuple[str, ModelDeployment]]:
    out: dict[str, ModelDeployment] = {}
    for _, dep in deployments:
        out.setdefault(dep.metadata.name, dep)
    return list(out.items())
