"""A real daemon process against a real git server, for reliability and security tests.

`Rig` writes the node config, starts `python -m reconciler run` (as many times as a test
needs, with extra environment such as a crash point), pushes revisions, reads /status and
/metrics, and audits what runs: `audit()` compares the engine processes that carry this
state dir's markers with the state files (orphans, duplicates, lost members).

`GitProxy` is a loopback TCP proxy in front of the git server that can forward, stall
(accept and never answer) or answer HTTP 200 with junk.

`Findings` records what a test measured into the file named by
RECONCILER_RELIABILITY_RESULTS (one JSON object a line), for bench/reliability.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.ports.processes import read_environ
from testrigs.gitserver import HttpGitServer, Operator, free_port

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tok-5e1f2a9c7b3d-never-logged"
SECRET = "hook-8c6b4a2e0f1d-never-logged"
RESULTS_ENV = "RECONCILER_RELIABILITY_RESULTS"


# --- findings ------------------------------------------------------------------------------


@dataclass
class Findings:
    """What one test measured; appended to the results file at teardown."""

    test: str
    scenario: str = ""
    faults: int = 0  # faults injected that the system had to survive
    bad_inputs: int = 0  # hostile or broken inputs tried
    engines_lost: int = 0
    orphans: int = 0
    duplicates: int = 0
    audits: int = 0
    measured: dict[str, Any] = field(default_factory=dict)

    def add_audit(self, result: Audit) -> None:
        self.audits += 1
        self.engines_lost += len(result.lost)
        self.orphans += len(result.orphans)
        self.duplicates += result.duplicates

    def write(self) -> None:
        path = os.environ.get(RESULTS_ENV)
        if not path:
            return
        record = {
            "test": self.test, "scenario": self.scenario, "faults": self.faults,
            "bad_inputs": self.bad_inputs, "engines_lost": self.engines_lost,
            "orphans": self.orphans, "duplicates": self.duplicates, "audits": self.audits,
            "measured": self.measured,
        }
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


# --- /proc audit ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, session, start ticks)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[3]), int(rest[19])


def marked_processes(state_dir: Path) -> dict[int, dict[str, str]]:
    """Live processes carrying RECONCILER_MEMBER whose state-dir marker or cwd is ours."""
    mine = str(state_dir.resolve())
    found: dict[int, dict[str, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        env = read_environ(pid) or {}
        if "RECONCILER_MEMBER" not in env:
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        if env.get("RECONCILER_STATE_DIR") == mine or cwd == mine:
            found[pid] = env
    return found


@dataclass(frozen=True)
class Audit:
    leaders: dict[str, list[int]]  # member slug -> live leader pids
    owned: dict[str, int]  # member slug -> pid of its live state file
    orphans: tuple[int, ...]
    duplicates: int
    lost: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return not self.orphans and not self.duplicates and not self.lost


def audit(state_dir: Path, expected: Iterable[str]) -> Audit:
    """Every marked process must be owned by a state file (pid + start ticks), one leader
    per member, and every expected member must have one."""
    procs = marked_processes(state_dir)
    owned: dict[str, int] = {}
    owned_ticks: dict[int, int] = {}
    for path in (state_dir / "engines").glob("*.json"):
        try:
            rec = json.loads(path.read_text())
            pid, ticks = int(rec["pid"]), int(rec["start_ticks"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        st = _stat(pid)
        if st is not None and st[2] == ticks and st[0] not in ("Z", "X"):
            owned[path.stem] = pid
            owned_ticks[pid] = ticks
    leaders: dict[str, list[int]] = {}
    orphans: list[int] = []
    for pid, env in sorted(procs.items()):
        st = _stat(pid)
        if st is None:
            continue
        _, session, _ = st
        if session == pid:
            leaders.setdefault(env["RECONCILER_MEMBER"], []).append(pid)
            if pid not in owned_ticks:
                orphans.append(pid)
        elif session not in owned_ticks:
            orphans.append(pid)  # a child whose member leader is not owned
    duplicates = sum(len(p) - 1 for p in leaders.values() if len(p) > 1)
    lost = tuple(sorted(m for m in expected if m not in owned))
    return Audit(leaders, owned, tuple(orphans), duplicates, lost)


def unmarked_engine_processes(state_dir: Path) -> list[int]:
    """Live processes working in this test's state dir: the engines' children that carry no
    markers (vLLM spawns EngineCore and its workers with an environment of its own) but
    inherit the engine's working directory, which the process port sets to the state dir.
    Left alone they outlive a test that killed only the marked API server, ~2 GB each."""
    mine = str(state_dir.resolve())
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{name}/cwd")
        except OSError:
            continue
        st = _stat(int(name))
        if st is None or st[0] in ("Z", "X"):
            continue
        if cwd == mine or cwd == mine + " (deleted)":
            found.append(int(name))
    return found


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """Teardown: SIGTERM, then SIGKILL after `grace_s` (a daemon, a gateway, Prometheus)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def clear_engines(state_dir: Path, timeout_s: float = 20) -> None:
    """Teardown after the daemon is gone: kill this state dir's engines (and the children
    they leave unmarked) until no state file names one, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    kill_marked(state_dir)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        kill_marked(state_dir)
        if not any(state_dir.joinpath("engines").glob("*.json")):
            break


def kill_marked(state_dir: Path) -> None:
    """Teardown: SIGKILL every engine process of this test's state dir (ours, by pid): the
    marked members and the unmarked children working in that dir."""
    for pid in [*marked_processes(state_dir), *unmarked_engine_processes(state_dir)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


# --- documents -----------------------------------------------------------------------------


def cluster_yaml(engine_port: int, status_port: int, gpus: int = 1, span: int = 9) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {{name: rel}}
spec:
  ports:
    engine: {{start: {engine_port}, end: {engine_port + span}}}
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {{count: {gpus}, model: Simulated GPU, memoryGib: 80}}
      statusPort: {status_port}
"""


