"""Ask a Ray head which nodes are alive, with which IPs, GPUs and labels.

The daemon never imports ray. It runs a short program with the *engine environment's*
python that reads the node table straight from the head's GCS
(``ray._raylet.GcsClient.get_all_node_info``) and prints one JSON document. Measured on Ray
2.60 (docs/ray-notes.md): ~0.5 s per query, no dashboard needed, no job registered (unlike
``ray.init()`` + ``ray.nodes()``); ``ray status --address`` takes ~2 s and shows no IPs;
``ray list nodes`` and ``ray.util.state`` need the dashboard, which needs ``ray[default]``.

An unreachable GCS makes Ray's client wait ~40 s by default; the program lowers Ray's
connect timeout and the caller kills it after ``timeout_s`` in any case. A cheap TCP probe
(:func:`gcs_reachable`) can avoid spawning the program at all when the head is down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from reconciler.core.errors import TemporaryError
from reconciler.core.ray_argv import SPEC_HASH_LABEL
from reconciler.core.vocabulary import RayView

__all__ = [
    "QUERY_PROGRAM",
    "RayClusterView",
    "RayNode",
    "RayPort",
    "RayQueryError",
    "SubprocessRayPort",
    "gcs_reachable",
    "parse_ray_nodes_output",
    "query_ray_nodes",
    "ray_nodes_query_argv",
    "ray_nodes_query_env",
    "replica_view",
]

log = logging.getLogger(__name__)

# Runs under the engine env's python with -I (isolated: cwd and PYTHON* variables can't
# shadow modules; a cwd of site-packages/ray once broke `import ray` via ray/types.py).
QUERY_PROGRAM = r"""
import json, platform, sys
address, timeout_ms = sys.argv[1], int(sys.argv[2])
try:
    import ray
    from ray._raylet import InnerGcsClient
    client = InnerGcsClient.standalone(address, None, timeout_ms)
    infos = client.get_all_node_info(timeout=timeout_ms / 1000.0)
except Exception as exc:
    print(json.dumps({"ok": False, "error": type(exc).__name__ + ": " + str(exc)}))
    sys.exit(3)
meta = None
try:
    from ray._common.usage import usage_constants as uc
    from ray._private import ray_constants as rc
    raw = client.internal_kv_get(uc.CLUSTER_METADATA_KEY, rc.KV_NAMESPACE_CLUSTER,
                                 timeout=timeout_ms / 1000.0)
    if raw:
        meta = json.loads(raw.decode("utf-8"))
except Exception:
    meta = None
nodes = []
for node_id, n in infos.items():
    nodes.append({
        "node_id": node_id.hex(),
        "ip": n.node_manager_address,
        "hostname": n.node_manager_hostname,
        "alive": n.state == 0,
        "is_head": bool(n.is_head_node),
        "resources": {k: float(v) for k, v in n.resources_total.items()},
        "labels": dict(n.labels),
        "start_time_ms": int(n.start_time_ms),
        "end_time_ms": int(n.end_time_ms),
        "death_reason": n.death_info.DESCRIPTOR.fields_by_name["reason"].enum_type
            .values_by_number[n.death_info.reason].name if n.state != 0 else None,
        "death_message": n.death_info.reason_message if n.state != 0 else None,
    })
print(json.dumps({
    "ok": True,
    "client_ray_version": ray.__version__,
    "client_python_version": platform.python_version(),
    "cluster_ray_version": (meta or {}).get("ray_version"),
    "cluster_python_version": (meta or {}).get("python_version"),
    "nodes": nodes,
}))
"""


class RayQueryError(TemporaryError):
    """The head could not be asked (unreachable, timed out, or unreadable answer)."""

    reason = "RayQueryFailed"


@dataclass(frozen=True)
class RayNode:
    node_id: str
    ip: str
    alive: bool
    is_head: bool
    hostname: str = ""
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    start_time_ms: int = 0
    end_time_ms: int = 0
    death_reason: str | None = None  # e.g. "UNEXPECTED_TERMINATION", "EXPECTED_TERMINATION"
    death_message: str | None = None

    @property
    def gpus(self) -> float:
        return self.resources.get("GPU", 0.0)


@dataclass(frozen=True)
class RayClusterView:
    nodes: tuple[RayNode, ...]
    cluster_ray_version: str | None = None
    cluster_python_version: str | None = None
    client_ray_version: str | None = None
    client_python_version: str | None = None

    @property
    def alive(self) -> tuple[RayNode, ...]:
        return tuple(n for n in self.nodes if n.alive)

    def alive_ips(self) -> frozenset[str]:
        return frozenset(n.ip for n in self.alive)

    def alive_gpus_by_ip(self) -> dict[str, float]:
        """GPUs per alive node IP (a restarted node shows up once DEAD and once ALIVE)."""
        out: dict[str, float] = {}
        for n in self.alive:
            out[n.ip] = out.get(n.ip, 0.0) + n.gpus
        return out

    def head(self) -> RayNode | None:
        for n in self.alive:
            if n.is_head:
                return n
        return None


def ray_nodes_query_argv(
    python_exe: str, gcs_address: str, *, connect_timeout_ms: int = 2000
) -> list[str]:
    """Argument list running :data:`QUERY_PROGRAM` with the engine env's python."""
    if connect_timeout_ms <= 0:
        raise ValueError("connect_timeout_ms must be positive")
    return [python_exe, "-I", "-c", QUERY_PROGRAM, gcs_address, str(connect_timeout_ms)]


