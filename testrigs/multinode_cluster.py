"""A reconciler cluster on network-namespace test hosts, for multi-node system tests and
benchmarks.

Layout (``MultiNodeCluster(n_nodes=3)``): test hosts ``h1``..``hN`` (198.18.0.11...) each run
their own daemon (``python -m reconciler run --config ...``, own state dir, simulated GPUs),
and one more namespace, ``git``, runs ``git daemon`` bound to its bridge address, so every
daemon fetches the same repository over the test network. The operator commits into a
working clone and pushes to the bare repository by path (from the root namespace, which
cannot reach the bridge), which is the repository that ``git daemon`` serves.

Engines are ``testrigs.engines.ray_test_engine`` (vLLM on the CPU has no Ray executor) run with
the engine environment's python; Ray nodes are real ``ray start`` processes. Ray is tuned
through the node config's ``engine.env`` to notice deaths fast (docs/ray-notes.md).

The test process reaches a daemon's HTTP listener from a thread that joined the host's
network namespace (``setns``), so no process is spawned per status read.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from testrigs.gitserver import Operator, git, isolated_git_env
from testrigs.netns import NetnsHarness, NetnsHost

REPO = Path(__file__).resolve().parents[1]
STATUS_PORT = 9400
GIT_PORT = 9418
MARKER = "RECONCILER_MEMBER"

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def engine_python() -> Path:
    explicit = os.environ.get("RECONCILER_ENGINE_PYTHON")
    return Path(explicit) if explicit else REPO / ".venv-engine" / "bin" / "python"


def ray_unavailable_reason() -> str | None:
    py = engine_python()
    if not py.exists():
        return f"engine environment not found at {py}"
    probe = subprocess.run([str(py), "-I", "-c", "import ray"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"ray does not import in {py}"
    return None


def in_netns(host: NetnsHost, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run ``fn`` in a thread that joined the host's network namespace."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{host.netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {host.netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{host.name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"call in {host.name} did not finish in {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def http_get(host: NetnsHost, path: str, port: int = STATUS_PORT, timeout: float = 3.0
             ) -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(host.ip, port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    return in_netns(host, get, timeout + 5)


def cluster_yaml(hosts: list[NetnsHost], gpus: int) -> str:
    return cluster_yaml_of([(h.name, h.ip) for h in hosts], gpus)


def cluster_yaml_of(nodes_at: list[tuple[str, str]], gpus: int) -> str:
    """A Cluster document of (name, address) nodes, `gpus` each, Ray ports 21000-21399."""
    nodes = "".join(
        f"    - name: {name}\n"
        f"      address: {address}\n"
        f"      gpus: {{count: {gpus}, model: Simulated GPU, memoryGib: 80}}\n"
        f"      statusPort: {STATUS_PORT}\n"
        for name, address in nodes_at
    )
    return (
        "apiVersion: reconciler.dev/v1alpha1\n"
        "kind: Cluster\n"
        "metadata: {name: mn}\n"
        "spec:\n"
        "  network: {ncclSocketIfname: eth0, glooSocketIfname: eth0}\n"
        "  ports:\n"
        "    engine: {start: 8000, end: 8099}\n"
        "    ray: {start: 21000, end: 21399}\n"
        "    rayBlockSize: 40\n"
        "  nodes:\n" + nodes
    )


def deployment_yaml(name: str, *, nodes: list[str], pipeline: int, port: int,
                    max_model_len: int = 1024, drain_s: int | None = None) -> str:
    """`drain_s`: rollout.drainTimeoutSeconds (none when None)."""
    rollout = f"  rollout: {{drainTimeoutSeconds: {drain_s}}}\n" if drain_s is not None else ""
    return (
        "apiVersion: reconciler.dev/v1alpha1\n"
        "kind: ModelDeployment\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  model: {{path: /models/{name}, servedName: {name}-model}}\n"
        f"  parallelism: {{pipeline: {pipeline}}}\n"
        f"  placement: {{nodes: [{', '.join(nodes)}]}}\n"
        f"  engine: {{maxModelLen: {max_model_len}}}\n"
        f"  port: {port}\n"
        "  probes: {startupTimeoutSeconds: 180, periodSeconds: 1, timeoutSeconds: 2}\n"
        + rollout
    )


class MultiNodeCluster:
    """Test hosts with one daemon each, a git server on the test network, an operator."""

    def __init__(self, n_nodes: int = 3, *, gpus_per_node: int = 1,
                 backoff_initial_s: float = 3.0) -> None:
        self.n_nodes = n_nodes
        self.gpus_per_node = gpus_per_node
        self.backoff_initial_s = backoff_initial_s
        self.net = NetnsHarness(n_nodes + 1)
        self.nodes = self.net.hosts[:n_nodes]
        self.git_host = self.net.hosts[n_nodes]
        # short: Ray's unix sockets live below <state dir>/ray/<12 hex>/session_.../sockets
        self.root = Path(tempfile.mkdtemp(prefix="rtm-", dir="/tmp"))
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.git_env = isolated_git_env(self.root / "git-home")
        self.operator: Operator | None = None
        self.files: dict[str, str] = {}

    # --- lifecycle ------------------------------------------------------------------------

    def setup(self) -> MultiNodeCluster:
        try:
            self.net.setup()
            self._start_git()
            self._write_configs()
        except BaseException:
            self.teardown()
            raise
        return self

    def __enter__(self) -> MultiNodeCluster:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def teardown(self) -> None:
        # the harness ends the daemons, then every process left in its namespaces (the
        # engines and Ray nodes the daemons started), then deletes the namespaces
        self.net.teardown()
        shutil.rmtree(self.root, ignore_errors=True)

    def _start_git(self) -> None:
        repos = self.root / "repos"
        repos.mkdir()
        bare = repos / "cluster.git"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), env=self.git_env)
        git("--git-dir", str(bare), "config", "receive.denyNonFastForwards", "false",
            env=self.git_env)
        log = (self.root / "git-daemon.log").open("wb")
        try:
            self.net.popen(
                self.git_host,
                ["git", "daemon", "--export-all", "--reuseaddr", "--informative-errors",
                 f"--listen={self.git_host.ip}", f"--port={GIT_PORT}",
                 f"--base-path={repos}"],
                self.git_env, stdout=log,
            )
        finally:
            log.close()
        self.operator = Operator(self.root / "operator", str(bare), self.git_env)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if in_netns(self.git_host, lambda: _connects(self.git_host.ip, GIT_PORT)):
                return
            time.sleep(0.05)
        raise RuntimeError("git daemon did not come up")

    @property
    def url(self) -> str:
        return f"git://{self.git_host.ip}:{GIT_PORT}/cluster.git"

    def state_dir(self, host: NetnsHost) -> Path:
        return self.root / host.name

    def _write_configs(self) -> None:
        py = engine_python()
        for h in self.nodes:
            config = {
                "apiVersion": "reconciler.dev/v1alpha1",
                "kind": "NodeConfig",
                "nodeName": h.name,
                "source": {"url": self.url, "branch": "main", "pollIntervalSeconds": 1,
                           "timeoutSeconds": 5},
                "stateDir": str(self.state_dir(h)),
                "listen": {"address": h.ip, "port": STATUS_PORT},
                "engine": {
                    "python": str(py),
                    "apiServerModule": "testrigs.engines.ray_test_engine",
                    "stopGracePeriodSeconds": 3,
                    "env": {
                        "PYTHONPATH": str(REPO),
                        # Ray notices a dead or cut-off node in a few seconds, not a minute
                        "RAY_health_check_period_ms": "1000",
                        "RAY_health_check_timeout_ms": "1000",
                        "RAY_health_check_failure_threshold": "3",
                        # a raylet whose head went away gives up after 5 s, not 60 s
                        "RAY_gcs_rpc_server_reconnect_timeout_s": "5",
                    },
                },
                "simulateGpus": {"count": self.gpus_per_node},
                "resyncIntervalSeconds": 1,
                "backoff": {"initialSeconds": self.backoff_initial_s, "maxSeconds": 20,
                            "resetAfterSeconds": 600, "jitter": 0},
            }
            path = self.root / f"{h.name}.json"
            path.write_text(json.dumps(config, indent=1))  # JSON is YAML

    def start_daemons(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
        }
        for h in self.nodes:
            log = (self.root / f"{h.name}.daemon.log").open("ab")
            try:
                self.daemons[h.name] = self.net.popen(
                    h, [sys.executable, "-m", "reconciler", "run", "--config",
                        str(self.root / f"{h.name}.json")],
                    env, stdout=log, cwd=str(REPO),
                )
            finally:
                log.close()

    # --- git ----------------------------------------------------------------------------------

    def push(self, files: dict[str, str | None], message: str) -> str:
        assert self.operator is not None
        for name, text in files.items():
            if text is None:
                self.files.pop(name, None)
            else:
                self.files[name] = text
        return self.operator.commit_and_push(dict(files), message)

    # --- reading the hosts ---------------------------------------------------------------

    def host(self, name: str) -> NetnsHost:
        return self.net.host(name)

    def status(self, host: NetnsHost) -> dict[str, Any]:
        code, body = http_get(host, "/status")
        if code != 200:
            raise OSError(f"/status on {host.name} answered {code}")
        data: dict[str, Any] = json.loads(body)
        return data

    def replica(self, host: NetnsHost, deployment: str, index: int = 0) -> dict[str, Any] | None:
        for r in self.status(host).get("replicas", []):
            if r["deployment"] == deployment and r["index"] == index:
                return dict(r)
        return None

    def metric(self, host: NetnsHost, name: str, **labels: str) -> float:
        code, body = http_get(host, "/metrics")
        if code != 200:
            raise OSError(f"/metrics on {host.name} answered {code}")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        total = 0.0
        for line in body.decode().splitlines():
            if not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            if series == name or (want and series == f"{name}{{{want}}}"):
                total += float(value)
        return total

    def member_record(self, host: NetnsHost, slug: str) -> dict[str, Any] | None:
        path = self.state_dir(host) / "engines" / f"{slug}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data

    def marked_processes(self, prefix: str) -> dict[str, list[int]]:
        """host name -> pids in its namespace whose environment has RECONCILER_MEMBER
        starting with ``prefix`` (every Ray and engine process of a replica carries it)."""
        out: dict[str, list[int]] = {}
        for h in self.nodes:
            for pid in self.net.pids_in(h):
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                for item in env:
                    if item.startswith(f"{MARKER}={prefix}".encode()):
                        out.setdefault(h.name, []).append(pid)
                        break
        return out

    def rss_mib(self, host: NetnsHost) -> float:
        """Resident memory of the engine and Ray processes in a host (not the daemon)."""
        total = 0
        for pid in self.marked_pids(host):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/statm").read_text().split()
                total += int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
        return total / (1 << 20)

    def marked_pids(self, host: NetnsHost) -> list[int]:
        pids = []
        for pid in self.net.pids_in(host):
            with contextlib.suppress(OSError):
                if f"\0{MARKER}=".encode() in b"\0" + Path(f"/proc/{pid}/environ").read_bytes():
                    pids.append(pid)
        return pids

    def logs(self, tail: int = 4000) -> str:
        parts = []
        for h in self.nodes:
            for path in [self.root / f"{h.name}.daemon.log",
                         *sorted((self.state_dir(h) / "logs").glob("*.log"))]:
                with contextlib.suppress(OSError):
                    parts.append(f"--- {h.name} {path.name}\n"
                                 f"{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)


def _connects(ip: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(what: str, timeout: float, fn: Callable[[], T | None], interval: float = 0.5,
             on_fail: Callable[[], str] | None = None) -> T:
    """Poll ``fn`` until it returns something truthy; errors while polling count as no."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = fn()
        except (OSError, ValueError, KeyError, TimeoutError, http.client.HTTPException) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        time.sleep(interval)
    extra = on_fail() if on_fail is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} "
                         f"(last: {last!r})\n{extra}")


@contextlib.contextmanager
def running_cluster(n_nodes: int = 3, **kwargs: Any) -> Iterator[MultiNodeCluster]:
    cluster = MultiNodeCluster(n_nodes, **kwargs)
    cluster.setup()
    try:
        yield cluster
    finally:
        cluster.teardown()
