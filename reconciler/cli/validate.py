"""`reconciler validate` and `reconciler schema`: read a cluster repo without touching a node."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from reconciler.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    Registry,
    cluster_roots,
    print_problems,
)
from reconciler.core.errors import InvalidDesiredState, Problem
from reconciler.desired.fit import check_fit, format_table
from reconciler.desired.loader import load_directory


def cmd_validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    reports = []
    for root in cluster_roots(Path(args.path)):
        try:
            state = load_directory(root)
        except InvalidDesiredState as exc:
            print_problems(exc.problems)
            print(f"{root}: INVALID, {len(exc.problems)} problem(s)", file=sys.stderr)
            reports.append(
                {"path": str(root), "valid": False, "problems": [p.__dict__ for p in exc.problems]}
            )
            status = EXIT_INVALID
            continue
        rows = check_fit(state)
        failing = [r for r in rows if r.fails]
        fit_problems = []
        for r in failing:
            file, line = state.sources.get(r.deployment, (str(root), 1))
            fit_problems.append(Problem(file, line, 1, "spec", f"does not fit: {r.detail}"))
        if args.format == "json":
            reports.append(
                {
                    "path": str(root),
                    "valid": not failing,
                    "cluster": state.cluster.metadata.name,
                    "fit": [r.__dict__ for r in rows],
                    "problems": [p.__dict__ for p in fit_problems],
                }
            )
        else:
            print(
                f"{root}: cluster {state.cluster.metadata.name!r}, "
                f"{len(state.cluster.spec.nodes)} node(s), "
                f"{len(state.deployments)} deployment(s)"
            )
            if rows:
                print(format_table(rows))
            print()
        if failing:
            print_problems(fit_problems)
            status = EXIT_INVALID
    if args.format == "json":
        print(json.dumps(reports, indent=2))
    return status


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
    handlers["validate"] = cmd_validate

    p = sub.add_parser("schema", help="print the JSON Schema of the documents")
    p.add_argument("kind", nargs="?", help="cluster, modeldeployment, nodeconfig or document")
    p.add_argument("--out", help="write every schema file into this directory")
    handlers["schema"] = cmd_schema
