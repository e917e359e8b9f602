"""Desired-state documents, version v1alpha1.

Every document is an envelope `{apiVersion, kind, metadata, spec}`. Field names are
camelCase in YAML (the convention operators know from Kubernetes); unknown fields are
errors so that a typo never silently turns into a default.

This module imports nothing from `reconciler`: the schemas are the contract, the
reconciler is one consumer of it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_VERSION = "reconciler.dev/v1alpha1"

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)
# Environment names a deployment may not set: the daemon derives them per node and
# replica, and letting git override them would break GPU isolation or Ray attachment.
RESERVED_ENV = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "RAY_ADDRESS",
        "VLLM_HOST_IP",
        "VLLM_PORT",
        "NCCL_SOCKET_IFNAME",
        "GLOO_SOCKET_IFNAME",
        "PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "HOME",
        "CUDA_DEVICE_ORDER",
        "NCCL_IB_HCA",
        "RAY_USAGE_STATS_ENABLED",
    }
)
# What to set instead of a reserved name, so the refusal says how to get the effect.
RESERVED_ENV_HINTS = {
    "CUDA_VISIBLE_DEVICES": "GPUs are assigned per replica; size it with spec.parallelism",
    "RAY_ADDRESS": "each multi-node replica gets its own Ray cluster from placement",
    "VLLM_HOST_IP": "set the node's address in the Cluster document",
    "VLLM_PORT": "set spec.port",
    "NCCL_SOCKET_IFNAME": "set spec.network.ncclSocketIfname in the Cluster document",
    "GLOO_SOCKET_IFNAME": "set spec.network.glooSocketIfname in the Cluster document",
    "NCCL_IB_HCA": "set spec.network.ncclIbHca in the Cluster document",
    "PATH": "set the engine executables in the node config",
    "PYTHONPATH": "install into the engine's virtual environment instead",
}
# The daemon's own markers (RECONCILER_MEMBER, RECONCILER_SPEC_HASH, RECONCILER_STATE_DIR,
# RECONCILER_PORT) say which process is whose; git must not be able to forge them.
RESERVED_ENV_PREFIXES = ("RECONCILER_",)
# Engine and Ray ports come from git: keep them out of the privileged range, where a
# daemon running as root could take over a system service's port.
MIN_ENGINE_PORT = 1024
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Flags the daemon itself sets from typed fields; passing them again through extraArgs
# would make the typed field a lie.
MANAGED_FLAGS = frozenset(
    {
        "--model",
        "--served-model-name",
        "--host",
        "--port",
        "--tensor-parallel-size",
        "-tp",
        "--pipeline-parallel-size",
        "-pp",
        "--data-parallel-size",
        "-dp",
        "--distributed-executor-backend",
        "--nnodes",
        "--node-rank",
        "--master-addr",
        "--master-port",
        "--headless",
        "--gpu-memory-utilization",
        "--max-model-len",
        "--dtype",
        "--kv-cache-dtype",
    }
)


class Strict(BaseModel):
    """Base: camelCase aliases, unknown fields rejected, immutable."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        str_strip_whitespace=False,
    )


Name = Annotated[str, Field(pattern=NAME_PATTERN, description="DNS-label style name")]
Port = Annotated[int, Field(ge=1, le=65535)]


def _env_name(key: str) -> str:
    if not _ENV_NAME_RE.match(key):
        raise ValueError(f"{key!r} is not a valid environment variable name")
    if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
        hint = RESERVED_ENV_HINTS.get(key, "remove it")
        raise ValueError(f"{key} is set by the daemon and may not be overridden; {hint}")
    return key


def _env_value(value: str) -> str:
    if "\0" in value:
        raise ValueError("the value contains NUL")
    return value


def _extra_arg(arg: str) -> str:
    if any(ch in arg for ch in "\n\r\0"):
        raise ValueError(f"extra argument {arg!r} contains a line break or NUL")
    flag = arg.split("=", 1)[0]
    if flag in MANAGED_FLAGS:
        raise ValueError(f"{flag} is set from a typed field; use that field instead")
    return arg


# Validated per key / per item so that an error points at the offending entry.
EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, AfterValidator(_env_value)]
EnvMap = dict[EnvName, EnvValue]
ExtraArg = Annotated[str, AfterValidator(_extra_arg)]


class Metadata(Strict):
    name: Name
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PortRange(Strict):
    """An inclusive range of TCP ports."""

    start: Port
    end: Port

    @model_validator(mode="after")
    def _ordered(self) -> PortRange:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is below start ({self.start})")
        return self

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.start <= port <= self.end

    @property
    def size(self) -> int:
        return self.end - self.start + 1


