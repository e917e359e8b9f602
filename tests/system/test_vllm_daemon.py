"""The daemon as a real process with real vLLM on the CPU: one node, two deployments.

`python -m reconciler run --config ...` against a git smart-HTTP server on loopback,
serving the tiny random-weight Llama (reconciler.demo.tinymodel) with vLLM's CPU build.

One ordered flow over a module-scoped daemon, so the whole file starts vLLM four times:
A and B at first, A again for a changed setting, A again after its kill -9. The daemon's
own kill -9 and restart adopts (no start), deleting B stops it, and the stranger's port
makes a third deployment fail before any process exists.

The tests depend on each other and run in file order. The engine python comes from
$RECONCILER_ENGINE_PYTHON, else /work/main/.venv-engine/bin/python; without it the module
is skipped.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.demo.tinymodel import make_tiny_model
from reconciler.ports.processes import read_environ
from testrigs.gitserver import HttpGitServer, Operator, free_port, isolated_git_env

pytestmark = [pytest.mark.system, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[2]
ENGINE_PYTHON = Path(
    os.environ.get("RECONCILER_ENGINE_PYTHON", "/work/main/.venv-engine/bin/python")
)
READY_S = 240.0  # one vLLM start on a busy 2-core machine (about 35 s when idle)
TWO_READY_S = 360.0  # two starting at once share the cores


# --- documents ---------------------------------------------------------------------------


def cluster_yaml(engine_start: int, status_port: int) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {{name: vllm-sys}}
spec:
  ports:
    engine: {{start: {engine_start}, end: {engine_start + 9}}}
  engineDefaults:
    startupTimeoutSeconds: {int(READY_S) + 60}
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {{count: 0, memoryGib: 1}}
      statusPort: {status_port}
"""


def deployment_yaml(name: str, model: Path, port: int, max_model_len: int = 512) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}}}
spec:
  model: {{path: {model}, servedName: tiny-{name}}}
  executor: mp
  engine:
    maxModelLen: {max_model_len}
    extraArgs: ["--enforce-eager"]
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
  port: {port}
  probes: {{periodSeconds: 1}}
