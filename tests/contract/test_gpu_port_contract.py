"""The GPU port's contract on a machine without GPUs: the simulated port (the real
implementation a node without NVML runs, from the node config's simulateGpus) and
FakeGpuPort report the same inventory for the same GPUs, and `managedGpus`
(ManagedGpuPort) narrows both the same way. NVML itself is checked on the GPU machine
(tests/unit/test_gpus.py, scripts/gpu-check).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from reconciler.ports.gpus import GpuPort, ManagedGpuPort, SimulatedGpuPort
from reconciler.testing.gpus import FakeGpuPort
from schemas.nodeconfig import SimulatedGpus

MODEL = "NVIDIA A800-SXM4-80GB"


def real(count: int) -> GpuPort:
    return SimulatedGpuPort(SimulatedGpus(count=count, model=MODEL, memory_gib=80), "n1")


def fake(count: int) -> GpuPort:
    return FakeGpuPort(count, name=MODEL, memory_mib=80 * 1024, node="n1")


@pytest.fixture(params=[real, fake], ids=["real", "fake"])
def make(request: pytest.FixtureRequest) -> Callable[[int], GpuPort]:
    factory: Callable[[int], GpuPort] = request.param
    return factory


def test_the_declared_gpus_are_observed_idle_and_healthy(
    make: Callable[[int], GpuPort],
) -> None:
    inv = make(4).observe()
    assert inv.available and inv.error == ""
    assert [g.index for g in inv.gpus] == [0, 1, 2, 3]
    assert len({g.uuid for g in inv.gpus}) == 4 and all(g.uuid for g in inv.gpus)
    assert {(g.name, g.memory_total_mib, g.memory_used_mib) for g in inv.gpus} == {
        (MODEL, 80 * 1024, 0)
    }
    assert all(g.healthy and not g.process_pids and not g.health_detail for g in inv.gpus)
    assert inv.unmanaged == ()
    assert make(4).observe() == make(4).observe(), "same GPUs, same answer"


def test_managed_gpus_narrow_by_index_or_uuid(make: Callable[[int], GpuPort]) -> None:
    port = make(4)
    uuid_of_3 = port.observe().gpus[3].uuid
    inv = ManagedGpuPort(port, [1, uuid_of_3]).observe()
    assert [g.index for g in inv.gpus] == [1, 3], "indices stay NVML's"
    assert [g.index for g in inv.unmanaged] == [0, 2]
    assert inv.error == ""

    missing = ManagedGpuPort(make(2), [1, 7]).observe()
    assert [g.index for g in missing.gpus] == [1]
    assert missing.error == "managedGpus names GPU(s) not found: 7"
