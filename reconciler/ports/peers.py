"""The peers port: what other nodes report about the replicas they lead.

Used only to order rollouts and to let followers join a head of the right spec hash;
never to decide placement (that is computed locally from the revision).
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.core.vocabulary import PeerReplica, ReplicaKey
from reconciler.ports.peer_fanout import ask_all
from schemas.status import Member, NodeStatus, Replica


class PeerAnswers(Mapping[ReplicaKey, PeerReplica]):
    """What the asked peers lead, by replica, and which peers answered at all: a replica
    absent from a peer that answered is one that peer runs nothing of (a follower's
    leader that finished its drain); from one that did not answer, unknown."""

    def __init__(self, replicas: Mapping[ReplicaKey, PeerReplica] | None = None,
                 answered: Collection[str] = ()) -> None:
        self._replicas = dict(replicas or {})
        self.answered = frozenset(answered)

    def __getitem__(self, key: ReplicaKey) -> PeerReplica:
        return self._replicas[key]

    def __iter__(self) -> Iterator[ReplicaKey]:
        return iter(self._replicas)

    def __len__(self) -> int:
        return len(self._replicas)


class PeerPort(Protocol):
    def replicas(self, nodes: Collection[str]) -> PeerAnswers:
        """What the named nodes lead (reconciler.core.peer_choice says whom to ask).
        Best effort: unreachable peers are simply absent (and not in `answered`)."""
        ...


class NoPeers:
    """A one-node cluster has nobody to ask."""

    def replicas(self, nodes: Collection[str]) -> PeerAnswers:
        return PeerAnswers()


# =============================================================================================
# The real implementation: ask the other daemons' /status over HTTP.
# =============================================================================================

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerAddress:
    name: str
    address: str
    port: int


def fetch_status(address: str, port: int, timeout: float) -> dict[str, Any]:
    """GET http://address:port/status (http.client: no proxy from the environment)."""
    host = address.strip("[]")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/status", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(8 * 1024 * 1024)
        if resp.status != 200:
            raise OSError(f"/status answered {resp.status}")
    finally:
        conn.close()
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("/status is not a JSON object")
    return data


def _running(members: Sequence[Member], role: str) -> Member | None:
    return next((m for m in members if m.role == role and m.running), None)


def _from_members(r: Replica, members: Sequence[Member]) -> PeerReplica:
    """What the leader *runs*, from its observed members (status `members`), not the hash
    it wants: a follower must join the head that is up, at the hash it is up with."""
    draining = r.state == "Draining"
    engine = _running(members, "engine")
    # the leader's running engine: what the followers of an mp multi-node replica (vLLM
    # --nnodes, no Ray) join
    engine_hash = engine.spec_hash if engine is not None else ""
    engine_ready = engine is not None and engine.health == "ready"
    if r.role == "leader":
        head = _running(members, "ray-head")
        if head is None:
            return PeerReplica(spec_hash="", ready=False, head_up=False,
                               engine_hash=engine_hash, engine_ready=engine_ready,
                               draining=draining)
        h = head.spec_hash
        ready = engine_ready and engine_hash == h
        return PeerReplica(spec_hash=h, ready=ready, head_up=head.health == "ready",
                           engine_hash=engine_hash, engine_ready=engine_ready,
                           draining=draining)
    if engine is None:
        return PeerReplica(spec_hash="", ready=False, draining=draining)
    return PeerReplica(spec_hash=engine_hash, ready=engine_ready, engine_hash=engine_hash,
                       engine_ready=engine_ready, draining=draining)


def peer_replicas(status: NodeStatus) -> dict[ReplicaKey, PeerReplica]:
    """The replicas a peer leads (single-node ones and multi-node leaders).

    From the running members when the peer reports them (``members``); an older peer
    without them gives its desired hash and state, and never ``head_up``.
    """
    out: dict[ReplicaKey, PeerReplica] = {}
    for r in status.replicas:
        if not r.nodes or r.nodes[0] != status.node or r.role not in ("single", "leader"):
            continue
        key = ReplicaKey(r.deployment, r.index)
        if r.members is not None:
            out[key] = _from_members(r, r.members)
        else:
            out[key] = PeerReplica(spec_hash=r.spec_hash, ready=r.state == "Ready",
                                   draining=r.state == "Draining")
    return out


class HttpPeers:
    """`PeerPort` over the peers' /status. Asks the named nodes, found among `peers`
    (the Cluster document's other nodes), in parallel with a short timeout; unreachable
    peers and names `peers` does not know are simply absent."""

    def __init__(
        self,
        peers: Callable[[], Sequence[PeerAddress]],
        *,
        timeout_s: float = 1.0,
        fetch: Callable[[str, int, float], dict[str, Any]] = fetch_status,
    ) -> None:
        self._peers = peers
        self._timeout = timeout_s
        self._fetch = fetch

    def _read(self, name: str, doc: dict[str, Any]) -> dict[ReplicaKey, PeerReplica] | None:
        try:
            # a document this version cannot read (a ValidationError is a ValueError)
            # counts as an unreachable peer; unknown extra fields are fine (schemas.status)
            return peer_replicas(NodeStatus.model_validate(doc))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            _log.debug("peer unreachable", extra={"peer": name, "error": str(exc)})
            return None

    def replicas(self, nodes: Collection[str]) -> PeerAnswers:
        merged: dict[ReplicaKey, PeerReplica] = {}
        answered: set[str] = set()
        if not nodes:
            return PeerAnswers()
        wanted = set(nodes)
        asked = [a for a in self._peers() if a.name in wanted]
        # each peer within the timeout, none waited on past it (a tick never stalls on a
        # slow peer); unreachable ones are simply absent
        for answer in ask_all(asked, self._fetch, timeout_s=self._timeout, concurrency=16):
            if answer.status is None:
                _log.debug("peer unreachable",
                           extra={"peer": answer.peer.name, "error": answer.error})
                continue
            read = self._read(answer.peer.name, answer.status)
            if read is not None:
                merged.update(read)
                answered.add(answer.peer.name)
        return PeerAnswers(merged, answered)
