"""The placement lock, cordon and drain (issue 13, done-when 3).

Adding a node to the reference cluster, then `lock` + `diff`: no replica moves.
Cordoning a node keeps the locked replica; cordoning and draining it makes the replica
unschedulable (3 of 4 nodes), which the diff shows with a clear message. A stale lock
never makes two nodes disagree: the lock is part of the revision.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.core.placement import place
from reconciler.core.vocabulary import LockedPlacement, ReplicaKey
from reconciler.desired.validation import validate_revision

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
A800 = EXAMPLES / "cluster-repo/clusters/a800-bf16"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin",
}
NODE_4 = """\
    - name: a800-4
      address: 10.10.0.14
      labels: {gpu: a800, fabric: ib200}
      gpus: {count: 8, model: NVIDIA A800-SXM4-80GB, memoryGib: 80}
"""
KEY = ReplicaKey("deepseek-r1", 0)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=GIT_ENV,
        check=True, timeout=60,
    ).stdout.strip()


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(A800, root)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "reference cluster with its lock")
    return root


def _commit(repo: Path, message: str) -> str:
    _git(repo, "commit", "-q", "-am", message)
    return _git(repo, "rev-parse", "HEAD")


def _edit_cluster(repo: Path, old: str, new: str) -> None:
    path = repo / "cluster.yaml"
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))


def test_examples_carry_current_locks() -> None:
    assert _run("lock", "--check", str(EXAMPLES / "cluster-repo"))[0] == 0
    for cluster in (EXAMPLES / "cluster-repo/clusters").iterdir():
        assert (cluster / "placement.lock.yaml").is_file()


def test_adding_a_node_moves_nothing(repo: Path) -> None:
    base = _git(repo, "rev-parse", "HEAD")
    before = place(validate_revision(repo)).replicas[KEY].nodes
    (repo / "cluster.yaml").write_text((repo / "cluster.yaml").read_text() + NODE_4)
    assert _run("lock", str(repo))[0] == 0
    head = _commit(repo, "add a800-4")
    rc, out, err = _run("diff", "--repo", str(repo), "--from", base, "--to", head)
    assert (rc, err) == (0, ""), out
    assert "moves" not in out and "stop" not in out and "start" not in out
    assert place(validate_revision(repo)).replicas[KEY].nodes == before
    assert _run("lock", "--check", str(repo))[0] == 0


def test_without_the_lock_the_node_would_move_it(repo: Path) -> None:
    """The rule alone (no lock) moves the replica onto the new node: what the lock fixes."""
    (repo / "placement.lock.yaml").unlink()
    before = place(validate_revision(repo)).replicas[KEY].nodes
    (repo / "cluster.yaml").write_text((repo / "cluster.yaml").read_text() + NODE_4)
    after = place(validate_revision(repo)).replicas[KEY].nodes
    assert set(before) != set(after)


def test_cordon_keeps_the_locked_replica(repo: Path) -> None:
    base = _git(repo, "rev-parse", "HEAD")
    _edit_cluster(
        repo, "      address: 10.10.0.13\n", "      address: 10.10.0.13\n      cordon: true\n"
    )
    head = _commit(repo, "cordon a800-3")
    rc, out, _ = _run("diff", "--repo", str(repo), "--from", base, "--to", head)
    assert rc == 0 and "moves" not in out, out


def test_cordon_and_drain_make_the_replica_unschedulable(repo: Path) -> None:
    base = _git(repo, "rev-parse", "HEAD")
    _edit_cluster(
        repo,
        "      address: 10.10.0.13\n",
        "      address: 10.10.0.13\n      cordon: true\n      drain: true\n",
    )
    head = _commit(repo, "drain a800-3")
    rc, out, err = _run("diff", "--repo", str(repo), "--from", base, "--to", head)
    assert rc == 1 and err == "", err
    reason = (
        "deepseek-r1/0: unschedulable: needs 4 nodes with 8 GPUs each; 3 matching node(s) "
        "have that; only 3 of 4 matching nodes take replicas (a800-3 drained)"
    )
    assert reason in out
    for node in ("a800-0", "a800-1", "a800-2", "a800-3"):
        assert f"node {node}:\n    - stop" in out
    # the lock no longer matches: lock --check says so, lock rewrites it
    assert _run("lock", "--check", str(repo))[0] == 1
    assert _run("lock", str(repo))[0] == 0
    assert "deepseek-r1/0" not in (repo / "placement.lock.yaml").read_text()


def test_stale_lock_entries_are_ignored_not_obeyed(tmp_path: Path) -> None:
    root = tmp_path / "a800"
    shutil.copytree(A800, root)
    (root / "placement.lock.yaml").write_text(
        "apiVersion: reconciler.dev/v1alpha1\nkind: PlacementLock\nreplicas:\n"
        "  deepseek-r1/0: {nodes: [a800-0, gone-node, a800-1, a800-2], rayBlock: 3}\n"
        "  deleted/0: {nodes: [a800-3]}\n"
    )
    state = validate_revision(root)
    assert state.placement_lock[KEY] == LockedPlacement(
        ("a800-0", "gone-node", "a800-1", "a800-2"), 3
    )
    placed = place(state).replicas
    assert set(placed) == {KEY} and "gone-node" not in placed[KEY].nodes
    assert _run("lock", "--check", str(root))[0] == 1


def test_lock_check_fails_when_missing(tmp_path: Path) -> None:
    root = tmp_path / "a800"
    shutil.copytree(A800, root)
    (root / "placement.lock.yaml").unlink()
    rc, _, err = _run("lock", "--check", str(root))
    assert rc == 1 and "stale (missing)" in err
