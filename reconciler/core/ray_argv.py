"""Pure builders for the Ray processes of one multi-node replica (no I/O).

One Ray cluster per replica (DESIGN.md section 5): the leader runs ``ray start --head
--block``, each follower ``ray start --address <head>:<gcs> --block``, all as supervised
children. Every port is pinned from the replica's declared range so that several replicas
(and several test hosts on one machine) never collide, and each node gets the environment
vLLM needs in the *raylet's* environment (Ray workers inherit it; the driver's is not copied).

Port layout inside ``[start, end]`` (GPUStack's layout, with the free slots used)::

    S      GCS (--port, head only)            S+6  --metrics-export-port
    S+1    --ray-client-server-port (head)     S+7  --node-manager-port
    S+2    --dashboard-port (head, if enabled) S+8  --object-manager-port
    S+3    reserved                            S+9  --runtime-env-agent-port
    S+4    --dashboard-agent-listen-port       S+10..E  --min/--max-worker-port
    S+5    --dashboard-agent-grpc-port

``ray stop`` is never produced here: it kills every Ray process on the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.core.network_env import network_env

__all__ = [
    "MIN_WORKER_PORTS",
    "REPLICA_LABEL",
    "RESERVED_PORTS",
    "SPEC_HASH_LABEL",
    "RayPorts",
    "gcs_address",
    "ray_driver_env",
    "ray_head_argv",
    "ray_node_env",
    "ray_port_plan",
    "ray_worker_argv",
]

RESERVED_PORTS = 10
"""Ports ``S..S+9`` hold Ray's fixed services; worker ports start at ``S+10``."""

MIN_WORKER_PORTS = 16
"""Each Ray worker process (and each driver) binds one port of the worker range: a vLLM rank
is one worker, plus Ray's own helpers; 16 leaves room for an 8-GPU node."""

SPEC_HASH_LABEL = "reconciler-spec-hash"
"""Ray node label carrying the spec hash of the replica a node was started for: the leader
counts only nodes at its own hash as members (Ray itself does not refuse others)."""
REPLICA_LABEL = "reconciler-replica"

_MIN_PORT = 1024
_MAX_PORT = 65535

# Ray label keys/values follow Kubernetes label syntax; keep to a safe subset.
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
_IFNAME = re.compile(r"^[^\s/]{1,15}$")

# Environment keys this module owns on a Ray node; stale inherited values are dropped.
_NODE_ENV_KEYS = (
    "VLLM_HOST_IP",
    "CUDA_VISIBLE_DEVICES",
    "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME",
    "NCCL_IB_HCA",
)
# Never inherited by a Ray node: RAY_ADDRESS would make `ray start` / drivers attach to some
# other cluster; VLLM_PORT must not be pinned with the Ray executor (port races).
_NODE_ENV_DROP = ("RAY_ADDRESS", "VLLM_PORT")


@dataclass(frozen=True)
class RayPorts:
    """Every port of one Ray cluster, all inside one declared range (inclusive)."""

    range_start: int
    range_end: int
    gcs: int
    ray_client_server: int
    dashboard: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    metrics_export: int
    node_manager: int
    object_manager: int
    runtime_env_agent: int
    min_worker: int
    max_worker: int

    @property
    def worker_port_count(self) -> int:
        return self.max_worker - self.min_worker + 1

    def all_fixed(self) -> tuple[int, ...]:
        """The single (non-worker) ports, head-only ones included."""
        return (
            self.gcs,
            self.ray_client_server,
            self.dashboard,
            self.dashboard_agent_listen,
            self.dashboard_agent_grpc,
            self.metrics_export,
            self.node_manager,
            self.object_manager,
            self.runtime_env_agent,
        )

    def overlaps(self, lo: int, hi: int) -> bool:
        """Whether the declared range meets ``[lo, hi]`` (e.g. the kernel's ephemeral range,
        ``net.ipv4.ip_local_port_range``, where outgoing connections may take a pinned port)."""
        return self.range_start <= hi and lo <= self.range_end


