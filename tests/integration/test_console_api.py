"""The console's HTTP side without a browser: a daemon in-process over the stateful fakes
(its real HTTP listener) and a real gateway process in front of it.

Daemon: /history carries GPU samples and revision events; /logs reads engine logs and
refuses names that would leave the state dir. Gateway: the page and every console answer
carry the CSP (no inline script), the page has no inline script to need it, the console's
JSON needs the API key when keys are configured, nothing under /console/ changes state,
an unreachable peer is listed as such, and member names are checked before any relay.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon.loop import Daemon
from reconciler.daemon.wiring import DaemonPorts
from reconciler.gateway.console import CSP
from reconciler.testing.git_source import FakeGitSource
from reconciler.testing.gpus import FakeGpuPort
from reconciler.testing.processes import FakeProcessPort
from schemas.nodeconfig import NodeConfig
from testrigs.gateway_rig import Gateway, free_port, start_gateway
from tests.integration.test_engine_discovery import CLUSTER, deployment

STATIC = Path(__file__).resolve().parents[2] / "reconciler" / "gateway" / "static"
KEY = "sk-console"


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.headers.items()), resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp_path = tmp_path_factory.mktemp("console-daemon")
    source = FakeGitSource()
    source.commit({"cluster.yaml": CLUSTER, "chat.yaml": deployment("chat", 8000)},
                  subject="<img src=x onerror=alert(1)>")
    config = NodeConfig.model_validate({
        "nodeName": "n0",
        "source": {"url": "https://git.example.test/c.git", "pollIntervalSeconds": 60},
        "stateDir": str(tmp_path / "state"),
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "engine": {"python": "/opt/vllm/bin/python"},
    })
    d = Daemon(config, ports_override=DaemonPorts(
        source=source, gpus=FakeGpuPort(2), processes=FakeProcessPort(tmp_path / "state")))
    assert d.api is not None
    d.api.start()
    d.request_fetch("test")
    d.iterate()
    d.iterate()
    source.commit({"broken.yaml": "kind: ModelDeployment\nspec: [\n"}, subject="broken")
    d.request_fetch("test")
    d.iterate()
    logs = tmp_path / "state" / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "chat.0.engine.log").write_text("INFO engine started\n")
    (tmp_path / "state" / "node-secret").write_text("TOPSECRET-CONTENT")
    yield d
    d.shutdown()
    source.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, daemon: Daemon) -> Iterator[Gateway]:
    assert daemon.api is not None
    tmp_path = tmp_path_factory.mktemp("console-gateway")
    key = tmp_path / "key"
    key.write_text(KEY)
    dead = free_port()
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{daemon.api.port}",
                       peers=[f"127.0.0.1:{dead}"],
                       apiKeys=[{"name": "t", "file": str(key)}])
    yield gw
    gw.stop()


def test_daemon_history_and_logs(daemon: Daemon) -> None:
    assert daemon.api is not None
    port = daemon.api.port
    code, _, body = request(port, "GET", "/history")
    hist = json.loads(body)
    assert code == 200
    assert [g["index"] for g in hist["samples"][-1]["gpus"]] == [0, 1]
    kinds = [e["kind"] for e in hist["events"]]
    assert "attempted" in kinds and "refused" in kinds
    refused = next(e for e in hist["events"] if e["kind"] == "refused")
    assert refused["problems"], refused
    code, _, body = request(port, "GET", "/logs")
    assert json.loads(body)[0]["member"] == "chat.0.engine"
    code, _, body = request(port, "GET", "/logs/chat.0.engine?offset=5")
    assert code == 200 and json.loads(body)["text"] == "engine started\n"
    for bad in ("/logs/..%2Fnode-secret", "/logs/../node-secret", "/logs/chat.0.engine/..",
                "/logs/%2e%2e", "/logs/chat.0.engine%00"):
        code, _, body = request(port, "GET", bad)
        assert code == 404 and b"TOPSECRET" not in body, bad
    assert request(port, "GET", "/logs/chat.0.engine?offset=-x")[0] == 400


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_page_and_answers_carry_the_csp(gateway: Gateway) -> None:
    for path in ("/", "/static/app.js", "/static/style.css", "/console/api/info"):
        code, headers, _ = request(gateway.port, "GET", path, auth())
        assert code == 200, path
        assert headers["Content-Security-Policy"] == CSP
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    # the openai routes are the models' answers, not the page's: left as they were
    _, headers, _ = request(gateway.port, "GET", "/v1/models", auth())
    assert "Content-Security-Policy" not in headers


def test_page_has_no_inline_script_or_handler() -> None:
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+=", html)
    for js in STATIC.glob("*.js"):
        text = js.read_text()
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, js.name
        assert "eval(" not in text and "new Function" not in text, js.name


def test_console_json_needs_the_key_and_lists_every_node(gateway: Gateway) -> None:
    code, _, body = request(gateway.port, "GET", "/console/api/info")
    assert code == 200 and json.loads(body)["keysRequired"] is True
    assert request(gateway.port, "GET", "/console/api/nodes")[0] == 401
    assert request(gateway.port, "GET", "/console/api/nodes", auth("wrong"))[0] == 401
    code, _, body = request(gateway.port, "GET", "/console/api/nodes", auth())
    nodes: list[dict[str, Any]] = json.loads(body)["nodes"]
    assert code == 200
    assert (nodes[0]["name"], nodes[0]["reachable"]) == ("n0", True)
    assert nodes[1]["reachable"] is False and nodes[1]["error"]
    code, _, body = request(gateway.port, "GET", "/console/api/history?node=n0", auth())
    assert code == 200 and json.loads(body)["samples"]
    code, _, body = request(gateway.port, "GET",
                            "/console/api/log?node=n0&member=chat.0.engine", auth())
    assert code == 200 and json.loads(body)["text"] == "INFO engine started\n"


@pytest.mark.parametrize("query, status", [
    ("node=n0&member=../node-secret", 400),
    ("node=n0&member=chat.0.engine%2F..", 400),
    ("node=n0&member=chat.0.engine&offset=-1", 400),
    ("node=elsewhere&member=chat.0.engine", 404),
    ("node=n0&member=gone.0.engine", 404),
])
def test_log_relay_checks_names(gateway: Gateway, query: str, status: int) -> None:
    code, _, body = request(gateway.port, "GET", f"/console/api/log?{query}", auth())
    assert code == status and b"TOPSECRET" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/console/api/nodes", "/console/api/log", "/",
                                  "/static/app.js"])
def test_nothing_under_the_console_changes_state(gateway: Gateway, method: str,
                                                 path: str) -> None:
    code, _, _ = request(gateway.port, method, path, auth())
    assert code in (404, 405), (method, path, code)
