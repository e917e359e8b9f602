"""The node status document: what `GET /status` of one daemon serves, version v1alpha1.

One model for both sides: the daemon builds it (reconciler.daemon.status) and the peers
parse it (reconciler.ports.peers). `python -m schemas.generate` writes its JSON Schema to
reconciler/daemon/status.schema.json.

Reading is tolerant of fields it does not know (`extra="ignore"`), writing emits exactly
the fields below. Daemons are upgraded one node at a time: a newer leader that adds a
field must not look unreachable to the older followers, which would then see no Ray head
and hold their replica back until every node runs the new version. Known fields keep
their types and value sets: a peer that sends a replica state this version cannot name is
refused as a whole (answered like an unreachable peer), not guessed at.

Fields added after the first status document (`members`, `ray`, `restarts`) have defaults
so that a peer from before them still parses; the generated schema nevertheless lists
every field as required, because this version always emits all of them.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_VERSION: Final = "reconciler.dev/v1alpha1"
TIME_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"

Timestamp = Annotated[str, Field(pattern=TIME_PATTERN, description="UTC, second precision")]
ConditionType = Literal["Ready", "Reconciling", "Stalled"]
ConditionStatus = Literal["True", "False", "Unknown"]
ReplicaState = Literal[
    "Pending", "Starting", "Ready", "Draining", "Stopped", "Failed", "CrashLoopBackOff"
]
ReplicaRole = Literal["single", "leader", "follower"]
MemberRole = Literal["engine", "ray-head", "ray-worker", "surge"]
Health = Literal["ready", "starting", "unhealthy"]
GpuState = Literal["assigned", "free", "foreign", "unhealthy", "unmanaged"]
ActionKind = Literal["Start", "Stop", "Reap", "MarkReady", "Drain"]
NonNegative = Annotated[int, Field(ge=0)]


class Doc(BaseModel):
    """Base: camelCase on the wire, unknown fields ignored on reading, immutable."""

    model_config = ConfigDict(
        extra="ignore",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        json_schema_serialization_defaults_required=True,
    )


class Commit(Doc):
    revision: str = Field(pattern=r"^[0-9a-f]{7,64}$|^[A-Za-z0-9._-]+$")
    subject: str | None
    author: str | None
    committed_at: str | None


class Condition(Doc):
    """Flux (kstatus) style; `lastTransitionTime` changes only when `status` changes."""

    type: ConditionType
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]*$")
    message: str
    last_transition_time: Timestamp


class Member(Doc):
    role: MemberRole
    spec_hash: str
    running: bool
    health: Health
    pid: int
    gpus: list[NonNegative]
    port: int


class RayView(Doc):
    members: list[str] = Field(description="IPs of alive nodes labelled with the head's spec hash")
    gpus: float
    mismatched: list[str] = Field(description="alive nodes at another spec hash (not counted)")
    lost: list[str] = Field(description="IPs of members the head marked dead")
    notes: list[str]


class Replica(Doc):
    deployment: str
    index: NonNegative
    state: ReplicaState
    reason: str
    role: ReplicaRole
    nodes: list[str]
    gpus: list[NonNegative]
    port: int | None
    spec_hash: str
    members: list[Member] | None = Field(
        default=None,
        description="the processes this node runs for the replica, as observed (not "
        "desired); absent (null) only from peers older than this field",
    )
    ray: RayView | None = Field(
        default=None,
        description="leader only: the replica's Ray cluster as read from its head's GCS",
    )
    restarts: NonNegative = Field(
        default=0,
        description="failures of this replica on this node that led to a restart (exit, "
        "startup timeout, unhealthy past grace, failed start); kept across daemon restarts",
    )


class Parallelism(Doc):
    tensor: int
    pipeline: int
    data: int


class Deployment(Doc):
    name: str
    served_name: str
    model: str
    replicas: NonNegative
    suspend: bool
    parallelism: Parallelism
    port: int
    local_replicas: NonNegative
    ready_replicas: NonNegative


class GpuDevice(Doc):
    index: NonNegative
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int
    utilization_pct: int | None
    temperature_c: int | None
    healthy: bool
    health_detail: str
    state: GpuState
    foreign_pids: list[int]


class GpuDeclared(Doc):
    count: NonNegative
    model: str | None
    memory_gib: float


class GpuObserved(Doc):
    count: NonNegative
    available: bool
    simulated: bool
    error: str
    driver_version: str
    cuda_version: str
    devices: list[GpuDevice]


class GpuCounts(Doc):
    assigned: NonNegative = 0
    free: NonNegative = 0
    foreign: NonNegative = 0
    missing: NonNegative = 0
    unhealthy: NonNegative = 0
    unmanaged: NonNegative = 0  # another daemon's or other work's (node config managedGpus)


class Gpus(Doc):
    declared: GpuDeclared | None
    observed: GpuObserved
    counts: GpuCounts
    simulated: bool
    foreign_pids: list[int]


class DaemonInfo(Doc):
    pid: int
    started_at: Timestamp
    uptime_seconds: float = Field(ge=0)
    config_reloaded_at: Timestamp | None


class SourceFailure(Doc):
    reason: str
    message: str
    revision: str | None
    retryable: bool
    problems: list[str]


class Source(Doc):
    url: str = Field(description="the configured URL with any credentials removed")
    branch: str
    path: str
    last_fetch_success_at: Timestamp | None
    failure: SourceFailure | None


class Revisions(Doc):
    fetched: Commit | None
    attempted: Commit | None
    applied: Commit | None
    last_good: Commit | None


class ClusterNode(Doc):
    name: str
    address: str
    status_port: int = Field(ge=1, le=65535)


class ClusterInfo(Doc):
    name: str
    nodes: list[ClusterNode]


class ActionResult(Doc):
    action: ActionKind
    reason: str
    ok: bool
    error: str


class LastTick(Doc):
    reconcile_id: str
    revision: str | None
    started_at: Timestamp
    duration_seconds: float = Field(ge=0)
    converged: bool
    actions: list[ActionResult]


class ErrorRecord(Doc):
    at: Timestamp
    source: str = Field(description="source, apply, tick or config")
    message: str


class NodeStatus(Doc):
    """GET /status of one reconciler daemon."""

    api_version: Literal["reconciler.dev/v1alpha1"] = API_VERSION
    kind: Literal["NodeStatus"] = "NodeStatus"
    node: str
    observed_at: Timestamp
    daemon: DaemonInfo
    source: Source
    revisions: Revisions
    conditions: list[Condition] = Field(min_length=3, max_length=3)
    deployments: list[Deployment]
    replicas: list[Replica]
    gpus: Gpus
    cluster: ClusterInfo | None
    notes: list[str]
    last_tick: LastTick | None
    last_errors: list[ErrorRecord]

    def condition(self, kind: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)
