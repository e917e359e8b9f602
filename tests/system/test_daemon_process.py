"""The daemon as a real process: `python -m reconciler run --config ...` against a real git
server on loopback, simulated GPUs and a trivial engine (testrigs/engines/daemon_test_engine.py).

Checks sd_notify on a real unix datagram socket (READY, STATUS, WATCHDOG), the watchdog
going quiet while the loop is wedged (RECONCILER_TEST_WEDGE_FILE, a test-only hook),
SIGHUP reload (good and bad file), SIGTERM leaving the engine running, a restart adopting
it (same pid, no second start), webhooks, and that no secret reaches the daemon's output.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon.webhook_auth import hmac_sha256_hex
from testrigs.gitserver import GitServer, Operator, free_port

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
TOKEN = "tok-9f8e7d6c5b4a-never-logged"
SECRET = "hook-1a2b3c4d5e6f-never-logged"


def cluster_yaml(engine_port: int, status_port: int) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {{name: sys}}
spec:
  ports:
    engine: {{start: {engine_port}, end: {engine_port + 9}}}
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {{count: 1, model: Simulated GPU, memoryGib: 80}}
      statusPort: {status_port}
"""


def deployment_yaml(port: int) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: chat}}
spec:
  model: {{path: /models/tiny, servedName: tiny-chat}}
  port: {port}
  probes: {{startupTimeoutSeconds: 60, periodSeconds: 1}}
