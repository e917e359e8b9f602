"""`plan` shows what every node runs once converged (issue 13, done-when 2).

On the reference cluster from an empty state: the vLLM command on the leader with TP 8,
PP 4, the Ray executor, gpu memory utilization 0.9, the local model path and NCCL/Gloo on
eth2; a Ray worker with 8 GPUs on each of the other three nodes; every node, planned
alone, exits 1.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main

A800 = Path(__file__).resolve().parents[2] / "examples/cluster-repo/clusters/a800-bf16"
NODES = ["a800-0", "a800-1", "a800-2", "a800-3"]


def _plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[Any]]:
    rc = main(["plan", "--repo", str(A800), "--format", "json", *args])
    return rc, json.loads(capsys.readouterr().out)


def _pairs(argv: list[str]) -> set[tuple[str, str]]:
    return set(itertools.pairwise(argv))


def test_reference_cluster_all_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    rc, nodes = _plan_json(capsys, "--all-nodes")
    assert rc == 1
    by_node = {n["node"]: n for n in nodes}
    assert sorted(by_node) == NODES
    engines = [(n, m) for n in by_node.values() for m in n["members"] if m["role"] == "engine"]
    assert len(engines) == 1
    leader, engine = engines[0]
    argv = engine["argv"]
    assert {
        ("--tensor-parallel-size", "8"),
        ("--pipeline-parallel-size", "4"),
        ("--distributed-executor-backend", "ray"),
        ("--gpu-memory-utilization", "0.9"),
        ("--model", "/models/DeepSeek-R1-BF16"),
    } <= _pairs(argv)
    assert engine["env"]["NCCL_SOCKET_IFNAME"] == "eth2"
    assert engine["env"]["GLOO_SOCKET_IFNAME"] == "eth2"
    assert engine["env"]["RAY_ADDRESS"].startswith("10.10.0.")
    head = next(m for m in leader["members"] if m["role"] == "ray-head")
    assert head["gpus"] == list(range(8)) and ("--num-gpus", "8") in _pairs(head["argv"])
    # Ray's idle-worker pool follows the declared CPUs: per GPU, not per host core, so a
    # 90-port worker block never runs out on a many-core host (seen on the H200 machine).
    assert ("--num-cpus", "9") in _pairs(head["argv"])
    assert head["env"]["NCCL_SOCKET_IFNAME"] == "eth2"
    # the steps: head first, the three workers, the driver last
    assert leader["steps"][0].startswith(f"{leader['node']}: start deepseek-r1/0 ray-head")
    assert "vLLM driver" in leader["steps"][-1] and len(leader["steps"]) == 5
    followers = [n for name, n in by_node.items() if name != leader["node"]]
    assert len(followers) == 3
    for f in followers:
        (worker,) = f["members"]
        assert worker["role"] == "ray-worker" and worker["status"] == "start"
        assert worker["gpus"] == list(range(8))
        assert ("--num-gpus", "8") in _pairs(worker["argv"])
        assert ("--num-cpus", "9") in _pairs(worker["argv"])
        assert worker["env"]["GLOO_SOCKET_IFNAME"] == "eth2"
        assert worker["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
        assert f["changes"] is True


@pytest.mark.parametrize("node", NODES)
def test_each_node_alone_exits_1(node: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--repo", str(A800), "--node", node]) == 1
    out = capsys.readouterr().out
    assert "[start]" in out and "argv: " in out
    assert "no changes" not in out


def test_text_shows_the_vllm_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--repo", str(A800), "--all-nodes"]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "vllm.entrypoints" in ln)
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 4" in line
    assert "--distributed-executor-backend ray --gpu-memory-utilization 0.9" in line
    assert "NCCL_SOCKET_IFNAME=eth2" in out and "GLOO_SOCKET_IFNAME=eth2" in out


def test_secrets_are_masked_and_controls_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "a800"
    shutil.copytree(A800, repo)
    dep = repo / "deepseek-r1.yaml"
    text = dep.read_text().replace(
        '    extraArgs: ["--trust-remote-code", "--enable-chunked-prefill"]\n',
        '    extraArgs: ["--trust-remote-code", "--enable-chunked-prefill"]\n'
        '    env: {HF_TOKEN: hf_secret_value, MY_NOTE: "a\\nerror: forged"}\n',
    )
    dep.write_text(text)
    assert main(["plan", "--repo", str(repo), "--all-nodes"]) == 1
    out = capsys.readouterr().out
    assert "hf_secret_value" not in out and "HF_TOKEN=***" in out
    assert "MY_NOTE=a\\x0aerror: forged" in out
    assert not any(ln.startswith("error:") for ln in out.splitlines())
