"""Idle daemon footprint: resident memory and CPU of the daemon process alone (engines
excluded) over a window, with 10 deployments running (stand-in engines, so that the
numbers are the daemon's: vLLM and Ray never load into it).

Run: .venv/bin/python bench/daemon_footprint.py [--seconds 60] [--deployments 10]
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b.invalid",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b.invalid",
           "GIT_CONFIG_GLOBAL": "/dev/null"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=3) as r:
        data = json.loads(r.read())
        assert isinstance(data, dict)
        return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--deployments", type=int, default=10)
    args = ap.parse_args()
    n = args.deployments
    work = Path(tempfile.mkdtemp(prefix="footprint-"))
    repo = work / "repo"
    repo.mkdir()
    status_port, base = 19480, 19500
    (repo / "cluster.yaml").write_text(f"""\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {{name: bench}}
spec:
  ports:
    engine: {{start: {base}, end: {base + n + 10}}}
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {{count: {n}, model: Simulated GPU, memoryGib: 80}}
      statusPort: {status_port}
""")
    for i in range(n):
        (repo / f"d{i}.yaml").write_text(f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: d{i}}}
spec:
  model: {{path: /models/d{i}, servedName: d{i}}}
  port: {base + i}
""")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "bench")
    config = work / "node.yaml"
    config.write_text(json.dumps({
        "nodeName": "n0",
        "source": {"url": str(repo), "branch": "main"},
        "stateDir": str(work / "state"),
        "listen": {"address": "127.0.0.1", "port": status_port},
        "engine": {"python": sys.executable,
                   "apiServerModule": "testrigs.engines.daemon_test_engine",
                   "env": {"PYTHONPATH": str(REPO)}, "allowedModelRoots": ["/models"]},
        "simulateGpus": {"count": n, "model": "Simulated GPU", "memoryGib": 80},
        "stopEnginesOnExit": True,
    }))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--config", str(config)],
        cwd=REPO, stdout=(work / "daemon.log").open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                reps = status(status_port).get("replicas", [])
                assert isinstance(reps, list)
                if len(reps) == n and all(r["state"] == "Ready" for r in reps):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("deployments not ready in 120 s; see " + str(work))
            time.sleep(0.5)
        time.sleep(5)  # let start-up garbage settle
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        samples = []
        while time.monotonic() - t0 < args.seconds:
            samples.append(rss_mib(daemon.pid))
            time.sleep(1)
        cpu = (cpu_seconds(daemon.pid) - cpu0) / (time.monotonic() - t0) * 100
        samples.sort()
        print("| deployments | window s | RSS median MiB | RSS max MiB | CPU % of a core |")
        print("|---:|---:|---:|---:|---:|")
        print(f"| {n} | {args.seconds:.0f} | {samples[len(samples) // 2]:.1f} | "
              f"{samples[-1]:.1f} | {cpu:.2f} |")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()


if __name__ == "__main__":
    main()
