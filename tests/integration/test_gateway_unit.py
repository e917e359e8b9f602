"""The gateway's systemd unit: `systemd-analyze verify` is clean (ExecStart pointed at an
existing python, as /opt/reconciler is not installed here) and `systemd-analyze security`
scores it well below the daemon's bound: it needs no devices, no writable paths and no
privileged system calls."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gateway_unit_verifies_and_is_tightly_confined(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = (REPO / "systemd" / "reconciler-gateway.service").read_text()
    unit = unit.replace("/opt/reconciler/venv/bin/reconciler", sys.executable + " -m reconciler")
    path = tmp_path / "reconciler-gateway.service"
    path.write_text(unit)
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 0 and not problems, problems
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", res.stdout)
    assert m, res.stdout[-500:] + res.stderr
    assert float(m.group(1)) < 2.0, m.group(0)