def ray_port_plan(
    range_start: int, range_end: int, *, min_worker_ports: int = MIN_WORKER_PORTS
) -> RayPorts:
    """Lay out every Ray port of one replica inside ``[range_start, range_end]`` (inclusive).

    Raises ValueError when the range is outside 1024..65535, reversed, or too small to hold
    the ten fixed ports plus ``min_worker_ports`` worker ports.
    """
    if min_worker_ports < 1:
        raise ValueError(f"min_worker_ports must be >= 1, got {min_worker_ports}")
    if not (_MIN_PORT <= range_start <= _MAX_PORT and _MIN_PORT <= range_end <= _MAX_PORT):
        raise ValueError(
            f"port range {range_start}-{range_end} must lie within {_MIN_PORT}-{_MAX_PORT}"
        )
    needed = RESERVED_PORTS + min_worker_ports
    size = range_end - range_start + 1
    if size < needed:
        raise ValueError(
            f"port range {range_start}-{range_end} holds {max(size, 0)} ports; a Ray cluster "
            f"needs at least {needed} ({RESERVED_PORTS} fixed + {min_worker_ports} worker ports)"
        )
    s = range_start
    return RayPorts(
        range_start=range_start,
        range_end=range_end,
        gcs=s,
        ray_client_server=s + 1,
        dashboard=s + 2,
        dashboard_agent_listen=s + 4,
        dashboard_agent_grpc=s + 5,
        metrics_export=s + 6,
        node_manager=s + 7,
        object_manager=s + 8,
        runtime_env_agent=s + 9,
        min_worker=s + RESERVED_PORTS,
        max_worker=range_end,
    )


def gcs_address(head_ip: str, ports: RayPorts) -> str:
    """``ip:port`` of the head's GCS: what followers pass to ``--address`` and drivers get as
    ``RAY_ADDRESS``."""
    return f"{head_ip}:{ports.gcs}"


def _labels_arg(labels: Mapping[str, str]) -> list[str]:
    if not labels:
        return []
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"invalid Ray node label key {key!r}")
        if not _LABEL_VALUE.match(value):
            raise ValueError(f"invalid Ray node label value {value!r} for {key!r}")
    return ["--labels", ",".join(f"{k}={labels[k]}" for k in sorted(labels))]


def _node_argv(
    node_ip: str,
    ports: RayPorts,
    *,
    num_gpus: int,
    num_cpus: int | None,
    object_store_memory: int | None,
    temp_dir: str | None,
    labels: Mapping[str, str],
) -> list[str]:
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
    if num_cpus is not None and num_cpus < 0:
        raise ValueError(f"num_cpus must be >= 0, got {num_cpus}")
    argv = [
        "--block",
        "--node-ip-address", node_ip,
        "--num-gpus", str(num_gpus),
        "--node-manager-port", str(ports.node_manager),
        "--object-manager-port", str(ports.object_manager),
        "--metrics-export-port", str(ports.metrics_export),
        "--dashboard-agent-listen-port", str(ports.dashboard_agent_listen),
        "--dashboard-agent-grpc-port", str(ports.dashboard_agent_grpc),
        "--runtime-env-agent-port", str(ports.runtime_env_agent),
        "--min-worker-port", str(ports.min_worker),
        "--max-worker-port", str(ports.max_worker),
        "--disable-usage-stats",
    ]  # fmt: skip
    if num_cpus is not None:
        argv += ["--num-cpus", str(num_cpus)]
    if object_store_memory is not None:
        argv += ["--object-store-memory", str(object_store_memory)]
    if temp_dir is not None:
        argv += ["--temp-dir", temp_dir]
    argv += _labels_arg(labels)
    return argv


