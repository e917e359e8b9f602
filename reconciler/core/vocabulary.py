"""The core's vocabulary: identities, observations, the inventory and plan actions.

Plain frozen dataclasses: `plan()` consumes and produces these and nothing with I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from schemas.v1alpha1 import Cluster, ModelDeployment

# surge: a second engine of a single-node replica at the new spec, started beside the old
# one on free GPUs during a rollout with rollout.maxSurge (see core/surge.py)
Role = Literal["engine", "ray-head", "ray-worker", "surge"]
Health = Literal["ready", "starting", "unhealthy"]


class Desired(Protocol):
    """A validated revision as the core reads it (`reconciler.desired.state.DesiredState`)."""

    @property
    def revision(self) -> str: ...

    @property
    def cluster(self) -> Cluster: ...

    @property
    def deployments(self) -> Mapping[str, ModelDeployment]: ...

    @property
    def placement_lock(self) -> Mapping[ReplicaKey, LockedPlacement]:
        """placement.lock.yaml of the revision: where replicas stay while valid."""
        ...


@dataclass(frozen=True)
class LockedPlacement:
    """One replica's entry in the placement lock: its nodes (leader first), Ray block."""

    nodes: tuple[str, ...]
    ray_block: int | None = None


@dataclass(frozen=True, order=True)
class ReplicaKey:
    deployment: str
    index: int

    def __str__(self) -> str:
        return f"{self.deployment}/{self.index}"

    @classmethod
    def parse(cls, text: str) -> ReplicaKey:
        name, _, index = text.rpartition("/")
        return cls(name, int(index))


@dataclass(frozen=True, order=True)
class MemberKey:
    """One process this node runs for a replica: its engine or its Ray node."""

    replica: ReplicaKey
    role: Role

    def __str__(self) -> str:
        return f"{self.replica}/{self.role}"

    @property
    def slug(self) -> str:
        """File-name safe identity, used for state and log files."""
        return f"{self.replica.deployment}.{self.replica.index}.{self.role}"

    @classmethod
    def from_slug(cls, slug: str) -> MemberKey:
        name, index, role = slug.rsplit(".", 2)
        if role not in ("engine", "ray-head", "ray-worker", "surge"):
            raise ValueError(f"unknown role in {slug!r}")
        return cls(ReplicaKey(name, int(index)), role)  # type: ignore[arg-type]


# --- placement (global, identical on every node) ---------------------------------------


@dataclass(frozen=True)
class ReplicaPlacement:
    key: ReplicaKey
    nodes: tuple[str, ...]  # leader first
    gpus_per_node: int
    port: int
    ray_block: int | None = None  # index of the Ray port block (multi-node only)

    @property
    def leader(self) -> str:
        return self.nodes[0]

    @property
    def multi_node(self) -> bool:
        return len(self.nodes) > 1


@dataclass(frozen=True)
class Placement:
    replicas: Mapping[ReplicaKey, ReplicaPlacement]
    unschedulable: Mapping[ReplicaKey, str]

    def on_node(self, node: str) -> list[ReplicaPlacement]:
        return [p for p in self.replicas.values() if node in p.nodes]


# --- observation (read-only snapshot of this node) ----------------------------------------


@dataclass(frozen=True)
class GpuObservation:
    index: int
    uuid: str
    name: str
    memory_total_mib: int
    memory_used_mib: int = 0
    utilization_pct: int | None = None
    temperature_c: int | None = None
    process_pids: tuple[int, ...] = ()  # every process holding the GPU
    healthy: bool = True
    health_detail: str = ""


@dataclass(frozen=True)
class GpuInventory:
    gpus: tuple[GpuObservation, ...] = ()
    available: bool = True  # NVML reachable (or simulation configured)
    simulated: bool = False
    error: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    # GPUs of this host that the node config gives to someone else (managedGpus): never
    # assigned, never foreign; listed only so that status can say so
    unmanaged: tuple[GpuObservation, ...] = ()


@dataclass(frozen=True)
class ProcessObservation:
    """A process this node owns (found through its state file), alive or exited."""

    member: MemberKey
    spec_hash: str
    pid: int
    running: bool
    started_at: float  # seconds on the daemon's clock
    port: int
    gpus: tuple[int, ...]
    health: Health = "starting"
    exit_code: int | None = None
    unhealthy_since: float | None = None
    detail: str = ""  # e.g. "port 8000 taken by pid 123 (nginx)"
    # what it was launched with (LaunchSpec.drain_s, .leader), read back from its state file
    # or its env markers: a deleted deployment's members still know how to drain
    drain_s: float | None = None
    leader: str = ""


@dataclass(frozen=True)
class PeerReplica:
    """What another node reports about a replica it leads (for rollouts and fate sharing)."""

    spec_hash: str  # of what the leader runs (its Ray head, or its engine)
    ready: bool  # the replica's engine answers
    head_up: bool = False  # multi-node: the leader's Ray head is running at spec_hash
    # the leader's running engine, whatever runs beside it: an mp multi-node replica (vLLM
    # --nnodes, no Ray) is up and ready by its leader's engine alone
    engine_hash: str = ""  # "": no engine running
    engine_ready: bool = False
    # the leader reports the replica Draining: its engine is on its way out (core/drain.py)
    draining: bool = False


