"""A stateful fake of the Ray port: Ray clusters by GCS address, as nodes join and die.

`FakeRayNodes` is what the heads' GCSs would answer (`RayPort.view`, and `cluster` like
`SubprocessRayPort.cluster`): a head started at an address opens a cluster there; a
worker joins the cluster at the address it names, labelled with the spec hash it was
started for; a dead worker stays in the table as DEAD (Ray keeps dead nodes, and a node
that comes back appears once DEAD and once ALIVE); a dead head takes its GCS with it, so
the address answers nothing (None). tests/contract/test_ray_port_contract.py runs the
same scenarios against real `ray start` processes and this fake.

`RayProcesses` plays the `ray` binary for the fake process port: a `ray start` member
started through it joins (or opens) the fake cluster named by its argv, and when the
member's process is gone (crash, stop) its Ray node is dead. So multi-node plans run in
the integration tests with fakes only: one `FakeProcessPort` per node, one shared
`FakeRayNodes` (tests/integration/test_multinode_fakes.py).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler.core.errors import TemporaryError
from reconciler.core.ray_argv import SPEC_HASH_LABEL
from reconciler.core.vocabulary import LaunchSpec, MemberKey, ProcessObservation, RayView
from reconciler.ports.ray_nodes import RayClusterView, RayNode, replica_view
from reconciler.testing.processes import FakeProcessPort

__all__ = ["FakeRayNodes", "RayJoinError", "RayProcesses", "RayStartArgs", "parse_ray_start"]

RAY_VERSION = "2.60.0"
PYTHON_VERSION = "3.11.7"


class RayJoinError(TemporaryError, RuntimeError):
    """`ray start --address` found no head there (the real one retries, then exits 1)."""


@dataclass
class _Cluster:
    address: str
    nodes: list[RayNode] = field(default_factory=list)
    ray_version: str = RAY_VERSION
    python_version: str = PYTHON_VERSION


class FakeRayNodes:
    """The Ray clusters of a test world, keyed by GCS address ("ip:port")."""

    def __init__(self, *, client_ray_version: str = RAY_VERSION,
                 client_python_version: str = PYTHON_VERSION) -> None:
        self._clusters: dict[str, _Cluster] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.client_ray_version = client_ray_version
        self.client_python_version = client_python_version
        self.queries = 0

    # --- what `ray start` does -------------------------------------------------------------

    def start_head(self, address: str, ip: str, spec_hash: str | None = None,
                   gpus: float = 0.0, *, ray_version: str = RAY_VERSION,
                   python_version: str = PYTHON_VERSION) -> str:
        """`ray start --head --port <gcs>`: opens a cluster at `address`. Returns the node id."""
        with self._lock:
            live = self._clusters.get(address)
            if live is not None and self._head(live) is not None:
                raise RayJoinError(f"a Ray head already listens at {address}")
            cluster = _Cluster(address, ray_version=ray_version, python_version=python_version)
            self._clusters[address] = cluster
            return self._add(cluster, ip, spec_hash, gpus, head=True)

    def join(self, address: str, ip: str, spec_hash: str | None = None,
             gpus: float = 0.0) -> str:
        """`ray start --address <address>`: a worker joins the head there."""
        with self._lock:
            cluster = self._clusters.get(address)
            if cluster is None or self._head(cluster) is None:
                raise RayJoinError(f"no Ray head at {address}")
            return self._add(cluster, ip, spec_hash, gpus, head=False)

    def kill(self, node_id: str) -> None:
        """The node's raylet died. A head's death ends its cluster (the GCS is gone)."""
        with self._lock:
            for address, cluster in list(self._clusters.items()):
                for i, n in enumerate(cluster.nodes):
                    if n.node_id != node_id or not n.alive:
                        continue
                    cluster.nodes[i] = replace(n, alive=False,
                                               death_reason="UNEXPECTED_TERMINATION")
                    if n.is_head:
                        del self._clusters[address]
                    return

    # --- what the port answers -------------------------------------------------------------

    def cluster(self, gcs_address: str) -> RayClusterView | None:
        with self._lock:
            self.queries += 1
            c = self._clusters.get(gcs_address)
            if c is None or self._head(c) is None:
                return None
            nodes = sorted(c.nodes, key=lambda n: (not n.is_head, n.ip, -n.start_time_ms))
            return RayClusterView(
                nodes=tuple(nodes),
                cluster_ray_version=c.ray_version,
                cluster_python_version=c.python_version,
                client_ray_version=self.client_ray_version,
                client_python_version=self.client_python_version,
            )

    def view(self, gcs_address: str, spec_hash: str | None = None) -> RayView | None:
        full = self.cluster(gcs_address)
        return None if full is None else replica_view(full, spec_hash)

    # --- internals -------------------------------------------------------------------------

    @staticmethod
    def _head(cluster: _Cluster) -> RayNode | None:
        return next((n for n in cluster.nodes if n.is_head and n.alive), None)

    def _add(self, cluster: _Cluster, ip: str, spec_hash: str | None, gpus: float,
             *, head: bool) -> str:
        seq = next(self._ids)
        node_id = f"{seq:056x}"
        cluster.nodes.append(
            RayNode(
                node_id=node_id,
                ip=ip,
                alive=True,
                is_head=head,
                resources={"GPU": float(gpus)} if gpus else {},
                labels={SPEC_HASH_LABEL: spec_hash} if spec_hash else {},
                start_time_ms=seq,  # the order nodes started in is all a test can rely on
            )
        )
        return node_id


@dataclass(frozen=True)
class RayStartArgs:
    head: bool
    address: str  # the GCS: the head's own "ip:port", or the one a worker joins
    ip: str
    gpus: float
    labels: Mapping[str, str]


def parse_ray_start(argv: Sequence[str]) -> RayStartArgs | None:
    """What a `ray start` argument list asks for; None for any other command."""
    if len(argv) < 2 or Path(argv[0]).name != "ray" or argv[1] != "start":
        return None
    opts: dict[str, str] = {}
    flags = set()
    i = 2
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, _, value = arg.partition("=")
            opts[key] = value
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            opts[arg] = argv[i + 1]
            i += 1
        else:
            flags.add(arg)
        i += 1
    ip = opts.get("--node-ip-address", "127.0.0.1")
    labels = dict(
        pair.split("=", 1) for pair in opts.get("--labels", "").split(",") if "=" in pair
    )
    head = "--head" in flags
    address = f"{ip}:{opts.get('--port', '6379')}" if head else opts["--address"]
    return RayStartArgs(head, address, ip, float(opts.get("--num-gpus", "0")), labels)


class RayProcesses:
    """A fake process port whose `ray start` members join `FakeRayNodes` like real ones.

    Everything else passes through to the wrapped `FakeProcessPort`. A Ray node dies when
    its member's process is no longer running (observed at the next `list`, as a raylet
    dies with its `ray start --block`), and the member's process exits when the test
    kills its Ray node through `kill_node`. A worker that finds no head exits at once,
    as `ray start --address` does after its retries.
    """

    def __init__(self, inner: FakeProcessPort, ray: FakeRayNodes) -> None:
        self.inner = inner
        self.ray = ray
        self.nodes: dict[MemberKey, str] = {}  # member -> Ray node id

    @property
    def on_exit(self) -> object:
        return self.inner.on_exit

    @on_exit.setter
    def on_exit(self, value: object) -> None:
        self.inner.on_exit = value  # type: ignore[assignment]

    def list(self) -> list[ProcessObservation]:
        seen = self.inner.list()
        for p in seen:
            node = self.nodes.get(p.member)
            if node is not None and not p.running:
                self.ray.kill(node)
                del self.nodes[p.member]
        return seen

    def start(self, launch: LaunchSpec) -> ProcessObservation:
        observed = self.inner.start(launch)
        args = parse_ray_start(launch.argv)
        if args is None:
            return observed
        label = args.labels.get(SPEC_HASH_LABEL, launch.spec_hash)
        try:
            if args.head:
                node = self.ray.start_head(args.address, args.ip, label, args.gpus)
            else:
                node = self.ray.join(args.address, args.ip, label, args.gpus)
        except RayJoinError as exc:
            self.inner.crash(launch.member, exit_code=1, detail=str(exc))
            return next(p for p in self.inner.list() if p.member == launch.member)
        self.nodes[launch.member] = node
        self.inner.set_health(launch.member, "ready")  # the raylet is up
        return observed

    def stop(self, member: MemberKey, grace_s: float) -> bool:
        ok = self.inner.stop(member, grace_s)
        node = self.nodes.pop(member, None) if ok else None
        if node is not None:
            self.ray.kill(node)
        return ok

    def forget(self, member: MemberKey) -> None:
        self.inner.forget(member)

    def log_path(self, member: MemberKey) -> Path:
        return self.inner.log_path(member)

    def owned_pids(self) -> frozenset[int]:
        return self.inner.owned_pids()

    # --- test helpers ----------------------------------------------------------------------

    def kill_node(self, member: MemberKey) -> None:
        """The member's raylet dies: its `ray start --block` exits (code 1)."""
        node = self.nodes.pop(member)
        self.ray.kill(node)
        self.inner.crash(member, exit_code=1, detail="raylet died")