class GpuDeclaration(Strict):
    """The GPUs a node is declared to have; the daemon checks this against NVML."""

    count: int = Field(ge=0, le=64)
    model: str = Field(default="", description="e.g. 'NVIDIA A800-SXM4-80GB'; empty: any")
    memory_gib: float = Field(gt=0, le=4096, description="memory per GPU in GiB")


class Node(Strict):
    name: Name
    address: str = Field(description="IP address on the cluster network (Ray, NCCL)")
    labels: dict[str, str] = Field(default_factory=dict)
    gpus: GpuDeclaration
    status_port: Port = Field(default=9400, description="the daemon's HTTP listener")
    cordon: bool = Field(
        default=False, description="no new replicas here; replicas locked here stay"
    )
    drain: bool = Field(
        default=False, description="no replicas at all here: what runs here is re-placed"
    )

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        import ipaddress

        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value


class NetworkSettings(Strict):
    """Interfaces the collective libraries must use (multi-NIC hosts pick wrong ones)."""

    nccl_socket_ifname: str | None = None
    gloo_socket_ifname: str | None = None
    nccl_ib_hca: str | None = None


class PortRanges(Strict):
    engine: PortRange = Field(default_factory=lambda: PortRange(start=8000, end=8099))
    ray: PortRange = Field(
        default_factory=lambda: PortRange(start=20000, end=29999),
        description="split into one block per multi-node replica (rayBlockSize ports each)",
    )
    ray_block_size: int = Field(default=100, ge=20, le=10000)

    @field_validator("engine", "ray")
    @classmethod
    def _unprivileged(cls, value: PortRange) -> PortRange:
        if value.start < MIN_ENGINE_PORT:
            raise ValueError(
                f"port range starts at {value.start}, inside the privileged range "
                f"(below {MIN_ENGINE_PORT})"
            )
        return value


class EngineDefaults(Strict):
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    startup_timeout_seconds: int = Field(default=1800, ge=10)
    env: EnvMap = Field(default_factory=dict)


class ClusterSpec(Strict):
    nodes: list[Node] = Field(min_length=1)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    ports: PortRanges = Field(default_factory=PortRanges)
    engine_defaults: EngineDefaults = Field(default_factory=EngineDefaults)


class Cluster(Strict):
    api_version: Literal["reconciler.dev/v1alpha1"]
    kind: Literal["Cluster"]
    metadata: Metadata
    spec: ClusterSpec


class ModelArchitecture(Strict):
    """Declared model shape, used by the fit check when config.json is not readable here."""

    parameters: float = Field(gt=0, description="parameter count, e.g. 671e9")
    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    num_attention_heads: int | None = Field(
        default=None, gt=0, description="query heads; tensor parallel must divide them"
    )
    # MLA models (DeepSeek V3/R1) cache one compressed latent per token and layer instead
    # of K and V per head: kv bytes/token/layer = kvLoraRank + qkRopeHeadDim.
    kv_lora_rank: int | None = Field(default=None, gt=0)
    qk_rope_head_dim: int | None = Field(default=None, gt=0)


Dtype = Literal["auto", "bfloat16", "float16", "float32", "fp8", "int8", "int4"]


class ModelSource(Strict):
    path: str | None = Field(default=None, description="absolute path, same on every node")
    hub_id: str | None = Field(default=None, description="e.g. deepseek-ai/DeepSeek-R1")
    served_name: str = Field(min_length=1, max_length=200)
    weights_dtype: Dtype = Field(
        default="auto", description="dtype of the stored weights, for the fit check"
    )
    architecture: ModelArchitecture | None = None

    @field_validator("path")
    @classmethod
    def _safe_path(cls, path: str | None) -> str | None:
        if path is not None:
            if not path.startswith("/"):
                raise ValueError(f"path {path!r} must be absolute")
            if ".." in path.split("/"):
                raise ValueError(f"path {path!r} must not contain '..'")
        return path

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.path is None) == (self.hub_id is None):
            raise ValueError("set exactly one of 'path' and 'hubId'")
        return self


class Parallelism(Strict):
    tensor: int = Field(default=1, ge=1, le=64)
    pipeline: int = Field(default=1, ge=1, le=64)
    data: int = Field(default=1, ge=1, le=64)

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline * self.data


