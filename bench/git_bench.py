"""Push -> new revision loaded and planned, through a real daemon process and a real git
server (git smart HTTP on loopback): woken by a signed webhook, and by polling at 1 s.

Run: .venv/bin/python bench/git_bench.py [--pushes 10]
"Loaded and planned" = the daemon's /status shows a finished tick at the pushed revision.
For comparison: Flux polls sources every minute by default, Argo CD every 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from reconciler.daemon.webhook_auth import hmac_sha256_hex
from testrigs.gitserver import HttpGitServer, Operator, free_port, isolated_git_env

REPO = Path(__file__).resolve().parents[1]

SECRET = "bench-webhook-secret"
CLUSTER = """\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {name: bench}
spec:
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {count: 0, memoryGib: 1}
      statusPort: 19990
"""


def deployment(n: int) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: chat}}
spec:
  model: {{path: /models/chat, servedName: chat}}
  port: 8000
  suspend: true   # planned, never started: the benchmark times the source path
  engine: {{maxModelLen: {1000 + n}}}
"""


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def webhook(port: int) -> None:
    body = b'{"ref": "refs/heads/main"}'
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhook", data=body, method="POST",
        headers={"X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(SECRET.encode(), body),
                 "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=2) as r:
        r.read()


def run(mode: str, pushes: int, work: Path) -> list[float]:
    env = isolated_git_env(work / "home")
    server = HttpGitServer(work / f"srv-{mode}", env)
    server.start()
    try:
        server.create_repo("cluster")
        op = Operator(work / f"op-{mode}", server.url("cluster"), env)
        op.commit_and_push({"cluster.yaml": CLUSTER, "chat.yaml": deployment(0)}, "init")
        port = free_port()
        (work / "secret").write_text(SECRET)
        config = {
            "nodeName": "n0",
            "source": {"url": server.url("cluster"), "branch": "main",
                       "pollIntervalSeconds": 1 if mode == "poll 1 s" else 3600},
            "stateDir": str(work / f"state-{mode}"),
            "listen": {"address": "127.0.0.1", "port": port},
            "webhook": {"secretFile": str(work / "secret")},
            "engine": {"python": sys.executable},
            "resyncIntervalSeconds": 3600,
        }
        cfg = work / f"node-{mode}.yaml"
        cfg.write_text(json.dumps(config))
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--config", str(cfg)], cwd=REPO,
            stdout=(work / f"daemon-{mode}.log").open("wb"), stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        )
        try:
            wait_for(port, op.head(), 60)
            times = []
            for n in range(1, pushes + 1):
                op.commit_and_push({"chat.yaml": deployment(n)}, f"change {n}")
                sha = op.head()
                t0 = time.perf_counter()
                if mode == "webhook":
                    webhook(port)
                wait_for(port, sha, 30)
                times.append(time.perf_counter() - t0)
                time.sleep(0.3)
            return times
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    finally:
        server.stop()


def wait_for(port: int, sha: str, limit: float) -> None:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        try:
            tick = status(port).get("lastTick") or {}
            if tick.get("revision") == sha:
                return
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"revision {sha[:12]} not planned within {limit} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pushes", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="git-bench-"))
    print("| trigger | pushes | median ms | p90 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("webhook", "poll 1 s"):
        t = sorted(run(mode, args.pushes, work))
        p90 = t[int(0.9 * (len(t) - 1))]
        print(f"| {mode} | {len(t)} | {statistics.median(t) * 1000:.0f} | {p90 * 1000:.0f} | "
              f"{t[-1] * 1000:.0f} |")


if __name__ == "__main__":
    main()
