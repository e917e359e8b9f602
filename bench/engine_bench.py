"""Engine runtime benchmark with real vLLM on the CPU (the tiny model, --enforce-eager).

(a) Time to ready through the daemon versus by hand. Through the daemon: from the push of
    a new deployment (followed by its webhook, as a forge sends it) until /status shows
    the replica Ready. By hand: the same command line and environment the daemon used,
    spawned directly, until GET /health is 200 and GET /v1/models lists the served name.
    Samples alternate (daemon, hand, daemon, hand, ...); medians and their ratio.
(b) Engine crash to replacement: kill -9 of a Ready engine's API server pid until the
    new engine process exists (found in /proc by its RECONCILER_MEMBER marker). First
    restarts only: every sample is a new deployment (d1, d2, ...), so no backoff applies.
    The daemon's own log gives the breakdown: exit seen by the waiter, reaped (orphans
    killed), started.

The daemon runs with the default resync (10 s) and poll (30 s) intervals: only the
webhook, the engine-exit and engine-health wake-ups make it act sooner.

Run:  .venv/bin/python bench/engine_bench.py [--ready-samples 3] [--crash-samples 5]
      [--engine-python .venv-engine/bin/python] [--out docs/engine-bench.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import http.client
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.daemon.webhook_auth import hmac_sha256_hex
from reconciler.demo.tinymodel import make_tiny_model
from reconciler.ports.processes import probe_engine, read_environ
from testrigs.gitserver import HttpGitServer, Operator, free_port, isolated_git_env

REPO = Path(__file__).resolve().parents[1]

SECRET = "bench-webhook-secret"
MARKERS = ("RECONCILER_MEMBER", "RECONCILER_SPEC_HASH", "RECONCILER_STATE_DIR",
           "RECONCILER_PORT")


def say(text: str) -> None:
    print(f"[bench] {text}", flush=True)


def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post_webhook(port: int) -> int:
    body = b'{"ref":"refs/heads/main"}'
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("POST", "/webhook", body=body, headers={
            "X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(SECRET, body),
            "Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(OSError, ValueError, KeyError, http.client.HTTPException):
            if pred():
                return time.monotonic() - t0
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def session_of(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    return None if rest[0] in ("Z", "X") else int(rest[3])


def pids() -> set[int]:
    return {int(n) for n in os.listdir("/proc") if n.isdigit()}


def marker_pids(state_marker: str, member: str | None = None) -> list[int]:
    found = []
    for pid in pids():
        env = read_environ(pid) or {}
        if env.get("RECONCILER_STATE_DIR") != state_marker or session_of(pid) is None:
            continue
        if member is None or env.get("RECONCILER_MEMBER") == member:
            found.append(pid)
    return found


def log_times(path: Path, member: str) -> dict[str, float]:
    """Wall times of the daemon's first log lines about `member`, by message."""
    out: dict[str, float] = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("member") != member:
            continue
        ts = _dt.datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.UTC)
        out.setdefault(f"{rec['msg']}#{sum(k.startswith(rec['msg'] + '#') for k in out)}",
                       ts.timestamp())
    return out


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="engine-bench-"))
        self.state = self.work / "state"
        self.models = self.work / "models"
        self.model = make_tiny_model(self.models / "tiny-llama")
        git_env = isolated_git_env(self.work / "git-home")
        self.server = HttpGitServer(self.work / "git" / "repos", git_env)
        self.server.start()
        self.op = Operator(self.work / "op", self.server.create_repo("cluster"), git_env)
        self.status_port = free_port()
        self.base = self._port_block(20)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_log = self.work / "daemon.log"
        self.hand: subprocess.Popen[bytes] | None = None
        self.ready_daemon: list[float] = []
        self.ready_hand: list[float] = []
        self.crash: list[float] = []
        self.breakdown: list[dict[str, float]] = []
        self.overhead: list[dict[str, float]] = []

    def _port_block(self, size: int) -> int:
        # below the ephemeral range: an outgoing connection's TIME_WAIT on an ephemeral
        # port blocks a server's bind of that port for 60 s
        rng = random.Random()
        for _ in range(100):
            start = rng.randrange(10000, 18000 - size)
            if self.status_port in range(start, start + size):
                continue
            ok = True
            for p in range(start, start + size):
                with socket.socket() as s:
                    try:
                        s.bind(("127.0.0.1", p))
                    except OSError:
                        ok = False
                        break
            if ok:
                return start
        raise SystemExit("no free block of ports")

    # --- setup ---------------------------------------------------------------------------

    def start_daemon(self) -> None:
        (self.work / "webhook").write_text(SECRET + "\n")
        config = {
            "apiVersion": "reconciler.dev/v1alpha1", "kind": "NodeConfig", "nodeName": "n0",
            "source": {"url": self.op.url, "branch": "main"},
            "stateDir": str(self.state),
            "listen": {"address": "127.0.0.1", "port": self.status_port},
            "webhook": {"secretFile": str(self.work / "webhook")},
            "engine": {"python": str(self.args.engine_python),
                       "allowedModelRoots": [str(self.models)],
                       "stopGracePeriodSeconds": 3,
                       "env": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}},
            "stopEnginesOnExit": True,
        }
        cfg = self.work / "node.yaml"
        cfg.write_text(json.dumps(config))
        self.op.commit_and_push({"cluster.yaml": f"""\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {{name: bench}}
spec:
  ports:
    engine: {{start: {self.base}, end: {self.base + 19}}}
  engineDefaults: {{startupTimeoutSeconds: {int(self.args.timeout)}}}
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {{count: 0, memoryGib: 1}}
      statusPort: {self.status_port}
"""}, "cluster")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "NOTIFY_"))}
        env["PYTHONPATH"] = str(REPO)
        with self.daemon_log.open("ab") as fh:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "run", "--config", str(cfg)],
                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        wait_for(lambda: http_get(self.status_port, "/status")[0] == 200, 30, "daemon status")

    def status(self) -> dict[str, Any]:
        code, body = http_get(self.status_port, "/status")
        if code != 200:
            raise ValueError(code)
        data: dict[str, Any] = json.loads(body)
        return data

    def replica(self, dep: str) -> dict[str, Any] | None:
        for r in self.status()["replicas"]:
            if r["deployment"] == dep:
                return dict(r)
        return None

    def deployment(self, name: str, port: int) -> str:
        return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {{path: {self.model}, servedName: tiny}}
  executor: mp
  engine:
    maxModelLen: 512
    extraArgs: ["--enforce-eager"]
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
  port: {port}
