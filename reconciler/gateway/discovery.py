"""Reads this node's daemon's /status and its peers' and keeps the routing table fresh.

Polls every `status_interval_seconds` (1 s by default), all sources at once, so a change
(Ready, gone, draining) reaches every gateway within about a second plus one daemon tick.
A source that stops answering keeps its last document for `status_stale_seconds` (one
lost poll must not empty the table), then its replicas leave the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from pydantic import ValidationError

from reconciler.gateway.routing import RoutingTable, build_table
from schemas.status import NodeStatus

_log = logging.getLogger(__name__)
MAX_STATUS_BYTES = 8 * 1024 * 1024


def peer_sources(local: NodeStatus | None, peers: str | Sequence[str],
                 local_url: str) -> list[str]:
    """Base URLs of every daemon to read: this node's, then its peers' (pure)."""
    out = [local_url.rstrip("/")]
    if isinstance(peers, str):  # "cluster": the nodes of the Cluster document
        if local is not None and local.cluster is not None:
            for n in local.cluster.nodes:
                if n.name != local.node:
                    host = f"[{n.address}]" if ":" in n.address else n.address
                    out.append(f"http://{host}:{n.status_port}")
    else:
        out.extend(p if p.startswith("http") else f"http://{p}" for p in peers)
    seen: set[str] = set()
    return [u for u in out if not (u in seen or seen.add(u))]  # type: ignore[func-returns-value]


@dataclass
class _Seen:
    doc: NodeStatus
    at: float


@dataclass
class Discovery:
    local_url: str
    peers: str | Sequence[str]
    interval_s: float = 1.0
    stale_s: float = 5.0
    on_table: Callable[[RoutingTable], None] = lambda _t: None
    on_source: Callable[[str, bool], None] = lambda _s, _ok: None
    clock: Callable[[], float] = time.monotonic
    _seen: dict[str, _Seen] = field(default_factory=dict)
    table: RoutingTable = field(default_factory=RoutingTable)

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> NodeStatus | None:
        try:
            async with session.get(url + "/status", headers={"Accept": "application/json"},
                                   allow_redirects=False) as resp:
                if resp.status != 200:
                    raise OSError(f"answered {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > MAX_STATUS_BYTES:
                        raise OSError("status larger than 8 MiB")
            # a document this version cannot read is answered like an unreachable peer
            # (schemas.status explains why), never half-guessed
            status = NodeStatus.model_validate_json(bytes(body))
            self.on_source(url, True)
            return status
        except ValidationError as exc:
            _log.warning("status source sent a document this gateway cannot read: %s: %s",
                         url, str(exc).splitlines()[0])
            self.on_source(url, False)
            return None
        except (TimeoutError, OSError, ValueError, aiohttp.ClientError) as exc:
            _log.debug("status source unreachable: %s: %s", url, exc)
            self.on_source(url, False)
            return None

    async def poll_once(self, session: aiohttp.ClientSession) -> RoutingTable:
        now = self.clock()
        local_prev = self._seen.get(self.local_url.rstrip("/"))
        sources = peer_sources(local_prev.doc if local_prev else None, self.peers,
                               self.local_url)
        docs = await asyncio.gather(*(self._fetch(session, u) for u in sources))
        for url, doc in zip(sources, docs, strict=True):
            if doc is not None:
                self._seen[url] = _Seen(doc, now)
        if local_prev is None and docs[0] is not None and isinstance(self.peers, str):
            # first sight of the cluster: ask the peers now rather than a second later
            return await self.poll_once(session)
        fresh = [s.doc for u, s in self._seen.items()
                 if u in sources and now - s.at <= self.stale_s]
        self.table = build_table(fresh)
        self.on_table(self.table)
        return self.table

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=max(0.5, min(2.0, self.interval_s * 2)))
        # trust_env=False: never send status reads through $http_proxy
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            while not stop.is_set():
                try:
                    await self.poll_once(session)
                except Exception:  # the loop must survive anything one poll does
                    _log.exception("routing table update failed")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
