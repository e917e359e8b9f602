"""`reconciler plan`: what a node will run once the revision is applied, and what it does
next, as a readable diff.

For every member the node will run (engine, Ray head, Ray worker) it shows the exact argv,
the environment the daemon sets (secrets masked), the GPUs and ports; then the order in
which each of its replicas forms across the cluster; then the next actions from the given
state. Without --state-dir the node is assumed empty (nothing running) with the GPUs its
Cluster entry declares: the view a pull request reviewer wants. A node that will start,
replace or stop anything exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.cli.node_view import DEFAULT_CONFIG, config_for, node_view
from reconciler.cli.show import member_json, member_lines
from reconciler.core.converged import ConvergedMember, node_members, replica_steps
from reconciler.core.launch import NodeContext
from reconciler.core.placement import place
from reconciler.core.plan import plan
from reconciler.core.printable import escape_controls
from reconciler.core.vocabulary import (
    Drain,
    MarkReady,
    ObservedState,
    Placement,
    Plan,
    Reap,
    Start,
    Stop,
)
from reconciler.desired.state import DesiredState

Handler = Callable[[argparse.Namespace], int]


def as_the_node_does(m: ConvergedMember, observed: ObservedState, p: Plan) -> ConvergedMember:
    """The converged member on the GPUs this node gives it: the next tick's Start, or the
    running process's GPUs (kept), not the ideal 0..n numbering of an empty node."""
    start = next((a for a in p.actions if isinstance(a, Start) and a.member == m.member), None)
    if start is not None:
        return replace(m, launch=start.launch)
    proc = observed.processes.get(m.member)
    if (proc is not None and proc.running and proc.spec_hash == m.launch.spec_hash
            and proc.gpus != m.launch.gpus and m.launch.gpus):
        env = {**m.launch.env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, proc.gpus))}
        return replace(m, launch=replace(m.launch, gpus=proc.gpus, env=env))
    return m


def member_status(m: ConvergedMember, observed: ObservedState) -> str:
    proc = observed.processes.get(m.member)
    if proc is None or not proc.running:
        return "start"
    return "keep" if proc.spec_hash == m.launch.spec_hash else "replace"


def render_actions(p: Plan) -> list[str]:
    lines = []
    for action in p.actions:
        if isinstance(action, Start):
            lines.append(f"    + start {action.member}  ({action.reason})")
        elif isinstance(action, Stop):
            lines.append(f"    - stop  {action.member}  ({action.reason})")
        elif isinstance(action, Reap):
            lines.append(f"    x forget {action.member}  ({action.reason})")
        elif isinstance(action, Drain):
            lines.append(f"    ~ drain {action.member}  ({action.reason})")
        elif isinstance(action, MarkReady):
            lines.append(f"    . {action.reason}")
    return [escape_controls(line) for line in lines] or ["    nothing to do this tick"]


def render_node(
    node: str,
    desired: DesiredState,
    members: list[tuple[ConvergedMember, str]],
    steps: list[str],
    p: Plan,
    changes: bool,
) -> str:
    to_do = sum(1 for _, s in members if s != "keep")
    head = f"node {node}, revision {desired.revision}: "
    head += f"runs {len(members)} member(s), {to_do} to start or replace" if members else (
        "runs nothing"
    )
    lines = [head + ("" if changes else "; no changes")]
    for m, status in members:
        lines += member_lines(m, status)
    if steps:
        lines.append("  order (cluster-wide, for the replicas on this node):")
        lines += [f"    {i}. {escape_controls(s)}" for i, s in enumerate(steps, start=1)]
    lines.append("  next tick from the given state:")
    lines += render_actions(p)
    for key, s in p.replicas.items():
        if s.state == "Pending":
            lines.append(f"  replica {key}: {escape_controls(s.reason)}")
    for note in p.notes:
        lines.append(f"  note: {escape_controls(note)}")
    return "\n".join(lines)


