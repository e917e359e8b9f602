"""Pieces for gateway tests and benchmarks: stand-in engines (testrigs.engines.stream_engine)
as real processes, a stand-in daemon /status server, and the gateway itself as a real
`python -m reconciler gateway` process with a node config written for it.

The /status documents are shaped like a daemon's (`status_doc`); the real daemon's
documents are read by the gateway in tests/system/test_gateway_cluster.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from testrigs.status_docs import status_dict

REPO = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def http_json(host: str, port: int, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None, timeout: float = 10.0
              ) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        conn.request(method, path, body=data,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw
        return resp.status, dict(resp.headers.items()), parsed
    finally:
        conn.close()


# --- stand-in engines ---------------------------------------------------------------------------


@dataclass
class Engine:
    port: int
    model: str
    proc: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    def stats(self) -> dict[str, Any]:
        _, _, body = http_json(self.host, self.port, "GET", "/stats")
        return dict(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_engine(model: str = "m1", *, python: str = sys.executable, host: str = "127.0.0.1",
                 port: int | None = None, extra: Sequence[str] = ()) -> Engine:
    port = port or free_port(host)
    proc = subprocess.Popen(
        [python, "-m", "testrigs.engines.stream_engine", "--host", host, "--port", str(port),
         "--model", model, *extra],
        cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(host, port)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise
    return Engine(port, model, proc, host)


# --- a stand-in daemon /status ------------------------------------------------------------------


def replica_entry(deployment: str, index: int, node: str, port: int | None, *,
                  state: str = "Ready", spec_hash: str = "h1") -> dict[str, Any]:
    return {"deployment": deployment, "index": index, "state": state, "reason": "",
            "role": "single", "nodes": [node], "gpus": [index], "port": port,
            "specHash": spec_hash, "members": [], "ray": None, "restarts": 0}


def status_doc(node: str, address: str, deployments: dict[str, str],
               replicas: list[dict[str, Any]],
               cluster_nodes: list[tuple[str, str, int]] | None = None) -> dict[str, Any]:
    """A whole /status document (JSON) as a daemon serves it, from the fields routing
    reads. deployments: name -> served name; cluster_nodes: (name, address, statusPort)."""
    nodes = cluster_nodes or [(node, address, 9400)]
    deps = [{"name": n, "servedName": s, "model": f"/models/{n}", "replicas": 1,
             "suspend": False, "parallelism": {"tensor": 1, "pipeline": 1, "data": 1},
             "port": 8000, "localReplicas": 1, "readyReplicas": 1}
            for n, s in deployments.items()]
    return status_dict(node, replicas, deployments=deps,
                       cluster={"name": "c", "nodes": [
                           {"name": n, "address": a, "statusPort": p} for n, a, p in nodes]})


class StatusServer:
    """Serves `doc` (mutable; replace it to change what the gateway sees) at /status."""

    def __init__(self, doc: dict[str, Any], host: str = "127.0.0.1") -> None:
        self.doc = doc
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps(outer.doc).encode()
                self.send_response(200 if self.path == "/status" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the gateway process ------------------------------------------------------------------------


@dataclass
class Gateway:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    host: str = "127.0.0.1"
    config: dict[str, Any] = field(default_factory=dict)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        code, _, body = http_json(self.host, self.port, "GET", path, headers=headers)
        return code, body

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None,
             timeout: float = 30.0) -> tuple[int, dict[str, str], Any]:
        return http_json(self.host, self.port, "POST", path, body, headers, timeout)

    def metric(self, name: str, **labels: str) -> float:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            head, _, rest = series.partition("{")
            if head != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total

    def wait_models(self, want: set[str], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                code, seen = self.get("/v1/models")
                if code == 200 and {m["id"] for m in seen["data"]} >= want:
                    return
            time.sleep(0.1)
        raise AssertionError(f"gateway never listed {want}: {seen}\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)


def node_config(tmp: Path, daemon_url: str, gateway: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "reconciler.dev/v1alpha1", "kind": "NodeConfig", "nodeName": "n1",
        "source": {"url": str(tmp / "repo")}, "stateDir": str(tmp / "state"),
        "engine": {"python": sys.executable},
        "gateway": {"daemonUrl": daemon_url, "peers": [], "statusIntervalSeconds": 0.2,
                    **gateway},
    }


def start_gateway(tmp: Path, daemon_url: str, *, host: str = "127.0.0.1",
                  port: int | None = None, **gateway: Any) -> Gateway:
    port = port or free_port(host)
    gateway.setdefault("listen", {"address": host, "port": port})
    config = node_config(tmp, daemon_url, gateway)
    path = tmp / f"gateway-{port}.json"
    path.write_text(json.dumps(config))
    log = tmp / f"gateway-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "gateway", "--config", str(path)],
            cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_port(host, port)
    except TimeoutError:
        proc.kill()
        proc.wait()
        raise AssertionError(f"gateway did not start:\n{log.read_text()}") from None
    return Gateway(port, proc, log, host, config)


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for t in things:
            with contextlib.suppress(Exception):
                t.stop() if hasattr(t, "stop") else t.close()
