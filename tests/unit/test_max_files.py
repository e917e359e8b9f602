"""The YAML file count limit: a setting (node config source.maxFiles, CLI --max-files) with a
default that admits one file per deployment at scale, and a refusal that says what the
limit protects and how to change it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.core.errors import InvalidDesiredState
from reconciler.desired.loader import MAX_FILES, load_directory
from reconciler.desired.node_config import load_node_config
from reconciler.desired.source_sync import SourceSync
from reconciler.testing.git_source import FakeGitSource
from testrigs.big_repo import cluster_yaml, deployment_yaml, write_repo

REPO = Path(__file__).resolve().parents[2]


def _small_repo(root: Path, deployments: int) -> Path:
    write_repo(root, nodes=8, deployments=deployments, files=0)  # one file per deployment
    return root


def test_refusal_says_what_the_limit_protects(tmp_path: Path) -> None:
    root = _small_repo(tmp_path / "repo", 3)  # 4 files
    with pytest.raises(InvalidDesiredState) as caught:
        load_directory(root, max_files=3)
    (problem,) = caught.value.problems
    assert problem.file == str(root)
    assert "4 YAML files; the limit is 3" in problem.message
    assert "every node" in problem.message  # what it protects
    assert "source.maxFiles" in problem.message and "--max-files" in problem.message
    assert load_directory(root, max_files=4).deployments.keys() == {"d0", "d1", "d2"}


def test_default_admits_one_file_per_deployment_at_2000(tmp_path: Path) -> None:
    """bench/revision_bench.py's one-file-per-deployment shape: refused by the old 2,000 limit."""
    assert MAX_FILES >= 10_000
    root = _small_repo(tmp_path / "repo", 2000)
    assert len(list(root.glob("*.yaml"))) == 2001
    assert len(load_directory(root).deployments) == 2000


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_flag(tmp_path: Path) -> None:
    root = _small_repo(tmp_path / "repo", 2)  # 3 files
    refused = _cli("validate", "--max-files", "2", str(root))
    assert refused.returncode == 2
    assert f"{root}:1:1: 3 YAML files; the limit is 2" in refused.stderr
    assert _cli("validate", "--max-files", "3", str(root)).returncode == 0
    plan = _cli("plan", "--repo", str(root), "--node", "n0", "--max-files", "2")
    assert plan.returncode == 2
    assert "the limit is 2" in plan.stderr


def test_node_config_field_reaches_the_daemons_loader(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    base = {"nodeName": "n0", "source": {"url": "/srv/repo"},
            "engine": {"python": "/opt/vllm/bin/python"}}
    config.write_text(json.dumps(base))
    assert load_node_config(config).source.max_files == MAX_FILES
    base["source"] = {"url": "/srv/repo", "maxFiles": 2}
    config.write_text(json.dumps(base))
    limit = load_node_config(config).source.max_files
    assert limit == 2

    with FakeGitSource() as source:
        source.commit({"cluster.yaml": cluster_yaml(2), "d0.yaml": deployment_yaml(0)})
        sync = SourceSync(source, tmp_path / "state", limit)
        (tmp_path / "state").mkdir()
        assert sync.sync(0.0)
        source.commit({"d1.yaml": deployment_yaml(1)})
        assert not sync.sync(1.0)
        assert sync.failure is not None
        assert "3 YAML files; the limit is 2" in sync.failure.message
        assert sync.desired is not None and set(sync.desired.deployments) == {"d0"}
