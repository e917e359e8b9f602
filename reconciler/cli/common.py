"""What every command group shares: exit codes, the handler type, problem printing.

Exit codes: 0 ok / no changes, 1 changes (plan, diff), 2 invalid input or error (the Flux /
Argo CD diff convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler.core.errors import InvalidDesiredState, Problem
from reconciler.desired.state import DesiredState
from reconciler.desired.validation import validate_revision

EXIT_OK = 0
EXIT_CHANGES = 1
EXIT_INVALID = 2

Handler = Callable[[argparse.Namespace], int]
Registry = dict[str, Handler]


def cluster_roots(path: Path) -> list[Path]:
    """A repo holding several clusters keeps each under clusters/<name>/."""
    clusters = path / "clusters"
    if path.is_dir() and clusters.is_dir():
        roots = sorted(p for p in clusters.iterdir() if p.is_dir() and not p.name.startswith("."))
        if roots:
            return roots
    return [path]


def add_max_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-files", type=int, default=None, metavar="N",
        help="refuse a repo with more YAML files than this (default: the node config's "
        "default, 10,000); every node parses every file of each revision",
    )


def print_problems(problems: Sequence[Problem]) -> None:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)


def load_or_report(path: Path, max_files: int | None = None) -> DesiredState | None:
    try:
        return validate_revision(path, max_files=max_files)
    except InvalidDesiredState as exc:
        print_problems(exc.problems)
        return None