"""


# --- helpers -----------------------------------------------------------------------------


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               explain: Callable[[], str] = lambda: "") -> float:
    """Poll pred every 0.1 s; return the seconds it took, or fail with explain()."""
    t0 = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - t0 < timeout:
        try:
            if pred():
                return time.monotonic() - t0
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({last}); "
                         f"{explain()}")


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, session) from /proc/<pid>/stat, None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2 :].split()
    return rest[0], int(rest[3])


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def marker_processes(state_dir: Path) -> dict[int, str]:
    """pid -> RECONCILER_MEMBER of every live process started for this state dir (leaders
    and all their descendants: the env markers are inherited)."""
    marker = str(state_dir.resolve())
    found: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        env = read_environ(pid) or {}
        if env.get("RECONCILER_STATE_DIR") == marker and "RECONCILER_MEMBER" in env and alive(pid):
            found[pid] = env["RECONCILER_MEMBER"]
    return found


def leaders(state_dir: Path) -> dict[str, list[int]]:
    """member slug -> pids of its session leaders (more than one would be a double start)."""
    out: dict[str, list[int]] = {}
    for pid, member in marker_processes(state_dir).items():
        st = proc_stat(pid)
        if st is not None and st[1] == pid:
            out.setdefault(member, []).append(pid)
    return out


def metric(text: str, name: str, labels: str) -> float | None:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- the rig -----------------------------------------------------------------------------


@dataclass
class Rig:
    tmp: Path
    model: Path
    op: Operator
    cfg_path: Path
    state: Path
    status_port: int
    engine_start: int
    env: dict[str, str]
    out: Path
    daemon: subprocess.Popen[bytes] | None = None
    files: dict[str, str | bytes | None] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # daemon
    def start_daemon(self) -> None:
        with self.out.open("ab") as fh:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "run", "--config", str(self.cfg_path)],
                cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
            )

    def daemon_alive(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    # git
    def push(self, files: dict[str, str | None], message: str) -> None:
        self.op.commit_and_push(dict(files), message)

    # status
    def status(self) -> dict[str, Any]:
        code, body = http_get(self.status_port, "/status")
        assert code == 200, body[:200]
        data: dict[str, Any] = json.loads(body)
        return data

    def replica(self, dep: str) -> dict[str, Any] | None:
        for r in self.status()["replicas"]:
            if r["deployment"] == dep and r["index"] == 0:
                return dict(r)
        return None

    def ready(self, dep: str, spec_hash: str | None = None) -> bool:
        r = self.replica(dep)
        return (r is not None and r["state"] == "Ready"
                and (spec_hash is None or r["specHash"] == spec_hash))

    def record(self, dep: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.state / "engines" / f"{dep}.0.engine.json").read_text())
        return data

    def engine_pid(self, dep: str) -> int:
        return int(self.record(dep)["pid"])

    def metrics(self) -> str:
        code, body = http_get(self.status_port, "/metrics")
        assert code == 200
        return body.decode()

    def explain(self) -> str:
        try:
            reps = [(r["deployment"], r["state"], r["reason"]) for r in self.status()["replicas"]]
        except (OSError, ValueError, AssertionError, http.client.HTTPException) as exc:
            reps = [("status unavailable", str(exc), "")]
        tail = self.out.read_text(errors="replace")[-3000:] if self.out.exists() else ""
        return f"replicas {reps}; daemon alive {self.daemon_alive()}; daemon log tail:\n{tail}"

    def engine_log_tail(self, dep: str) -> str:
        path = self.state / "logs" / f"{dep}.0.engine.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def wait_ready(self, deps: list[str], timeout: float,
                   hashes: dict[str, str] | None = None) -> float:
        hashes = hashes or {}

        def explain() -> str:
            return self.explain() + "".join(
                f"\n--- {d} engine log tail:\n{self.engine_log_tail(d)}" for d in deps)

        def all_ready() -> bool:
            assert self.daemon_alive(), "the daemon exited"
            return all(self.ready(d, hashes.get(d)) for d in deps)

        return wait_until(all_ready, timeout, f"{deps} Ready", explain)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args, "--config", str(self.cfg_path)],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no vLLM engine environment at {ENGINE_PYTHON} (set "
                    "RECONCILER_ENGINE_PYTHON, or run scripts/install-engine-env.sh)")
    tmp = tmp_path_factory.mktemp("vllm-daemon")
    model_root = tmp / "models"
    model = make_tiny_model(model_root / "tiny-llama")
    git_env = isolated_git_env(tmp / "git-home")
    server = HttpGitServer(tmp / "git" / "repos", git_env)
    server.start()
    op = Operator(tmp / "op", server.create_repo("cluster"), git_env)
    status_port = free_port()
    engine_start = pick_port_block(10, avoid={status_port})
    state = tmp / "state"
    config = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "NodeConfig",
        "nodeName": "n0",
        "source": {"url": op.url, "branch": "main", "pollIntervalSeconds": 1},
        "stateDir": str(state),
        "listen": {"address": "127.0.0.1", "port": status_port},
        "engine": {
            "python": str(ENGINE_PYTHON),
            "allowedModelRoots": [str(model_root)],
            "stopGracePeriodSeconds": 5,
            "env": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
        },
        "resyncIntervalSeconds": 1,
    }
    cfg_path = tmp / "node.yaml"
    cfg_path.write_text(json.dumps(config))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "NOTIFY_"))}
    env["PYTHONPATH"] = str(REPO)
    r = Rig(tmp, model, op, cfg_path, state, status_port, engine_start, env,
            tmp / "daemon.out")
    try:
        yield r
    finally:
        if r.daemon is not None and r.daemon.poll() is None:
            r.daemon.send_signal(signal.SIGTERM)
            try:
                r.daemon.wait(30)
            except subprocess.TimeoutExpired:
                r.daemon.kill()
                r.daemon.wait(10)
        # the engines our daemons started (found by our state dir's marker), by group
        for pids in leaders(state).values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while marker_processes(state) and time.monotonic() < deadline:
            for pid in marker_processes(state):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        server.stop()
        print("timings:", json.dumps({k: round(v, 2) for k, v in r.timings.items()}))


def pick_port_block(size: int, avoid: set[int]) -> int:
    """Free ports below the ephemeral range (10000-17999): an outgoing connection may get
    an ephemeral port as its own, and its TIME_WAIT then blocks a server's bind for 60 s."""
    rng = random.Random()
    for _ in range(100):
        start = rng.randrange(10000, 18000 - size)
        if any(p in avoid for p in range(start, start + size)):
            continue
        if all(port_free(p) for p in range(start, start + size)):
            return start
    raise RuntimeError("no free block of ports")


