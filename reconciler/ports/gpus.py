"""The GPU port: what GPUs this node has and who uses them.

`NvmlGpuPort` reads NVML through pynvml (the nvidia-ml-py package). NVML is initialised
once and kept; after an error that means NVML itself broke (driver unloaded, library/driver
mismatch, a GPU fell off the bus) it is shut down and initialised again on the next
`observe()`. `observe()` never raises: a missing library, a missing driver or no GPU is
reported in `GpuInventory.error`.

Health signals, each one making a GPU `healthy=False` with a reason in `health_detail`:
- retired pages pending (pre-Ampere page retirement) and row remapping pending or failed
  (Ampere and Hopper replace page retirement with row remapping): both need a GPU reset;
- uncorrectable ECC errors in the volatile counter (since the last driver load or reset);
- critical XID errors, read cheaply from an NVML event set that is drained without
  waiting on every `observe()`. XIDs that applications cause (13, 31, 43, 45, 68, 109,
  the list NVIDIA's Kubernetes device plugin skips) are reported in the detail only. A
  critical XID keeps the GPU unhealthy for the lifetime of this port (the device plugin
  does the same): the GPU needs a reset, and the daemon a restart, to trust it again.
  Where the driver refuses XID events (some VMs), `xid_events` says why and nothing else
  changes.

Indices are NVML's, which follow PCI bus order. CUDA numbers GPUs fastest-first unless
`CUDA_DEVICE_ORDER=PCI_BUS_ID` is set, so engines should get that variable (or UUIDs) with
their `CUDA_VISIBLE_DEVICES`.

Process ids are the ones NVML reports, which are the host's: a daemon running inside a
PID namespace (a container) sees other numbers for the same processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from reconciler.core.errors import TemporaryError
from reconciler.core.vocabulary import GpuInventory, GpuObservation
from schemas.nodeconfig import SimulatedGpus

_log = logging.getLogger(__name__)

T = TypeVar("T")

# XIDs caused by applications (bad kernels, killed contexts), not by the GPU.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})

# NVML return codes (nvml.h; stable across versions). Kept here so that this module does
# not need pynvml to be importable to classify errors.
_ERR_UNINITIALIZED = 1
_ERR_NO_PERMISSION = 4
_ERR_DRIVER_NOT_LOADED = 9
_ERR_TIMEOUT = 10
_ERR_LIBRARY_NOT_FOUND = 12
_ERR_GPU_IS_LOST = 15
_ERR_RESET_REQUIRED = 16
_ERR_LIB_RM_VERSION_MISMATCH = 18
_ERR_UNKNOWN = 999

# After these NVML must be initialised again before it can be trusted.
_REINIT_ERRORS = frozenset(
    {
        _ERR_UNINITIALIZED,
        _ERR_DRIVER_NOT_LOADED,
        _ERR_LIBRARY_NOT_FOUND,
        _ERR_GPU_IS_LOST,
        _ERR_RESET_REQUIRED,
        _ERR_LIB_RM_VERSION_MISMATCH,
        _ERR_UNKNOWN,
    }
)
# An optional query failing with these is not "unsupported": the GPU or NVML is broken.
_PROPAGATE_ERRORS = (_REINIT_ERRORS - {_ERR_UNKNOWN}) | {_ERR_GPU_IS_LOST, _ERR_RESET_REQUIRED}


class GpuPort(Protocol):
    def observe(self) -> GpuInventory:
        """Never raises: NVML missing or failing is reported in GpuInventory.error."""
        ...


def _nvml_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _cuda_version(raw: int) -> str:
    """NVML's CUDA driver version 12040 -> '12.4'."""
    return f"{raw // 1000}.{(raw % 1000) // 10}"


class _NvmlBroken(TemporaryError):
    """NVML as a whole stopped working; the observation is abandoned and NVML re-initialised."""


