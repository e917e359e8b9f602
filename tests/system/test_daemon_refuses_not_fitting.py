"""A running daemon refuses the not-fitting example like validate, plan and diff do
(issue 13, done-when 4): the last good revision stays in force (its engine untouched),
status says why (Stalled, with the fit numbers) and metrics count the refusal. An
operator's `spec.fit.override` with a reason is accepted, and restarts nothing: neither
the override nor the declared architecture reach the engine (spec hash)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main
from testrigs.daemon_rig import Rig, cluster_yaml, deployment_yaml, pid_alive, wait_until

pytestmark = pytest.mark.system

NOT_FITTING = Path(__file__).resolve().parents[2] / "examples/not-fitting/h100-bf16"


def _stalled(rig: Rig) -> dict[str, Any] | None:
    for c in rig.status()["conditions"]:
        if c["type"] == "Stalled" and c["status"] == "True":
            return dict(c)
    return None


def test_daemon_refuses_the_not_fitting_example(
    make_rig: Callable[..., Rig], capsys: pytest.CaptureFixture[str]
) -> None:
    rig = make_rig()
    good = rig.push_chat()
    rig.start()
    rig.wait_ready(good, timeout=60)
    pid = rig.engine_pid()

    files = {p.name: p.read_text() for p in NOT_FITTING.glob("*.yaml")}
    bad_files: dict[str, str | bytes | None] = {"chat.yaml": None, **files}
    bad = rig.push(bad_files, "DeepSeek R1 BF16 on 2 x 8 H100")
    wait_until(lambda: _stalled(rig) is not None, 30, "the refusal in status")
    st = rig.status()
    stalled = _stalled(rig)
    assert stalled is not None and stalled["reason"] == "InvalidDesiredState"
    assert "does not fit: needs" in stalled["message"]
    assert "16 GPUs x 80 GiB x 0.9 = 1152.0 GiB" in stalled["message"]
    assert st["revisions"]["attempted"]["revision"] == bad
    assert st["revisions"]["applied"]["revision"] == good
    assert st["revisions"]["lastGood"]["revision"] == good
    assert rig.metric(
        "reconciler_source_revisions_refused_total", '{reason="InvalidDesiredState"}'
    ) == 1.0
    assert rig.metric("reconciler_stalled") == 1.0
    assert rig.engine_pid() == pid and pid_alive(pid)
    assert rig.replica()["state"] == "Ready"

    # the same verdict from the commands a reviewer runs
    assert main(["validate", str(NOT_FITTING)]) == 2
    assert main(["plan", "--repo", str(NOT_FITTING), "--all-nodes"]) == 2
    capsys.readouterr()

    # an operator who knows better overrides the estimate for this deployment only
    arch = {"parameters": 671e9, "numLayers": 61, "numKvHeads": 128, "headDim": 192}
    chat = json.loads(deployment_yaml("chat", rig.engine_port))
    chat["spec"]["model"]["architecture"] = arch
    chat["spec"]["fit"] = {"override": True, "reason": "measured on this build"}
    change: dict[str, str | bytes | None] = {name: None for name in files}
    change.update(
        {
            "cluster.yaml": cluster_yaml(rig.engine_port, rig.status_port, rig.gpus),
            "chat.yaml": json.dumps(chat),
        }
    )
    fixed = rig.push(change, "chat with a fit override")
    rig.wait_ready(fixed, timeout=60)
    assert _stalled(rig) is None
    assert rig.engine_pid() == pid  # override and architecture reach no process
