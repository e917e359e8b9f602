"""Every command says in one line what it is missing (its node config, a daemon or an
engine that does not answer, a repo) and exits 2: never a Python traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again once we return: nothing listens


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


CASES = [
    ("logs", "logs chat --config {missing}", "file not found"),
    ("chat-no-config", "chat chat hi --config {missing}", "file not found"),
    ("chat-daemon-down", "chat chat hi --url http://127.0.0.1:{port}", "Connection refused"),
    ("chat-gateway-down", "chat chat hi --gateway http://127.0.0.1:{port}", "Connection refused"),
    ("status-no-config", "status --config {missing}", "file not found"),
    ("plan-no-repo", "plan --repo {missing} --all-nodes", "path does not exist"),
    ("diff-not-a-repo", "diff --repo {tmp} --from a --to b", "not a git repository"),
    ("lock-no-repo", "lock {missing}", "path does not exist"),
]


@pytest.mark.parametrize("name,command,fragment", CASES, ids=[c[0] for c in CASES])
def test_one_clear_error_line(name: str, command: str, fragment: str, tmp_path: Path) -> None:
    words = command.format(
        missing=tmp_path / "missing", port=_closed_port(), tmp=tmp_path
    ).split()
    proc = _run(*words, cwd=tmp_path)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