def ray_head_argv(
    ray_exe: str,
    node_ip: str,
    ports: RayPorts,
    num_gpus: int,
    temp_dir: str,
    *,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    labels: Mapping[str, str] | None = None,
    include_dashboard: bool = False,
    dashboard_host: str = "127.0.0.1",
) -> list[str]:
    """``ray start --head --block`` with every port pinned.

    The dashboard is off by default: it needs ``ray[default]`` (a head started with
    ``--include-dashboard=true`` without it exits with "Cannot include dashboard with missing
    packages"), and cluster state is read from the GCS directly (see ``ports.ray_nodes``).
    Give each cluster on a host its own ``temp_dir`` (keep it short: Ray's unix sockets live
    under it and socket paths are limited to 107 bytes).
    """
    argv = [
        ray_exe, "start", "--head",
        "--port", str(ports.gcs),
        "--ray-client-server-port", str(ports.ray_client_server),
    ]  # fmt: skip
    argv += _node_argv(
        node_ip,
        ports,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        temp_dir=temp_dir,
        labels=labels or {},
    )
    if include_dashboard:
        argv += [
            "--include-dashboard=true",
            "--dashboard-host", dashboard_host,
            "--dashboard-port", str(ports.dashboard),
        ]  # fmt: skip
    else:
        argv += ["--include-dashboard=false"]
    return argv


def ray_worker_argv(
    ray_exe: str,
    head_address: str,
    node_ip: str,
    ports: RayPorts,
    num_gpus: int,
    *,
    temp_dir: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """``ray start --address <head> --block`` for a follower, with its node ports pinned.

    ``head_address`` is :func:`gcs_address` of the head. Ray 2.60 accepts ``--temp-dir`` per
    node; without it a worker uses the head's.
    """
    if ":" not in head_address:
        raise ValueError(f"head_address must be ip:port, got {head_address!r}")
    argv = [ray_exe, "start", "--address", head_address]
    argv += _node_argv(
        node_ip,
        ports,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        temp_dir=temp_dir,
        labels=labels or {},
    )
    return argv


def _cuda_devices(cuda_visible_devices: Sequence[int] | str) -> str:
    if isinstance(cuda_visible_devices, str):
        return cuda_visible_devices
    if any(i < 0 for i in cuda_visible_devices):
        raise ValueError(f"negative GPU index in {list(cuda_visible_devices)}")
    if len(set(cuda_visible_devices)) != len(cuda_visible_devices):
        raise ValueError(f"duplicate GPU index in {list(cuda_visible_devices)}")
    return ",".join(str(i) for i in cuda_visible_devices)


def ray_node_env(
    base_env: Mapping[str, str],
    node_ip: str,
    cuda_visible_devices: Sequence[int] | str,
    *,
    nccl_ifname: str | None,
    gloo_ifname: str | None,
    nccl_ib_hca: str | None = None,
) -> dict[str, str]:
    """The environment for one node's ``ray start`` (inherited by every Ray worker on it).

    Sets ``VLLM_HOST_IP`` (must equal ``--node-ip-address``), ``CUDA_VISIBLE_DEVICES`` (the
    node's GPU set; Ray derives its workers' from it), ``NCCL_SOCKET_IFNAME``,
    ``GLOO_SOCKET_IFNAME`` (without it Gloo can pick loopback: "connectFullMesh failed") and
    ``NCCL_IB_HCA``. Keys given as None are removed rather than inherited, as are
    ``RAY_ADDRESS`` and ``VLLM_PORT``. Usage stats are switched off.
    """
    for name, ifname in (("nccl_ifname", nccl_ifname), ("gloo_ifname", gloo_ifname)):
        if ifname is not None and not _IFNAME.match(ifname):
            raise ValueError(f"{name} {ifname!r} is not an interface name")
    env = {k: v for k, v in base_env.items() if k not in _NODE_ENV_KEYS + _NODE_ENV_DROP}
    env.update(network_env(node_ip, nccl_ifname, gloo_ifname, nccl_ib_hca))
    env["CUDA_VISIBLE_DEVICES"] = _cuda_devices(cuda_visible_devices)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def ray_driver_env(base_env: Mapping[str, str], head_address: str, node_ip: str) -> dict[str, str]:
    """Environment for the driver (``vllm serve ... --distributed-executor-backend ray`` or the
    test engine) on the leader: ``RAY_ADDRESS`` so it attaches to this replica's cluster
    instead of silently starting a private one, and ``VLLM_HOST_IP``."""
    env = {k: v for k, v in base_env.items() if k != "VLLM_PORT"}
    env["RAY_ADDRESS"] = head_address
    env.update(network_env(node_ip))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env
