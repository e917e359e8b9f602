"""`managedGpus` in the node config: a daemon manages only the GPUs it names.

Two daemons sharing one host (two test hosts on a 2-GPU machine, or a node shared with
other work) must not assign each other's GPUs nor call each other's engines foreign.
"""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from reconciler.control.observe import observe
from reconciler.core.plan import plan
from reconciler.core.vocabulary import Inventory, Start
from reconciler.daemon.gpu_account import gpu_account
from reconciler.ports.gpus import ManagedGpuPort, SimulatedGpuPort, gpu_port_from_config
from reconciler.testing.gpus import FakeGpuPort
from reconciler.testing.processes import FakeProcessPort
from schemas.nodeconfig import NodeConfig, SimulatedGpus
from testrigs import builders as b

BASE = {"nodeName": "n1", "source": {"url": "/srv/repo"}, "engine": {"python": "/usr/bin/python3"}}


def test_selectors_are_indices_or_uuids_each_named_once() -> None:
    cfg = NodeConfig.model_validate({**BASE, "managedGpus": [1, "GPU-5b1c-77"]})
    assert cfg.managed_gpus == [1, "GPU-5b1c-77"]
    assert NodeConfig.model_validate(BASE).managed_gpus is None  # default: every GPU
    for bad in ([0, 0], [-1], ["eth0"], ["GPU-a", "GPU-a"]):
        with pytest.raises(ValidationError):
            NodeConfig.model_validate({**BASE, "managedGpus": bad})


def test_port_keeps_nvml_indices_and_moves_the_rest_to_unmanaged() -> None:
    fake = FakeGpuPort(4)
    inv = ManagedGpuPort(fake, [2, "GPU-FAKE-fake-0"]).observe()
    assert [g.index for g in inv.gpus] == [0, 2]  # physical indices: CUDA_VISIBLE_DEVICES
    assert [g.index for g in inv.unmanaged] == [1, 3]
    assert inv.error == ""


def test_a_named_gpu_that_is_absent_is_an_error_and_the_found_ones_stay_managed() -> None:
    inv = ManagedGpuPort(FakeGpuPort(2), [1, 7, "GPU-nope"]).observe()
    assert [g.index for g in inv.gpus] == [1]
    assert "managedGpus names GPU(s) not found: 7, GPU-nope" in inv.error


def test_nvml_unavailable_passes_through() -> None:
    fake = FakeGpuPort(2)
    fake.disappear()
    inv = ManagedGpuPort(fake, [0]).observe()
    assert not inv.available and inv.gpus == () and inv.unmanaged == ()


def test_from_config_wraps_simulated_gpus_too() -> None:
    port = gpu_port_from_config(SimulatedGpus(count=2), "h2", [1])
    inv = port.observe()
    assert inv.simulated and [g.uuid for g in inv.gpus] == ["SIM-GPU-h2-1"]
    assert isinstance(gpu_port_from_config(SimulatedGpus(count=2), "h2"), SimulatedGpuPort)


def test_another_daemons_engine_on_an_unmanaged_gpu_is_not_foreign() -> None:
    fake = FakeGpuPort(2)
    fake.add_process(1, pid=4242, memory_mib=30_000)  # the other test host's Ray worker
    obs = observe("n1", ManagedGpuPort(fake, [0]), FakeProcessPort(), None, None, None, None)
    assert obs.foreign_pids == frozenset()
    account = gpu_account(None, obs, "n1")
    states = {d.index: d.state for d in account.devices}
    assert states == {0: "free", 1: "unmanaged"}
    assert account.counts["unmanaged"] == 1 and account.counts["foreign"] == 0


def test_plan_assigns_only_managed_gpus_and_the_drift_check_counts_them_alone() -> None:
    fake = FakeGpuPort(2)
    obs = observe("n1", ManagedGpuPort(fake, [1]), FakeProcessPort(), None, None, None, None)
    cluster = b.cluster(b.node("n1", gpus=1))
    desired = b.desired(cluster, b.deployment("chat", placement={"nodes": ["n1"]}))
    result = plan(desired, obs, Inventory(), time.time(), b.ctx("n1"))
    starts = [a for a in result.actions if isinstance(a, Start)]
    assert [s.launch.gpus for s in starts] == [(1,)]
    assert starts[0].launch.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert not any("drift" in n for n in result.notes), result.notes
