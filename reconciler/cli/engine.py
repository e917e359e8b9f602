"""`reconciler logs` and `reconciler chat`: the command-line stand-ins for GPUStack's log
viewer and Playground. Both find the engine through the local daemon's /status."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.core.vocabulary import MemberKey, ReplicaKey

Handler = Callable[[argparse.Namespace], int]


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=5) as resp:  # noqa: S310
        data = json.loads(resp.read())
    if not isinstance(data, dict):
        raise ValueError("status is not an object")
    return data


def _daemon_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    from reconciler.desired.node_config import load_node_config

    config = load_node_config(Path(args.config))
    host = config.listen.address
    if host in ("0.0.0.0", "::"):  # noqa: S104 (we connect, not bind)
        host = "127.0.0.1"
    return f"http://{host}:{config.listen.port}"


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


def cmd_chat(args: argparse.Namespace) -> int:
    from reconciler.ports.openai_client import ChatError, chat

    status = _status(_daemon_url(args))
    served = next(
        (d["servedName"] for d in status.get("deployments", []) if d["name"] == args.deployment),
        None,
    )
    if served is None:
        print(f"error: no deployment {args.deployment!r} in the applied revision", file=sys.stderr)
        return 2
    ready = [
        r for r in status.get("replicas", [])
        if r["deployment"] == args.deployment and r["state"] == "Ready" and r.get("port")
    ]
    if not ready:
        print(f"error: no Ready replica of {args.deployment!r} yet", file=sys.stderr)
        return 2
    replica = ready[0]
    host = replica.get("address") or status.get("address") or "127.0.0.1"
    base = f"http://{host}:{replica['port']}"
    try:
        result = chat(base, served, args.prompt, timeout=args.timeout)
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.text)
    ttft = "n/a" if result.ttft_s is None else f"{result.ttft_s * 1000:.0f} ms"
    print(f"-- {args.deployment}/{replica['index']} at {base}: time to first token {ttft}, "
          f"total {result.total_s:.2f} s", file=sys.stderr)
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

    p = sub.add_parser("chat", help="one chat request to a deployment, with time to first token")
    p.add_argument("deployment")
    p.add_argument("prompt")
    p.add_argument("--config", default="/etc/reconciler/node.yaml")
    p.add_argument("--url", help="the daemon's address instead of reading --config")
    p.add_argument("--timeout", type=float, default=120)
    handlers["chat"] = cmd_chat
