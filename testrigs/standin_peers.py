"""Many stand-in peers on loopback, for `reconciler status --cluster` at scale.

    with StandInPeers(answering=190, stalled=10) as peers:
        peers.local_url  # a "node" whose /status lists every peer in its cluster

One asyncio loop in a background thread serves every answering peer's GET /status (a
small Ready status document naming the peer). A stalled peer is a listening socket that
is never accepted: the kernel completes the connection, the request is sent, and no
answer ever comes, as with a hung daemon or a dropped return path.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from typing import Any


def _ready_status(name: str, cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "node": name,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Converged",
                        "message": ""}],
        "gpus": {"declared": {"count": 8}, "observed": {"count": 8},
                 "counts": {"assigned": 0, "free": 8, "foreign": 0, "missing": 0}},
        "revisions": {"applied": {"revision": "0123456789abcdef"}},
        "deployments": [],
        "replicas": [],
    }
    if cluster is not None:
        doc["cluster"] = cluster
    return doc


class StandInPeers:
    """`document(name)`, when given, is what peer `name` answers (default: a small Ready
    status, enough for `status --cluster`; the daemon's peers port wants whole NodeStatus
    documents: testrigs.status_docs.status_dict)."""

    def __init__(self, answering: int, stalled: int = 0, refused: int = 0,
                 document: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.document = document or _ready_status
        self.answering = answering
        self.stalled = stalled
        self.refused = refused
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._held: list[socket.socket] = []  # stalled listeners
        self.nodes: list[dict[str, Any]] = []  # the Cluster's node list, local node first
        self.unreachable: set[str] = set()
        self.local_url = ""

    def __enter__(self) -> StandInPeers:
        self._thread.start()
        bodies: dict[int, bytes] = {}
        ports: list[tuple[str, int]] = []
        for i in range(self.answering):
            ports.append((f"peer-{i}", self._serve(bodies)))
        for i in range(self.stalled):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(8)
            self._held.append(s)
            ports.append((f"stalled-{i}", s.getsockname()[1]))
            self.unreachable.add(f"stalled-{i}")
        for i in range(self.refused):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()  # nothing listens there now: connection refused
            ports.append((f"refused-{i}", port))
            self.unreachable.add(f"refused-{i}")
        local_port = self._serve(bodies)
        self.nodes = [{"name": "local", "address": "127.0.0.1", "statusPort": local_port}] + [
            {"name": name, "address": "127.0.0.1", "statusPort": port} for name, port in ports
        ]
        for name, port in ports:
            bodies[port] = self._response(self.document(name))
        bodies[local_port] = self._response(_ready_status("local", {"nodes": self.nodes}))
        self.local_url = f"http://127.0.0.1:{local_port}"
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        for s in self._held:
            s.close()

    @staticmethod
    def _response(doc: dict[str, Any]) -> bytes:
        body = json.dumps(doc).encode()
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        return head.encode() + body

    def _serve(self, bodies: dict[int, bytes]) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(bodies[writer.get_extra_info("sockname")[1]])
                await writer.drain()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()

        async def start() -> asyncio.base_events.Server:
            return await asyncio.start_server(handle, "127.0.0.1", 0, backlog=64)

        server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port
