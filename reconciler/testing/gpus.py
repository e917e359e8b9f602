"""A stateful fake of the GPU port, for tests and for users' own tests.

It holds GPUs that tests change between ticks: give a GPU a foreign process, take it
away, mark a GPU unhealthy, or make NVML disappear altogether, as a failing driver would.
"""

from __future__ import annotations

import threading
from dataclasses import replace

from reconciler.core.vocabulary import GpuInventory, GpuObservation

H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEMORY_MIB = 81559


class FakeGpuPort:
    """Implements `reconciler.ports.gpus.GpuPort`. Thread-safe."""

    def __init__(
        self,
        count: int = 0,
        *,
        name: str = H100_NAME,
        memory_mib: int = H100_MEMORY_MIB,
        node: str = "fake",
        driver_version: str = "580.00.00",
        cuda_version: str = "13.0",
    ) -> None:
        self._lock = threading.Lock()
        self._node = node
        self._gpus: list[GpuObservation] = []
        self._error = ""  # non-empty: NVML is gone
        self._driver = driver_version
        self._cuda = cuda_version
        self.observe_calls = 0
        self.set_gpus(count, name=name, memory_mib=memory_mib)

    # -- the port -----------------------------------------------------------------------

    def observe(self) -> GpuInventory:
        with self._lock:
            self.observe_calls += 1
            if self._error:
                return GpuInventory(available=False, error=self._error)
            return GpuInventory(
                gpus=tuple(self._gpus),
                driver_version=self._driver,
                cuda_version=self._cuda,
                error="" if self._gpus else "NVML works but reports no GPUs",
            )

    # -- test controls ------------------------------------------------------------------

    def set_gpus(
        self,
        gpus: int | list[GpuObservation],
        *,
        name: str = H100_NAME,
        memory_mib: int = H100_MEMORY_MIB,
    ) -> None:
        """Replace every GPU: `count` identical ones, or exactly these observations."""
        with self._lock:
            if isinstance(gpus, int):
                self._gpus = [
                    GpuObservation(
                        index=i,
                        uuid=f"GPU-FAKE-{self._node}-{i}",
                        name=name,
                        memory_total_mib=memory_mib,
                        utilization_pct=0,
                        temperature_c=30,
                    )
                    for i in range(gpus)
                ]
            else:
                indices = [g.index for g in gpus]
                if len(set(indices)) != len(indices):
                    raise ValueError(f"duplicate GPU indices: {indices}")
                self._gpus = sorted(gpus, key=lambda g: g.index)

    def add_process(self, index: int, pid: int, memory_mib: int = 0) -> None:
        """A process (ours or a stranger's) starts using GPU `index`."""
        with self._lock:
            gpu = self._get(index)
            pids = tuple(sorted({*gpu.process_pids, pid}))
            self._put(
                replace(gpu, process_pids=pids, memory_used_mib=gpu.memory_used_mib + memory_mib)
            )

    def remove_process(self, pid: int, index: int | None = None) -> None:
        """The process stops using GPU `index` (every GPU if None). Unknown pids are fine."""
        with self._lock:
            for gpu in list(self._gpus):
                if index is not None and gpu.index != index:
                    continue
                if pid in gpu.process_pids:
                    left = tuple(p for p in gpu.process_pids if p != pid)
                    used = gpu.memory_used_mib if left else 0
                    self._put(replace(gpu, process_pids=left, memory_used_mib=used))

    def mark_unhealthy(self, index: int, detail: str = "critical XID 79") -> None:
        with self._lock:
            self._put(replace(self._get(index), healthy=False, health_detail=detail))

    def mark_healthy(self, index: int) -> None:
        with self._lock:
            self._put(replace(self._get(index), healthy=True, health_detail=""))

    def remove_gpu(self, index: int) -> None:
        """A GPU falls off the bus: NVML no longer lists it (indices of others stay)."""
        with self._lock:
            self._get(index)
            self._gpus = [g for g in self._gpus if g.index != index]

    def disappear(
        self, error: str = "NVML library libnvidia-ml.so.1 not found (fake)"
    ) -> None:
        """NVML stops answering: observe() reports available=False with this error."""
        with self._lock:
            self._error = error

    def reappear(self) -> None:
        with self._lock:
            self._error = ""

    def pids_on(self, index: int) -> tuple[int, ...]:
        with self._lock:
            return self._get(index).process_pids

    # -- helpers --------------------------------------------------------------------------

    def _get(self, index: int) -> GpuObservation:
        for gpu in self._gpus:
            if gpu.index == index:
                return gpu
        raise KeyError(f"no GPU {index} (have {[g.index for g in self._gpus]})")

    def _put(self, gpu: GpuObservation) -> None:
        self._gpus = [gpu if g.index == gpu.index else g for g in self._gpus]