# --- the flow ------------------------------------------------------------------------------


def test_deploy_two_and_chat(rig: Rig) -> None:
    a_port, b_port = rig.engine_start, rig.engine_start + 1
    rig.push({"cluster.yaml": cluster_yaml(rig.engine_start, rig.status_port),
              "a.yaml": deployment_yaml("a", rig.model, a_port),
              "b.yaml": deployment_yaml("b", rig.model, b_port)}, "two tiny deployments")
    t0 = time.monotonic()
    rig.start_daemon()
    rig.timings["a+b ready"] = rig.wait_ready(["a", "b"], TWO_READY_S)
    st = rig.status()
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    wait_until(lambda: next(c for c in rig.status()["conditions"]
                            if c["type"] == "Ready")["status"] == "True", 15, "Ready=True",
               rig.explain)
    assert {d["name"]: d["readyReplicas"] for d in st["deployments"]} == {"a": 1, "b": 1}
    assert leaders(rig.state).keys() == {"a.0.engine", "b.0.engine"}, ready

    res = rig.cli("chat", "a", "hi", "--timeout", "60")
    assert res.returncode == 0, res.stderr
    m = re.search(r"time to first token (\d+) ms, total ([\d.]+) s", res.stderr)
    assert m, res.stderr
    rig.timings["chat ttft ms"] = float(m.group(1))
    print(f"a+b ready {time.monotonic() - t0:.1f}s; chat: {res.stderr.strip()}")


def test_changed_setting_replaces_only_a(rig: Rig) -> None:
    a_pid, b_pid = rig.engine_pid("a"), rig.engine_pid("b")
    a_hash, b_hash = rig.record("a")["spec_hash"], rig.record("b")["spec_hash"]

    def b_log_starts() -> int:
        path = rig.state / "logs" / "b.0.engine.log"
        return path.read_text(errors="replace").count("--- reconciler: starting")

    b_starts = b_log_starts()
    rig.push({"a.yaml": deployment_yaml("a", rig.model, rig.engine_start, max_model_len=1024)},
             "a: maxModelLen 512 -> 1024")
    wait_until(lambda: (r := rig.replica("a")) is not None and r["specHash"] != a_hash, 30,
               "a's new spec hash", rig.explain)
    new_hash = rig.replica("a")["specHash"]  # type: ignore[index]
    rig.timings["a replaced ready"] = rig.wait_ready(["a"], READY_S, {"a": new_hash})
    assert not alive(a_pid), "the old engine of a is gone"
    rec = rig.record("a")
    assert rec["pid"] != a_pid and rec["spec_hash"] == new_hash != a_hash
    assert "--max-model-len" in rec["argv"]
    assert rec["argv"][rec["argv"].index("--max-model-len") + 1] == "1024"
    assert rig.engine_pid("b") == b_pid and alive(b_pid), "b is untouched"
    assert rig.record("b")["spec_hash"] == b_hash
    assert rig.ready("b")
    assert b_log_starts() == b_starts, "no start of b"


def test_kill9_engine_restarts_at_once(rig: Rig) -> None:
    # counted from here: a start that failed earlier (e.g. vLLM short of memory on a busy
    # machine) was a restart too
    m0 = rig.metrics()
    base_metric = metric(m0, "reconciler_engine_restarts_total", 'deployment="a"') or 0.0
    base_b = metric(m0, "reconciler_engine_restarts_total", 'deployment="b"') or 0.0
    base_status = (rig.replica("a") or {}).get("restarts", 0)
    starts0 = (rig.state / "logs" / "a.0.engine.log").read_text(
        errors="replace").count("--- reconciler: starting")
    old = rig.engine_pid("a")
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()

    def new_pid() -> bool:
        try:
            return rig.engine_pid("a") != old
        except (OSError, ValueError):
            return False

    took = wait_until(new_pid, 30, "a's replacement process", rig.explain)
    rig.timings["kill -9 -> new pid"] = took
    assert took < 5.0, f"the first restart waits for no backoff ({took:.2f}s)"
    rig.timings["a restarted ready"] = rig.wait_ready(["a"], READY_S)
    assert time.monotonic() - t0 < READY_S
    m1 = rig.metrics()
    assert metric(m1, "reconciler_engine_restarts_total", 'deployment="a"') == base_metric + 1
    assert (metric(m1, "reconciler_engine_restarts_total", 'deployment="b"') or 0.0) == base_b
    rep = rig.replica("a")
    assert rep is not None and rep.get("restarts") == base_status + 1, rep
    log_a = (rig.state / "logs" / "a.0.engine.log").read_text(errors="replace")
    assert log_a.count("--- reconciler: starting") == starts0 + 1
    rig.timings["a starts"] = starts0 + 1