def render_placement(placement: Placement) -> str:
    lines = [
        "placement (every node computes the same):",
        f"  {'REPLICA':<28} {'NODES':<30} {'GPUS/NODE':<10} {'PORT':<6} RAY BLOCK",
    ]
    for key, p in placement.replicas.items():
        block = "-" if p.ray_block is None else str(p.ray_block)
        lines.append(
            f"  {key!s:<28} {','.join(p.nodes):<30} {p.gpus_per_node:<10} {p.port:<6} {block}"
        )
    for key, reason in sorted(placement.unschedulable.items()):
        lines.append(f"  {key!s:<28} {escape_controls(reason)}")
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    from reconciler.cli.common import EXIT_CHANGES, EXIT_INVALID, EXIT_OK, load_or_report
    from reconciler.desired.node_config import InvalidNodeConfig

    desired = load_or_report(Path(args.repo), args.max_files)
    if desired is None:
        return EXIT_INVALID
    names = [n.name for n in desired.cluster.spec.nodes]
    nodes = names if args.all_nodes else [args.node]
    if not args.all_nodes and args.node not in names:
        print(
            f"error: node {escape_controls(args.node)!r} is not in the Cluster "
            f"(known: {', '.join(names)})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    placement = place(desired)
    changes = False
    out: list[dict[str, Any]] = []
    if args.all_nodes and args.format == "text":
        print(render_placement(placement))
        print()
    now = args.now if args.now is not None else time.time()
    # On the node itself (its node config names it) plan sees what the daemon sees: NVML
    # or the simulated GPUs, managedGpus, its state dir, foreign processes. Elsewhere the
    # GPUs are the Cluster's declaration. The output says which.
    try:
        config, where = (None, "--all-nodes") if args.all_nodes else config_for(
            args.node, Path(args.config) if args.config else None)
    except InvalidNodeConfig as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for node in nodes:
        state_dir = Path(args.state_dir) if args.state_dir and not args.all_nodes else None
        view = node_view(desired, node, config, where, state_dir)
        inventory, observed = view.inventory, view.observed
        ctx = view.ctx or NodeContext(name=node, python=args.engine_python, ray=args.engine_ray)
        p = plan(desired, observed, inventory, now, ctx, placement=placement)
        members = [(as_the_node_does(m, observed, p), member_status(m, observed))
                   for m in node_members(desired, placement, ctx)]
        seen: set[str] = set()
        steps: list[str] = []
        for m, _ in members:
            if str(m.placement.key) not in seen:
                seen.add(str(m.placement.key))
                steps += replica_steps(desired, m.placement)
        node_changes = not p.empty or any(s != "keep" for _, s in members)
        changes = changes or node_changes
        if args.format == "json":
            out.append(
                {
                    "node": node,
                    "revision": desired.revision,
                    "observed": view.source,
                    "changes": node_changes,
                    "members": [member_json(m, s) for m, s in members],
                    "steps": steps,
                    "actions": [_action_json(a) for a in p.actions],
                    "replicas": {
                        str(k): {"state": s.state, "reason": s.reason, "nodes": list(s.nodes)}
                        for k, s in p.replicas.items()
                    },
                    "notes": list(p.notes),
                }
            )
        else:
            print(f"node {node}: {escape_controls(view.source)}")
            print(render_node(node, desired, members, steps, p, node_changes))
    if args.format == "json":
        print(json.dumps(out, indent=2))
    return EXIT_CHANGES if changes else EXIT_OK


def _action_json(action: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type(action).__name__, "reason": action.reason}
    if isinstance(action, Start):
        data.update(
            member=str(action.member),
            argv=list(action.launch.argv),
            gpus=list(action.launch.gpus),
            port=action.launch.port,
        )
    elif isinstance(action, Stop | Reap | Drain):
        data["member"] = str(action.member)
    return data


def register(sub: Any, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser(
        "plan",
        help="what a node will run (argv, env, GPUs, ports) and do next "
        "(exit 0 no changes, 1 changes, 2 error)",
    )
    p.add_argument("--repo", required=True, help="cluster directory (one Cluster document)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--node", help="the node to plan for")
    group.add_argument("--all-nodes", action="store_true", help="every node, plus placement")
    p.add_argument("--state-dir", help="read what the node runs from this state dir")
    p.add_argument(
        "--config",
        help=f"this host's node config (default {DEFAULT_CONFIG} if present): when it names "
        "--node, plan reads the GPUs (NVML) and the state dir as that node's daemon does",
    )
    from reconciler.cli.common import add_max_files

    add_max_files(p)
    p.add_argument("--engine-python", default="python3", help="engine venv's python")
    p.add_argument("--engine-ray", default="ray", help="engine venv's ray")
    p.add_argument("--now", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--format", choices=["text", "json"], default="text")
    handlers["plan"] = cmd_plan
