"""The daemon's one HTTP listener: /metrics, /status, /healthz, /sd/engines (Prometheus
service discovery of its engines), the console's read-only /history and /logs (engine logs,
bounded: reconciler.daemon.engine_logs) and POST /webhook.

stdlib `ThreadingHTTPServer` in a thread of its own. Handlers never touch the reconcile
loop: they read the last snapshot (taken under a lock by the worker) and, for a webhook,
only set the wake-up flag. A slow engine start therefore never blocks a scrape.

The webhook is authenticated with `verify_webhook` against the secret read from the file
named in the node config; a bad or missing signature is a 401 (counted). The payload is
never parsed or trusted: a valid call only makes the next fetch come sooner. Bodies over
`max_body_bytes` are refused (413) before they are read; a body must come with a
Content-Length (no chunked uploads).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from reconciler.daemon import engine_logs
from reconciler.daemon.discovery import SD_PATH, engine_targets
from reconciler.daemon.metrics import CONTENT_TYPE_LATEST, Metrics
from reconciler.daemon.webhook_auth import WebhookAuth, verify_webhook
from schemas.status import NodeStatus

log = logging.getLogger(__name__)

MAX_WEBHOOK_BODY = 2 * 1024 * 1024  # GitHub push payloads are far below this in practice


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: HttpApi) -> None:
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        self.api = api
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr, which breaks the JSON-lines
        # log; a client that resets its connection (after a 401, say) is not an error
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("http client went away", extra={"client": str(client_address[0]),
                                                      "error": type(exc).__name__})
            return
        log.exception("http request failed", extra={"client": str(client_address[0])})


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds a client may take per read: no slow-loris thread pile-up
    server_version = "reconciler"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", extra={"client": self.client_address[0],
                                         "request": format % args})

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        api = self.server.api
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._send(200, api.metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/status":
                self._send(200, api.status_body(), "application/json")
            elif path == SD_PATH:
                # Prometheus http_sd_configs: this node's engines with their labels
                body = json.dumps(engine_targets(api.status())).encode() + b"\n"
                self._send(200, body, "application/json")
            elif path == "/history" and api.history is not None:
                self._send(200, json.dumps(api.history()).encode(), "application/json")
            elif path == "/logs" and api.state_dir is not None:
                body = json.dumps(engine_logs.list_logs(api.state_dir)).encode()
                self._send(200, body, "application/json")
            elif path.startswith("/logs/") and api.state_dir is not None:
                self._log_piece(api.state_dir, path.removeprefix("/logs/"))
            elif path in ("/healthz", "/livez", "/readyz"):
                ok, detail = api.healthz()
                self._send(200 if ok else 503, (detail + "\n").encode())
            else:
                self._send(404, b"not found\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _log_piece(self, state_dir: Path, member: str) -> None:
        query = parse_qs(self.path.partition("?")[2])
        try:
            offset = int(query["offset"][0]) if "offset" in query else None
            limit = int(query.get("limit", [str(engine_logs.MAX_CHUNK)])[0])
        except ValueError:
            self._send(400, b"offset and limit are byte counts\n")
            return
        try:
            piece = engine_logs.read_log(state_dir, member, offset, limit)
        except engine_logs.LogNotFound as exc:
            self._send(404, (str(exc) + "\n").encode())
            return
        self._send(200, json.dumps(piece).encode(), "application/json")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/webhook":
            self._drain_or_close()
            self._send(404, b"not found\n")
            return
        self.server.api.handle_webhook(self)

    def _drain_or_close(self) -> None:
        self.close_connection = True

    do_PUT = do_POST
    do_DELETE = do_POST


class HttpApi:
    def __init__(
        self,
        address: str,
        port: int,
        *,
        metrics: Metrics,
        status: Callable[[], NodeStatus],
        healthz: Callable[[], tuple[bool, str]],
        webhook_secret: Callable[[], bytes | None],
        on_webhook: Callable[[], None],
        max_body_bytes: int = MAX_WEBHOOK_BODY,
        history: Callable[[], dict[str, Any]] | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.history = history
        self.state_dir = state_dir
        self.metrics = metrics
        self.status = status
        self.healthz = healthz
        self.webhook_secret = webhook_secret
        self.on_webhook = on_webhook
        self.max_body_bytes = max_body_bytes
        # the document changes once per tick but is asked for by every peer's tick, status
        # --cluster and scrapers: serialize each published one once (at 2,000 deployments
        # that is tens of ms of the daemon's one core per request)
        self._status_body: tuple[object, bytes] | None = None
        self._server = _Server((address, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="http-api", daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def address(self) -> str:
        return str(self._server.server_address[0])

    def status_body(self) -> bytes:
        status = self.status()
        cached = self._status_body
        if cached is not None and cached[0] is status:
            return cached[1]
        # pydantic-core writes the document json.dumps(model_dump(mode="json"), indent=1)
        # wrote, about 10x faster: the same bytes but for non-ASCII text, now UTF-8 rather
        # than \u escapes (tests/integration/test_status_body_cache.py reads both back)
        body = status.model_dump_json(indent=1).encode() + b"\n"
        self._status_body = (status, body)
        return body

    def start(self) -> None:
        self._thread.start()
        log.info("http listening", extra={"address": self.address, "port": self.port})

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()  # blocks until serve_forever returns: only if it runs
            self._thread.join(timeout=5)
        self._server.server_close()

    # --- webhook -------------------------------------------------------------------------

    def handle_webhook(self, h: _Handler) -> None:
        secret = self.webhook_secret()
        length_header = h.headers.get("Content-Length")
        if h.command != "POST":
            h.close_connection = True
            h._send(405, b"method not allowed\n", extra={"Allow": "POST"})
            return
        if secret is None:
            self.metrics.webhook("disabled")
            h.close_connection = True
            h._send(404, b"webhook disabled\n")
            return
        if h.headers.get("Transfer-Encoding") or length_header is None:
            self.metrics.webhook("bad_request")
            h.close_connection = True
            h._send(411, b"Content-Length required\n")
            return
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self.metrics.webhook("bad_request")
            h.close_connection = True
            h._send(400, b"bad Content-Length\n")
            return
        if length > self.max_body_bytes:
            self.metrics.webhook("too_large")
            h.close_connection = True
            h._send(413, b"payload too large\n")
            return
        try:
            body = h.rfile.read(length)
        except (TimeoutError, OSError):
            self.metrics.webhook("bad_request")
            h.close_connection = True
            return
        if len(body) != length:
            self.metrics.webhook("bad_request")
            h.close_connection = True
            h._send(400, b"short body\n")
            return
        verdict = verify_webhook(list(h.headers.items()), body, secret)
        if verdict is not WebhookAuth.OK:
            self.metrics.webhook("unauthorized")
            log.warning("webhook refused", extra={"client": h.client_address[0],
                                                  "verdict": verdict.value})
            h._send(401, b"unauthorized\n", extra={"WWW-Authenticate": "HMAC-SHA256"})
            return
        self.metrics.webhook("accepted")
        log.info("webhook accepted", extra={"client": h.client_address[0]})
        self.on_webhook()
        h._send(204, b"")