class NvmlGpuPort:
    """GPUs through NVML. Thread-safe; one instance per daemon."""

    def __init__(self, *, xid_events: bool = True) -> None:
        self._lock = threading.Lock()
        self._want_xid = xid_events
        self._nvml: Any = None  # the pynvml module, once imported
        self._initialized = False
        self._driver = ""
        self._cuda = ""
        self._event_set: Any = None
        self._xid_status = "not initialised"
        self._critical_xids: dict[str, list[int]] = {}  # uuid -> critical XIDs seen
        self._app_xids: dict[str, int] = {}  # uuid -> last application XID seen
        self._inits = 0

    # -- public -----------------------------------------------------------------------

    @property
    def xid_events(self) -> str:
        """'enabled', or why XID events are not read."""
        return self._xid_status

    @property
    def init_count(self) -> int:
        """How many times NVML was initialised (re-inits after errors included)."""
        return self._inits

    def observe(self) -> GpuInventory:
        with self._lock:
            try:
                return self._observe()
            except Exception as exc:  # never raise: the daemon must keep ticking
                code = _nvml_code(exc)
                _log.warning("gpu observation failed", extra={"error": str(exc), "code": code})
                self._reset()
                return GpuInventory(
                    available=False,
                    error=f"NVML query failed: {exc}; NVML is initialised again next time",
                    driver_version=self._driver,
                    cuda_version=self._cuda,
                )

    def close(self) -> None:
        with self._lock:
            self._reset()

    # -- NVML life cycle --------------------------------------------------------------

    def _init(self) -> str | None:
        """Initialise NVML if needed; return an error message, or None when ready."""
        if self._initialized:
            return None
        if self._nvml is None:
            try:
                import pynvml  # optional at import time: its absence is reported, not raised
            except ImportError as exc:
                return f"the nvidia-ml-py package (pynvml) is not installed: {exc}"
            self._nvml = pynvml
        nv = self._nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            code = _nvml_code(exc)
            if code == _ERR_LIBRARY_NOT_FOUND:
                return (
                    "NVML library libnvidia-ml.so.1 not found: no NVIDIA driver on this "
                    "host (or not on the library path)"
                )
            if code == _ERR_DRIVER_NOT_LOADED:
                return "NVIDIA driver not loaded (NVML: Driver Not Loaded)"
            if code == _ERR_NO_PERMISSION:
                return "no permission to use NVML (/dev/nvidia* not accessible)"
            return f"NVML initialisation failed: {exc}"
        self._initialized = True
        self._inits += 1
        self._driver = self._optional(nv.nvmlSystemGetDriverVersion) or ""
        raw_cuda = self._optional(nv.nvmlSystemGetCudaDriverVersion)
        self._cuda = _cuda_version(raw_cuda) if isinstance(raw_cuda, int) and raw_cuda else ""
        return None

    def _reset(self) -> None:
        nv = self._nvml
        if nv is None or not self._initialized:
            self._initialized = False
            return
        if self._event_set is not None:
            with contextlib.suppress(Exception):  # best effort: NVML may be broken
                nv.nvmlEventSetFree(self._event_set)
            self._event_set = None
        with contextlib.suppress(Exception):
            nv.nvmlShutdown()
        self._initialized = False
        self._xid_status = "not initialised"

    def _setup_events(self, handles: list[Any]) -> None:
        nv = self._nvml
        if not self._want_xid:
            self._xid_status = "disabled"
            return
        if self._event_set is not None:
            return
        try:
            event_set = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            self._xid_status = f"unavailable: event set: {exc}"
            return
        refused: list[str] = []
        for index, handle in enumerate(handles):
            try:
                nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, event_set)
            except nv.NVMLError as exc:
                refused.append(f"GPU {index}: {exc}")
        if len(refused) == len(handles):
            self._xid_status = "unavailable: " + "; ".join(refused)
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlEventSetFree(event_set)
            return
        self._event_set = event_set
        self._xid_status = "enabled" + (f" (refused: {'; '.join(refused)})" if refused else "")

    def _drain_xids(self) -> None:
        """Read pending XID events without waiting (timeout 0)."""
        nv = self._nvml
        if self._event_set is None:
            return
        for _ in range(1000):  # bounded: a storm of events must not stall the tick
            try:
                data = nv.nvmlEventSetWait_v2(self._event_set, 0)
            except nv.NVMLError as exc:
                if _nvml_code(exc) == _ERR_TIMEOUT:
                    return
                if _nvml_code(exc) in _REINIT_ERRORS:
                    raise _NvmlBroken(f"waiting for XID events: {exc}") from exc
                _log.warning("reading XID events failed", extra={"error": str(exc)})
                return
            xid = int(data.eventData)
            try:
                uuid = str(nv.nvmlDeviceGetUUID(data.device))
            except nv.NVMLError:
                uuid = "unknown"
            _log.warning("gpu xid event", extra={"uuid": uuid, "xid": xid})
            if xid in APPLICATION_XIDS:
                self._app_xids[uuid] = xid
            else:
                self._critical_xids.setdefault(uuid, []).append(xid)

    # -- queries ----------------------------------------------------------------------

    def _optional(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Call an NVML query; None where unsupported. Errors that break NVML propagate."""
        nv = self._nvml
        try:
            return fn(*args)
        except nv.NVMLError as exc:
            if _nvml_code(exc) in _PROPAGATE_ERRORS:
                raise
            return None

    def _observe(self) -> GpuInventory:
        error = self._init()
        if error is not None:
            return GpuInventory(available=False, error=error)
        nv = self._nvml
        try:
            count = int(nv.nvmlDeviceGetCount())
            handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nv.NVMLError as exc:
            self._reset()
            return GpuInventory(
                available=False,
                error=f"NVML could not list GPUs: {exc}",
                driver_version=self._driver,
                cuda_version=self._cuda,
            )
        if count == 0:
            return GpuInventory(
                gpus=(),
                error="NVML works but reports no GPUs",
                driver_version=self._driver,
                cuda_version=self._cuda,
            )
        self._setup_events(handles)
        try:
            self._drain_xids()
        except _NvmlBroken as exc:
            self._reset()
            return GpuInventory(
                available=False,
                error=str(exc),
                driver_version=self._driver,
                cuda_version=self._cuda,
            )
        gpus: list[GpuObservation] = []
        broken = False
        for index, handle in enumerate(handles):
            try:
                gpus.append(self._device(index, handle))
            except nv.NVMLError as exc:
                # A GPU that stops answering mid-query is reported, not hidden: hiding
                # it would read as "one GPU fewer" and its index would shift nothing.
                broken = broken or _nvml_code(exc) in _REINIT_ERRORS
                gpus.append(
                    GpuObservation(
                        index=index,
                        uuid=self._optional_uuid(handle, index),
                        name="",
                        memory_total_mib=0,
                        healthy=False,
                        health_detail=f"NVML query failed: {exc}",
                    )
                )
        if broken:
            self._reset()  # the observation stands; NVML starts afresh next tick
        return GpuInventory(
            gpus=tuple(gpus),
            driver_version=self._driver,
            cuda_version=self._cuda,
        )

    def _optional_uuid(self, handle: Any, index: int) -> str:
        nv = self._nvml
        try:
            return str(nv.nvmlDeviceGetUUID(handle))
        except nv.NVMLError:
            return f"unknown-{index}"

    def _device(self, index: int, handle: Any) -> GpuObservation:
        nv = self._nvml
        uuid = str(nv.nvmlDeviceGetUUID(handle))
        name = str(nv.nvmlDeviceGetName(handle))
        mem = self._memory(handle)
        util = self._optional(nv.nvmlDeviceGetUtilizationRates, handle)
        temp = self._temperature(handle)
        pids: set[int] = set()
        for query in (
            nv.nvmlDeviceGetComputeRunningProcesses,
            nv.nvmlDeviceGetGraphicsRunningProcesses,
            nv.nvmlDeviceGetMPSComputeRunningProcesses,
        ):
            procs = self._optional(query, handle)
            for proc in procs or ():
                pids.add(int(proc.pid))
        problems = self._health(handle, uuid)
        notes = list(problems)
        app_xid = self._app_xids.get(uuid)
        if app_xid is not None:
            notes.append(f"last application XID {app_xid}")
        return GpuObservation(
            index=index,
            uuid=uuid,
            name=name,
            memory_total_mib=int(mem.total) // (1024 * 1024),
            memory_used_mib=int(mem.used) // (1024 * 1024),
            utilization_pct=int(util.gpu) if util is not None else None,
            temperature_c=temp,
            process_pids=tuple(sorted(pids)),
            healthy=not problems,
            health_detail="; ".join(notes),
        )

    def _memory(self, handle: Any) -> Any:
        """Memory info v2 (used excludes driver-reserved memory, as nvidia-smi shows it);
        v1 where the driver or pynvml lacks v2 (its `used` includes the reserved part)."""
        nv = self._nvml
        version = getattr(nv, "nvmlMemory_v2", None)
        if version is not None:
            mem = self._optional(nv.nvmlDeviceGetMemoryInfo, handle, version)
            if mem is not None:
                return mem
        return nv.nvmlDeviceGetMemoryInfo(handle)

    def _temperature(self, handle: Any) -> int | None:
        nv = self._nvml
        newer = getattr(nv, "nvmlDeviceGetTemperatureV", None)  # the old call is deprecated
        if newer is not None:
            temp = self._optional(newer, handle, nv.NVML_TEMPERATURE_GPU)
            if temp is not None:
                return int(temp)
        temp = self._optional(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)
        return int(temp) if temp is not None else None

    def _health(self, handle: Any, uuid: str) -> list[str]:
        nv = self._nvml
        problems: list[str] = []
        pending = self._optional(nv.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        if pending:
            problems.append("retired pages pending (needs a GPU reset)")
        rows = self._optional(nv.nvmlDeviceGetRemappedRows, handle)
        if rows is not None:
            _corr, unc, row_pending, failure = rows
            if row_pending:
                problems.append(f"row remapping pending (needs a GPU reset; {unc} uncorrectable)")
            if failure:
                problems.append("row remapping failed (replace the GPU)")
        ecc = self._optional(
            nv.nvmlDeviceGetTotalEccErrors,
            handle,
            nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nv.NVML_VOLATILE_ECC,
        )
        if ecc:
            problems.append(f"{int(ecc)} uncorrectable ECC error(s) since the last reset")
        xids = self._critical_xids.get(uuid)
        if xids:
            shown = ", ".join(str(x) for x in xids[-5:])
            problems.append(f"critical XID {shown} (needs a GPU reset and a daemon restart)")
        return problems


class SimulatedGpuPort:
    """GPUs from the node config, for machines without any. Loudly `simulated=True`.

    Nothing can use a simulated GPU, so their process lists are always empty.
    """

    def __init__(self, config: SimulatedGpus, node: str = "local") -> None:
        self._inventory = GpuInventory(
            gpus=tuple(
                GpuObservation(
                    index=i,
                    uuid=f"SIM-GPU-{node}-{i}",
                    name=config.model,
                    memory_total_mib=round(config.memory_gib * 1024),
                    memory_used_mib=0,
                    utilization_pct=0,
                    temperature_c=None,
                )
                for i in range(config.count)
            ),
            available=True,
            simulated=True,
            driver_version="simulated",
            cuda_version="",
        )

    def observe(self) -> GpuInventory:
        return self._inventory


class ManagedGpuPort:
    """Only the GPUs the node config's `managedGpus` names, by NVML index or UUID.

    The others move to `GpuInventory.unmanaged`: plan() never sees them, so they are
    neither assigned nor foreign (another daemon's engines on them are not ours to judge).
    Indices stay NVML's, so CUDA_VISIBLE_DEVICES names the same physical GPU. A named GPU
    that is not there is an error in the inventory; the ones found are still managed.
    """

    def __init__(self, inner: GpuPort, selectors: Sequence[int | str]) -> None:
        self.inner = inner
        self._indices = frozenset(s for s in selectors if isinstance(s, int))
        self._uuids = frozenset(s for s in selectors if isinstance(s, str))

    def observe(self) -> GpuInventory:
        inv = self.inner.observe()
        if not inv.available:
            return inv
        managed = tuple(g for g in inv.gpus if g.index in self._indices or g.uuid in self._uuids)
        unmanaged = tuple(g for g in inv.gpus if g not in managed)
        found_idx = {g.index for g in managed}
        found_uuid = {g.uuid for g in managed}
        missing = [str(i) for i in sorted(self._indices - found_idx)]
        missing += sorted(self._uuids - found_uuid)
        error = inv.error
        if missing:
            error = "; ".join(
                e for e in (error, f"managedGpus names GPU(s) not found: {', '.join(missing)}")
                if e
            )
        return dataclasses.replace(inv, gpus=managed, unmanaged=unmanaged, error=error)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def gpu_port_from_config(
    simulate: SimulatedGpus | None,
    node: str = "local",
    managed: Sequence[int | str] | None = None,
) -> GpuPort:
    """The node config's `simulateGpus` set: simulated GPUs; otherwise NVML. With
    `managedGpus`, only those GPUs are this daemon's."""
    port: GpuPort = SimulatedGpuPort(simulate, node) if simulate is not None else NvmlGpuPort()
    if managed is not None:
        return ManagedGpuPort(port, managed)
    return port
