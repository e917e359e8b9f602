"""`reconciler logs`: the command-line stand-in for GPUStack's log viewer (`reconciler chat`,
the Playground's, is in reconciler.cli.gateway)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.core.vocabulary import MemberKey, ReplicaKey

Handler = Callable[[argparse.Namespace], int]


def _state_dir(args: argparse.Namespace) -> Path:
    from reconciler.desired.node_config import load_node_config

    return load_node_config(Path(args.config)).state_dir


def cmd_logs(args: argparse.Namespace) -> int:
    member = MemberKey(ReplicaKey(args.deployment, args.replica), args.role)
    path = _state_dir(args) / "logs" / f"{member.slug}.log"
    if not path.exists():
        print(f"error: no log for {member} at {path} (does this node run it?)", file=sys.stderr)
        return 2
    with path.open("rb") as fh:
        if args.tail:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - args.tail * 200))
            lines = fh.read().splitlines()[-args.tail :]
            sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
        else:
            sys.stdout.buffer.write(fh.read())
        sys.stdout.flush()
        while args.follow:
            chunk = fh.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if path.stat().st_size < fh.tell():  # rotated: start over on the new file
                fh.close()
                return cmd_logs(argparse.Namespace(**{**vars(args), "tail": 0}))
            time.sleep(0.5)
    return 0


def register(sub: Any, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser("logs", help="show an engine's log (-f to follow)")
    p.add_argument("deployment")
    p.add_argument("--replica", type=int, default=0)
    p.add_argument("--role", choices=["engine", "ray-head", "ray-worker"], default="engine")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-n", "--tail", type=int, default=0, help="only the last N lines")
    p.add_argument("--config", default="/etc/reconciler/node.yaml")
    handlers["logs"] = cmd_logs

    # `chat` lives in reconciler.cli.gateway (through the gateway when one is configured)
