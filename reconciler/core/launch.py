"""Build the exact command line and environment of every member process. Pure.

Commands are argument lists, never shell strings: nothing from git is ever parsed by a
shell. Variables the daemon derives (GPU sets, Ray address, host IP, interfaces) are set
last, so no document can override them (the schema also rejects them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from reconciler.core import ray_argv as ray_commands
from reconciler.core.backoff import BackoffPolicy
from reconciler.core.network_env import network_env
from reconciler.core.vocabulary import LaunchSpec, MemberKey, ReplicaPlacement, Role
from schemas.v1alpha1 import Cluster, ModelDeployment, Node

MARKER_MEMBER = "RECONCILER_MEMBER"
MARKER_HASH = "RECONCILER_SPEC_HASH"

@dataclass(frozen=True)
class NodeContext:
    """What plan() needs to know about this node beyond the desired state."""

    name: str
    python: str
    ray: str
    api_server_module: str = "vllm.entrypoints.openai.api_server"
    # vLLM's CLI after the python executable (`... serve MODEL`): multi-node executor mp
    cli_argv: tuple[str, ...] = ("-m", "vllm.entrypoints.cli.main")
    env: Mapping[str, str] = field(default_factory=dict)
    state_dir: str = "/var/lib/reconciler"
    allowed_model_roots: tuple[str, ...] = ()  # empty: any absolute path
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    unhealthy_grace_s: float = 30.0


def model_path_allowed(ctx: NodeContext, path: str | None) -> bool:
    """Is a model path inside one of the node's allowed roots? (hub ids are not paths)"""
    if path is None or not ctx.allowed_model_roots:
        return True
    parts = PurePosixPath(path).parts
    if ".." in parts:
        return False
    return any(parts[: len(PurePosixPath(r).parts)] == PurePosixPath(r).parts
               for r in ctx.allowed_model_roots)


def _set_derived(env: dict[str, str], member: MemberKey, spec_hash: str) -> None:
    # NVML numbers GPUs in PCI bus order, CUDA fastest-first by default: make CUDA agree
    # with the indices we assigned from NVML.
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    # ownership markers: adoption and orphan detection read them back from /proc
    env[MARKER_MEMBER] = member.slug
    env[MARKER_HASH] = spec_hash


def _node(cluster: Cluster, name: str) -> Node:
    for node in cluster.spec.nodes:
        if node.name == name:
            return node
    raise KeyError(name)


def _base_env(ctx: NodeContext, cluster: Cluster, dep: ModelDeployment) -> dict[str, str]:
    env: dict[str, str] = {}
    env.update(cluster.spec.engine_defaults.env)
    env.update(dep.spec.engine.env)
    env.update(ctx.env)  # the node knows its own paths best
    return env


def _cluster_network_env(cluster: Cluster, node: Node) -> dict[str, str]:
    net = cluster.spec.network
    return network_env(
        node.address, net.nccl_socket_ifname, net.gloo_socket_ifname, net.nccl_ib_hca
    )


def startup_timeout(cluster: Cluster, dep: ModelDeployment) -> float:
    return float(
        dep.spec.probes.startup_timeout_seconds
        or cluster.spec.engine_defaults.startup_timeout_seconds
    )


def ray_ports(cluster: Cluster, block: int) -> ray_commands.RayPorts:
    size = cluster.spec.ports.ray_block_size
    start = cluster.spec.ports.ray.start + block * size
    return ray_commands.ray_port_plan(start, start + size - 1)


def replica_gcs_address(cluster: Cluster, placement: ReplicaPlacement) -> str:
    """``ip:port`` of a Ray multi-node replica's GCS on its leader: the followers'
    ``--address``, the driver's ``RAY_ADDRESS`` and where the reconciler asks for members."""
    assert placement.ray_block is not None
    leader = _node(cluster, placement.leader)
    return ray_commands.gcs_address(leader.address, ray_ports(cluster, placement.ray_block))


def ray_temp_dir(state_dir: str, member: MemberKey, spec_hash: str) -> str:
    # Ray puts unix sockets under its temp dir and socket paths are limited to 107 bytes:
    # keep the name short. Under the state dir, not /tmp: root must not follow a path
    # another user could create first.
    digest = hashlib.sha256(f"{member.replica}:{spec_hash}".encode()).hexdigest()[:12]
    return f"{state_dir}/ray/{digest}"


def drain_seconds(dep: ModelDeployment | None) -> float | None:
    """The deployment's rollout.drainTimeoutSeconds (None: no drain, or no deployment)."""
    t = dep.spec.rollout.drain_timeout_seconds if dep is not None else None
    return None if t is None else float(t)


