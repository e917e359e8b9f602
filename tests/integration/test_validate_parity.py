"""One validation everywhere: the whole broken-repo corpus through every entry point.

Each case is committed to a real git repository. `validate` and `plan` read its working
tree, `diff` exports the base and the case commit the way the daemon does, and the
daemon's source sync (a real GitPythonSource fetching from the repository) loads it.
All four must refuse it, with the same problems, located in the same files.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.desired.source_sync import SourceSync
from reconciler.ports.git import GitPythonSource, GitSourceConfig
from tests.unit.test_validate_broken import CASES
from tests.unit.test_validate_more import NESTED_REPO, NEW_CASES, write_case

ALL = [(c.id, dict(c.files)) for c in CASES] + [(c.id, dict(c.files)) for c in NEW_CASES]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    "HOME": "/nonexistent", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin",
}


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, env=GIT_ENV,
        check=True, timeout=60,
    )
    return proc.stdout.strip()


def _commit_case(repo: Path, files: dict[str, object]) -> str:
    for entry in repo.iterdir():
        if entry.name == ".git":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    write_case(repo, files)
    for rel, value in files.items():
        if value == NESTED_REPO:  # a real nested repository: git records it as a gitlink
            nested = repo / rel
            shutil.rmtree(nested / ".git")
            _git(nested, "init", "-q", "-b", "main")
            _git(nested, "commit", "-q", "--allow-empty", "-m", "inner")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "case")
    return _git(repo, "rev-parse", "HEAD")


def _cli(*args: str) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(args))
    return rc, [ln for ln in err.getvalue().splitlines() if ln.startswith("error: ")]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("parity")
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    base = _commit_case(repo, {})
    source = GitPythonSource(
        GitSourceConfig(url=str(repo), branch="main", checkout_dir=root / "checkout")
    )
    state = root / "state"
    state.mkdir()
    sync = SourceSync(source, state)
    assert sync.sync(0.0) and sync.desired is not None  # the base revision is good
    return {"repo": repo, "base": base, "source": source, "sync": sync}


def _normal(lines: list[str], root: Path) -> list[str]:
    return sorted(re.sub(re.escape(str(root)) + r"/?", "<repo>/", ln) for ln in lines)


@pytest.mark.parametrize("case_id,files", ALL, ids=[c[0] for c in ALL])
def test_every_entry_point_refuses_alike(
    case_id: str, files: dict[str, object], rig: dict[str, object]
) -> None:
    repo, base = rig["repo"], rig["base"]
    assert isinstance(repo, Path) and isinstance(base, str)
    sha = _commit_case(repo, files)

    rc_validate, validate = _cli("validate", str(repo))
    rc_plan, plan = _cli("plan", "--repo", str(repo), "--all-nodes")
    rc_diff, diff = _cli("diff", "--repo", str(repo), "--from", base, "--to", sha)
    sync = rig["sync"]
    source = rig["source"]
    assert isinstance(sync, SourceSync) and isinstance(source, GitPythonSource)
    changed = sync.sync(1.0)
    failure = sync.failure
    assert not changed and failure is not None, f"the daemon accepted {case_id}"
    assert failure.reason == "InvalidDesiredState", failure
    assert sync.good is not None and sync.good.revision == base  # the last good stays
    tree = source.export(sha)
    daemon = [f"error: {p}" for p in failure.problems]

    assert (rc_validate, rc_plan, rc_diff) == (2, 2, 2)
    expected = _normal(validate, repo)
    assert expected, "validate printed no problem"
    assert _normal(plan, repo) == expected
    assert _normal(diff, repo) == expected
    assert _normal(daemon, tree) == expected


def test_corpus_size() -> None:
    assert len(ALL) >= 40 and len(NEW_CASES) >= 30
