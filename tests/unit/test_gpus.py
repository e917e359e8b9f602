"""The GPU port: simulated GPUs, the stateful fake, and NVML where it is absent.

NVML itself is exercised on real GPUs through docs/gpu-validation (the device tool);
here nothing inside pynvml is mocked: the tests that need NVML absent skip where it exists.
"""

from __future__ import annotations

import ctypes
import sys

import pytest

from reconciler.core.vocabulary import GpuInventory, GpuObservation
from reconciler.ports.gpus import (
    GpuPort,
    NvmlGpuPort,
    SimulatedGpuPort,
    gpu_port_from_config,
)
from reconciler.testing.gpus import H100_MEMORY_MIB, H100_NAME, FakeGpuPort
from schemas.nodeconfig import SimulatedGpus


def _nvml_loadable() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


needs_no_nvml = pytest.mark.skipif(
    _nvml_loadable(), reason="libnvidia-ml.so.1 is present: NVML is tested on the device"
)


# --- simulated -------------------------------------------------------------------------


def test_simulated_port_reports_declared_gpus_loudly() -> None:
    config = SimulatedGpus(count=3, model="NVIDIA A800-SXM4-80GB", memory_gib=80)
    port = SimulatedGpuPort(config, "n1")
    inv = port.observe()
    assert inv.available and inv.simulated and inv.error == ""
    assert [g.index for g in inv.gpus] == [0, 1, 2]
    assert [g.uuid for g in inv.gpus] == ["SIM-GPU-n1-0", "SIM-GPU-n1-1", "SIM-GPU-n1-2"]
    assert {g.name for g in inv.gpus} == {"NVIDIA A800-SXM4-80GB"}
    assert {g.memory_total_mib for g in inv.gpus} == {80 * 1024}
    assert all(g.process_pids == () and g.healthy for g in inv.gpus)
    assert inv.driver_version == "simulated"


def test_simulated_port_is_stable_and_handles_zero_and_fractional_memory() -> None:
    port = SimulatedGpuPort(SimulatedGpus(count=0))
    assert port.observe() == GpuInventory(
        gpus=(), available=True, simulated=True, driver_version="simulated"
    )
    half = SimulatedGpuPort(SimulatedGpus(count=1, memory_gib=0.5)).observe()
    assert half.gpus[0].memory_total_mib == 512
    assert half.gpus[0].uuid == "SIM-GPU-local-0"
    again = SimulatedGpuPort(SimulatedGpus(count=1, memory_gib=0.5))
    assert again.observe() == again.observe() == half


def test_port_from_config_picks_simulation_only_when_configured() -> None:
    sim = gpu_port_from_config(SimulatedGpus(count=2), node="a")
    assert isinstance(sim, SimulatedGpuPort)
    assert sim.observe().gpus[1].uuid == "SIM-GPU-a-1"
    assert isinstance(gpu_port_from_config(None), NvmlGpuPort)


# --- NVML absent -------------------------------------------------------------------------


@needs_no_nvml
def test_nvml_port_without_library_reports_unavailable_and_never_raises() -> None:
    port = NvmlGpuPort()
    for _ in range(3):  # and keeps trying each tick, without raising
        inv = port.observe()
        assert not inv.available
        assert inv.gpus == ()
        assert not inv.simulated
        assert "libnvidia-ml.so.1 not found" in inv.error
    assert port.init_count == 0
    assert port.xid_events == "not initialised"
    port.close()  # closing an NVML that never started is fine
    port.close()


@pytest.mark.skipif(not _nvml_loadable(), reason="no NVML here (runs on the GPU machine)")
def test_nvml_port_on_real_gpus() -> None:
    port = NvmlGpuPort()
    inv = port.observe()
    assert inv.available, inv.error
    assert inv.gpus, "NVML works but lists no GPU"
    assert [g.index for g in inv.gpus] == list(range(len(inv.gpus)))
    assert all(g.uuid.startswith("GPU-") and g.memory_total_mib > 0 for g in inv.gpus)
    assert inv.driver_version and inv.cuda_version and not inv.simulated
    assert port.init_count == 1
    port.observe()
    assert port.init_count == 1  # initialised once, not per observation
    port.close()
    assert port.observe().available
    assert port.init_count == 2  # and again after a reset