def drain_from_argv(argv: tuple[str, ...] | list[str]) -> float | None:
    """The drain an engine was started with: vLLM's `--shutdown-timeout N` (the last one
    wins, as in argparse), for state files and processes that carry no drain marker."""
    found: float | None = None
    for i, arg in enumerate(argv):
        value = None
        if arg == "--shutdown-timeout" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--shutdown-timeout="):
            value = arg.partition("=")[2]
        if value is not None:
            try:
                found = float(value)
            except ValueError:
                continue
    return found


def mp_multi_node(dep: ModelDeployment, placement: ReplicaPlacement) -> bool:
    """A replica run by vLLM's own multi-node mode: one engine process per node, no Ray."""
    return placement.multi_node and dep.spec.executor == "mp"


def mp_master_port(cluster: Cluster, placement: ReplicaPlacement) -> int:
    """The torch.distributed rendezvous port of an mp multi-node replica: the first port of
    its (Ray) port block, reserved for it cluster-wide by placement."""
    assert placement.ray_block is not None
    return cluster.spec.ports.ray.start + placement.ray_block * cluster.spec.ports.ray_block_size


def engine_launch(
    ctx: NodeContext,
    cluster: Cluster,
    dep: ModelDeployment,
    placement: ReplicaPlacement,
    spec_hash: str,
    gpus: tuple[int, ...],
    role: Role = "engine",
) -> LaunchSpec:
    """The vLLM server: a whole single-node replica, the driver on a Ray multi-node
    leader, or one rank of an mp multi-node replica (the leader's serves HTTP, the
    followers' run `--headless`). `role` "surge": the same server as a rollout's surge
    engine (its placement carries the surge port)."""
    spec = dep.spec
    node = _node(cluster, ctx.name)
    model_ref = spec.model.path or spec.model.hub_id or ""
    par = spec.parallelism
    mp_multi = mp_multi_node(dep, placement)
    headless = mp_multi and ctx.name != placement.leader
    argv: list[str]
    if mp_multi:
        # vLLM's CLI: only `serve` has --headless (the follower side of --nnodes)
        leader = _node(cluster, placement.leader)
        argv = [ctx.python, *ctx.cli_argv, "serve", model_ref]
        argv += [
            "--nnodes",
            str(len(placement.nodes)),
            "--node-rank",
            str(placement.nodes.index(ctx.name)),
            "--master-addr",
            leader.address,
            "--master-port",
            str(mp_master_port(cluster, placement)),
        ]
        if headless:
            argv += ["--headless"]
        else:
            argv += [
                "--served-model-name",
                spec.model.served_name,
                "--host",
                node.address,
                "--port",
                str(placement.port),
            ]
    else:
        argv = [
            ctx.python,
            "-m",
            ctx.api_server_module,
            "--model",
            model_ref,
            "--served-model-name",
            spec.model.served_name,
            "--host",
            node.address,
            "--port",
            str(placement.port),
        ]
    if par.tensor > 1:
        argv += ["--tensor-parallel-size", str(par.tensor)]
    if par.pipeline > 1:
        argv += ["--pipeline-parallel-size", str(par.pipeline)]
    if par.data > 1:
        argv += ["--data-parallel-size", str(par.data)]
    if mp_multi:
        argv += ["--distributed-executor-backend", "mp"]
    elif placement.multi_node:
        argv += ["--distributed-executor-backend", "ray"]
    elif par.world_size > 1:
        argv += ["--distributed-executor-backend", spec.executor]
    if placement.gpus_per_node > 0:
        util = (
            spec.engine.gpu_memory_utilization
            or cluster.spec.engine_defaults.gpu_memory_utilization
        )
        argv += ["--gpu-memory-utilization", f"{util:g}"]
    if spec.engine.max_model_len is not None:
        argv += ["--max-model-len", str(spec.engine.max_model_len)]
    if spec.engine.dtype != "auto":
        argv += ["--dtype", spec.engine.dtype]
    if spec.engine.kv_cache_dtype != "auto":
        argv += ["--kv-cache-dtype", spec.engine.kv_cache_dtype]
    if spec.rollout.drain_timeout_seconds is not None and not headless:
        # vLLM's drain: after SIGTERM, requests in flight get this long (0 aborts them)
        argv += ["--shutdown-timeout", str(spec.rollout.drain_timeout_seconds)]
    argv += list(spec.engine.extra_args)

    member = MemberKey(placement.key, role)
    env = _base_env(ctx, cluster, dep)
    env.update(_cluster_network_env(cluster, node))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpus)
    if placement.multi_node and placement.ray_block is not None and not mp_multi:
        env["RAY_ADDRESS"] = replica_gcs_address(cluster, placement)
    _set_derived(env, member, spec_hash)
    return LaunchSpec(
        member=member,
        spec_hash=spec_hash,
        argv=tuple(argv),
        env=env,
        # a headless follower serves no HTTP: port 0, ready while it runs
        port=0 if headless else placement.port,
        gpus=gpus,
        startup_timeout_s=startup_timeout(cluster, dep),
        served_name="" if headless else spec.model.served_name,
        host=None if headless else node.address,
        probe_timeout_s=spec.probes.timeout_seconds,
        probe_period_s=spec.probes.period_seconds,
        drain_s=drain_seconds(dep),
        leader=placement.leader if placement.multi_node else "",
    )


