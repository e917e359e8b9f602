"""`reconciler diff`: what a pull request changes on every node.

Both revisions are exported from the repository the way the daemon exports one, the new
one is validated in full (the same check_revision as validate, plan and the daemon), and
the converged states are compared per node: members that start, stop or are replaced
(naming the spec fields that moved the hash), and replicas that move between nodes.
Exit 0 no change, 1 changes, 2 the new revision is invalid (or a revision is unknown).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from reconciler.cli.common import EXIT_CHANGES, EXIT_INVALID, EXIT_OK, Registry, cluster_roots
from reconciler.core.placement import place
from reconciler.core.printable import escape_controls
from reconciler.core.revision_diff import RevisionDiff, diff_revisions
from reconciler.core.vocabulary import Placement
from reconciler.desired.placement_lock import lock_of
from reconciler.desired.state import DesiredState
from reconciler.desired.validation import check_revision


def _relocate(text: str, tree: Path, shown: Path) -> str:
    return text.replace(str(tree), str(shown))


def lock_is_stale(state: DesiredState, placement: Placement) -> bool:
    return dict(state.placement_lock) != lock_of(placement)


def render(diff: RevisionDiff, name: str, stale_lock: bool, notes: list[str]) -> list[str]:
    lines = [f"cluster {name}:"]
    lines += [f"  note: {n}" for n in notes]
    if diff.moves:
        lines.append("  moves:")
        for m in diff.moves:
            lines.append(
                f"    {m.replica}: {','.join(m.before)} -> {','.join(m.after)}"
                + (" (the whole replica restarts: its members share one fate)"
                   if len(m.after) > 1 else "")
            )
    if diff.unschedulable:
        lines.append("  not running in the new revision:")
        for key, reason in sorted(diff.unschedulable.items()):
            lines.append(f"    {key}: {escape_controls(reason)}")
    for node in diff.nodes:
        mine = [c for c in diff.changes if c.node == node]
        if not mine:
            lines.append(f"  node {node}: no changes")
            continue
        lines.append(f"  node {node}:")
        sign = {"start": "+ start  ", "stop": "- stop   ", "replace": "~ replace"}
        for c in mine:
            what = f"{c.member.replica} {c.member.role}"
            lines.append(f"    {sign[c.kind]} {what}  ({escape_controls(c.detail)})")
    if stale_lock:
        lines.append(
            "  note: placement.lock.yaml does not match this placement: run `reconciler "
            "lock` and commit it (until then replicas are less sticky, never misplaced)"
        )
    return lines


def to_json(diff: RevisionDiff, stale_lock: bool) -> dict[str, Any]:
    return {
        "changes": not diff.empty,
        "staleLock": stale_lock,
        "moves": [
            {"replica": str(m.replica), "from": list(m.before), "to": list(m.after)}
            for m in diff.moves
        ],
        "unschedulable": {str(k): v for k, v in sorted(diff.unschedulable.items())},
        "nodes": {
            node: [
                {"action": c.kind, "member": str(c.member), "detail": c.detail}
                for c in diff.changes
                if c.node == node
            ]
            for node in diff.nodes
        },
    }


def cmd_diff(args: argparse.Namespace) -> int:
    from reconciler.desired.revisions import RevisionError, export_revision

    repo = Path(args.repo)
    shown = repo / args.path if args.path != "." else repo
    with tempfile.TemporaryDirectory(prefix="reconciler-diff-") as scratch:
        try:
            old_sha, old_tree = export_revision(repo, args.from_rev, args.path, Path(scratch) / "a")
            new_sha, new_tree = export_revision(repo, args.to_rev, args.path, Path(scratch) / "b")
        except RevisionError as exc:
            print(f"error: {escape_controls(str(exc))}", file=sys.stderr)
            return EXIT_INVALID
        status = EXIT_OK
        reports = []
        for root in cluster_roots(new_tree):
            rel = root.relative_to(new_tree)
            verdict = check_revision(root, revision=new_sha)
            if verdict.state is None:
                for p in verdict.problems:
                    print(f"error: {_relocate(str(p), new_tree, shown)}", file=sys.stderr)
                where = _relocate(str(root), new_tree, shown)
                print(f"{where}: INVALID, {len(verdict.problems)} problem(s)", file=sys.stderr)
                status = EXIT_INVALID
                continue
            notes: list[str] = []
            old_root = old_tree / rel
            old_state = None
            if old_root.is_dir():
                old_verdict = check_revision(old_root, revision=old_sha)
                old_state = old_verdict.state
                if old_state is None:
                    notes.append(
                        f"the base revision {old_sha[:12]} is invalid here "
                        f"({len(old_verdict.problems)} problem(s)): compared with nothing"
                    )
            else:
                notes.append(f"{rel} does not exist at {old_sha[:12]}: compared with nothing")
            diff = diff_revisions(old_state, verdict.state)
            stale = lock_is_stale(verdict.state, place(verdict.state))
            if not diff.empty and status == EXIT_OK:
                status = EXIT_CHANGES
            name = verdict.state.cluster.metadata.name
            if args.format == "json":
                reports.append(
                    {"cluster": name, "from": old_sha, "to": new_sha, **to_json(diff, stale),
                     "notes": notes}
                )
            else:
                print(f"diff {old_sha[:12]}..{new_sha[:12]}")
                print("\n".join(render(diff, name, stale, notes)))
        if args.format == "json":
            print(json.dumps(reports, indent=2))
        return status


def register(sub: Any, handlers: Registry) -> None:
    p = sub.add_parser(
        "diff",
        help="what a change between two revisions does on every node "
        "(exit 0 none, 1 changes, 2 invalid)",
    )
    p.add_argument("--repo", required=True, help="a git working clone of the cluster repo")
    p.add_argument("--from", dest="from_rev", required=True, help="base revision")
    p.add_argument("--to", dest="to_rev", required=True, help="new revision")
    p.add_argument("--path", default=".", help="the cluster directory inside the repo")
    p.add_argument("--format", choices=["text", "json"], default="text")
    handlers["diff"] = cmd_diff
