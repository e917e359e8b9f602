"""The web console (issue 15): static files at `/` and `/static/`, and read-only JSON under
`/console/api/` gathered from this node's daemon and its peers (their /status, /history
and /logs). Nothing here changes state: git stays the only way to change the cluster.

Every page and answer carries a Content-Security-Policy that forbids inline script and
any other origin, so a name from the repo or an engine that looks like markup can do
nothing even if some view forgot to render it as text (they all use textContent).

With API keys configured the console's JSON needs a valid key too (the browser sends the
one the user pasted); with none the gateway is open, as for the models.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from reconciler.gateway.auth import KeyRing
from reconciler.gateway.discovery import MAX_STATUS_BYTES, peer_sources
from schemas.status import NodeStatus

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MEMBER_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\.[0-9]{1,5}\.(engine|ray-head|ray-worker)$")
SOURCE_TIMEOUT_S = 2.0
MAX_PIECE_BYTES = 2 * 1024 * 1024  # a /logs or /history answer (the daemon bounds them)
NAMES_FRESH_S = 10.0  # how long a node name -> daemon URL lookup is reused


@dataclass
class Sources:
    """Where the console reads from: the gateway's own settings (server.serve sets it)."""

    local_url: str
    peers: str | Sequence[str]
    keys: KeyRing = field(default_factory=KeyRing)
    session: aiohttp.ClientSession | None = None
    _names: dict[str, str] = field(default_factory=dict)
    _names_at: float = float("-inf")


SOURCES: web.AppKey[Sources] = web.AppKey("console_sources", Sources)


@dataclass
class NodeView:
    name: str
    url: str
    reachable: bool
    error: str = ""
    status: dict[str, Any] | None = None


async def _get(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url, allow_redirects=False) as resp:
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > MAX_STATUS_BYTES:
                raise OSError("answer too large")
        if resp.status != 200:
            raise LookupError(f"{resp.status}: {bytes(body[:200]).decode(errors='replace')}")
        return bytes(body)


async def _status(session: aiohttp.ClientSession, url: str) -> tuple[NodeStatus | None, str]:
    try:
        return NodeStatus.model_validate_json(await _get(session, url + "/status")), ""
    except ValidationError:
        return None, "sent a status document this gateway cannot read"
    except (TimeoutError, OSError, LookupError, aiohttp.ClientError) as exc:
        return None, str(exc) or type(exc).__name__


async def gather_nodes(src: Sources) -> list[NodeView]:
    """Every daemon's status: this node's first, then each peer's (unreachable ones too,
    named from the Cluster document where it says who they are)."""
    assert src.session is not None
    local, err = await _status(src.session, src.local_url.rstrip("/"))
    urls = peer_sources(local, src.peers, src.local_url)
    declared: dict[str, str] = {}
    if local is not None and local.cluster is not None:
        for n in local.cluster.nodes:
            host = f"[{n.address}]" if ":" in n.address else n.address
            declared[f"http://{host}:{n.status_port}"] = n.name
    rest = await asyncio.gather(*(_status(src.session, u) for u in urls[1:]))
    views: list[NodeView] = []
    for url, (doc, error) in zip(urls, [(local, err), *rest], strict=True):
        name = doc.node if doc is not None else declared.get(url, url)
        views.append(NodeView(name, url, doc is not None, error,
                              doc.model_dump(mode="json") if doc is not None else None))
    src._names = {v.name: v.url for v in views}
    src._names_at = time.monotonic()
    return views


async def _url_of(src: Sources, node: str) -> str | None:
    if time.monotonic() - src._names_at > NAMES_FRESH_S or node not in src._names:
        await gather_nodes(src)
    return src._names.get(node)


def _sources(request: web.Request) -> Sources | web.Response:
    src = request.app.get(SOURCES)
    if src is None or src.session is None:
        return web.json_response({"error": "console not configured"}, status=503)
    who = src.keys.identify(request.headers.get("Authorization"))
    if not who.ok:
        return web.json_response({"error": who.message}, status=401)
    return src


async def info(request: web.Request) -> web.Response:
    """What the page needs before it has a key: whether it needs one."""
    src = request.app.get(SOURCES)
    keys = src.keys if src is not None else KeyRing()
    return web.json_response({"keysRequired": not keys.open, "configured": src is not None})


async def nodes(request: web.Request) -> web.Response:
    src = _sources(request)
    if isinstance(src, web.Response):
        return src
    views = await gather_nodes(src)
    return web.json_response({
        "gateway": {"keysRequired": not src.keys.open},
        "nodes": [{"name": v.name, "url": v.url, "reachable": v.reachable, "error": v.error,
                   "status": v.status} for v in views],
    })


async def _relay(request: web.Request, path: str) -> web.Response:
    """One daemon's read-only JSON, passed on as it came (the daemon bounds its size)."""
    src = _sources(request)
    if isinstance(src, web.Response):
        return src
    node = request.query.get("node", "")
    url = await _url_of(src, node)
    if url is None:
        return web.json_response({"error": f"no node named {node[:80]!r}"}, status=404)
    assert src.session is not None
    try:
        body = await _get(src.session, url + path)
    except LookupError as exc:
        return web.json_response({"error": f"{node}: {exc}"}, status=404)
    except (TimeoutError, OSError, aiohttp.ClientError) as exc:
        return web.json_response({"error": f"{node} unreachable: {exc}"}, status=502)
    return web.Response(body=body, content_type="application/json")


async def history(request: web.Request) -> web.Response:
    return await _relay(request, "/history")


async def log_list(request: web.Request) -> web.Response:
    return await _relay(request, "/logs")


async def log_piece(request: web.Request) -> web.Response:
    member = request.query.get("member", "")
    if not MEMBER_RE.match(member):
        return web.json_response({"error": "member: <deployment>.<index>.<role>"}, status=400)
    query = ""
    offset = request.query.get("offset")
    if offset is not None:
        if not offset.isdigit():
            return web.json_response({"error": "offset: a byte count"}, status=400)
        query = f"?offset={int(offset)}"
    return await _relay(request, f"/logs/{member}{query}")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not request.path.startswith("/v1/"):
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)


async def _session(app: web.Application) -> AsyncIterator[None]:
    src = app.get(SOURCES)
    if src is None:
        yield
        return
    timeout = aiohttp.ClientTimeout(total=SOURCE_TIMEOUT_S)
    # trust_env=False: reads of peers' status never go through $http_proxy
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        src.session = session
        yield
        src.session = None


def add_routes(app: web.Application) -> None:
    """The console's routes; before the gateway's catch-all so they are found first."""
    app.router.add_get("/console/api/info", info)
    app.router.add_get("/console/api/nodes", nodes)
    app.router.add_get("/console/api/history", history)
    app.router.add_get("/console/api/logs", log_list)
    app.router.add_get("/console/api/log", log_piece)
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_session)