def ray_nodes_query_env(
    base_env: Mapping[str, str] | None = None, *, connect_timeout_ms: int = 2000
) -> dict[str, str]:
    """Environment for the query: Ray's per-attempt GCS connect timeout lowered (default 5 s,
    which makes an unreachable head take ~40 s to report), usage stats off, no RAY_ADDRESS."""
    env = {k: v for k, v in (base_env or {}).items() if k != "RAY_ADDRESS"}
    env["RAY_gcs_rpc_server_connect_timeout_s"] = str(max(1, math.ceil(connect_timeout_ms / 1000)))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _str_map(raw: Any, what: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise RayQueryError(f"{what} is not an object")
    return {str(k): str(v) for k, v in raw.items()}


def _float_map(raw: Any, what: str) -> dict[str, float]:
    if not isinstance(raw, dict):
        raise RayQueryError(f"{what} is not an object")
    try:
        return {str(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise RayQueryError(f"{what} has a non-numeric value") from exc


def _opt_str(raw: Any) -> str | None:
    return None if raw is None else str(raw)


def parse_ray_nodes_output(stdout: str) -> RayClusterView:
    """Parse the last line of the query program's stdout (Ray may log before it)."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        raise RayQueryError("empty answer from the Ray node query")
    try:
        doc = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise RayQueryError(f"unreadable Ray node query answer: {lines[-1][:200]}") from exc
    if not isinstance(doc, dict):
        raise RayQueryError("answer is not a JSON object")
    if doc.get("ok") is not True:
        raise RayQueryError(str(doc.get("error", "query failed")))
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list):
        raise RayQueryError("answer has no node list")
    nodes: list[RayNode] = []
    for raw in raw_nodes:
        if not isinstance(raw, dict):
            raise RayQueryError("node entry is not an object")
        try:
            nodes.append(
                RayNode(
                    node_id=str(raw["node_id"]),
                    ip=str(raw["ip"]),
                    alive=bool(raw["alive"]),
                    is_head=bool(raw.get("is_head", False)),
                    hostname=str(raw.get("hostname", "")),
                    resources=_float_map(raw.get("resources", {}), "resources"),
                    labels=_str_map(raw.get("labels", {}), "labels"),
                    start_time_ms=int(raw.get("start_time_ms", 0)),
                    end_time_ms=int(raw.get("end_time_ms", 0)),
                    death_reason=_opt_str(raw.get("death_reason")),
                    death_message=_opt_str(raw.get("death_message")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RayQueryError(f"malformed node entry: {exc}") from exc
    nodes.sort(key=lambda n: (not n.is_head, n.ip, -n.start_time_ms))
    return RayClusterView(
        nodes=tuple(nodes),
        cluster_ray_version=_opt_str(doc.get("cluster_ray_version")),
        cluster_python_version=_opt_str(doc.get("cluster_python_version")),
        client_ray_version=_opt_str(doc.get("client_ray_version")),
        client_python_version=_opt_str(doc.get("client_python_version")),
    )


def gcs_reachable(gcs_address: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the GCS address (no Ray involved)."""
    host, _, port = gcs_address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def query_ray_nodes(
    python_exe: str,
    gcs_address: str,
    *,
    timeout_s: float = 15.0,
    connect_timeout_ms: int = 2000,
    env: Mapping[str, str] | None = None,
    argv_prefix: Sequence[str] = (),
) -> RayClusterView:
    """Read the head's node table by running the query program with ``python_exe``.

    ``argv_prefix`` wraps the command (tests use ``ip netns exec <ns>``). The child runs in its
    own session and is killed (its whole group) after ``timeout_s``.
    """
    argv = [
        *argv_prefix,
        *ray_nodes_query_argv(python_exe, gcs_address, connect_timeout_ms=connect_timeout_ms),
    ]
    base = dict(os.environ) if env is None else dict(env)
    proc = subprocess.Popen(
        argv,
        env=ray_nodes_query_env(base, connect_timeout_ms=connect_timeout_ms),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RayQueryError(
            f"Ray node query of {gcs_address} timed out after {timeout_s:.0f} s"
        ) from exc
    if proc.returncode != 0 and not out.strip():
        tail = err.strip().splitlines()[-1:] if err.strip() else []
        raise RayQueryError(
            f"Ray node query of {gcs_address} exited {proc.returncode} after "
            f"{time.monotonic() - started:.1f} s: {' '.join(tail)[:300]}"
        )
    return parse_ray_nodes_output(out)


def _version_notes(full: RayClusterView) -> tuple[str, ...]:
    """Ray and Python versions must match across a cluster's nodes (ray#44063). The GCS
    metadata holds the head's; the query runs with the asking node's engine env."""
    notes: list[str] = []
    pairs = (
        ("Ray", full.cluster_ray_version, full.client_ray_version),
        ("Python", full.cluster_python_version, full.client_python_version),
    )
    for what, head, here in pairs:
        if not head or not here:
            continue
        same = head == here if what == "Ray" else head.split(".")[:2] == here.split(".")[:2]
        if not same:
            notes.append(f"{what} version mismatch: head {head}, this node's engine env {here}")
    return tuple(notes)


def replica_view(full: RayClusterView, spec_hash: str | None) -> RayView:
    """Reduce a node table to one replica's members. Pure.

    With ``spec_hash`` given, only alive nodes labelled ``reconciler-spec-hash=<spec_hash>``
    count as members; alive nodes at another (or no) hash are listed in ``mismatched`` and
    dead ones at this hash in ``lost`` (a node that restarted shows up once DEAD and once
    ALIVE: an IP that is alive again is not lost). Without it every alive node counts.
    """
    members: list[RayNode] = []
    mismatched: list[str] = []
    for n in full.alive:
        label = n.labels.get(SPEC_HASH_LABEL)
        if spec_hash is None or label == spec_hash:
            members.append(n)
        else:
            mismatched.append(f"{n.ip} at {label or 'no hash label'}")
    alive_ips = {n.ip for n in members}
    lost = sorted(
        {
            n.ip
            for n in full.nodes
            if not n.alive
            and spec_hash is not None
            and n.labels.get(SPEC_HASH_LABEL) == spec_hash
            and n.ip not in alive_ips
        }
    )
    return RayView(
        alive_nodes=tuple(sorted(alive_ips)),
        gpus=sum(n.gpus for n in members),
        mismatched=tuple(sorted(mismatched)),
        lost=tuple(lost),
        notes=_version_notes(full),
    )


class RayPort(Protocol):
    def view(self, gcs_address: str, spec_hash: str | None = None) -> RayView | None:
        """The members of the cluster whose GCS is at ``gcs_address`` (see
        :func:`replica_view`); None when the head cannot be asked (best effort: the caller
        treats None as "unknown", not "empty")."""
        ...


class SubprocessRayPort:
    """:class:`RayPort` backed by :func:`query_ray_nodes` (the engine env's python)."""

    def __init__(
        self,
        python_exe: str,
        *,
        timeout_s: float = 15.0,
        connect_timeout_ms: int = 2000,
        env: Mapping[str, str] | None = None,
        argv_prefix: Sequence[str] = (),
        cache_s: float = 0.0,
    ) -> None:
        self.python_exe = python_exe
        self.timeout_s = timeout_s
        self.connect_timeout_ms = connect_timeout_ms
        self.env = dict(env) if env is not None else None
        self.argv_prefix = tuple(argv_prefix)
        # Each query is a python start that imports ray (~0.5 s of CPU): a tick loop that
        # runs every second must not pay it each time. Answers are reused for cache_s.
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, RayClusterView | None]] = {}

    def cluster(self, gcs_address: str) -> RayClusterView | None:
        """The full node table (alive and dead nodes, labels, versions), or None."""
        if self.cache_s > 0:
            hit = self._cache.get(gcs_address)
            if hit is not None and time.monotonic() - hit[0] < self.cache_s:
                return hit[1]
        answer = self._cluster(gcs_address)
        if self.cache_s > 0:
            self._cache[gcs_address] = (time.monotonic(), answer)
        return answer

    def _cluster(self, gcs_address: str) -> RayClusterView | None:
        # A closed port answers in microseconds; don't spawn python (and wait ~3 s for Ray's
        # own connect retries) for a head that is plainly not there. Skipped when the query
        # runs elsewhere (argv_prefix), where this process may not reach the address.
        if not self.argv_prefix and not gcs_reachable(gcs_address):
            log.info("ray head unreachable", extra={"address": gcs_address})
            return None
        try:
            return query_ray_nodes(
                self.python_exe,
                gcs_address,
                timeout_s=self.timeout_s,
                connect_timeout_ms=self.connect_timeout_ms,
                env=self.env,
                argv_prefix=self.argv_prefix,
            )
        except (RayQueryError, OSError) as exc:
            log.warning("ray node query failed", extra={"address": gcs_address, "error": str(exc)})
            return None

    def view(self, gcs_address: str, spec_hash: str | None = None) -> RayView | None:
        full = self.cluster(gcs_address)
        if full is None:
            return None
        return replica_view(full, spec_hash)
