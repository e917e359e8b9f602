"""The GPU check's own flow, rehearsed with stand-in engines (`--mode fake`): its daemons,
repos, pushes, kills and plan-on-node reads must work here before device time is spent on
them (the GPU machine runs the same code with vLLM; docs/gpu-validation)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from testrigs.gpucheck.__main__ import main


def test_s1_and_s2_flow_with_stand_in_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    # the stand-in engine is standard library only: this interpreter will do
    monkeypatch.setenv("RECONCILER_ENGINE_PYTHON", os.environ.get(
        "RECONCILER_ENGINE_PYTHON", sys.executable))
    out = tmp_path / "out"
    main(["--mode", "fake", "--work", str(tmp_path / "w"), "--out", str(out), "s1", "s2"])
    results = {r["scenario"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    assert set(results) == {"s1", "s2"}
    for name, r in results.items():
        assert r["error"] == "", (name, r["error"])
        # the stand-in has no chat endpoint; every other check must pass
        failed = [c for c in r["checks"] if not c["ok"] and "chat" not in c["name"]]
        assert not failed, failed
    assert len(results["s1"]["checks"]) >= 9 and len(results["s2"]["checks"]) >= 5
    timings = {t["name"] for r in results.values() for t in r["timings"]}
    assert {"push -> Ready (daemon)", "kill -9 GPU holder -> replacement started",
            "change pushed -> Ready", "stranger left -> TP 2 Ready"} <= timings
    assert (out / "table.md").read_text().count("| s1 |") >= 9
