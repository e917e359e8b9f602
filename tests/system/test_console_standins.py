"""The console's drawings of what one CPU node cannot show, in a real headless Chromium: a
real gateway reads stand-in daemons (their /status and /history documents, built with the
schema's own model) of a three-node cluster with H100s, where

- n1 leads a 2-node Ray replica (head + driver on n1, worker on n2), GPU 1 is held by a
  foreign process, and the GPUs' memory and utilization moved over the last hour;
- n2 declares 2 GPUs and sees 1 (drift);
- n3 does not answer.

Asserted through the page: every node listed, n3 as unreachable with its error; the
foreign process and the drift flagged; the multi-node replica drawn with its head, worker
and driver on their nodes; GPU plots drawn; nothing at SEVERE on the browser's console.
The real daemon's documents are drawn in tests/system/test_console_browser.py.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from testrigs.browser import Browser, browser, unavailable_reason
from testrigs.gateway_rig import Gateway, free_port, start_gateway
from testrigs.status_docs import status_dict

pytestmark = [pytest.mark.system]

H100 = "NVIDIA H100 80GB HBM3"


class Daemon:
    """Serves `status` at /status and `history` at /history, like a daemon's listener."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.history: dict[str, Any] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                doc = {"/status": outer.status, "/history": outer.history,
                       "/logs": []}.get(self.path)
                body = json.dumps(doc).encode()
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def device(i: int, used: int, util: int, *, foreign: list[int] | None = None) -> dict[str, Any]:
    return {"index": i, "uuid": f"GPU-{i:08d}", "name": H100, "memoryTotalMib": 81559,
            "memoryUsedMib": used, "utilizationPct": util, "temperatureC": 40 + util // 4,
            "healthy": True, "healthDetail": "", "state": "foreign" if foreign else "assigned",
            "foreignPids": foreign or []}


def gpus(declared: int, devices: list[dict[str, Any]]) -> dict[str, Any]:
    foreign = sorted({p for d in devices for p in d["foreignPids"]})
    return {"declared": {"count": declared, "model": H100, "memoryGib": 80},
            "observed": {"count": len(devices), "available": True, "simulated": False,
                         "error": "", "driverVersion": "580.65", "cudaVersion": "13.0",
                         "devices": devices},
            "counts": {"assigned": 1, "foreign": len(foreign)}, "simulated": False,
            "foreignPids": foreign}


def history(now: float, states: dict[str, str], gpu_count: int) -> dict[str, Any]:
    """An hour of samples, one per 30 s: memory climbing as the engine loads, then busy."""
    samples = []
    for k in range(120):
        t = now - 3600 + k * 30
        load = min(1.0, k / 20)
        util = int(45 + 40 * math.sin(k / 7) ** 2) if k > 20 else int(10 * load)
        samples.append({"t": t, "gpus": [
            {"index": 0, "memoryUsedMib": int(72000 * load), "memoryTotalMib": 81559,
             "utilizationPct": util, "temperatureC": 40 + util // 4},
            {"index": 1, "memoryUsedMib": 30500, "memoryTotalMib": 81559,
             "utilizationPct": 97, "temperatureC": 71}][:gpu_count],
            "replicas": {key: ("Starting" if k < 20 else st) for key, st in states.items()}})
    return {"intervalSeconds": 30, "keepSeconds": 3600, "now": now, "samples": samples,
            "events": [], "readySince": {key: time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime(now - 3000))
                                         for key in states}}