"""

    # --- samples -------------------------------------------------------------------------

    def daemon_sample(self, i: int) -> tuple[list[str], dict[str, str]]:
        """Deploy d<i>, time it to Ready; kill -9 its engine, time the replacement; delete
        it. Returns the engine's argv and environment (for the by-hand sample)."""
        name, port = f"d{i}", self.base + i
        member = f"{name}.0.engine"
        t0 = time.monotonic()
        push_wall = time.time()
        self.op.commit_and_push({f"{name}.yaml": self.deployment(name, port)}, f"add {name}")
        assert post_webhook(self.status_port) == 204
        wait_for(lambda: (r := self.replica(name)) is not None and r["state"] == "Ready",
                        self.args.timeout, f"{name} Ready")
        took = time.monotonic() - t0
        ready_wall = time.time()
        self.ready_daemon.append(took)
        record = json.loads((self.state / "engines" / f"{member}.json").read_text())
        self.overhead.append({"push -> engine spawned": record["started_at"] - push_wall,
                              "probe saw ready -> /status Ready":
                                  ready_wall - float(record["ready_at"])})
        old = int(record["pid"])
        rep = self.replica(name) or {}
        if rep.get("restarts", 0):
            raise SystemExit(f"{name} failed before it was Ready ({rep.get('restarts')} "
                             "restarts): its kill would not be a first restart")
        env = {k: v for k, v in (read_environ(old) or {}).items() if k not in MARKERS}
        say(f"{name}: push -> Ready in /status {took:.2f}s (pid {old})")

        # (b) crash -> replacement process
        known = pids()
        marker = str(self.state.resolve())
        wall = time.time()
        t1 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        new = 0
        while not new:
            if time.monotonic() - t1 > 30:
                raise SystemExit(f"{name}: no replacement within 30s")
            for pid in pids() - known:
                env_new = read_environ(pid) or {}
                if (env_new.get("RECONCILER_MEMBER") == member
                        and env_new.get("RECONCILER_STATE_DIR") == marker):
                    new = pid
                    break
            else:
                time.sleep(0.002)
        restart = time.monotonic() - t1
        self.crash.append(restart)
        time.sleep(0.5)  # the daemon's log lines for the start
        marks = log_times(self.daemon_log, str(_member_key(member)))
        parts = {"exit seen": marks.get("member exited#0", float("nan")) - wall,
                 "reaped": marks.get("reaped#0", float("nan")) - wall,
                 "started": marks.get("started member#1", float("nan")) - wall}
        self.breakdown.append(parts)
        say(f"{name}: kill -9 -> new engine pid {new} in {restart * 1000:.0f} ms "
            f"({', '.join(f'{k} {v * 1000:.0f} ms' for k, v in parts.items())})")

        # delete it; wait until every process of it is gone and the port is free
        self.op.commit_and_push({f"{name}.yaml": None}, f"remove {name}")
        assert post_webhook(self.status_port) == 204
        wait_for(lambda: self.replica(name) is None and not marker_pids(marker, member),
                 60, f"{name} stopped", step=0.2)
        wait_for(lambda: _port_free(port), 30, f"port {port} free", step=0.1)
        return list(record["argv"]), env

    def hand_sample(self, argv: list[str], env: dict[str, str]) -> None:
        port = int(argv[argv.index("--port") + 1])
        served = argv[argv.index("--served-model-name") + 1]
        log = (self.work / f"hand-{len(self.ready_hand)}.log").open("ab")
        t0 = time.monotonic()
        self.hand = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.work,
                                     start_new_session=True, close_fds=True)
        try:
            def ready() -> bool:
                if self.hand is not None and self.hand.poll() is not None:
                    raise SystemExit(f"by-hand vLLM exited {self.hand.returncode}; see {log.name}")
                return probe_engine("127.0.0.1", port, served, 2.0)[0]

            wait_for(ready, self.args.timeout, "by-hand vLLM ready")
            took = time.monotonic() - t0
            self.ready_hand.append(took)
            say(f"by hand: spawn -> /health 200 and model listed in {took:.2f}s")
        finally:
            self.stop_hand()
            log.close()
        wait_for(lambda: _port_free(port), 30, f"port {port} free", step=0.1)

    def stop_hand(self) -> None:
        proc, self.hand = self.hand, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the rest of its group too
        proc.wait(10)

    def close(self) -> None:
        self.stop_hand()
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)  # stopEnginesOnExit: engines go too
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(10)
        for pid in marker_pids(str(self.state.resolve())):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.server.stop()


