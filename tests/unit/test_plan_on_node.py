"""`reconciler plan` on the node itself reads the GPUs and the state dir like the daemon;
anywhere else it says the GPUs are the Cluster's declaration (issue 19: plan had put a
TP 1 engine on the GPU a foreign process held, while the daemon used the other one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli.main import main

CLUSTER = """\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {name: c}
spec:
  nodes:
    - name: gpu-node
      address: 127.0.0.1
      gpus: {count: 2, model: Simulated GPU, memoryGib: 80}
---
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat}
spec:
  model: {path: /models/chat, servedName: chat}
  port: 8000
"""


def _config(tmp: Path, node: str, **extra: object) -> Path:
    cfg = {"nodeName": node, "source": {"url": str(tmp / "repo")},
           "stateDir": str(tmp / "state"), "engine": {"python": "/opt/vllm/bin/python"},
           "simulateGpus": {"count": 2}, **extra}
    path = tmp / "node.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _plan(tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    repo = tmp / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "cluster.yaml").write_text(CLUSTER)
    code = main(["plan", "--repo", str(repo), "--node", "gpu-node", *extra])
    return code, capsys.readouterr().out


def test_elsewhere_the_gpus_are_the_declaration_and_it_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _config(tmp_path, "another-node")
    code, out = _plan(tmp_path, capsys, "--config", str(other))
    assert code == 1
    assert "GPUs from the Cluster declaration of gpu-node (2 x Simulated GPU), not observed" \
        in out and "'another-node'" in out


def test_on_the_node_it_reads_gpus_like_the_daemon_managed_gpus_included(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, "gpu-node", managedGpus=[1])
    code, out = _plan(tmp_path, capsys, "--config", str(cfg), "--format", "json")
    assert code == 1
    [node] = json.loads(out)
    assert node["observed"].startswith("GPUs read from simulated (node config simulateGpus) on "
                                       "this node as the daemon reads them")
    assert "managedGpus [1], 1 unmanaged" in node["observed"]
    assert str(tmp_path / "state") in node["observed"]
    [start] = [a for a in node["actions"] if a["type"] == "Start"]
    assert start["gpus"] == [1]  # GPU 0 is another daemon's: never assigned
    assert start["argv"][0] == "/opt/vllm/bin/python"  # the daemon's engine python


def test_an_unreadable_config_named_on_the_command_line_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "node.yaml"
    bad.write_text("nodeName: gpu-node\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "cluster.yaml").write_text(CLUSTER)
    assert main(["plan", "--repo", str(repo), "--node", "gpu-node", "--config", str(bad)]) == 2
    assert "source" in capsys.readouterr().err


def test_plan_shows_a_kept_member_on_the_gpus_it_runs_on() -> None:
    """Seen on the GPU machine: plan said 'one/0 engine [keep] gpus 0' while the engine ran
    on GPU 1, beside a stranger on GPU 0."""
    import time

    from reconciler.cli.plan import as_the_node_does, member_status
    from reconciler.core.converged import node_members
    from reconciler.core.placement import place
    from reconciler.core.plan import plan
    from reconciler.core.vocabulary import Inventory
    from testrigs import builders as b

    cluster = b.cluster(b.node("n1", gpus=2))
    desired = b.desired(cluster, b.deployment("one", placement={"nodes": ["n1"]}))
    placement = place(desired)
    ctx = b.ctx("n1")
    [member] = node_members(desired, placement, ctx)
    assert member.launch.gpus == (0,)  # the ideal numbering of an empty node
    running = b.proc("one", spec_hash=member.launch.spec_hash, gpus=(1,), pid=4242)
    observed = b.observed("n1", b.gpus(2, pids={0: (999,), 1: (4242,)}), running,
                          foreign=frozenset({999}))
    p = plan(desired, observed, Inventory(), time.time(), ctx, placement=placement)
    shown = as_the_node_does(member, observed, p)
    assert member_status(member, observed) == "keep"
    assert shown.launch.gpus == (1,) and shown.launch.env["CUDA_VISIBLE_DEVICES"] == "1"


def test_plan_shows_a_member_to_start_on_the_gpus_the_next_tick_gives_it() -> None:
    import time

    from reconciler.cli.plan import as_the_node_does
    from reconciler.core.converged import node_members
    from reconciler.core.placement import place
    from reconciler.core.plan import plan
    from reconciler.core.vocabulary import Inventory
    from testrigs import builders as b

    cluster = b.cluster(b.node("n1", gpus=2))
    desired = b.desired(cluster, b.deployment("one", placement={"nodes": ["n1"]}))
    placement = place(desired)
    ctx = b.ctx("n1")
    [member] = node_members(desired, placement, ctx)
    observed = b.observed("n1", b.gpus(2, pids={0: (999,)}), foreign=frozenset({999}))
    p = plan(desired, observed, Inventory(), time.time(), ctx, placement=placement)
    assert as_the_node_does(member, observed, p).launch.gpus == (1,)