def test_nvml_port_without_pynvml_reports_the_missing_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now fails
    inv = NvmlGpuPort().observe()
    assert not inv.available
    assert "nvidia-ml-py" in inv.error and "not installed" in inv.error


def test_ports_satisfy_the_protocol() -> None:
    ports: list[GpuPort] = [
        NvmlGpuPort(xid_events=False),
        SimulatedGpuPort(SimulatedGpus(count=1)),
        FakeGpuPort(1),
    ]
    for port in ports:
        assert isinstance(port.observe(), GpuInventory)


# --- the fake ----------------------------------------------------------------------------


def test_fake_starts_with_identical_h100s() -> None:
    fake = FakeGpuPort(2, node="n2")
    inv = fake.observe()
    assert inv.available and not inv.simulated and inv.error == ""
    assert [g.uuid for g in inv.gpus] == ["GPU-FAKE-n2-0", "GPU-FAKE-n2-1"]
    assert {(g.name, g.memory_total_mib) for g in inv.gpus} == {(H100_NAME, H100_MEMORY_MIB)}
    assert fake.observe_calls == 1


def test_fake_with_no_gpus_says_so() -> None:
    inv = FakeGpuPort().observe()
    assert inv.available and inv.gpus == ()
    assert "no GPUs" in inv.error


def test_fake_foreign_process_comes_and_goes() -> None:
    fake = FakeGpuPort(2)
    fake.add_process(0, 4242, memory_mib=1024)
    fake.add_process(0, 4242)  # idempotent
    fake.add_process(0, 17)
    inv = fake.observe()
    assert inv.gpus[0].process_pids == (17, 4242)
    assert inv.gpus[0].memory_used_mib == 1024
    assert inv.gpus[1].process_pids == ()
    fake.remove_process(4242)
    assert fake.pids_on(0) == (17,)
    fake.remove_process(17, index=1)  # not on GPU 1: nothing happens
    assert fake.pids_on(0) == (17,)
    fake.remove_process(17, index=0)
    after = fake.observe().gpus[0]
    assert after.process_pids == () and after.memory_used_mib == 0


def test_fake_unhealthy_and_healthy_again() -> None:
    fake = FakeGpuPort(2)
    fake.mark_unhealthy(1, "row remapping pending")
    gpu = fake.observe().gpus[1]
    assert not gpu.healthy and gpu.health_detail == "row remapping pending"
    assert fake.observe().gpus[0].healthy
    fake.mark_healthy(1)
    assert fake.observe().gpus[1].healthy


def test_fake_nvml_disappears_and_returns_with_state_kept() -> None:
    fake = FakeGpuPort(1)
    fake.add_process(0, 99)
    fake.disappear("NVIDIA driver not loaded")
    inv = fake.observe()
    assert inv == GpuInventory(available=False, error="NVIDIA driver not loaded")
    fake.reappear()
    assert fake.observe().gpus[0].process_pids == (99,)


def test_fake_gpu_falls_off_and_explicit_gpus() -> None:
    fake = FakeGpuPort(3)
    fake.remove_gpu(1)
    assert [g.index for g in fake.observe().gpus] == [0, 2]
    with pytest.raises(KeyError):
        fake.add_process(1, 5)
    a800 = "NVIDIA A800-SXM4-80GB"
    fake.set_gpus(
        [
            GpuObservation(index=1, uuid="GPU-b", name=a800, memory_total_mib=81920),
            GpuObservation(index=0, uuid="GPU-a", name=a800, memory_total_mib=81920),
        ]
    )
    assert [g.uuid for g in fake.observe().gpus] == ["GPU-a", "GPU-b"]
    with pytest.raises(ValueError, match="duplicate"):
        fake.set_gpus([GpuObservation(0, "x", "y", 1), GpuObservation(0, "z", "y", 1)])
