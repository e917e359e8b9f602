"""Validate the NVML GPU port and GPU-aware planning on a machine with real NVIDIA GPUs.

Run from the repository root (see run_on_device.sh):
  1. observe the GPUs through NvmlGpuPort and print the inventory as JSON;
  2. start a process that holds GPU 0 (torch allocating ~1 GiB), observe again and check
     that its pid is listed on GPU 0 (and only there);
  3. build a one-node cluster repo from what was observed, and call plan() with the real
     observation and that pid as foreign: GPU 0 must not be assigned to anything.
Prints JSON sections; exits non-zero if a check fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reconciler.core.launch import NodeContext
from reconciler.desired.loader import load_directory
from reconciler.core.vocabulary import GpuInventory, Inventory, ObservedState, Plan, Start
from reconciler.core.plan import plan
from reconciler.ports.gpus import NvmlGpuPort

NODE = "gpu-node"
FAILURES: list[str] = []

HOLDER = r"""
import os, sys, time, torch
x = torch.empty(1024 * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
x.fill_(1)
torch.cuda.synchronize()
props = torch.cuda.get_device_properties(0)
uuid = str(getattr(props, "uuid", ""))
print(json.dumps({"pid": os.getpid(), "torch": torch.__version__, "device": props.name,
                  "uuid": uuid, "allocated_mib": torch.cuda.memory_allocated(0) >> 20}),
      flush=True)
time.sleep(float(sys.argv[1]))
""".replace("import os, sys", "import json, os, sys")


# An application error on purpose: a kernel writes through a null pointer (an MMU fault,
# XID 31: the driver kills this context, the GPU stays fine). Checks the XID event path.
FAULTER = r"""
import cupy as cp
k = cp.RawKernel(r'extern "C" __global__ void bad(int* p) { p[0] = 1; }', "bad")
k((1,), (1,), (cp.uint64(0),))
cp.cuda.runtime.deviceSynchronize()
"""


def section(title: str, data: Any) -> None:
    print(f"\n=== {title} ===")
    print(data if isinstance(data, str) else json.dumps(data, indent=2, default=str))


def check(ok: bool, what: str) -> None:
    print(f"CHECK {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)


def timed_observe(port: NvmlGpuPort) -> tuple[GpuInventory, float]:
    t0 = time.perf_counter()
    inv = port.observe()
    return inv, (time.perf_counter() - t0) * 1000


def raw_health(inv: GpuInventory) -> list[dict[str, Any]]:
    """What the driver answers to each health query (to know what is supported here)."""
    import pynvml as nv

    out = []
    nv.nvmlInit()
    try:
        for g in inv.gpus:
            h = nv.nvmlDeviceGetHandleByIndex(g.index)
            row: dict[str, Any] = {"index": g.index}
            queries: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
                "retired_pages_pending": (nv.nvmlDeviceGetRetiredPagesPendingStatus, (h,)),
                "remapped_rows(corr,unc,pending,failure)": (nv.nvmlDeviceGetRemappedRows, (h,)),
                "ecc_uncorrected_volatile": (
                    nv.nvmlDeviceGetTotalEccErrors,
                    (h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC),
                ),
                "ecc_mode(current,pending)": (nv.nvmlDeviceGetEccMode, (h,)),
                "supported_event_types": (nv.nvmlDeviceGetSupportedEventTypes, (h,)),
                "pci_bus_id": (lambda h: nv.nvmlDeviceGetPciInfo(h).busId, (h,)),
                "mig_mode(current,pending)": (nv.nvmlDeviceGetMigMode, (h,)),
            }
            for name, (fn, args) in queries.items():
                try:
                    row[name] = fn(*args)
                except nv.NVMLError as exc:
                    row[name] = f"NVMLError: {exc}"
            out.append(row)
    finally:
        nv.nvmlShutdown()
    return out


def write_repo(
    root: Path, inv: GpuInventory, deployments: list[tuple[str, int]], count: int
) -> Path:
    first = inv.gpus[0]
    root.mkdir(parents=True, exist_ok=True)
    docs = [
        f"""apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata:
  name: device-check
spec:
  nodes:
    - name: {NODE}
      address: 127.0.0.1
      gpus:
        count: {count}
        model: {json.dumps(first.name)}
        memoryGib: {first.memory_total_mib / 1024:.2f}
"""
    ]
    for i, (name, tp) in enumerate(deployments):
        docs.append(
            f"""apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: {name}
spec:
  model:
    hubId: Qwen/Qwen2.5-0.5B-Instruct
    servedName: {name}
    architecture: {{parameters: 0.5e9, numLayers: 24, numKvHeads: 2, headDim: 64}}
  replicas: 1
  parallelism: {{tensor: {tp}}}
  executor: mp
  placement: {{nodes: [{NODE}]}}
  engine: {{maxModelLen: 4096}}
  port: {8000 + i}
"""
        )
    (root / "cluster.yaml").write_text("---\n".join(docs))
    return root


def plan_json(p: Plan) -> dict[str, Any]:
    return {
        "replicas": {
            str(k): {"state": s.state, "reason": s.reason, "gpus": list(s.gpus), "port": s.port}
            for k, s in p.replicas.items()
        },
        "actions": [
            {
                "type": type(a).__name__,
                "reason": a.reason,
                **(
                    {
                        "gpus": list(a.launch.gpus),
                        "CUDA_VISIBLE_DEVICES": a.launch.env.get("CUDA_VISIBLE_DEVICES"),
                        "CUDA_DEVICE_ORDER": a.launch.env.get("CUDA_DEVICE_ORDER"),
                        "argv": list(a.launch.argv),
                    }
                    if isinstance(a, Start)
                    else {}
                ),
            }
            for a in p.actions
        ],
        "notes": list(p.notes),
    }


def started_gpus(p: Plan) -> set[int]:
    return {i for a in p.actions if isinstance(a, Start) for i in a.launch.gpus}


def run_plan(repo: Path, inv: GpuInventory, foreign: frozenset[int]) -> Plan:
    desired = load_directory(repo, revision="device-check")
    observed = ObservedState(node=NODE, gpus=inv, processes={}, foreign_pids=foreign)
    ctx = NodeContext(name=NODE, python=sys.executable, ray="ray")
    return plan(desired, observed, Inventory(), time.time(), ctx)


def main() -> int:
    out_dir = Path(os.environ.get("PROBE_DIR") or tempfile.mkdtemp(prefix="gpu-probe-"))
    port = NvmlGpuPort()

    # 1. the inventory -------------------------------------------------------------------
    inv, ms = timed_observe(port)
    _, ms2 = timed_observe(port)
    section("1. inventory (NvmlGpuPort.observe)", dataclasses.asdict(inv))
    section(
        "1b. port details",
        {"xid_events": port.xid_events, "nvml_inits": port.init_count,
         "observe_ms_first": round(ms, 1), "observe_ms_second": round(ms2, 1)},
    )
    check(inv.available, "NVML available")
    check(len(inv.gpus) >= 1, f"at least one GPU ({len(inv.gpus)})")
    if not inv.available or not inv.gpus:
        return 1
    check(all(g.uuid.startswith("GPU-") for g in inv.gpus), "UUIDs look like GPU-...")
    check([g.index for g in inv.gpus] == list(range(len(inv.gpus))), "indices 0..n-1")
    check(all(g.healthy for g in inv.gpus), "all GPUs healthy")
    check(bool(inv.driver_version) and bool(inv.cuda_version), "driver and CUDA versions read")
    section("1c. raw health queries (pynvml directly)", raw_health(inv))

    # 2. a foreign process on GPU 0 ------------------------------------------------------
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0")
    env.pop("CUDA_DEVICE_ORDER", None)  # default order: does CUDA's 0 equal NVML's 0?
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "240"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = holder.stdout.readline() if holder.stdout else ""
        info = json.loads(line) if line else {}
        section("2a. holder process (torch)", info)
        check(info.get("pid") == holder.pid, f"holder pid {holder.pid} allocated on cuda:0")
        time.sleep(1.0)
        held, ms3 = timed_observe(port)
        section(
            "2b. GPUs while the holder runs",
            [{"index": g.index, "uuid": g.uuid, "memory_used_mib": g.memory_used_mib,
              "utilization_pct": g.utilization_pct, "temperature_c": g.temperature_c,
              "process_pids": list(g.process_pids)} for g in held.gpus]
            + [{"observe_ms": round(ms3, 1)}],
        )
        check(holder.pid in held.gpus[0].process_pids, f"pid {holder.pid} listed on GPU 0")
        check(
            all(holder.pid not in g.process_pids for g in held.gpus[1:]),
            "pid listed on no other GPU",
        )
        grew = held.gpus[0].memory_used_mib - inv.gpus[0].memory_used_mib
        check(grew >= 1024, f"GPU 0 memory used grew by >= 1024 MiB ({grew} MiB)")
        if info.get("uuid"):
            torch_uuid = str(info["uuid"])
            same = held.gpus[0].uuid.endswith(torch_uuid.removeprefix("GPU-"))
            check(same, f"CUDA device 0 ({torch_uuid}) is NVML GPU 0 ({held.gpus[0].uuid})")

        # 3. the plan ------------------------------------------------------------------
        n = len(held.gpus)
        tp = 2 if n >= 2 else 1
        foreign = frozenset({holder.pid})
        repo = write_repo(out_dir / "repo-tp", held, [(f"tp{tp}", tp)], n)
        section("3a. cluster repo", (repo / "cluster.yaml").read_text())

        free = run_plan(repo, held, frozenset())
        section(f"3b. plan tp{tp}, holder NOT marked foreign (control)", plan_json(free))
        check(0 in started_gpus(free), "control: GPU 0 assigned when nobody foreign holds it")

        blocked = run_plan(repo, held, foreign)
        section(f"3c. plan tp{tp}, holder pid {holder.pid} foreign", plan_json(blocked))
        check(0 not in started_gpus(blocked), "GPU 0 (held by a foreign pid) not assigned")
        check(
            all(s.state != "Starting" for s in blocked.replicas.values())
            if tp == n
            else True,
            f"tp{tp} cannot start with GPU 0 taken (all {n} GPUs needed)",
        )

        if n >= 2:
            repo1 = write_repo(out_dir / "repo-tp1", held, [("tp1", 1)], n)
            one = run_plan(repo1, held, foreign)
            section("3d. plan tp1, holder foreign", plan_json(one))
            check(started_gpus(one) == {1}, "tp1 lands on GPU 1, not on the held GPU 0")

        drift = write_repo(out_dir / "repo-drift", held, [("tp1", 1)], n + 1)
        drift_plan = run_plan(drift, held, foreign)
        section("3e. plan with one GPU too many declared", plan_json(drift_plan))
    finally:
        holder.terminate()
        holder.wait(30)

    # 4. NVML re-initialisation ----------------------------------------------------------
    port.close()
    again, _ = timed_observe(port)
    time.sleep(2)
    after, _ = timed_observe(port)
    section(
        "4. after close() and the holder's exit",
        {"nvml_inits": port.init_count, "available": again.available,
         "pids": [list(g.process_pids) for g in after.gpus]},
    )
    check(port.init_count == 2 and again.available, "NVML initialised again after close()")
    check(all(holder.pid not in g.process_pids for g in after.gpus), "holder pid gone")

    # 5. an application XID on the last GPU ---------------------------------------------
    last = len(after.gpus) - 1
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(last))
    fault = subprocess.run(
        [sys.executable, "-c", FAULTER], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )
    time.sleep(2)
    xid_inv, _ = timed_observe(port)
    section(
        f"5. after a null-pointer write on GPU {last} (expect XID 31, an application error)",
        {"faulter_exit": fault.returncode, "faulter_stderr_tail": fault.stderr[-300:],
         "xid_events": port.xid_events,
         "gpus": [{"index": g.index, "healthy": g.healthy, "health_detail": g.health_detail}
                  for g in xid_inv.gpus]},
    )
    check(fault.returncode != 0, "the faulting kernel failed")
    check(
        "application XID" in xid_inv.gpus[last].health_detail and xid_inv.gpus[last].healthy,
        f"GPU {last}: application XID seen through NVML events, GPU still healthy",
    )

    section("RESULT", {"failures": FAILURES, "out_dir": str(out_dir)})
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
