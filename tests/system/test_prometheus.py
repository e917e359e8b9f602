"""A real Prometheus scrapes a real daemon and its real vLLM CPU engine, found through the
daemon's service discovery (`/sd/engines`), and evaluates the shipped alert rules.

The Prometheus config is deploy/prometheus.yml with its targets pointed at this test's
daemon on loopback and 1 s intervals; the rules are deploy/prometheus-alerts.yaml with every
`for:` shortened to 3 s (the expressions are the shipped ones). Asserted through
Prometheus's HTTP API: the daemon's `reconciler_ready` is 1; vLLM's series carry the
deployment, replica, node, role and spec hash labels; every expression of the Grafana
dashboard evaluates; after repeated kill -9 of the engine the crash-loop alert fires while
the engine's target stays listed (up == 0).

Tests depend on each other and run in file order (one vLLM start, plus the restarts the
kills cause). Needs `prometheus` (Debian package, scripts/install-prometheus.sh) and the
engine environment; skips loudly without either.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.demo.tinymodel import make_tiny_model
from testrigs.daemon_rig import clear_engines, stop_process, wait_until
from testrigs.gitserver import HttpGitServer, Operator, free_port, isolated_git_env

pytestmark = [pytest.mark.system, pytest.mark.vllm]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ENGINE_PYTHON = Path(
    os.environ.get("RECONCILER_ENGINE_PYTHON", "/work/main/.venv-engine/bin/python")
)
PROMETHEUS = shutil.which("prometheus")
READY_S = 300.0  # one vLLM start on a busy 2-core machine (about 45 s when idle)
BACKOFF_S = 40  # the second failure waits this long: room for `for: 3s` to pass


def cluster_yaml(engine_port: int, status_port: int) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {{name: prom-sys}}
spec:
  ports:
    engine: {{start: {engine_port}, end: {engine_port + 4}}}
  engineDefaults:
    startupTimeoutSeconds: {int(READY_S)}
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {{count: 0, memoryGib: 1}}
      statusPort: {status_port}
"""


def deployment_yaml(model: Path, port: int) -> str:
    return f"""\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: chat}}
spec:
  model: {{path: {model}, servedName: tiny-chat}}
  executor: mp
  engine:
    maxModelLen: 512
    extraArgs: ["--enforce-eager"]
    env: {{VLLM_CPU_KVCACHE_SPACE: "1"}}
  port: {port}
  probes: {{periodSeconds: 1}}
"""


def port_block(size: int) -> int:
    """Free ports below the ephemeral range: an outgoing connection's TIME_WAIT on an
    ephemeral port could block the engine's bind."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(10000, 18000 - size)
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
    raise RuntimeError("no free block of ports")


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
            return int(resp.status)
    except urllib.error.HTTPError as exc:  # e.g. 503 while Prometheus starts
        exc.close()
        return int(exc.code)


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # loopback only
        return json.loads(resp.read())


def shortened_rules(text: str) -> str:
    """The shipped rules with every `for:` at 3 s: same expressions, quicker verdicts."""
    short, n = re.subn(r"(?m)^(\s+)for: \S+$", r"\1for: 3s", text)
    assert n >= 1
    return short


def prometheus_config(status_port: int, rules: Path) -> dict[str, Any]:
    """deploy/prometheus.yml pointed at this test's daemon, scraping every second."""
    cfg: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s",
                     "scrape_timeout": "1s"}
    cfg["rule_files"] = [str(rules)]
    daemon = f"127.0.0.1:{status_port}"
    for job in cfg["scrape_configs"]:
        if job["job_name"] == "reconciler":
            job["static_configs"] = [{"targets": [daemon]}]
        elif job["job_name"] == "vllm":
            job["http_sd_configs"] = [
                {"url": f"http://{daemon}/sd/engines", "refresh_interval": "1s"}
            ]
    return cfg


