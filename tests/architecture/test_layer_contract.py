"""The layer contract (pyproject's [tool.importlinter]) holds, and it has teeth: the same
contract run over a copy of the package with one wrong import fails and names it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "pyproject.toml", root)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "reconciler", root / "reconciler", ignore=ignore)
    shutil.copytree(REPO / "schemas", root / "schemas", ignore=ignore)
    return root


def test_contract_is_kept() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        pytest.param(
            "reconciler/core/placement.py",
            "import reconciler.ports.git",
            "Layers",
            id="core-imports-a-port",
        ),
        pytest.param(
            "reconciler/core/plan.py",
            "import subprocess",
            "The core does no I/O",
            id="core-does-io",
        ),
        pytest.param(
            "reconciler/control/apply.py",
            "import reconciler.daemon.metrics",
            "Layers",
            id="control-imports-daemon",
        ),
        pytest.param(
            "schemas/v1alpha1.py",
            "import reconciler.core.errors",
            "schemas imports nothing",
            id="schemas-imports-reconciler",
        ),
    ],
)
def test_a_wrong_import_breaks_the_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    root = _copy(tmp_path)
    target = root / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # deliberately wrong\n")
    result = _lint(root)
    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout
    assert "BROKEN" in result.stdout