def _member_key(slug: str) -> str:
    name, index, role = slug.rsplit(".", 2)
    return f"{name}/{index}/{role}"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def table(b: Bench) -> str:
    def row(what: str, xs: list[float], target: str, unit: str = "s") -> str:
        if not xs:
            return f"| {what} | 0 | - | - | - | {target} |"
        scale, fmt = (1000.0, "{:.0f} ms") if unit == "ms" else (1.0, "{:.2f} s")
        med, lo, hi = (fmt.format(v * scale) for v in (statistics.median(xs), min(xs), max(xs)))
        return f"| {what} | {len(xs)} | {med} | {lo} | {hi} | {target} |"

    ratio = (statistics.median(b.ready_daemon[: len(b.ready_hand)]) /
             statistics.median(b.ready_hand)) if b.ready_hand else float("nan")
    lines = [
        "| measure | n | median | min | max | target |",
        "|---|---|---|---|---|---|",
        row("(a) push -> replica Ready in /status (daemon)",
            b.ready_daemon[: len(b.ready_hand)], ""),
        row("(a) spawn -> /health 200 + model listed (by hand)", b.ready_hand, ""),
        f"| (a) ratio daemon / hand (medians) | | **{ratio:.3f}** | | | < 1.05 |",
    ]
    for key in ("push -> engine spawned", "probe saw ready -> /status Ready"):
        lines.append(row(f"(a) daemon overhead: {key}", [o[key] for o in b.overhead], "", "ms"))
    lines += [
        row("(b) kill -9 engine -> new engine pid (first restart)", b.crash, "< 0.5 s", "ms"),
    ]
    for key in ("exit seen", "reaped", "started"):
        xs = [p[key] for p in b.breakdown if p[key] == p[key]]
        lines.append(row(f"(b) ... kill -> daemon log `{key}`", xs, "", "ms"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine-python", type=Path, default=Path(os.environ.get(
        "RECONCILER_ENGINE_PYTHON", str(REPO / ".venv-engine" / "bin" / "python"))))
    ap.add_argument("--ready-samples", type=int, default=3)
    ap.add_argument("--crash-samples", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300, help="bound of every vLLM ready")
    ap.add_argument("--out", type=Path, help="write the table (and the command) here")
    args = ap.parse_args(argv)
    if not args.engine_python.exists():
        say(f"no engine python at {args.engine_python}")
        return 2
    b = Bench(args)
    load0 = os.getloadavg()
    t0 = time.monotonic()
    try:
        b.start_daemon()
        n = max(args.ready_samples, args.crash_samples)
        for i in range(1, n + 1):
            argv_, env = b.daemon_sample(i)
            if i <= args.ready_samples:
                b.hand_sample(argv_, env)
    finally:
        b.close()
    load1 = os.getloadavg()
    text = table(b)
    print(text)
    if args.out:
        cmd = "RECONCILER_ENGINE_PYTHON=... .venv/bin/python bench/engine_bench.py " + shlex.join(
            a for a in (argv if argv is not None else sys.argv[1:]))
        args.out.write_text(f"""\
# Engine runtime benchmark (vLLM CPU, tiny model)

Command: `{cmd.strip()}`

Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()};
load average {load0[0]:.1f} at the start and {load1[0]:.1f} at the end (other work was
running on it). Run took {time.monotonic() - t0:.0f} s on
{_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}.

{text}

- (a) alternates daemon and by-hand samples (d1, hand, d2, hand, ...). The daemon side
  counts from before `git push` (then the webhook) to the first /status that shows the
  replica Ready (polled every 50 ms); the by-hand side runs the very command line and
  environment of the daemon's engine (markers removed), polled every 50 ms with
  `probe_engine` (the daemon's own probe, which runs every 1 s).
- The overhead rows split the daemon's share out of (a), free of the engine's own
  start-up noise (all daemon samples): push + webhook + fetch + tick until Popen (from
  the engine's state file `started_at`), and from the probe that first saw the engine
  ready (`ready_at`) to the first /status showing Ready. What they leave out is the probe
  period itself (up to 1 s between the engine becoming ready and the probe seeing it).
- Reading: the daemon's own share of a start is the two overhead rows plus at most one
  probe period, about 0.3-1.3 s of a 40-60 s start (under 3 %). The spread of the vLLM
  start itself on a shared 2-core machine (see min/max) is larger than that, so the ratio
  of medians moves by a few percent from run to run either way.
- (b) every sample is a fresh deployment (d1..d{args.crash_samples}) killed once when
  Ready, so it is a first restart (no backoff). The time ends when the new engine
  process exists in /proc with the member's marker. The breakdown rows are the daemon's
  own log timestamps (ms resolution) relative to the kill: `member exited` (the waiter
  saw the exit and woke the loop), `reaped` (the tick killed the orphaned EngineCore /
  Worker and dropped the member), `started member` (Popen returned).
""")
        say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
