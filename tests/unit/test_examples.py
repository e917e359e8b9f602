"""The shipped examples: the cluster repo validates, the deliberately wrong one is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.desired.fit import check_fit
from reconciler.desired.loader import load_directory

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CLUSTER_REPO = EXAMPLES / "cluster-repo"
NOT_FITTING = EXAMPLES / "not-fitting" / "h100-bf16"
SCHEMA_LINE = re.compile(r"^# yaml-language-server: \$schema=(?P<path>\S+)$")

GIB = 1024**3


def _rows(out: str) -> dict[str, list[str]]:
    """DEPLOYMENT -> the cells of its fit-table row."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 7 and cells[1].isdigit() and cells[2].isdigit():
            rows[cells[0]] = cells
    return rows


def test_cluster_repo_validates_with_fit_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(CLUSTER_REPO)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for cluster in ("a800-prod", "cpu-demo", "h100-fp8"):
        assert f"cluster {cluster!r}" in out
    assert out.count("DEPLOYMENT  ") == 3
    rows = _rows(out)
    assert rows["deepseek-r1"][1:] == ["4", "32", "1,249.8", "2.1", "2,304.0", "fits"]
    assert rows["deepseek-r1-fp8"][1:] == ["2", "16", "624.9", "4.3", "1,152.0", "fits"]
    # SmolLM2-135M-Instruct in bf16: 134,515,008 parameters x 2 bytes (config.json and the
    # safetensors file where scripts/prepare-model.sh made it, the declared shape elsewhere)
    assert rows["chat"][1:] == ["1", "0", "0.3", "0.0", "-", "cpu"]


def test_a800_4x8_bf16_fits() -> None:
    """DeepSeek R1 in BF16 on 4 x 8 A800-80GB: 32 x 80 GiB x 0.9 = 2,304 GiB."""
    state = load_directory(CLUSTER_REPO / "clusters" / "a800-bf16")
    (row,) = check_fit(state)
    assert row.verdict == "fits"
    assert (row.nodes, row.gpus) == (4, 32)
    assert row.weights_gib == pytest.approx(671e9 * 2 / GIB)
    assert row.budget_gib == pytest.approx(32 * 80 * 0.9)
    # MLA cache: 61 layers x (512 + 64) x 2 bytes x 32768 tokens
    assert row.kv_gib == pytest.approx(61 * 576 * 2 * 32768 / GIB)


def test_h100_bf16_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    """671e9 x 2 bytes = 1,249.8 GiB of weights; 16 x 80 GiB x 0.9 = 1,152.0 GiB."""
    assert main(["validate", str(NOT_FITTING)]) == 2
    out, err = capsys.readouterr()
    assert "does not fit" in out
    row = _rows(out)["deepseek-r1-bf16"]
    assert row[1:6] == ["2", "16", "1,249.8", "4.3", "1,152.0"]
    assert " ".join(row[6:]) == "does not fit"
    assert f"{671e9 * 2 / GIB:,.1f}" == "1,249.8"
    assert f"{16 * 80 * 0.9:,.1f}" == "1,152.0"
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert f"{NOT_FITTING / 'deepseek-r1-bf16.yaml'}:" in line
    assert "does not fit: needs 1254.1 GiB (weights 1249.8 + KV 4.3)" in line
    assert "16 GPUs x 80 GiB x 0.9 = 1152.0 GiB" in line


def test_validate_json_format(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["validate", "--format", "json", str(NOT_FITTING)]) == 2
    (report,) = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert report["cluster"] == "h100-bf16"
    assert report["fit"][0]["verdict"] == "does not fit"


# documents only: the placement locks are written by `reconciler lock`, not by hand
EXAMPLE_FILES = sorted(p for p in EXAMPLES.rglob("*.yaml") if p.name != "placement.lock.yaml")


def test_there_are_examples() -> None:
    assert len(EXAMPLE_FILES) >= 8


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_starts_with_schema_line(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    match = SCHEMA_LINE.match(first)
    assert match, f"{path}: first line must be '# yaml-language-server: $schema=...'"
    target = (path.parent / match["path"]).resolve()
    assert target.is_file(), f"{path}: $schema points at missing {target}"
    assert target.parent == REPO / "schemas" / "json"
