"""The whole path a revision takes, at 10/100/1,000 nodes x 20/200/2,000 deployments.

Run: .venv/bin/python bench/revision_bench.py [--repeat 5] [--pushes 5] [--skip-daemon]

1. Files on disk -> loaded and validated (schema, cross-checks, fit table: the
   `check_revision` that validate, plan and the daemon call) -> placement -> one node's
   plan, in a fresh interpreter per size so that memory is that revision's. Repos as
   testrigs/big_repo.py writes them (bench/plan_bench.py's shape on disk), in 20
   deployment files and one file per deployment. The "plan" column alone is what
   bench/plan_bench.py times (placement + that node's actions, in memory).
2. `reconciler validate` (the CLI, interpreter start included) at 1,000 x 2,000.
3. A real daemon (`python -m reconciler run`, stand-in engines) fed by a real git server
   over smart HTTP: its RSS holding the 1,000 x 2,000 revision, and push -> planned
   (signed webhook; "planned" = /status shows a finished tick at the pushed revision).
   All of it runs in a network namespace of its own where the 999 other nodes' addresses
   (198.19.0.0/16) are local and one stand-in answers /status for each of them (a whole
   NodeStatus document naming that node), so any peer the daemon asks answers as in a real
   cluster. It asks only those its plan reads (reconciler/core/peer_choice.py): n0 holds
   single-node replicas of one-replica deployments here, so none.
4. `reconciler status --cluster` over 200 stand-in peers on loopback, 10 of them stalled.
Prints Markdown tables; medians from one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from reconciler.daemon.webhook_auth import hmac_sha256_hex
from testrigs.big_repo import write_repo
from testrigs.gitserver import HttpGitServer, Operator, free_port, isolated_git_env
from testrigs.standin_peers import StandInPeers

REPO = Path(__file__).resolve().parents[1]
SIZES = [(10, 20), (100, 200), (1000, 2000)]
SHAPES = {"20 files": 20, "1 file each": 0}
PAGE = os.sysconf("SC_PAGE_SIZE")
SECRET = "bench-webhook-secret"


def rss_mib(pid: int | str = "self") -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# --- 1. in one fresh interpreter per size ------------------------------------------------


def one_size(root: Path, repeat: int) -> dict[str, float]:
    """Runs in a child: load+validate, plan, memory held by the loaded revision."""
    from reconciler.core.plan import plan
    from reconciler.core.vocabulary import Inventory, ObservedState
    from reconciler.desired.validation import check_revision
    from testrigs.builders import ctx, gpus

    obs = ObservedState(node="n0", gpus=gpus(8), processes={})
    gc.collect()
    before = rss_mib()
    loads, plans, totals = [], [], []
    held: list[Any] = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        verdict = check_revision(root)
        t1 = time.perf_counter()
        state = verdict.state
        assert state is not None, verdict.problems[:3]
        plan(state, obs, Inventory(), 0.0, ctx("n0"))
        t2 = time.perf_counter()
        loads.append(t1 - t0)
        plans.append(t2 - t1)
        totals.append(t2 - t0)
        if not held:
            held.append(state)
            gc.collect()
            mem = rss_mib() - before
    return {"load": median(loads), "plan": median(plans), "total": median(totals),
            "mem": mem, "deployments": len(held[0].deployments)}


def path_table(work: Path, repeat: int) -> None:
    print("| nodes | deployments | files | load + validate + fit ms | placement + plan ms "
          "| files -> plan ms | MiB held |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    for nodes, deps in SIZES:
        for shape, files in SHAPES.items():
            root = work / f"repo-{nodes}-{files}"
            write_repo(root, nodes, deps, files)
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(root), "--repeat", str(repeat)],
                cwd=REPO, capture_output=True, text=True, check=True,
            )
            r = json.loads(out.stdout)
            n_files = len(list(root.glob("*.yaml")))
            print(f"| {nodes} | {deps} | {n_files} ({shape}) | {r['load'] * 1000:.0f} | "
                  f"{r['plan'] * 1000:.0f} | {r['total'] * 1000:.0f} | {r['mem']:.1f} |")


# --- 2. validate -------------------------------------------------------------------------


def validate_table(work: Path, runs: int = 3) -> None:
    print("| command | nodes | deployments | files | median ms |")
    print("|---|---:|---:|---|---:|")
    for shape, files in SHAPES.items():
        root = work / f"repo-1000-{files}"
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "reconciler", "validate", str(root)],
                                  cwd=REPO, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - t0)
            assert done.returncode == 0, done.stderr[-2000:]
        print(f"| reconciler validate | 1000 | 2000 | {shape} | {median(times) * 1000:.0f} |")


# --- 3. a real daemon and git server -------------------------------------------------------


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def _webhook(port: int) -> None:
    body = b'{"ref": "refs/heads/main"}'
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhook", data=body, method="POST",
        headers={"X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(SECRET.encode(), body),
                 "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def _wait_planned(port: int, sha: str, limit: float) -> dict[str, Any]:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        try:
            tick: dict[str, Any] = _status(port).get("lastTick") or {}
            if tick.get("revision") == sha:
                return tick
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"revision {sha[:12]} not planned within {limit} s")


def daemon_table(work: Path, pushes: int) -> None:
    """Re-run this script inside a fresh network namespace (see the module docstring)."""
    ns = f"revbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "local", f"{PEER_NET}.0.0/16", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--daemon-inside",
                        str(work), "--pushes", str(pushes)], cwd=REPO, check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


PEER_NET = "198.19"
PEER_STATUS_PORT = 59500  # testrigs.big_repo.STATUS_PORT


def _peer_responder(names: dict[str, str]) -> None:
    """One asyncio thread answering /status on every local address with a NodeStatus
    naming that node (prebuilt bytes: the stand-ins should cost this machine little)."""
    import asyncio

    from testrigs.status_docs import status_dict

    def response(name: str) -> bytes:
        body = json.dumps(status_dict(name)).encode()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    answers = {addr: response(name) for addr, name in names.items()}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answers.get(writer.get_extra_info("sockname")[0], b""))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        asyncio.start_server(handle, "0.0.0.0", PEER_STATUS_PORT, backlog=1024))
    threading.Thread(target=loop.run_forever, daemon=True, name=str(server)).start()


def daemon_inside(work: Path, pushes: int) -> None:
    from testrigs.big_repo import address

    _peer_responder({address(i, PEER_NET): f"n{i}" for i in range(1, 1000)})
    env = isolated_git_env(work / "home")
    server = HttpGitServer(work / "srv", env)
    server.start()
    try:
        server.create_repo("cluster")
        src = work / "daemon-repo"
        files = write_repo(src, 1000, 2000, 20, net=PEER_NET)
        op = Operator(work / "op", server.url("cluster"), env)
        op.commit_and_push({f.name: f.read_text() for f in files}, "1,000 x 2,000")
        port = free_port()
        (work / "secret").write_text(SECRET)
        config = {
            "nodeName": "n0",
            "source": {"url": server.url("cluster"), "branch": "main",
                       "pollIntervalSeconds": 3600},
            "stateDir": str(work / "state"),
            "listen": {"address": "127.0.0.1", "port": port},
            "webhook": {"secretFile": str(work / "secret")},
            "engine": {"python": sys.executable,
                       "apiServerModule": "testrigs.engines.daemon_test_engine",
                       "env": {"PYTHONPATH": str(REPO)}, "allowedModelRoots": ["/models"]},
            "simulateGpus": {"count": 8, "model": "NVIDIA H100 80GB HBM3", "memoryGib": 80},
            "resyncIntervalSeconds": 3600,
            "stopEnginesOnExit": True,
        }
        (work / "node.yaml").write_text(json.dumps(config))
        # REVBENCH_PROFILE=FILE: the daemon runs under cProfile and writes FILE at exit
        profile = os.environ.get("REVBENCH_PROFILE")
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        daemon = subprocess.Popen(
            [sys.executable, *prof, "-m", "reconciler", "run", "--config",
             str(work / "node.yaml")],
            cwd=REPO, stdout=(work / "daemon.log").open("wb"), stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        )
        try:
            t0 = time.perf_counter()
            _wait_planned(port, op.head(), 300)
            first = time.perf_counter() - t0
            time.sleep(3)
            samples = []
            for _ in range(5):
                samples.append(rss_mib(daemon.pid))
                time.sleep(0.5)
            last = files[-1]
            times, ticks = [], []
            for n in range(1, pushes + 1):
                # d1997 is in pool p1: n0 (pool p0) is not among its candidates
                text = last.read_text().replace(
                    f"maxModelLen: {8192 + n - 1}\n  port: {1024 + 1997 * 4}",
                    f"maxModelLen: {8192 + n}\n  port: {1024 + 1997 * 4}")
                last.write_text(text)
                op.commit_and_push({last.name: text}, f"change {n}")
                sha = op.head()
                t0 = time.perf_counter()
                _webhook(port)
                ticks.append(float(_wait_planned(port, sha, 60)["durationSeconds"]))
                times.append(time.perf_counter() - t0)
                time.sleep(0.5)
            rss_after = rss_mib(daemon.pid)
            peak = hwm_mib(daemon.pid)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
    finally:
        server.stop()
    times.sort()
    print("| daemon, 1,000 x 2,000 | value |")
    print("|---|---:|")
    print(f"| first revision (start, clone, load, plan) s | {first:.1f} |")
    print(f"| RSS holding it, MiB (median of 5 samples) | {median(samples):.1f} |")
    print(f"| RSS after {pushes} more revisions, MiB | {rss_after:.1f} |")
    print(f"| peak RSS (VmHWM), MiB | {peak:.1f} |")
    print(f"| webhook push -> planned, median ms ({pushes} pushes) | {median(times) * 1000:.0f} |")
    print(f"| webhook push -> planned, max ms | {times[-1] * 1000:.0f} |")
    print(f"| of which the tick (observe, plan, apply), median ms | {median(ticks) * 1000:.0f} |")


# --- 4. status --cluster -------------------------------------------------------------------


def status_table(runs: int = 3) -> None:
    print("| command | peers | stalled | median ms | unreachable named |")
    print("|---|---:|---:|---:|---:|")
    with StandInPeers(answering=190, stalled=10) as peers:
        times, named = [], 0
        for _ in range(runs):
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "reconciler", "status", "--url", peers.local_url,
                 "--cluster", "--format", "json"],
                cwd=REPO, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - t0)
            nodes = json.loads(out.stdout)["nodes"]
            named = sum(1 for n in nodes if not n["reachable"])
    print(f"| reconciler status --cluster | {len(peers.nodes) - 1} | {peers.stalled} | "
          f"{median(times) * 1000:.0f} | {named} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument("--skip-daemon", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--daemon-inside", help=argparse.SUPPRESS)
    ap.add_argument("--daemon-only", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_size(Path(args.one), args.repeat)))
        return
    if args.daemon_inside:
        daemon_inside(Path(args.daemon_inside), args.pushes)
        return
    if args.daemon_only:
        daemon_table(Path(tempfile.mkdtemp(prefix="revision-bench-")), args.pushes)
        return
    work = Path(tempfile.mkdtemp(prefix="revision-bench-"))
    path_table(work, args.repeat)
    print()
    validate_table(work)
    print()
    status_table()
    if not args.skip_daemon:
        print()
        daemon_table(work, args.pushes)


if __name__ == "__main__":
    main()
