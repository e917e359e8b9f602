"""Real Ray across network-namespace test hosts, with the Ray test engine on top.

Forms a 2-node cluster (head + one follower, one logical GPU each, every port pinned by
``reconciler.core.ray_argv``), reads it back with ``reconciler.ports.ray_nodes``, runs
``testrigs/engines/ray_test_engine.py`` with world size 2 (SPREAD) across both nodes, then kills
the follower's ``ray start --block`` process group and expects the engine's /health to go
503 and the engine to exit non-zero, and the head to mark the follower DEAD.

Needs root, ``ip netns`` and the engine environment (``.venv-engine`` with ray, or
``RECONCILER_ENGINE_PYTHON``). Runs in ~40 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.ray_argv import (
    gcs_address,
    ray_driver_env,
    ray_head_argv,
    ray_node_env,
    ray_port_plan,
    ray_worker_argv,
)
from reconciler.ports.ray_nodes import RayClusterView, SubprocessRayPort
from testrigs.netns import NetnsHarness, NetnsHost

pytestmark = [pytest.mark.system, pytest.mark.netns, pytest.mark.ray, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "testrigs" / "engines" / "ray_test_engine.py"
ENGINE_PORT = 8000
LABELS = {"gitops-replica": "demo-0", "gitops-spec-hash": "0123abcd"}

# Read an HTTP status + body from inside a namespace (the test process can't reach it).
_PROBE = r"""
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
except Exception as e:
    print(0); print(type(e).__name__)
