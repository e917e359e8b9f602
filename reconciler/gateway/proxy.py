"""The OpenAI endpoint: aiohttp handlers that route by model and stream answers through.

Per request: API key (401) -> body size (413) -> JSON with a `model` (400) -> key's models
(403) -> routing table (404 unknown model, 503 + Retry-After when none is Ready) -> the
least-busy replica; on a failed connection or a 503 *before* any byte reached the client,
the next replica (retry.may_retry). Answers are passed on chunk by chunk as they arrive.

Client side: a client that disconnects cancels the handler (aiohttp handler_cancellation),
which closes the upstream connection, and vLLM aborts a request whose connection closed.
A client that stops reading is cut off after `client_write_timeout_seconds`. If the
engine breaks mid-stream, the client's connection is aborted (no clean end of stream), so
the client sees an error rather than a silently short answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from reconciler.gateway import console, errors
from reconciler.gateway.auth import KeyRing
from reconciler.gateway.balance import pick
from reconciler.gateway.metrics import CONTENT_TYPE_LATEST, UNKNOWN_MODEL, GatewayMetrics
from reconciler.gateway.retry import Failure, may_retry
from reconciler.gateway.routing import RoutingTable, Upstream

_log = logging.getLogger(__name__)

# OpenAI routes vLLM serves with a JSON body naming the model
MODEL_ROUTES = (
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
    "/v1/rerank", "/v1/score", "/v1/classify", "/v1/pooling",
)
# passed from the engine's answer to the client; hop-by-hop and length headers are not
_PASS_HEADERS = ("Content-Type", "Cache-Control", "X-Request-Id", "Retry-After")
STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class Settings:
    max_body_bytes: int = 32 * 1024 * 1024
    max_attempts: int = 3
    connect_timeout_s: float = 3.0
    first_byte_timeout_s: float = 600.0
    client_write_timeout_s: float = 30.0
    retry_after_s: int = 5
    max_connections: int = 4096
    engine_key: str | None = None


@dataclass
class GatewayState:
    settings: Settings
    keys: KeyRing
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    table: RoutingTable = field(default_factory=RoutingTable)
    outstanding: Counter[str] = field(default_factory=Counter)
    session: aiohttp.ClientSession | None = None
    # built once, not per request: on a 2-core node the request path's Python is most of
    # what the gateway adds to the time to first token (bench/gateway_bench.py)
    upstream_timeout: aiohttp.ClientTimeout = field(init=False)
    _urls: dict[tuple[str, str], URL] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        self.upstream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=s.connect_timeout_s, sock_read=s.first_byte_timeout_s)

    def set_table(self, table: RoutingTable) -> None:
        self.table = table
        self._urls.clear()  # bounded by the table's replicas x MODEL_ROUTES
        self.metrics.set_replicas({m: len(ups) for m, ups in table.ready.items()})

    def upstream_url(self, up: Upstream, path: str) -> URL:
        key = (up.base_url, path)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = URL(up.base_url + path, encoded=True)
        return url


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)


def _json_error(status: int, message: str, *, retry_after: int | None = None,
                code: str | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.Response(status=status, body=errors.error_bytes(status, message, code=code),
                        content_type="application/json", headers=headers)


def _model_label(state: GatewayState, model: str | None) -> str:
    if not model:
        return ""
    return model if model in state.table.known else UNKNOWN_MODEL


# --- GET routes -------------------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    visible = state.keys.visible(request.headers.get("Authorization"), state.table.served())
    if visible is None:
        who = state.keys.identify(request.headers.get("Authorization"))
        return _json_error(401, who.message)
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "reconciler",
             "replicas": len(state.table.upstreams(m))} for m in visible]
    return web.json_response({"object": "list", "data": data})


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def unknown_route(request: web.Request) -> web.Response:
    return _json_error(404, f"Unknown route {request.method} {request.path}. This gateway "
                            f"serves GET /v1/models and POST {', '.join(MODEL_ROUTES)}.")


# --- the proxy ----------------------------------------------------------------------------------


async def _read_body(request: web.Request, limit: int) -> bytes | web.Response:
    if request.content_length is not None and request.content_length > limit:
        return _json_error(413, f"Request body of {request.content_length} bytes exceeds "
                                f"the limit of {limit} bytes.")
    try:
        return await request.read()  # bounded by the app's client_max_size
    except web.HTTPRequestEntityTooLarge:
        return _json_error(413, f"Request body exceeds the limit of {limit} bytes.")


def _parse(body: bytes) -> tuple[dict[str, Any], str] | web.Response:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return _json_error(400, f"The request body is not valid JSON: {exc}")
    if not isinstance(payload, dict):
        return _json_error(400, "The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return _json_error(400, "The request body must name a 'model' (a string).")
    return payload, model


def _affinity(payload: dict[str, Any], key_name: str | None) -> str:
    user = payload.get("user")
    return str(user) if isinstance(user, str) and user else (key_name or "")


async def proxy(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.monotonic()
    auth_header = request.headers.get("Authorization")
    who = state.keys.identify(auth_header)
    if not who.ok:
        return _count(state, "", _json_error(401, who.message))
    body = await _read_body(request, state.settings.max_body_bytes)
    if isinstance(body, web.Response):
        return _count(state, "", body)
    parsed = _parse(body)
    if isinstance(parsed, web.Response):
        return _count(state, "", parsed)
    payload, model = parsed
    allowed = state.keys.may_use(who, model)
    if not allowed.ok:
        return _count(state, _model_label(state, model), _json_error(403, allowed.message))
    label = _model_label(state, model)
    table = state.table
    if not table.upstreams(model):
        if model not in table.known:
            known = state.keys.visible(auth_header, table.known) or []
            return _count(state, label, _json_error(*errors.unknown_model(model, known),
                                                    code="model_not_found"))
        return _count(state, label, _json_error(
            *errors.no_replica(model, state.settings.retry_after_s),
            retry_after=state.settings.retry_after_s))
    state.metrics.in_flight.labels(label).inc()
    try:
        resp = await _forward(request, state, model, label, body,
                              _affinity(payload, who.key.name if who.key else None), started)
    except asyncio.CancelledError:
        # the client disconnected (aiohttp cancels the handler): unwinding closes the
        # upstream connection, and vLLM aborts a request whose connection closed.
        # 499 is nginx's "client closed request".
        state.metrics.client_gone.labels(label, "disconnected").inc()
        state.metrics.requests.labels(label, "499").inc()
        raise
    finally:
        state.metrics.in_flight.labels(label).dec()
    state.metrics.requests.labels(label, str(resp.status)).inc()
    state.metrics.duration.labels(label).observe(time.monotonic() - started)
    return resp


def _count(state: GatewayState, label: str, resp: web.Response) -> web.Response:
    state.metrics.requests.labels(label, str(resp.status)).inc()
    return resp


def _upstream_headers(request: web.Request, engine_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json"),
               "Accept": request.headers.get("Accept", "*/*")}
    if "X-Request-Id" in request.headers:
        headers["X-Request-Id"] = request.headers["X-Request-Id"]
    # the client's key never goes on to an engine; the engines' own key does
    if engine_key:
        headers["Authorization"] = f"Bearer {engine_key}"
    return headers


async def _forward(request: web.Request, state: GatewayState, model: str, label: str,
                   body: bytes, affinity: str, started: float) -> web.StreamResponse:
    assert state.session is not None
    s = state.settings
    tried: set[str] = set()
    last = "no replica answered"
    for attempt in range(1, s.max_attempts + 1):
        up = pick(state.table.upstreams(model), state.outstanding, affinity, tried)
        if up is None:
            break
        tried.add(up.id)
        if attempt > 1:
            state.metrics.retries.labels(label).inc()
        failure, detail, resp = await _attempt(request, state, up, label, body, started)
        if resp is not None:
            return resp
        state.metrics.upstream_errors.labels(label, up.replica_label,
                                             "status_503" if failure == "status" else failure
                                             ).inc()
        last = f"{up.replica_label} on {up.node}: {detail}"
        _log.info("upstream attempt failed: model=%s replica=%s attempt=%d failure=%s %s",
                  model, up.id, attempt, failure, detail)
        if not may_retry(failure, status=503 if failure == "status" else None,
                         sent_to_client=False, attempt=attempt, max_attempts=s.max_attempts):
            break
    if last.endswith("timeout"):
        return _json_error(504, f"No answer from {last}.")
    return _json_error(503, f"No replica of {model!r} could take the request ({last}).",
                       retry_after=s.retry_after_s)


async def _attempt(request: web.Request, state: GatewayState, up: Upstream, label: str,
                   body: bytes, started: float
                   ) -> tuple[Failure, str, web.StreamResponse | None]:
    """One try at one replica: (failure, detail, None) when another may be tried, else
    (_, _, the response given to the client)."""
    assert state.session is not None
    s = state.settings
    gauge = state.metrics.upstream_in_flight.labels(label, up.replica_label)
    state.outstanding[up.id] += 1
    gauge.inc()
    try:
        try:
            upstream_cm = state.session.post(
                state.upstream_url(up, request.path), data=body,
                timeout=state.upstream_timeout,
                headers=_upstream_headers(request, s.engine_key), allow_redirects=False)
            upstream = await upstream_cm.__aenter__()
        except aiohttp.ClientConnectorError as exc:
            return "connect", f"connect failed: {exc.os_error}", None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            return "disconnected", f"hung up before answering: {exc}", None
        except TimeoutError:
            return "timeout", "timeout", None
        try:
            if upstream.status == 503:
                # its own drain or a dead engine: nothing has gone to the client yet
                return "status", "answered 503", None
            return "status", "", await _relay(request, state, upstream, label, up, started)
        finally:
            # close, never pool, a connection whose answer was not read to the end: that
            # is how the engine learns the client is gone and aborts the request
            if not upstream.content.at_eof():
                upstream.close()
            await upstream_cm.__aexit__(None, None, None)
    finally:
        state.outstanding[up.id] -= 1
        if state.outstanding[up.id] <= 0:
            del state.outstanding[up.id]
        gauge.dec()


async def _relay(request: web.Request, state: GatewayState, upstream: aiohttp.ClientResponse,
                 label: str, up: Upstream, started: float) -> web.StreamResponse:
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name in _PASS_HEADERS:
        if name in upstream.headers:
            resp.headers[name] = upstream.headers[name]
    resp.headers["X-Reconciler-Replica"] = up.replica_label
    if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
        resp.headers["X-Accel-Buffering"] = "no"
    await resp.prepare(request)
    first = True
    write_timeout = state.settings.client_write_timeout_s
    try:
        async for chunk in upstream.content.iter_any():
            if first:
                state.metrics.ttfb.labels(label).observe(time.monotonic() - started)
                first = False
            # asyncio.timeout, not wait_for: no task per chunk on the hot path
            async with asyncio.timeout(write_timeout):
                await resp.write(chunk)
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError) as exc:
        if isinstance(exc, TimeoutError) and _client_stalled(request):
            state.metrics.client_gone.labels(label, "stopped_reading").inc()
            _log.info("client stopped reading; cut off: model=%s replica=%s", label, up.id)
        else:
            state.metrics.upstream_errors.labels(label, up.replica_label, "cut").inc()
            _log.info("stream from replica broke: model=%s replica=%s: %r", label, up.id, exc)
        _abort(request)
        return resp
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        state.metrics.client_gone.labels(label, "disconnected").inc()
        _abort(request)
        return resp
    if first:
        state.metrics.ttfb.labels(label).observe(time.monotonic() - started)
    await resp.write_eof()
    return resp


def _client_stalled(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and transport.get_write_buffer_size() > 0


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


# --- the application ----------------------------------------------------------------------------


async def _open_session(app: web.Application) -> Any:
    state = app[STATE]
    connector = aiohttp.TCPConnector(limit=state.settings.max_connections, limit_per_host=0,
                                     enable_cleanup_closed=True)
    # trust_env=False: requests to engines never go through $http_proxy
    state.session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                          auto_decompress=False)
    yield
    await state.session.close()


def build_app(state: GatewayState) -> web.Application:
    app = web.Application(client_max_size=state.settings.max_body_bytes)
    app[STATE] = state
    app.cleanup_ctx.append(_open_session)
    app.router.add_get("/v1/models", list_models)
    for route in MODEL_ROUTES:
        app.router.add_post(route, proxy)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    # `/` is the console's (issue 15): static files from gateway/static/
    console.add_routes(app)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    app.router.add_route("*", "/{tail:.*}", unknown_route)
    return app


async def _index(_request: web.Request) -> web.StreamResponse:
    index = STATIC_DIR / "index.html"
    if index.is_file():
        return web.FileResponse(index)
    return _json_error(404, "No console installed here.")
