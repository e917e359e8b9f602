"""One validation for every entry point: `validate`, `plan`, `diff`, `lock` and the
daemon's loading of a revision all call `check_revision`, so the same revision is
accepted or refused everywhere with the same messages.

A revision is refused when any document, cross-check, lock file or fit estimate fails.
A deployment that does not fit refuses the whole revision (the last good one stays in
force) rather than being held alone: a revision is reviewed and merged as one change,
and a partly applied revision would run a mix no reviewer saw. An operator who knows
better sets `spec.fit.override` with a reason, shown in validate's table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.errors import InvalidDesiredState, Problem
from reconciler.core.printable import escape_fields
from reconciler.desired.fit import FitRow, check_fit
from reconciler.desired.loader import SKIP_DIRS, load_directory, no_cyclic_gc
from reconciler.desired.model_config import one_read_each
from reconciler.desired.parse_cache import ParseCache
from reconciler.desired.placement_lock import read_lock
from reconciler.desired.state import DesiredState
from schemas.v1alpha1 import LOCK_FILE

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Verdict:
    """What validation found: the state when valid, else the problems (never both)."""

    state: DesiredState | None
    problems: tuple[Problem, ...]
    fit: tuple[FitRow, ...] = ()
    loaded: DesiredState | None = None  # the documents, when they load (fit may still fail)

    @property
    def valid(self) -> bool:
        return self.state is not None


def check_revision(
    root: Path, revision: str = "local", max_files: int | None = None,
    cache: ParseCache | None = None,
) -> Verdict:
    """`cache`: a caller that loads revision after revision (the daemon) keeps one, so
    that files a revision did not change are not parsed again (see parse_cache)."""
    # no_cyclic_gc: see there (a full collection walks the revision in force too)
    with no_cyclic_gc(), one_read_each():
        return _check_revision(root, revision, max_files, cache)


def _check_revision(
    root: Path, revision: str, max_files: int | None, cache: ParseCache | None
) -> Verdict:
    problems = file_problems(root)
    try:
        state = load_directory(root, revision=revision, max_files=max_files, cache=cache)
    except InvalidDesiredState as exc:
        return Verdict(None, _clean(problems + list(exc.problems)))
    lock, lock_problems = read_lock(root)
    problems += lock_problems
    rows = tuple(check_fit(state))
    for row in rows:
        if row.fails:
            file, line = state.sources.get(row.deployment, (str(root), 1))
            problems.append(
                Problem(
                    file,
                    line,
                    1,
                    "spec",
                    f"does not fit: {row.detail}; give it more or larger GPUs, a smaller "
                    "dtype or max model len, or set spec.fit.override with a reason if you "
                    "know it fits",
                )
            )
    if problems:
        return Verdict(None, _clean(problems), rows, state)
    return Verdict(
        DesiredState(
            revision=state.revision,
            cluster=state.cluster,
            deployments=state.deployments,
            sources=state.sources,
            placement_lock=lock,
        ),
        (),
        rows,
        state,
    )


def validate_revision(
    root: Path, revision: str = "local", max_files: int | None = None,
    cache: ParseCache | None = None,
) -> DesiredState:
    """The validated state of the revision under `root`; InvalidDesiredState otherwise."""
    verdict = check_revision(root, revision, max_files, cache)
    if verdict.state is None:
        raise InvalidDesiredState(list(verdict.problems))
    return verdict.state


def _clean(problems: list[Problem]) -> tuple[Problem, ...]:
    return tuple(
        sorted({escape_fields(p, "file", "field", "message") for p in problems})
    )


def file_problems(root: Path) -> list[Problem]:
    """Files that look like desired state but that neither validate nor the daemon reads.

    The daemon's git export leaves out symlinks and submodules, and both read only
    `.yaml`/`.yml` (lowercase): anything else would be a silent difference between what a
    reviewer sees in the repo and what runs.
    """
    if not root.is_dir():
        return []
    problems: list[Problem] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel = here.relative_to(root).parts
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel):
            dirnames[:] = []
            continue
        if rel and (".git" in filenames or ".git" in dirnames):
            problems.append(
                Problem(str(here), 1, 1, "", "a git submodule or nested repository: the "
                        "daemon's export leaves it out; commit its files in this repo")
            )
            dirnames[:] = []
            continue
        for name in sorted(dirnames + filenames):
            path = here / name
            if name.startswith("."):
                continue
            if path.is_symlink():
                problems.append(
                    Problem(str(path), 1, 1, "", f"a symbolic link (to {os.readlink(path)}): "
                            "the daemon's git export leaves symlinks out; commit the file "
                            "itself")
                )
                continue
            if name == LOCK_FILE and rel:
                problems.append(
                    Problem(str(path), 1, 1, "", "a placement lock below the cluster "
                            f"directory is not read; keep {LOCK_FILE} at its top")
                )
                continue
            suffix = Path(name).suffix
            if suffix.lower() in YAML_SUFFIXES and suffix not in YAML_SUFFIXES:
                problems.append(
                    Problem(str(path), 1, 1, "", f"extension {suffix!r}: only lowercase "
                            ".yaml and .yml files are read; rename it")
                )
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    return problems