@dataclass
class Rig:
    tmp: Path
    state: Path
    status_port: int
    engine_port: int
    prom_port: int
    daemon: subprocess.Popen[bytes]
    prom: subprocess.Popen[bytes]
    daemon_out: Path
    prom_out: Path

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = get_json(f"http://127.0.0.1:{self.status_port}/status")
        return data

    def replica(self) -> dict[str, Any]:
        return next((r for r in self.status()["replicas"] if r["deployment"] == "chat"), {})

    def engine_pid(self) -> int:
        rec = json.loads((self.state / "engines" / "chat.0.engine.json").read_text())
        return int(rec["pid"])

    def query(self, expr: str) -> dict[str, Any]:
        """Prometheus's answer to an instant query (status, data or error)."""
        url = (f"http://127.0.0.1:{self.prom_port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr}))
        try:
            data: dict[str, Any] = get_json(url)
        except urllib.error.HTTPError as exc:  # 400/422: a bad expression
            data = json.loads(exc.read())
            exc.close()
        return data

    def vector(self, expr: str) -> list[dict[str, Any]]:
        ans = self.query(expr)
        assert ans["status"] == "success", ans
        result: list[dict[str, Any]] = ans["data"]["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        data = get_json(f"http://127.0.0.1:{self.prom_port}/api/v1/alerts")
        return [a for a in data["data"]["alerts"] if a["labels"].get("alertname") == name]

    def explain(self) -> str:
        try:
            reps = [(r["deployment"], r["state"], r["reason"]) for r in self.status()["replicas"]]
        except (OSError, ValueError) as exc:
            reps = [("status unavailable", str(exc), "")]
        tail = self.daemon_out.read_text(errors="replace")[-2000:]
        prom = self.prom_out.read_text(errors="replace")[-2000:]
        engine = self.state / "logs" / "chat.0.engine.log"
        eng = engine.read_text(errors="replace")[-2000:] if engine.exists() else ""
        return (f"replicas {reps}\n--- daemon:\n{tail}\n--- prometheus:\n{prom}"
                f"\n--- engine:\n{eng}")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if PROMETHEUS is None:
        pytest.skip("PROMETHEUS MISSING: no `prometheus` binary (Debian package; "
                    "scripts/install-prometheus.sh installs it where apt-get works)")
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"no vLLM engine environment at {ENGINE_PYTHON} (set "
                    "RECONCILER_ENGINE_PYTHON, or run scripts/install-engine-env.sh)")
    tmp = tmp_path_factory.mktemp("prometheus")
    model_root = tmp / "models"
    model = make_tiny_model(model_root / "tiny-llama")
    git_env = isolated_git_env(tmp / "git-home")
    server = HttpGitServer(tmp / "git" / "repos", git_env)
    server.start()
    op = Operator(tmp / "op", server.create_repo("cluster"), git_env)
    status_port = free_port()
    engine_port = port_block(5)
    state = tmp / "state"
    op.commit_and_push({"cluster.yaml": cluster_yaml(engine_port, status_port),
                        "chat.yaml": deployment_yaml(model, engine_port)}, "chat")
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
        "backoff": {"initialSeconds": BACKOFF_S, "maxSeconds": BACKOFF_S * 2,
                    "resetAfterSeconds": 600, "jitter": 0},
    }
    cfg_path = tmp / "node.yaml"
    cfg_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "NOTIFY_"))}
    env["PYTHONPATH"] = str(REPO)
    daemon_out = tmp / "daemon.out"
    with daemon_out.open("ab") as fh:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--config", str(cfg_path)],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
        )
    rules = tmp / "alerts-for-3s.yaml"
    rules.write_text(shortened_rules((DEPLOY / "prometheus-alerts.yaml").read_text()))
    prom_cfg = tmp / "prometheus.yml"
    prom_cfg.write_text(yaml.safe_dump(prometheus_config(status_port, rules)))
    prom_port = free_port()
    prom_out = tmp / "prometheus.out"
    with prom_out.open("ab") as fh:
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            cwd=tmp, stdout=fh, stderr=subprocess.STDOUT,
        )
    r = Rig(tmp, state, status_port, engine_port, prom_port, daemon, prom, daemon_out,
            prom_out)
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{prom_port}/-/ready") == 200, 60,
                   "prometheus ready")
        yield r
    finally:
        for proc in (prom, daemon):
            stop_process(proc)
        clear_engines(state)
        server.stop()


def test_daemon_ready_as_prometheus_sees_it(rig: Rig) -> None:
    def ready() -> bool:
        assert rig.daemon.poll() is None, "the daemon exited"
        res = rig.vector('reconciler_ready{job="reconciler"}')
        return bool(res) and res[0]["value"][1] == "1"

    took = wait_until(ready, READY_S, "reconciler_ready == 1 in Prometheus")
    print(f"engine Ready and scraped as reconciler_ready 1 after {took:.1f}s")
    up = rig.vector('up{job="reconciler"}')
    assert [s["value"][1] for s in up] == ["1"]
    # no crash loop yet: the alert's expression matches nothing and no alert is active
    assert rig.vector('sum by (instance, deployment) (reconciler_replicas{state='
                      '"CrashLoopBackOff"}) > 0') == []
    assert rig.alerts("ReconcilerEngineCrashLoopBackOff") == []


