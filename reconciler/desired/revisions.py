"""Two revisions of a local git repo, exported the way the daemon exports one (the same
`materialize`: blobs streamed from git, symlinks and submodules left as what they are),
for `reconciler diff` and `reconciler lock` in CI, where the repo is a working clone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.core.errors import PermanentError
from reconciler.ports.git import GitSourceConfig, SourceError, normalize_repo_path
from reconciler.ports.git.export import materialize
from reconciler.ports.git.runner import GitRunner


class RevisionError(PermanentError):
    """A revision could not be resolved or exported: say which and why, in one line."""


def _git(repo: Path, *args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as exc:
        raise RevisionError(f"cannot run git: {exc.strerror}") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or ["failed"]
        raise RevisionError(f"git {args[0]} in {repo}: {detail[0]}")
    return proc.stdout.strip()


def resolve(repo: Path, rev: str) -> str:
    if rev.startswith("-"):
        raise RevisionError(f"revision {rev!r} must not start with '-'")
    return _git(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")


def export_revision(repo: Path, rev: str, path: str, into: Path) -> tuple[str, Path]:
    """(commit, directory of `path` at that commit) under `into` (a scratch directory)."""
    sha = resolve(repo, rev)
    git_dir = Path(_git(repo, "rev-parse", "--absolute-git-dir"))
    try:
        sub = normalize_repo_path(path)
    except ValueError as exc:
        raise RevisionError(str(exc)) from None
    into.mkdir(parents=True, exist_ok=True)
    config = GitSourceConfig(url=str(repo), branch="main", checkout_dir=into)
    runner = GitRunner(config, str(repo), into)
    runner.mirror = git_dir  # read the objects straight from the user's repository
    final = into / sha
    if not final.is_dir():
        try:
            materialize(runner, sub, sha, final, lambda: None)
        except SourceError as exc:
            raise RevisionError(f"{rev} ({sha[:12]}): {exc.message}") from None
    return sha, final / "tree"