"""


class Notify:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append((time.monotonic(), msg))
            got.append(msg)
        return got

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.drain(min(0.5, max(0.01, deadline - time.monotonic()))):
                if pred(msg):
                    return msg
        raise AssertionError(f"no matching sd_notify message; got {self.messages[-5:]}")


class DaemonProc:
    def __init__(self, config: Path, env: dict[str, str], out: Path) -> None:
        self.out = out
        with out.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "run", "--config", str(config)],
                cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
            )

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def get_status(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("GET", "/status")
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    finally:
        conn.close()


def post(port: int, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    try:
        conn.request("POST", "/webhook", body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (OSError, ValueError, KeyError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def setup(tmp_path: Path, git_server_factory: Callable[..., GitServer],
          make_operator: Callable[..., Operator]) -> Iterator[dict[str, Any]]:
    server = git_server_factory("http", token=TOKEN)
    op = make_operator(server, push_config=(f"http.extraHeader=Authorization: Bearer {TOKEN}",))
    status_port, engine_port = free_port(), free_port()
    op.commit_and_push({"cluster.yaml": cluster_yaml(engine_port, status_port),
                        "chat.yaml": deployment_yaml(engine_port)}, "add chat")
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "webhook").write_text(SECRET + "\n")
    config: dict[str, Any] = {
        "apiVersion": "reconciler.dev/v1alpha1",
        "kind": "NodeConfig",
        "nodeName": "n0",
        "source": {"url": op.url, "branch": "main", "pollIntervalSeconds": 30,
                   "tokenFile": str(tmp_path / "token")},
        "stateDir": str(tmp_path / "state"),
        "listen": {"address": "127.0.0.1", "port": status_port},
        "webhook": {"secretFile": str(tmp_path / "webhook")},
        "engine": {"python": sys.executable,
                   "apiServerModule": "testrigs.engines.daemon_test_engine",
                   "stopGracePeriodSeconds": 2,
                   "env": {"PYTHONPATH": str(REPO)}},
        "simulateGpus": {"count": 1},
        "resyncIntervalSeconds": 0.5,
    }
    cfg_path = tmp_path / "node.yaml"
    cfg_path.write_text(json.dumps(config))  # JSON is YAML
    notify = Notify(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "NOTIFY_"))}
    env.update({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000",
                "RECONCILER_TEST_WEDGE_FILE": str(tmp_path / "wedge"),
                "PYTHONPATH": str(REPO)})
    engine_pids: list[int] = []
    ctx = {"tmp": tmp_path, "config": config, "cfg_path": cfg_path, "notify": notify,
           "env": env, "port": status_port, "engine_port": engine_port, "op": op,
           "engine_pids": engine_pids, "daemons": []}
    yield ctx
    for d in ctx["daemons"]:
        with contextlib.suppress(Exception):
            d.stop(5)
    for pid in engine_pids:  # the engine this test's daemon started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    notify.sock.close()


def engine_pid(state: Path) -> int:
    rec = json.loads((state / "engines" / "chat.0.engine.json").read_text())
    return int(rec["pid"])


def replica_ready(port: int) -> bool:
    st = get_status(port)
    return bool(st["replicas"]) and st["replicas"][0]["state"] == "Ready"


def test_daemon_process_lifecycle(setup: dict[str, Any]) -> None:
    t0 = time.monotonic()
    tmp: Path = setup["tmp"]
    port: int = setup["port"]
    notify: Notify = setup["notify"]
    out = tmp / "daemon.out"
    d1 = DaemonProc(setup["cfg_path"], setup["env"], out)
    setup["daemons"].append(d1)

    ready = notify.wait_for(lambda m: m.startswith("READY=1"), 20)
    assert "STATUS=Ready=" in ready
    wait_until(lambda: replica_ready(port), 20, "engine Ready")
    pid = engine_pid(tmp / "state")
    setup["engine_pids"].append(pid)
    st = get_status(port)
    assert st["gpus"]["simulated"] is True and st["gpus"]["counts"]["assigned"] == 1
    wait_until(lambda: next(c for c in get_status(port)["conditions"]
                            if c["type"] == "Ready")["status"] == "True", 10, "Ready=True")
    status_msgs = notify.drain(1.5)
    assert sum(m == "WATCHDOG=1" for m in status_msgs) >= 2

    # webhooks: bad one refused, good one accepted (wakes the fetch)
    body = b'{"ref":"refs/heads/main"}'
    assert post(port, body, {"X-Hub-Signature-256": "sha256=" + "1" * 64}) == 401
    good = {"X-Hub-Signature-256": "sha256=" + hmac_sha256_hex(SECRET, body)}
    assert post(port, body, good) == 204

    # a wedged loop stops pinging the watchdog; unwedged, the pings resume
    wedge = tmp / "wedge"
    wedge.touch()
    notify.drain(1.2)  # a ping already on its way may still arrive
    quiet = notify.drain(2.0)
    assert "WATCHDOG=1" not in quiet, quiet
    assert get_status(port)["node"] == "n0", "status is served while the loop is wedged"
    wedge.unlink()
    notify.wait_for(lambda m: m == "WATCHDOG=1", 3)

    # SIGHUP with a bad file: logged, old config kept; with a good file: reloaded
    cfg_path: Path = setup["cfg_path"]
    good_text = cfg_path.read_text()
    cfg_path.write_text("nodeName: [unclosed\n")
    d1.signal(signal.SIGHUP)
    wait_until(lambda: "config reload failed" in out.read_text(), 10, "bad reload logged")
    assert d1.proc.poll() is None
    setup["config"]["resyncIntervalSeconds"] = 0.7
    cfg_path.write_text(json.dumps(setup["config"]))
    assert good_text != cfg_path.read_text()
    d1.signal(signal.SIGHUP)
    wait_until(lambda: get_status(port)["daemon"]["configReloadedAt"] is not None, 10,
               "reload")
    notify.drain(0.3)
    assert any(m.startswith("RELOADING=1") for _, m in notify.messages)

    # SIGTERM: exit 0, engine left running
    assert d1.stop() == 0
    assert any(m == "STOPPING=1" for m in notify.drain(0.5) + [m for _, m in notify.messages])
    assert pid_alive(pid), "the engine outlives the daemon"

    # restart: adopts the engine (same pid, no second start)
    d2 = DaemonProc(cfg_path, setup["env"], out)
    setup["daemons"].append(d2)
    notify.wait_for(lambda m: m.startswith("READY=1"), 20)
    wait_until(lambda: replica_ready(port), 15, "adopted engine Ready")
    assert engine_pid(tmp / "state") == pid
    log_text = (tmp / "state" / "logs" / "chat.0.engine.log").read_text()
    assert log_text.count("--- reconciler: starting") == 1
    assert d2.stop() == 0
    assert pid_alive(pid)

    # output: JSON lines, no secret anywhere
    text = out.read_text()
    assert TOKEN not in text and SECRET not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and all(json.loads(ln)["msg"] for ln in lines)
    assert any(json.loads(ln)["msg"] == "webhook refused" for ln in lines)
    assert time.monotonic() - t0 < 60