def test_engine_series_found_through_discovery(rig: Rig) -> None:
    rep = rig.replica()
    groups = get_json(f"http://127.0.0.1:{rig.status_port}/sd/engines")
    assert groups == [{
        "targets": [f"127.0.0.1:{rig.engine_port}"],
        "labels": {"deployment": "chat", "replica": "0", "node": "n0", "role": "engine",
                   "spec_hash": rep["specHash"]},
    }]
    # one chat so the counters and the TTFT histogram move
    body = json.dumps({"model": "tiny-chat", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{rig.engine_port}/v1/chat/completions",
                                 data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200

    def generated() -> bool:
        res = rig.vector('vllm:generation_tokens_total{job="vllm", deployment="chat"}')
        return bool(res) and float(res[0]["value"][1]) > 0

    wait_until(generated, 30, "vllm:generation_tokens_total > 0 with deployment=chat")
    series = rig.vector('vllm:num_requests_running{job="vllm"}')
    assert len(series) == 1
    labels = series[0]["metric"]
    assert labels["deployment"] == "chat" and labels["replica"] == "0"
    assert labels["node"] == "n0" and labels["role"] == "engine"
    assert labels["spec_hash"] == rep["specHash"]
    assert labels["model_name"] == "tiny-chat"  # vLLM's own label is kept
    assert labels["instance"] == f"127.0.0.1:{rig.engine_port}"
    for name in ("vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_count"):
        got = rig.vector(f'{name}{{job="vllm", deployment="chat"}}')
        assert len(got) == 1, (name, got)
    ttft = rig.vector('vllm:time_to_first_token_seconds_count{deployment="chat"}')
    assert float(ttft[0]["value"][1]) >= 1
    print("as Prometheus sees them:")
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_count",
                 "vllm:generation_tokens_total"):
        for sample in rig.vector(f'{name}{{job="vllm"}}'):
            labels = ", ".join(f'{k}="{v}"' for k, v in sorted(sample["metric"].items())
                               if k != "__name__")
            print(f"  {name}{{{labels}}} {sample['value'][1]}")


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    values = {"$job": "reconciler", "$instance": ".*", "$vllm_job": "vllm",
              "$deployment": ".*"}
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in values.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], expr))
    for var in dash["templating"]["list"]:
        q = var.get("query", "")
        m = re.fullmatch(r"label_values\((.+), \w+\)", q)
        if m:  # the selector of a variable's query must evaluate too
            expr = m.group(1)
            for name, value in values.items():
                expr = expr.replace(name, value)
            out.append((f"variable {var['name']}", expr))
    return out


def test_every_dashboard_expression_evaluates(rig: Rig) -> None:
    queries = dashboard_queries()
    assert len(queries) > 20
    # rate() needs two samples of a series: vLLM's generation counter may have been scraped
    # once since the last test's chat (a clean-clone CI run found the panel empty), so wait
    # for the second scrape (1 s apart) before reading every panel once
    wait_until(lambda: bool(rig.vector(
        'sum by (deployment) (rate(vllm:generation_tokens_total{job="vllm"}[5m]))')),
        20, "a rate over two scrapes of vllm:generation_tokens_total")
    errors = []
    empty = []
    for title, expr in queries:
        ans = rig.query(expr)
        if ans.get("status") != "success":
            errors.append(f"{title}: {expr}: {ans.get('error')}")
        elif not ans["data"]["result"]:
            empty.append(title)
    assert errors == []
    # the engine panels have data by deployment
    for title in ("Requests running", "Requests waiting", "KV cache usage (fullest engine)",
                  "Generation throughput (tokens/s)", "Engines scraped / discovered",
                  "Nodes Ready", "Replicas by state"):
        assert title not in empty, f"{title} has no data"
    print(f"{len(queries)} dashboard expressions evaluated; no data (expected for quiet "
          f"counters): {sorted(set(empty))}")


def test_repeated_kill9_fires_the_crash_loop_alert(rig: Rig) -> None:
    first = rig.engine_pid()
    os.kill(first, signal.SIGKILL)

    def replaced() -> bool:
        return rig.engine_pid() != first

    wait_until(replaced, 30, "the first restart (no backoff)")
    second = rig.engine_pid()
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: rig.replica()["state"] == "CrashLoopBackOff", 30,
               "CrashLoopBackOff after the second kill -9")
    t0 = time.monotonic()

    def firing() -> bool:
        return any(a["state"] == "firing" and a["labels"].get("deployment") == "chat"
                   for a in rig.alerts("ReconcilerEngineCrashLoopBackOff"))

    try:
        took = wait_until(firing, BACKOFF_S - 5, "ReconcilerEngineCrashLoopBackOff firing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{rig.explain()}") from exc
    print(f"crash-loop alert firing {took:.1f}s after the replica entered CrashLoopBackOff")
    alert = next(a for a in rig.alerts("ReconcilerEngineCrashLoopBackOff")
                 if a["state"] == "firing")
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["instance"] == f"127.0.0.1:{rig.status_port}"
    assert "chat crash-loops" in alert["annotations"]["summary"]
    # the engine stays discovered while it is down: up == 0, not a vanished target
    assert time.monotonic() - t0 < BACKOFF_S
    wait_until(lambda: [s["value"][1] for s in rig.vector(
        'up{job="vllm", deployment="chat"}')] == ["0"], 10, "engine target up == 0")
    restarts = rig.vector('reconciler_engine_restarts_total{deployment="chat"}')
    assert float(restarts[0]["value"][1]) >= 2