def test_daemon_kill9_and_restart_adopts(rig: Rig) -> None:
    assert rig.daemon is not None
    before = marker_processes(rig.state)
    by_member = leaders(rig.state)
    assert {m: len(p) for m, p in by_member.items()} == {"a.0.engine": 1, "b.0.engine": 1}
    rig.daemon.kill()
    rig.daemon.wait(10)
    time.sleep(1.0)
    assert marker_processes(rig.state) == before, "engines outlive the daemon"
    t0 = time.monotonic()
    rig.start_daemon()
    rig.wait_ready(["a", "b"], 60)
    rig.timings["daemon restart -> both Ready"] = time.monotonic() - t0
    time.sleep(3.0)  # a few ticks: a second start would show by now
    assert leaders(rig.state) == by_member, "same engine pids, no duplicate start"
    assert marker_processes(rig.state) == before
    for dep in ("a", "b"):
        assert rig.engine_pid(dep) == by_member[f"{dep}.0.engine"][0]
    log_a = (rig.state / "logs" / "a.0.engine.log").read_text(errors="replace")
    assert log_a.count("--- reconciler: starting") == rig.timings["a starts"]
    code, body = http_get(rig.engine_start, "/v1/models")
    assert code == 200 and b"tiny-a" in body


def test_delete_b_stops_its_engine(rig: Rig) -> None:
    b_pids = {p for p, m in marker_processes(rig.state).items() if m == "b.0.engine"}
    assert b_pids
    rig.push({"b.yaml": None}, "remove b")
    wait_until(lambda: rig.replica("b") is None and "b" not in {
        d["name"] for d in rig.status()["deployments"]}, 60, "b gone from status", rig.explain)
    wait_until(lambda: not any(alive(p) for p in b_pids), 30, "b's processes gone", rig.explain)
    assert "b.0.engine" not in marker_processes(rig.state).values()
    assert not (rig.state / "engines" / "b.0.engine.json").exists()
    assert port_free(rig.engine_start + 1)
    assert rig.ready("a")


def test_port_taken_by_a_stranger(rig: Rig) -> None:
    c_port = rig.engine_start + 2
    stranger = socket.socket()
    stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    stranger.bind(("127.0.0.1", c_port))
    stranger.listen(1)
    try:
        rig.push({"c.yaml": deployment_yaml("c", rig.model, c_port)}, "add c")
        holder = f"port {c_port} is taken by pid {os.getpid()}"
        wait_until(lambda: holder in ((rig.replica("c") or {}).get("reason") or ""), 60,
                   "c's reason to name the holder", rig.explain)
        rep = rig.replica("c")
        assert rep is not None and rep["state"] in ("CrashLoopBackOff", "Starting", "Failed"), rep
        print(f"c: {rep['state']}: {rep['reason']}")
        assert rig.daemon_alive()
        assert rig.ready("a")
        code, _ = http_get(rig.status_port, "/healthz")
        assert code == 200
        assert "c.0.engine" not in marker_processes(rig.state).values(), "nothing started"
        # take c away again before the stranger goes, so no vLLM start follows
        rig.push({"c.yaml": None}, "remove c")
        wait_until(lambda: rig.replica("c") is None, 30, "c gone", rig.explain)
    finally:
        stranger.close()
    assert rig.ready("a") and rig.daemon_alive()


def test_logs_cli_prints_the_engine_log(rig: Rig) -> None:
    res = rig.cli("logs", "a", timeout=30)
    assert res.returncode == 0, res.stderr
    starts = int(rig.timings["a starts"])
    assert res.stdout.count("--- reconciler: starting a/0/engine") == starts, res.stdout[:2000]
    assert "vllm.entrypoints.openai.api_server" in res.stdout
    assert "Application startup complete" in res.stdout
    tail = rig.cli("logs", "a", "-n", "5", timeout=30)
    assert tail.returncode == 0 and 0 < len(tail.stdout.splitlines()) <= 5
    missing = rig.cli("logs", "nope", timeout=30)
    assert missing.returncode == 2 and "no log" in missing.stderr