"""


def _engine_python() -> Path:
    explicit = os.environ.get("RECONCILER_ENGINE_PYTHON")
    return Path(explicit) if explicit else REPO / ".venv-engine" / "bin" / "python"


@pytest.fixture
def engine_python() -> Path:
    py = _engine_python()
    if not py.exists():
        pytest.skip(f"engine environment not found at {py}")
    if subprocess.run([str(py), "-I", "-c", "import ray"], capture_output=True).returncode != 0:
        pytest.skip(f"ray does not import in {py}")
    return py


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # Ray puts unix sockets under --temp-dir; pytest's tmp_path is too long for them.
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _wait_for(what: str, timeout: float, fn: Callable[[], Any], interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _probe(net: NetnsHarness, host: NetnsHost, url: str) -> tuple[int, str]:
    r = net.run(host, [sys.executable, "-I", "-c", _PROBE, url, "2"], timeout=10)
    code, _, body = r.stdout.partition("\n")
    return int(code or 0), body.strip()


@pytest.mark.parametrize("test_hosts", [2], indirect=True)
def test_ray_cluster_and_engine_see_follower_death(
    test_hosts: NetnsHarness, engine_python: Path, short_tmp: Path
) -> None:
    net = test_hosts
    head, follower = net.hosts
    bin_dir = engine_python.parent
    ray_exe = str(bin_dir / "ray")
    ports = ray_port_plan(23000, 23040)
    address = gcs_address(head.ip, ports)
    base = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        # Faster node-death detection than Ray's default (3 s x 5 failures).
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    logs = short_tmp / "logs"
    logs.mkdir()

    def start(host: NetnsHost, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(logs / f"{host.name}.log", "wb") as log:
            return net.popen(host, argv, env, stdout=log)

    ray_port = SubprocessRayPort(
        str(engine_python), timeout_s=15, env=base, argv_prefix=["ip", "netns", "exec", head.netns]
    )

    def query() -> RayClusterView | None:
        return ray_port.cluster(address)

    def dump_logs() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs.iterdir()
        )

    t0 = time.monotonic()
    head_proc = start(
        head,
        ray_head_argv(
            ray_exe, head.ip, ports, 1, str(short_tmp / "h1"),
            num_cpus=2, object_store_memory=100 << 20, labels=LABELS,
        ),
        ray_node_env(base, head.ip, [0], nccl_ifname=head.ifname, gloo_ifname=head.ifname),
    )  # fmt: skip
    follower_proc = start(
        follower,
        ray_worker_argv(
            ray_exe, address, follower.ip, ports, 1,
            temp_dir=str(short_tmp / "h2"), num_cpus=2, object_store_memory=100 << 20,
            labels=LABELS,
        ),
        ray_node_env(base, follower.ip, [1], nccl_ifname=follower.ifname,
                     gloo_ifname=follower.ifname),
    )  # fmt: skip

    try:
        view: RayClusterView = _wait_for(
            "2 alive Ray nodes",
            60,
            lambda: (v := query()) is not None and len(v.alive) == 2 and v,
        )
    except AssertionError:
        raise AssertionError(dump_logs()) from None
    formed_s = time.monotonic() - t0
    assert head_proc.poll() is None and follower_proc.poll() is None
    assert view.alive_gpus_by_ip() == {head.ip: 1.0, follower.ip: 1.0}
    assert view.head() is not None and view.head().ip == head.ip  # type: ignore[union-attr]
    for node in view.alive:
        assert node.labels.get("gitops-spec-hash") == LABELS["gitops-spec-hash"]
    assert view.cluster_ray_version == view.client_ray_version
    short = ray_port.view(address)
    assert short is not None
    assert short.alive_nodes == tuple(sorted([head.ip, follower.ip]))
    assert short.gpus == 2.0

    engine_log = open(logs / "engine.log", "wb")  # noqa: SIM115 - closed below
    try:
        engine = net.popen(
            head,
            [
                str(engine_python), "-I", str(ENGINE),
                "--world-size", "2", "--strategy", "SPREAD", "--pg-timeout", "30",
                "--host", head.ip, "--port", str(ENGINE_PORT),
                "--served-model-name", "tiny-test", "--ping-interval", "0.3",
                "--ping-timeout", "3", "--exit-grace", "2",
            ],
            ray_driver_env(base, address, head.ip),
            stdout=engine_log,
        )  # fmt: skip
    finally:
        engine_log.close()
    base_url = f"http://{head.ip}:{ENGINE_PORT}"
    try:
        _wait_for(
            "engine /health 200",
            60,
            lambda: engine.poll() is None and _probe(net, head, f"{base_url}/health")[0] == 200,
        )
    except AssertionError:
        raise AssertionError(f"engine rc={engine.poll()}\n{dump_logs()}") from None
    ready_s = time.monotonic() - t0

    code, body = _probe(net, head, f"{base_url}/v1/models")
    assert code == 200
    models = json.loads(body)
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny-test"]

    code, body = _probe(net, head, f"{base_url}/ranks")
    ranks = json.loads(body)["ranks"]
    assert sorted(r["node_ip"] for r in ranks) == sorted([head.ip, follower.ip])
    for r in ranks:
        # The raylet's environment reaches the Ray workers (ray_node_env's purpose).
        assert r["env"]["VLLM_HOST_IP"] == r["node_ip"]
        assert r["env"]["GLOO_SOCKET_IFNAME"] == head.ifname
        assert r["env"]["CUDA_VISIBLE_DEVICES"] is not None

    # Kill the follower's `ray start --block` (its whole process group) -- never `ray stop`.
    t_kill = time.monotonic()
    assert net.kill(follower_proc, signal.SIGKILL) is not None

    def engine_noticed() -> str | None:
        if engine.poll() is not None:
            return f"exit {engine.returncode}"
        code, _ = _probe(net, head, f"{base_url}/health")
        return "503" if code == 503 else None

    try:
        first_signal = _wait_for("engine to notice the follower's death", 30, engine_noticed, 0.2)
    except AssertionError:
        raise AssertionError(dump_logs()) from None
    noticed_s = time.monotonic() - t_kill
    try:
        rc = engine.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("engine did not exit after a rank died\n" + dump_logs()) from None
    assert rc in (3, 4), dump_logs()
    exited_s = time.monotonic() - t_kill

    dead: RayClusterView = _wait_for(
        "head to mark the follower DEAD",
        30,
        lambda: (v := query()) is not None and follower.ip not in v.alive_ips() and v,
    )
    dead_s = time.monotonic() - t_kill
    assert head.ip in dead.alive_ips()
    assert any(n.ip == follower.ip and not n.alive for n in dead.nodes)
    assert head_proc.poll() is None
    print(
        f"formed {formed_s:.1f}s, engine healthy {ready_s:.1f}s after spawn; after kill: "
        f"engine {first_signal} at {noticed_s:.1f}s, exit rc={rc} at {exited_s:.1f}s, "
        f"head marked DEAD at {dead_s:.1f}s"
    )
