"""What `reconciler plan` sees of a node.

Run on the node itself (its node config names that node), plan sees what the daemon sees:
the GPUs through the same port (NVML, or the config's simulated GPUs, narrowed to
`managedGpus`), the engines of the daemon's state dir, and the processes on its GPUs that
the daemon does not own (foreign). Run anywhere else, the GPUs come from the Cluster
declaration and nothing runs unless --state-dir says otherwise. Either way the first line
of the output says which, so a plan cannot pass for what the node will do when it is not.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.launch import NodeContext
from reconciler.core.vocabulary import (
    GpuInventory,
    GpuObservation,
    Inventory,
    ObservedState,
    ProcessObservation,
)
from reconciler.desired.node_config import InvalidNodeConfig, load_node_config
from reconciler.desired.state import DesiredState
from reconciler.ports.inventory import InventoryStore
from schemas.nodeconfig import NodeConfig

DEFAULT_CONFIG = Path("/etc/reconciler/node.yaml")


@dataclass(frozen=True)
class NodeView:
    observed: ObservedState
    inventory: Inventory
    ctx: NodeContext | None  # the daemon's own (from the node config); None: from flags
    source: str  # where the GPUs and the engines came from, in one sentence


def declared_gpus(desired: DesiredState, node: str) -> GpuInventory:
    decl = next(n for n in desired.cluster.spec.nodes if n.name == node)
    gpus = tuple(
        GpuObservation(
            index=i,
            uuid=f"declared-{node}-{i}",
            name=decl.gpus.model or "GPU",
            memory_total_mib=int(decl.gpus.memory_gib * 1024),
        )
        for i in range(decl.gpus.count)
    )
    return GpuInventory(gpus=gpus, available=True, simulated=True)


def read_state_dir(state_dir: Path) -> tuple[Inventory, list[ProcessObservation]]:
    from reconciler.ports.processes import read_state_files

    inventory = (
        InventoryStore(state_dir).current
        if (state_dir / "inventory.json").exists()
        else Inventory()
    )
    return inventory, read_state_files(state_dir)


def owned_pids(state_dir: Path) -> frozenset[int]:
    """Pids of the members a state dir records and all their processes (EngineCore and
    workers included), as the daemon's process port counts them."""
    from reconciler.ports.processes.members import member_processes
    from reconciler.ports.processes.proc import all_stats
    from reconciler.ports.processes.state_files import load_record, state_file_members

    stats = all_stats()
    pids: set[int] = set()
    for _, path in state_file_members(state_dir / "engines"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pids.update(member_processes(load_record(path), stats))
    return frozenset(pids)


def config_for(node: str, path: Path | None) -> tuple[NodeConfig | None, str]:
    """The node config if it is this node's, else None and why not."""
    explicit = path is not None
    path = path or DEFAULT_CONFIG
    if not explicit and not path.is_file():
        return None, f"no node config at {path}: not run on a node"
    try:
        config = load_node_config(path)
    except InvalidNodeConfig as exc:
        if explicit:
            raise
        return None, f"the node config {path} does not load ({exc})"
    if config.node_name != node:
        return None, f"the node config {path} is node {config.node_name!r}'s"
    return config, str(path)


def node_view(desired: DesiredState, node: str, config: NodeConfig | None, where: str,
              state_dir: Path | None) -> NodeView:
    if config is None:
        inventory, processes = (
            read_state_dir(state_dir) if state_dir is not None else (Inventory(), [])
        )
        decl = next(n for n in desired.cluster.spec.nodes if n.name == node)
        source = (
            f"GPUs from the Cluster declaration of {node} ({decl.gpus.count} x "
            f"{decl.gpus.model or 'GPU'}), not observed ({where}); engines: "
            + (f"state dir {state_dir}" if state_dir is not None else "none assumed running")
        )
        observed = ObservedState(node=node, gpus=declared_gpus(desired, node),
                                 processes={p.member: p for p in processes})
        return NodeView(observed, inventory, None, source)
    from reconciler.daemon.wiring import node_context
    from reconciler.ports.gpus import gpu_port_from_config

    port = gpu_port_from_config(config.simulate_gpus, config.node_name, config.managed_gpus)
    try:
        gpus = port.observe()
    finally:
        close = getattr(port, "close", None)
        if close is not None:
            close()
    sd = state_dir or config.state_dir
    inventory, processes = read_state_dir(sd) if sd.is_dir() else (Inventory(), [])
    ours = owned_pids(sd) if sd.is_dir() else frozenset()
    foreign = frozenset(p for g in gpus.gpus for p in g.process_pids if p not in ours)
    kind = "simulated (node config simulateGpus)" if gpus.simulated else "NVML"
    managed = "" if config.managed_gpus is None else (
        f", managedGpus {config.managed_gpus}, {len(gpus.unmanaged)} unmanaged"
    )
    source = (
        f"GPUs read from {kind} on this node as the daemon reads them (node config {where}"
        f"{managed}); engines: state dir {sd}"
        + (f"; GPUs: {gpus.error}" if gpus.error else "")
    )
    observed = ObservedState(node=node, gpus=gpus, processes={p.member: p for p in processes},
                             foreign_pids=foreign)
    return NodeView(observed, inventory, node_context(config), source)