def replica(node_members: list[dict[str, Any]], role: str) -> dict[str, Any]:
    return {"deployment": "big", "index": 0, "state": "Ready", "reason": "serving",
            "role": role, "nodes": ["n1", "n2"], "gpus": [0], "port": 8000,
            "specHash": "3f9a0c1d2e4b5a6978", "members": node_members, "restarts": 2,
            "ray": {"members": ["10.0.0.1", "10.0.0.2"], "gpus": 2.0, "mismatched": [],
                    "lost": [], "notes": []} if role == "leader" else None}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("console-standins")
    n1, n2 = Daemon(), Daemon()
    dead = free_port()
    nodes = {"name": "h100-pool", "nodes": [
        {"name": "n1", "address": "127.0.0.1", "statusPort": n1.port},
        {"name": "n2", "address": "127.0.0.1", "statusPort": n2.port},
        {"name": "n3", "address": "127.0.0.1", "statusPort": dead}]}
    deps = [{"name": "big", "servedName": "llama-70b", "model": "/models/llama-70b",
             "replicas": 1, "suspend": False,
             "parallelism": {"tensor": 1, "pipeline": 2, "data": 1}, "port": 8000,
             "localReplicas": 1, "readyReplicas": 1}]
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    member = {"specHash": "3f9a0c1d2e4b5a6978", "running": True, "health": "ready",
              "gpus": [0]}
    n1.status = status_dict(
        "n1", [replica([{**member, "role": "ray-head", "pid": 4100, "port": 21000},
                        {**member, "role": "engine", "pid": 4180, "port": 8000}], "leader")],
        deployments=deps, cluster=nodes, observedAt=stamp,
        gpus=gpus(2, [device(0, 72000, 80), device(1, 30500, 97, foreign=[31337])]))
    n1.history = history(now, {"big/0": "Ready"}, 2)
    n2.status = status_dict(
        "n2", [replica([{**member, "role": "ray-worker", "pid": 5100, "port": 21001}],
                       "follower")],
        deployments=deps, cluster=nodes, observedAt=stamp,
        gpus=gpus(2, [device(0, 71000, 78)]))
    n2.history = history(now, {"big/0": "Ready"}, 1)
    gw = start_gateway(tmp, f"http://127.0.0.1:{n1.port}", peers="cluster")
    try:
        yield gw, tmp
    finally:
        gw.stop()
        n1.close()
        n2.close()


@pytest.fixture(scope="module")
def page(cluster: tuple[Gateway, Path]) -> Iterator[Browser]:
    with browser() as b:
        b.driver.get(f"http://127.0.0.1:{cluster[0].port}/")
        yield b


def goto(b: Browser, view: str) -> None:
    b.driver.get(f"{b.driver.current_url.split('#')[0]}#{view}")
    b.wait(lambda: b.js("return document.body.dataset.loaded") == view, 20, f"{view} view")


def shots(cluster: tuple[Gateway, Path]) -> Path:
    return Path(os.environ.get("RECONCILER_CONSOLE_SCREENSHOTS") or cluster[1] / "shots")


def test_cluster_flags_foreign_processes_drift_and_unreachable_nodes(
        cluster: tuple[Gateway, Path], page: Browser) -> None:
    goto(page, "cluster")
    text = page.wait(lambda: page.text("#view-cluster"), 10, "cluster view")
    assert "Nodes (2 of 3 reachable)" in text
    assert "unreachable" in page.text('[data-node="n3"]')
    n1 = page.text('[data-node="n1"]')
    assert "foreign pids 31337" in n1 and "Foreign GPU processes: 31337" in n1
    assert "declared 2 GPUs, observed 1" in page.text('[data-node="n2"] .drift')
    assert "drift" not in n1.lower()
    page.screenshot(shots(cluster) / "cluster-gpus.png")
    assert page.errors() == []


def test_multinode_replica_drawn_with_its_members(cluster: tuple[Gateway, Path],
                                                  page: Browser) -> None:
    goto(page, "deployments")
    row = '[data-replica="big/0"]'
    page.wait(lambda: page.text(f"{row} .state") == "Ready", 10, "replica row")
    members = page.js(f"return [...document.querySelectorAll('{row} .member')]"
                      ".map((m) => m.textContent)")
    assert any(m.startswith("head @ n1") for m in members), members
    assert any(m.startswith("driver @ n1") for m in members), members
    assert any(m.startswith("worker @ n2") for m in members), members
    assert page.text(f"{row} .restarts") == "2"
    assert "ago" in page.text(f"{row} .since")
    page.screenshot(shots(cluster) / "deployments-multinode.png")
    assert page.errors() == []


def test_gpu_plots_drawn(cluster: tuple[Gateway, Path], page: Browser) -> None:
    goto(page, "plots")
    page.wait(lambda: page.js("return document.querySelectorAll('.plot polyline').length")
              >= 6, 10, "GPU lines")  # memory + utilization: 2 GPUs on n1, 1 on n2
    assert page.js("return document.querySelectorAll('.plot rect').length") >= 120
    page.screenshot(shots(cluster) / "plots-gpus.png")
    assert page.errors() == []
