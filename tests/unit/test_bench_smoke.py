"""The plan benchmark's inputs stay valid as the schema tightens (it broke once)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "plan_bench.py"


def test_plan_bench_builds_and_plans_a_small_cluster() -> None:
    spec = importlib.util.spec_from_file_location("plan_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    state = bench.make_state(10, 20)
    median, p90 = bench.measure(state, 1)
    assert len(state.deployments) == 20 and median > 0 and p90 >= median


def test_revision_bench_inputs_validate_and_plan(tmp_path: Path) -> None:
    """bench/revision_bench.py's generated repos must stay valid (both shapes, both
    address schemes): the whole-path measurement of a small one."""
    from testrigs.big_repo import write_repo

    spec = importlib.util.spec_from_file_location(
        "revision_bench", BENCH.parent / "revision_bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for files, net in ((20, "10"), (0, "198.19")):
        root = tmp_path / f"repo-{files}"
        write_repo(root, 10, 20, files, net=net)
        result = bench.one_size(root, 1)
        assert result["deployments"] == 20 and result["total"] > 0