class Placement(Strict):
    nodes: list[Name] | None = Field(default=None, description="explicit node names")
    node_selector: dict[str, str] | None = Field(
        default=None, description="labels a node must all carry"
    )

    @model_validator(mode="after")
    def _one_way(self) -> Placement:
        if self.nodes is not None and self.node_selector is not None:
            raise ValueError("set 'nodes' or 'nodeSelector', not both")
        return self


class EngineSettings(Strict):
    """vLLM settings as typed fields; anything else goes to extraArgs."""

    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: int | None = Field(default=None, gt=0)
    dtype: Dtype = "auto"
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "bfloat16", "float16"] = "auto"
    extra_args: list[ExtraArg] = Field(default_factory=list, max_length=200)
    env: EnvMap = Field(default_factory=dict)


class Probes(Strict):
    startup_timeout_seconds: int | None = Field(
        default=None, ge=10, description="loading a 671B model can take an hour"
    )
    period_seconds: float = Field(default=5, gt=0, le=300)
    timeout_seconds: float = Field(default=2, gt=0, le=60)


class Rollout(Strict):
    strategy: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    # Each replica owns its port (spec.port + index) and its GPUs. With maxSurge 1 a
    # single-node replica's new engine first starts beside the old one, on free GPUs of the
    # same node and the port after the replicas' (spec.port + replicas), and takes the
    # traffic (through the gateways) until the replica's own engine runs the new spec.
    max_surge: int = Field(
        default=0, ge=0, le=1,
        description=(
            "1: start the new engine beside the old one where the node has free GPUs (zero "
            "downtime behind the gateway); 0 or no room: replace in place"
        ),
    )
    max_unavailable: int = Field(default=1, ge=1, description="replicas replaced at once")
    # at most 60: the stop waits drain + the node's stop grace inside one tick, which must
    # stay under the daemon unit's WatchdogSec (120 s)
    drain_timeout_seconds: int | None = Field(
        default=None, ge=1, le=60,
        description=(
            "drain before a stop: the replica first leaves the gateways' tables (status "
            "Draining for a few seconds), then vLLM gets SIGTERM with --shutdown-timeout "
            "of this many seconds to finish requests in flight; unset: stop at once"
        ),
    )


class FitPolicy(Strict):
    """An operator's word against the fit estimate, with the reason shown in validate."""

    override: bool = Field(
        default=False, description="start even when the fit estimate says it does not fit"
    )
    reason: str = Field(default="", max_length=300)

    @model_validator(mode="after")
    def _reasoned(self) -> FitPolicy:
        if self.override and not self.reason.strip():
            raise ValueError("an override needs a reason (say what you measured)")
        return self


class ModelDeploymentSpec(Strict):
    model: ModelSource
    replicas: int = Field(default=1, ge=0, le=1024)
    parallelism: Parallelism = Field(default_factory=Parallelism)
    executor: Literal["ray", "mp"] = "ray"
    placement: Placement = Field(default_factory=Placement)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    port: Port = Field(description="the engine's HTTP port; must lie in the cluster's range")
    probes: Probes = Field(default_factory=Probes)
    rollout: Rollout = Field(default_factory=Rollout)
    suspend: bool = False
    fit: FitPolicy = Field(default_factory=FitPolicy)


class ModelDeployment(Strict):
    api_version: Literal["reconciler.dev/v1alpha1"]
    kind: Literal["ModelDeployment"]
    metadata: Metadata
    spec: ModelDeploymentSpec


class LockedReplica(Strict):
    nodes: list[Name] = Field(min_length=1, description="leader first")
    ray_block: int | None = Field(default=None, ge=0)


LOCK_FILE = "placement.lock.yaml"


class PlacementLock(Strict):
    """Where each replica runs, written by `reconciler lock` and committed beside the
    Cluster document: daemons keep a locked replica there while that stays valid."""

    api_version: Literal["reconciler.dev/v1alpha1"]
    kind: Literal["PlacementLock"]
    replicas: dict[str, LockedReplica] = Field(default_factory=dict)

    @field_validator("replicas")
    @classmethod
    def _keys(cls, value: dict[str, LockedReplica]) -> dict[str, LockedReplica]:
        for key in value:
            name, _, index = key.rpartition("/")
            if not _NAME_RE.match(name) or not index.isdigit():
                raise ValueError(f"{key!r} is not a replica key (<deployment>/<index>)")
        return value


KINDS: dict[str, type[Cluster] | type[ModelDeployment]] = {
    "Cluster": Cluster,
    "ModelDeployment": ModelDeployment,
}


def is_valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))
