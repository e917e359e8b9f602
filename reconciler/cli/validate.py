"""`reconciler validate` and `reconciler schema`: read a cluster repo without touching a node."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from reconciler.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    Registry,
    add_max_files,
    cluster_roots,
    print_problems,
)
from reconciler.core.printable import escape_controls
from reconciler.desired.fit import format_table
from reconciler.desired.validation import check_revision


def cmd_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    reports = []
    for root in cluster_roots(Path(args.path)):
        verdict = check_revision(root, max_files=args.max_files)
        rows = list(verdict.fit)
        if args.format == "json":
            reports.append(
                {
                    "path": str(root),
                    "valid": verdict.valid,
                    "cluster": verdict.loaded.cluster.metadata.name if verdict.loaded else None,
                    "fit": [r.__dict__ for r in rows],
                    "problems": [p.__dict__ for p in verdict.problems],
                }
            )
        elif verdict.loaded is not None:
            state = verdict.loaded
            print(
                f"{root}: cluster {state.cluster.metadata.name!r}, "
                f"{len(state.cluster.spec.nodes)} node(s), "
                f"{len(state.deployments)} deployment(s)"
            )
            if rows:
                print(format_table(rows))
            print()
        for note in uncommitted(root):
            print(f"note: {escape_controls(note)}", file=sys.stderr)
        if not verdict.valid:
            print_problems(verdict.problems)
            print(f"{root}: INVALID, {len(verdict.problems)} problem(s)", file=sys.stderr)
            status = EXIT_INVALID
    if args.format == "json":
        print(json.dumps(reports, indent=2))
    return status


def uncommitted(root: Path) -> list[str]:
    """YAML files under `root` that git does not have as they are here: the daemon reads
    the committed revision, so validating a working tree can pass on files no node sees."""
    if not root.is_dir():
        return []
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain=v1", "-z", "--ignored",
             "--untracked-files=all", "--", "."],
            capture_output=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []  # not a git working tree: nothing to compare with
    notes = []
    for entry in proc.stdout.decode("utf-8", "replace").split("\0"):
        if len(entry) < 4 or not entry.endswith((".yaml", ".yml")):
            continue
        code, name = entry[:2], entry[3:]
        what = {"??": "not committed", "!!": "ignored by git"}.get(code, "changed since the "
                                                                      "last commit")
        notes.append(f"{name} is {what}: the daemon reads only what is committed")
    return notes


def cmd_schema(args: argparse.Namespace) -> int:
    from schemas.generate import json_schemas, render

    schemas = json_schemas()
    if args.kind:
        name = f"{args.kind.lower()}.schema.json"
        if name not in schemas:
            known = ", ".join(sorted(n.split(".")[0] for n in schemas))
            print(f"error: unknown kind {args.kind!r} (known: {known})", file=sys.stderr)
            return EXIT_INVALID
        sys.stdout.write(render(schemas[name]))
        return EXIT_OK
    if args.out:
        from schemas.generate import write

        for path in write(Path(args.out)):
            print(path)
        return EXIT_OK
    sys.stdout.write(render(schemas["document.schema.json"]))
    return EXIT_OK


def register(sub: Any, handlers: Registry) -> None:
    p = sub.add_parser("validate", help="check a cluster repo: schema, cross-checks, model fit")
    p.add_argument("path", help="cluster directory, or a repo with clusters/<name>/ folders")
    p.add_argument("--format", choices=["table", "json"], default="table")
    add_max_files(p)
    handlers["validate"] = cmd_validate

    p = sub.add_parser("schema", help="print the JSON Schema of the documents")
    p.add_argument("kind", nargs="?", help="cluster, modeldeployment, nodeconfig or document")
    p.add_argument("--out", help="write every schema file into this directory")
    handlers["schema"] = cmd_schema