def deployment_yaml(name: str, port: int, *, extra_args: list[str] | None = None,
                    env: dict[str, str] | None = None, model: str = "/models/tiny",
                    replicas: int = 1) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"path": model, "servedName": f"{name}-model"},
            "replicas": replicas,
            "port": port,
            "probes": {"startupTimeoutSeconds": 60, "periodSeconds": 1, "timeoutSeconds": 1},
            "engine": {"extraArgs": extra_args or [], "env": env or {}},
        },
    }
    return json.dumps(doc, indent=1) + "\n"  # JSON is YAML


# --- git proxy -------------------------------------------------------------------------------


class GitProxy:
    """Loopback TCP proxy: mode 'forward', 'stall' (accept, never answer) or 'garbage'
    (HTTP 200 with junk). Counts connections per mode."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.mode = "forward"
        self.counts: dict[str, int] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, name="git-proxy", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            mode = self.mode
            self.counts[mode] = self.counts.get(mode, 0) + 1
            if mode == "stall":
                self._held.append(conn)  # never answered; closed at stop
            elif mode == "garbage":
                threading.Thread(target=self._junk, args=(conn,), daemon=True).start()
            else:
                threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    @staticmethod
    def _junk(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                conn.recv(65536)
                body = b"\x00\xffthis is not git\n" * 64
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-"
                             b"advertisement\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nConnection: close\r\n\r\n" + body)

    def _forward(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
        except OSError:
            conn.close()
            return

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(up, conn), daemon=True)
        t.start()
        pump(conn, up)
        t.join(30)
        conn.close()
        up.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for c in self._held:
            c.close()
        self._thread.join(2)


# --- the daemon ----------------------------------------------------------------------------


class DaemonProc:
    def __init__(self, config: Path, env: dict[str, str], out: Path, umask: int = -1) -> None:
        with out.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "run", "--config", str(config)],
                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, umask=umask,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill9(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(10)


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `pred` until true; return the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return time.monotonic() - t0
        except (OSError, ValueError, KeyError, IndexError, TypeError,
                http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last!r})")


class Rig:
    """One node: a git repo (behind GitProxy), a node config and a daemon process."""

    def __init__(self, tmp: Path, server: HttpGitServer, op: Operator, *,
                 gpus: int = 1, state_dir: Path | None = None,
                 config_changes: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.tmp = tmp
        self.server = server
        self.op = op
        self.state = state_dir if state_dir is not None else tmp / "state"
        self.status_port = free_port()
        self.engine_port = free_port()
        self.gpus = gpus
        self.proxy = GitProxy(server.port)
        self.out = tmp / "daemon.out"
        (tmp / "token").write_text(TOKEN + "\n")
        (tmp / "webhook").write_text(SECRET + "\n")
        url = op.url.replace(f":{server.port}/", f":{self.proxy.port}/")
        self.config: dict[str, Any] = {
            "apiVersion": "reconciler.dev/v1alpha1",
            "kind": "NodeConfig",
            "nodeName": "n0",
            "source": {"url": url, "branch": "main", "pollIntervalSeconds": 1,
                       "timeoutSeconds": 3, "tokenFile": str(tmp / "token")},
            "stateDir": str(self.state),
            "listen": {"address": "127.0.0.1", "port": self.status_port},
            "webhook": {"secretFile": str(tmp / "webhook")},
            "engine": {"python": sys.executable,
                       "apiServerModule": "testrigs.engines.daemon_test_engine",
                       "stopGracePeriodSeconds": 1,
                       "unhealthyGracePeriodSeconds": 2,
                       "env": {"PYTHONPATH": str(REPO)}},
            "simulateGpus": {"count": gpus},
            "resyncIntervalSeconds": 0.5,
            "backoff": {"initialSeconds": 1, "maxSeconds": 8, "resetAfterSeconds": 600,
                        "jitter": 0},
        }
        if config_changes is not None:
            config_changes(self.config)
        self.cfg_path = tmp / "node.yaml"
        self.cfg_path.write_text(json.dumps(self.config))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("GIT_", "NOTIFY_", "RECONCILER_", "WATCHDOG_"))}
        self.env["PYTHONPATH"] = str(REPO)
        self.daemons: list[DaemonProc] = []

    # --- git -------------------------------------------------------------------------------

    def push(self, files: dict[str, str | bytes | None], message: str = "change") -> str:
        return self.op.commit_and_push(files, message)

    def push_chat(self, **kw: Any) -> str:
        return self.push({
            "cluster.yaml": cluster_yaml(self.engine_port, self.status_port, self.gpus),
            "chat.yaml": deployment_yaml("chat", self.engine_port, **kw),
        }, "chat")

    # --- daemon ----------------------------------------------------------------------------

    def start(self, extra_env: dict[str, str] | None = None, umask: int = -1) -> DaemonProc:
        env = dict(self.env)
        env.update(extra_env or {})
        d = DaemonProc(self.cfg_path, env, self.out, umask=umask)
        self.daemons.append(d)
        return d

    def close(self) -> None:
        for d in self.daemons:
            with contextlib.suppress(Exception):
                d.stop(5)
        kill_marked(self.state)
        self.proxy.close()

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.status_port, timeout=3)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        code, body = self._get("/status")
        assert code == 200, code
        data: dict[str, Any] = json.loads(body)
        return data

    def metrics(self) -> str:
        return self._get("/metrics")[1].decode()

    def metric(self, name: str, labels: str = "") -> float:
        pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
        m = pattern.search(self.metrics())
        return float(m.group(1)) if m else 0.0

    def replica(self, deployment: str = "chat", index: int = 0) -> dict[str, Any]:
        for r in self.status()["replicas"]:
            if r["deployment"] == deployment and r["index"] == index:
                return dict(r)
        raise KeyError(f"{deployment}.{index}")

    def applied(self) -> str | None:
        applied = self.status()["revisions"]["applied"]
        return None if applied is None else str(applied["revision"])

    def engine_pid(self, member: str = "chat.0.engine") -> int:
        rec = json.loads((self.state / "engines" / f"{member}.json").read_text())
        return int(rec["pid"])

    def engine_record(self, member: str = "chat.0.engine") -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "engines" / f"{member}.json").read_text())
        return data

    def wait_ready(self, revision: str | None = None, timeout: float = 30,
                   deployment: str = "chat") -> float:
        def ok() -> bool:
            st = self.status()
            reps = [r for r in st["replicas"] if r["deployment"] == deployment]
            applied = st["revisions"]["applied"]
            if revision is not None and (applied is None or applied["revision"] != revision):
                return False
            return bool(reps) and all(r["state"] == "Ready" for r in reps if "n0" in r["nodes"])
        return wait_until(ok, timeout, f"{deployment} Ready at {revision}")

    def starts_logged(self, member: str = "chat.0.engine") -> int:
        log = self.state / "logs" / f"{member}.log"
        if not log.exists():
            return 0
        return log.read_text(errors="replace").count("--- reconciler: starting")

    def audit(self, expected: Iterable[str] = ("chat.0.engine",)) -> Audit:
        return audit(self.state, expected)


def pid_alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
