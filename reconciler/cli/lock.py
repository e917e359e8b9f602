"""`reconciler lock`: write or check placement.lock.yaml beside the Cluster document.

The lock records where each replica is placed now (nodes, Ray port block), computed from
the revision and its current lock, so locked replicas stay and new ones are added.
`--check` exits 1 when the file differs from what would be written (a stale lock: a pull
request gate), 2 when the revision is invalid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler.cli.common import (
    EXIT_CHANGES,
    EXIT_INVALID,
    EXIT_OK,
    Registry,
    cluster_roots,
    print_problems,
)
from reconciler.core.placement import place
from reconciler.desired.placement_lock import lock_of, lock_path, render_lock
from reconciler.desired.validation import check_revision
from reconciler.ports.files import atomic_write


def cmd_lock(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for root in cluster_roots(Path(args.repo)):
        verdict = check_revision(root)
        if verdict.state is None:
            print_problems(verdict.problems)
            print(f"{root}: INVALID, {len(verdict.problems)} problem(s)", file=sys.stderr)
            status = EXIT_INVALID
            continue
        entries = lock_of(place(verdict.state))
        text = render_lock(entries)
        path = lock_path(root)
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if args.check:
            if current == text:
                print(f"{path}: up to date ({len(entries)} replica(s))")
                continue
            old = dict(verdict.state.placement_lock)
            changed = sorted(
                k for k in set(old) | set(entries) if old.get(k) != entries.get(k)
            )
            what = ", ".join(str(k) for k in changed[:5]) or "formatting"
            print(
                f"{path}: stale ({'missing' if current is None else what}); run "
                f"`reconciler lock {args.repo}` and commit it",
                file=sys.stderr,
            )
            if status == EXIT_OK:
                status = EXIT_CHANGES
            continue
        if current != text:
            atomic_write(path, text.encode())
            print(f"wrote {path} ({len(entries)} replica(s))")
        else:
            print(f"{path}: up to date ({len(entries)} replica(s))")
    return status


def register(sub: Any, handlers: Registry) -> None:
    p = sub.add_parser(
        "lock",
        help="write placement.lock.yaml (--check: exit 1 when it is stale)",
    )
    p.add_argument("repo", help="cluster directory, or a repo with clusters/<name>/ folders")
    p.add_argument("--check", action="store_true", help="only check; exit 1 when stale")
    handlers["lock"] = cmd_lock
