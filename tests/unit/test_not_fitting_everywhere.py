"""The not-fitting example (DeepSeek R1 BF16 on 2 x 8 H100) is refused by validate, plan
and diff with the same fit message (the daemon: tests/system/test_daemon_refuses_not_fitting.py)."""

from __future__ import annotations

import io
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from reconciler.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e", "HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}


def _errors(*args: str) -> tuple[int, list[str]]:
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main(list(args))
    return rc, [ln for ln in err.getvalue().splitlines() if ln.startswith("error: ")]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env=GIT_ENV, check=True).stdout.strip()


def test_not_fitting_refused_alike(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLES / "cluster-repo/clusters/h100-fp8", repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "fp8: fits")
    base = _git(repo, "rev-parse", "HEAD")
    for f in repo.glob("*.yaml"):
        f.unlink()
    for f in (EXAMPLES / "not-fitting/h100-bf16").glob("*.yaml"):
        shutil.copy(f, repo / f.name)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "bf16 on the same GPUs")
    head = _git(repo, "rev-parse", "HEAD")

    results = [
        _errors("validate", str(repo)),
        _errors("plan", "--repo", str(repo), "--all-nodes"),
        _errors("diff", "--repo", str(repo), "--from", base, "--to", head),
    ]
    assert [rc for rc, _ in results] == [2, 2, 2]
    (line,) = results[0][1]
    assert "spec: does not fit: needs" in line
    assert "16 GPUs x 80 GiB x 0.9 = 1152.0 GiB" in line
    assert all(lines == [line] for _, lines in results)