@dataclass(frozen=True)
class RayView:
    """The leader's view of its replica's Ray cluster, read from the head.

    Only alive nodes whose ``reconciler-spec-hash`` label equals the replica's hash count as
    members (``alive_nodes``, ``gpus``); Ray itself does not refuse a node of another hash.
    """

    alive_nodes: tuple[str, ...]  # IPs of alive members at the replica's spec hash
    gpus: float  # their GPUs
    mismatched: tuple[str, ...] = ()  # alive nodes at another hash, e.g. "10.0.0.2 at abc123"
    lost: tuple[str, ...] = ()  # IPs of members at this hash that the head marked DEAD
    notes: tuple[str, ...] = ()  # e.g. Ray / Python version mismatches


@dataclass(frozen=True)
class ObservedState:
    node: str
    gpus: GpuInventory
    processes: Mapping[MemberKey, ProcessObservation]
    foreign_pids: frozenset[int] = frozenset()  # GPU users we don't own
    peers: Mapping[ReplicaKey, PeerReplica] = field(default_factory=dict)
    ray: Mapping[ReplicaKey, RayView] = field(default_factory=dict)
    busy_ports: Mapping[int, str] = field(default_factory=dict)  # port -> who holds it
    # the peers that answered this tick (a leader that answered without a replica runs
    # nothing of it; one that did not answer cannot be known)
    peers_answered: frozenset[str] = frozenset()


# --- inventory (persisted by apply; read by plan) -----------------------------------------


@dataclass(frozen=True)
class OwnedMember:
    member: MemberKey
    spec_hash: str
    gpus: tuple[int, ...]
    port: int


@dataclass(frozen=True)
class RestartRecord:
    failures: int = 0  # consecutive failures since the last healthy period
    last_failure_at: float | None = None
    ready_since: float | None = None
    total_restarts: int = 0
    last_reason: str = ""


@dataclass(frozen=True)
class Inventory:
    members: Mapping[MemberKey, OwnedMember] = field(default_factory=dict)
    restarts: Mapping[ReplicaKey, RestartRecord] = field(default_factory=dict)
    applied_revision: str | None = None


# --- plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one member process; built purely from the desired state."""

    member: MemberKey
    spec_hash: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    port: int  # the port it must bind (engine HTTP port, or Ray GCS port)
    gpus: tuple[int, ...]
    startup_timeout_s: float
    served_name: str = ""  # the name the engine's /v1/models must list ("" for Ray nodes)
    host: str | None = None  # the address it binds (--host, --node-ip-address); None: all
    probe_timeout_s: float = 2.0
    probe_period_s: float = 5.0  # between health probes once ready (1 s while starting)
    # Files a previous run of the same member left that the new one must not read; the
    # port removes them before it starts the process.
    stale_files: tuple[str, ...] = ()
    # rollout.drainTimeoutSeconds of its deployment (None: stop at once), on every member:
    # a serving engine drains this long after SIGTERM; a Ray node or headless rank waits
    # for its leader's engine at most that long (plus the announce and a margin)
    drain_s: float | None = None
    leader: str = ""  # the replica's leader node when it spans nodes, else ""


@dataclass(frozen=True)
class Start:
    launch: LaunchSpec
    reason: str

    @property
    def member(self) -> MemberKey:
        return self.launch.member


@dataclass(frozen=True)
class Stop:
    member: MemberKey
    reason: str
    failure: bool = False  # counts towards the replica's restart backoff
    # the engine drains for this long after SIGTERM (vLLM --shutdown-timeout): the stop
    # waits that much longer before SIGKILL
    drain_s: float = 0.0


@dataclass(frozen=True)
class Drain:
    """Announce a stop: the replica shows Draining so that gateways take it out of their
    tables; the Stop follows once DRAIN_ANNOUNCE_S have passed."""

    member: MemberKey
    reason: str


@dataclass(frozen=True)
class Reap:
    """Forget a process that already exited; record the failure for backoff."""

    member: MemberKey
    reason: str
    failure: bool = True


@dataclass(frozen=True)
class MarkReady:
    """Passive transition: record when a replica became ready (backoff reset clock)."""

    replica: ReplicaKey
    reason: str


Action = Start | Stop | Reap | MarkReady | Drain

ReplicaState = Literal[
    "Pending", "Starting", "Ready", "Draining", "Stopped", "Failed", "CrashLoopBackOff"
]


@dataclass(frozen=True)
class ReplicaStatus:
    replica: ReplicaKey
    state: ReplicaState
    reason: str
    role: str  # "single", "leader", "follower"
    nodes: tuple[str, ...]
    spec_hash: str
    gpus: tuple[int, ...] = ()
    port: int | None = None


@dataclass(frozen=True, order=True)
class RefusedTransition:
    """A state change the lifecycle table refused: the replica stayed `old`, not `new`."""

    replica: ReplicaKey
    old: ReplicaState
    new: ReplicaState


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    replicas: Mapping[ReplicaKey, ReplicaStatus]
    placement: Placement
    notes: tuple[str, ...] = ()  # node-level findings, e.g. GPU drift
    refused: tuple[RefusedTransition, ...] = ()  # state changes the lifecycle kept back
    # member -> when its drain was announced, for members still announcing (the next
    # tick's plan() gets it back: the only memory a drain needs)
    draining: Mapping[MemberKey, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(isinstance(a, Start | Stop | Reap | Drain) for a in self.actions)