def ray_num_cpus(gpus: int) -> int:
    """The CPUs a replica's Ray node declares: one per GPU, plus one.

    Ray keeps an idle worker process per declared CPU, each on a port of the replica's
    worker-port block. Left to itself it declares every core of the host: on the 32-core
    GPU machine the 30 worker ports of a small block ran out ("No available ports") and
    vLLM's driver hung registering. vLLM's Ray workers and our test engine's actors ask
    for num_cpus=0, so declaring per GPU costs nothing and keeps the pool small on any host.
    """
    return gpus + 1


def ray_launch(
    ctx: NodeContext,
    cluster: Cluster,
    dep: ModelDeployment,
    placement: ReplicaPlacement,
    spec_hash: str,
    gpus: tuple[int, ...],
) -> LaunchSpec:
    """The Ray node of a multi-node replica: the head on the leader, a worker elsewhere."""
    assert placement.ray_block is not None
    node = _node(cluster, ctx.name)
    ports = ray_ports(cluster, placement.ray_block)
    is_head = ctx.name == placement.leader
    member = MemberKey(placement.key, "ray-head" if is_head else "ray-worker")
    # Labels carry the replica's identity and spec hash into Ray, so the leader can check
    # that every member joined the head of the same revision.
    labels = {
        ray_commands.REPLICA_LABEL: member.replica.deployment + "-" + str(member.replica.index),
        ray_commands.SPEC_HASH_LABEL: spec_hash,
    }
    if is_head:
        argv = ray_commands.ray_head_argv(
            ctx.ray,
            node.address,
            ports,
            len(gpus),
            ray_temp_dir(ctx.state_dir, member, spec_hash),
            num_cpus=ray_num_cpus(len(gpus)),
            labels=labels,
        )
    else:
        # Its own temp dir under this node's state dir: without one a worker uses the
        # head's path, which names the leader's state dir (absent here on real hosts, and
        # the very same directory where test hosts share one file system).
        argv = ray_commands.ray_worker_argv(
            ctx.ray,
            replica_gcs_address(cluster, placement),
            node.address,
            ports,
            len(gpus),
            temp_dir=ray_temp_dir(ctx.state_dir, member, spec_hash),
            num_cpus=ray_num_cpus(len(gpus)),
            labels=labels,
        )
    net = cluster.spec.network
    env = _base_env(ctx, cluster, dep)
    env.update(
        ray_commands.ray_node_env(
            {},
            node.address,
            gpus,
            nccl_ifname=net.nccl_socket_ifname,
            gloo_ifname=net.gloo_socket_ifname,
            nccl_ib_hca=net.nccl_ib_hca,
        )
    )
    _set_derived(env, member, spec_hash)
    # `ray start --head` refuses to start when the last cluster address recorded in its temp
    # dir (the same dir after a restart at the same spec hash) still shows up in the
    # command line of any process on the host ("Ray is trying to start at ..., but is
    # already running"): the followers' old raylets and workers still name it while they
    # give up, which on hosts that share one process table (test hosts, the GPU check)
    # cost a restart 12 s or failed it. A port really still held fails the bind instead.
    stale = (f"{ray_temp_dir(ctx.state_dir, member, spec_hash)}/ray_current_cluster",)
    return LaunchSpec(
        member=member,
        spec_hash=spec_hash,
        argv=tuple(argv),
        env=env,
        stale_files=stale if is_head else (),
        port=ports.gcs if is_head else ports.node_manager,
        gpus=gpus,
        startup_timeout_s=min(600.0, startup_timeout(cluster, dep)),
        host=node.address,
        drain_s=drain_seconds(dep),
        leader=placement.leader,
    )
