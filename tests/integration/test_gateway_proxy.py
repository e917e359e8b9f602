"""The gateway as a real process in front of real stand-in engine processes
(testrigs.engines.stream_engine), routing from a stand-in daemon /status: streaming,
routing answers, keys, retries, and every kind of bad input, each with a clear answer and
nothing left behind (no request in flight, the engine's request cancelled)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testrigs.gateway_rig import (
    Engine,
    Gateway,
    StatusServer,
    free_port,
    replica_entry,
    start_engine,
    start_gateway,
    status_doc,
)

CHAT = "/v1/chat/completions"


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.engines: list[Engine] = []
        self.status = StatusServer(status_doc("n1", "127.0.0.1", {"d1": "m1", "d2": "m2"}, []))
        self.gateways: list[Gateway] = []

    def engine(self, model: str = "m1", *extra: str, deployment: str = "d1",
               index: int | None = None, publish: bool = True) -> Engine:
        e = start_engine(model, extra=extra)
        self.engines.append(e)
        if publish:
            self.publish(deployment, e.port, index)
        return e

    def publish(self, deployment: str, port: int, index: int | None = None,
                state: str = "Ready") -> None:
        reps = self.status.doc["replicas"]
        idx = len(reps) if index is None else index
        reps.append(replica_entry(deployment, idx, "n1", port, state=state))

    def gateway(self, **config: Any) -> Gateway:
        g = start_gateway(self.tmp, self.status.url, **config)
        self.gateways.append(g)
        return g

    def close(self) -> None:
        for g in self.gateways:
            g.stop()
        for e in self.engines:
            e.stop()
        self.status.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def chat(model: str = "m1", stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "stream": stream, **extra}


def wait_until(what: str, fn: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def settled(g: Gateway, e: Engine) -> None:
    """Nothing in flight anywhere: the gateway's gauges are 0, the engine holds nothing."""
    wait_until("the engine to drop the request", lambda: e.stats()["in_flight"] == 0)
    wait_until("the gateway to drop the request",
               lambda: g.metric("reconciler_gateway_requests_in_flight") == 0
               and g.metric("reconciler_gateway_upstream_requests_in_flight") == 0)


# --- the happy path -----------------------------------------------------------------------------


def test_stream_is_passed_on_chunk_by_chunk(rig: Rig) -> None:
    e = rig.engine("m1", "--tokens", "5", "--token-delay", "0.3")
    g = rig.gateway()
    g.wait_models({"m1"})
    conn = http.client.HTTPConnection(g.host, g.port, timeout=10)
    t0 = time.monotonic()
    conn.request("POST", CHAT, json.dumps(chat()), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    first = resp.readline()
    t_first = time.monotonic() - t0
    rest = resp.read()
    t_all = time.monotonic() - t0
    conn.close()
    assert first.startswith(b"data: ")
    assert rest.endswith(b"data: [DONE]\n\n") and rest.count(b"\" tok") == 4
    # the first token arrived long before the answer was complete: nothing buffered whole
    assert t_first < 0.6 < 1.2 < t_all, (t_first, t_all)
    settled(g, e)
    assert g.metric("reconciler_gateway_requests_total", model="m1", code="200") == 1
    assert g.metric("reconciler_gateway_time_to_first_byte_seconds_count", model="m1") == 1


def test_non_streaming_completions_and_embeddings_pass_through(rig: Rig) -> None:
    rig.engine("m1", "--tokens", "3")
    g = rig.gateway()
    g.wait_models({"m1"})
    code, headers, body = g.post(CHAT, chat(stream=False))
    assert code == 200 and body["choices"][0]["message"]["content"] == " tok0 tok1 tok2"
    assert headers["X-Reconciler-Replica"] == "d1/0"
    code, _, body = g.post("/v1/completions", {"model": "m1", "prompt": "x", "stream": False})
    assert code == 200 and body["choices"][0]["text"].startswith(" tok0")
    code, _, body = g.post("/v1/embeddings", {"model": "m1", "input": "x"})
    assert code == 200 and body["data"][0]["embedding"] == [0.0, 1.0]


def test_models_unknown_and_unavailable(rig: Rig) -> None:
    rig.engine("m1")
    rig.publish("d2", free_port(), state="Starting")
    g = rig.gateway(retryAfterSeconds=7)
    g.wait_models({"m1"})
    code, models = g.get("/v1/models")
    assert code == 200 and [m["id"] for m in models["data"]] == ["m1"]  # m2 is not Ready
    code, _, body = g.post(CHAT, chat("nope"))
    assert code == 404 and body["error"]["code"] == "model_not_found"
    assert "'m1', 'm2'" in body["error"]["message"]
    code, headers, body = g.post(CHAT, chat("m2"))
    assert code == 503 and headers["Retry-After"] == "7"
    assert body["error"]["type"] == "service_unavailable"
    # metric labels stay bounded: the unknown name is not a label value
    assert g.metric("reconciler_gateway_requests_total", model="_unknown", code="404") == 1


# --- keys ---------------------------------------------------------------------------------------


def test_api_keys_with_model_limits_and_engine_key(rig: Rig, tmp_path: Path) -> None:
    (tmp_path / "alice").write_text("sk-alice-123\n")
    (tmp_path / "bob").write_text("sk-bob-456\n")
    (tmp_path / "engine").write_text("engine-secret\n")
    rig.engine("m1", "--api-key", "engine-secret")
    rig.engine("m2", "--api-key", "engine-secret", deployment="d2")
    g = rig.gateway(apiKeys=[{"name": "alice", "file": str(tmp_path / "alice")},
                             {"name": "bob", "file": str(tmp_path / "bob"), "models": ["m2"]}],
                    engineKeyFile=str(tmp_path / "engine"))
    alice = {"Authorization": "Bearer sk-alice-123"}
    bob = {"Authorization": "Bearer sk-bob-456"}
    wait_until("routes", lambda: len(g.get("/v1/models", alice)[1]["data"]) == 2)
    assert g.get("/v1/models")[0] == 401
    assert [m["id"] for m in g.get("/v1/models", bob)[1]["data"]] == ["m2"]
    code, _, body = g.post(CHAT, chat("m1"))
    assert code == 401 and body["error"]["type"] == "authentication_error"
    assert g.post(CHAT, chat("m1"), {"Authorization": "Bearer wrong"})[0] == 401
    code, _, body = g.post(CHAT, chat("m1"), bob)
    assert code == 403 and body["error"]["type"] == "permission_error"
    # the engines answer only the engine key: these pass because the gateway swaps keys
    assert g.post(CHAT, chat("m1"), alice)[0] == 200
    assert g.post(CHAT, chat("m2"), bob)[0] == 200
    log = g.log_text()
    assert "sk-alice" not in log and "sk-bob" not in log and "engine-secret" not in log


# --- retries ------------------------------------------------------------------------------------


def test_retry_on_refused_connection_and_503_before_the_first_byte(rig: Rig) -> None:
    rig.publish("d1", free_port(), 0)  # Ready in status, but nothing listens there
    rig.engine("m1", "--answer-503", index=1)
    rig.engine("m1", index=2)
    g = rig.gateway(maxAttempts=3)
    wait_until("three replicas", lambda: g.get("/v1/models")[1]["data"] and
               g.get("/v1/models")[1]["data"][0]["replicas"] == 3)
    for i in range(9):
        code, headers, _ = g.post(CHAT, chat(user=f"u{i}"))
        assert code == 200 and headers["X-Reconciler-Replica"] == "d1/2"
    assert g.metric("reconciler_gateway_upstream_errors_total", kind="connect") >= 1
    assert g.metric("reconciler_gateway_upstream_errors_total", kind="status_503") >= 1
    assert g.metric("reconciler_gateway_retries_total") >= 2


def test_all_replicas_failing_gives_503_with_the_reason(rig: Rig) -> None:
    rig.engine("m1", "--answer-503")
    g = rig.gateway(maxAttempts=2)
    g.wait_models({"m1"})
    code, headers, body = g.post(CHAT, chat())
    assert code == 503 and "Retry-After" in headers
    assert "d1/0" in body["error"]["message"] and "503" in body["error"]["message"]


def test_engine_killed_mid_stream_breaks_only_that_stream(rig: Rig) -> None:
    victim = rig.engine("m1", "--tokens", "100", "--token-delay", "0.05", index=0)
    rig.engine("m1", "--tokens", "3", index=1)
    g = rig.gateway()
    wait_until("two replicas", lambda: g.get("/v1/models")[1]["data"] and
               g.get("/v1/models")[1]["data"][0]["replicas"] == 2)
    # find a client that lands on the victim (stable hash), start its stream
    conn = None
    for i in range(50):
        c = http.client.HTTPConnection(g.host, g.port, timeout=10)
        c.request("POST", CHAT, json.dumps(chat(user=f"k{i}")),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.headers["X-Reconciler-Replica"] == "d1/0":
            conn, resp = c, r
            break
        r.read()
        c.close()
    assert conn is not None
    resp.readline()
    os.kill(victim.proc.pid, signal.SIGKILL)
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        resp.read()  # a broken stream, not a clean (silently short) end
    conn.close()
    # the very next requests go to the other replica (connect refused -> retried), even
    # before the routing table has heard of the death
    for i in range(5):
        code, headers, _ = g.post(CHAT, chat(user=f"k{i}"))
        assert code == 200 and headers["X-Reconciler-Replica"] == "d1/1"
    assert g.metric("reconciler_gateway_upstream_errors_total", kind="cut") == 1


def test_a_replica_leaving_the_status_leaves_the_table_within_a_second(rig: Rig) -> None:
    rig.engine("m1")
    g = rig.gateway()
    g.wait_models({"m1"})
    rig.status.doc["replicas"][0]["state"] = "Draining"
    t0 = time.monotonic()
    wait_until("m1 to leave", lambda: g.get("/v1/models")[1]["data"] == [], timeout=3)
    assert time.monotonic() - t0 < 1.5
    assert g.post(CHAT, chat())[0] == 503


# --- bad input ----------------------------------------------------------------------------------


def test_oversized_body_is_refused_with_413(rig: Rig) -> None:
    e = rig.engine("m1")
    g = rig.gateway(maxBodyBytes=4096)
    g.wait_models({"m1"})
    big = chat(padding="x" * 10_000)
    code, _, body = g.post(CHAT, big)
    assert code == 413 and "4096" in body["error"]["message"]
    # without Content-Length (chunked upload), stopped while reading
    conn = http.client.HTTPConnection(g.host, g.port, timeout=10)
    data = json.dumps(big).encode()
    conn.request("POST", CHAT, body=iter([data[i:i + 1000] for i in range(0, len(data), 1000)]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "413"
    conn.close()
    assert e.stats()["started"] == 0  # nothing reached the engine


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"messages": []}', "must name a 'model'"),
    (b'{"model": 5}', "must name a 'model'"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_bodies_get_400(rig: Rig, body: bytes, fragment: str) -> None:
    rig.engine("m1")
    g = rig.gateway()
    code, _, answer = g.post(CHAT, body)
    assert code == 400 and fragment in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/nope"), ("GET", "/v1/chat/completions"), ("DELETE", "/v1/models"),
    ("GET", "/admin"),
])
def test_unknown_routes_get_404_in_openai_format(rig: Rig, method: str, path: str) -> None:
    g = rig.gateway()
    conn = http.client.HTTPConnection(g.host, g.port, timeout=5)
    conn.request(method, path)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 404 and body["error"]["type"] == "not_found_error"
    assert path in body["error"]["message"]


def test_root_serves_the_static_page(rig: Rig) -> None:
    g = rig.gateway()
    conn = http.client.HTTPConnection(g.host, g.port, timeout=5)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 200 and b"OpenAI endpoint" in resp.read()
    conn.close()


def _raw_request(g: Gateway, body: dict[str, Any], rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((g.host, g.port))
    data = json.dumps(body).encode()
    s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def test_slow_reader_is_cut_off_and_the_engine_request_cancelled(rig: Rig) -> None:
    # 2,000 chunks of 64 KiB (125 MiB) for a client that reads nothing
    e = rig.engine("m1", "--tokens", "2000", "--chunk-bytes", "65536")
    g = rig.gateway(clientWriteTimeoutSeconds=1)
    g.wait_models({"m1"})
    s = _raw_request(g, chat(), rcvbuf=4096)
    try:
        wait_until("the gateway to cut the slow reader",
                   lambda: g.metric("reconciler_gateway_client_disconnects_total",
                                    reason="stopped_reading") == 1, timeout=20)
        settled(g, e)
        stats = e.stats()
        assert stats["aborted"] == 1 and stats["completed"] == 0
    finally:
        s.close()
    assert g.post(CHAT, chat(max_tokens=2))[0] == 200  # and the gateway serves on


@pytest.mark.parametrize("when", ["mid-stream", "before the first byte"])
def test_client_disconnect_cancels_the_upstream_request(rig: Rig, when: str) -> None:
    args = (["--tokens", "200", "--token-delay", "0.05"] if when == "mid-stream"
            else ["--ttft", "30"])
    e = rig.engine("m1", *args)
    g = rig.gateway()
    g.wait_models({"m1"})
    s = _raw_request(g, chat())
    wait_until("the engine to start", lambda: e.stats()["started"] == 1)
    if when == "mid-stream":
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    s.close()
    wait_until("the engine to see the client go", lambda: e.stats()["aborted"] == 1)
    settled(g, e)
    assert g.metric("reconciler_gateway_client_disconnects_total", reason="disconnected") == 1


def test_sigterm_lets_streams_in_flight_finish(rig: Rig) -> None:
    rig.engine("m1", "--tokens", "10", "--token-delay", "0.1")
    g = rig.gateway(shutdownGraceSeconds=10)
    g.wait_models({"m1"})
    conn = http.client.HTTPConnection(g.host, g.port, timeout=10)
    conn.request("POST", CHAT, json.dumps(chat()), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.readline()
    g.proc.send_signal(signal.SIGTERM)
    rest = resp.read()
    conn.close()
    assert rest.endswith(b"data: [DONE]\n\n")
    assert g.proc.wait(10) == 0


def test_a_status_document_it_cannot_read_counts_as_an_unreachable_source(rig: Rig) -> None:
    rig.engine("m1")
    g = rig.gateway(statusStaleSeconds=0.5)
    g.wait_models({"m1"})
    assert g.metric("reconciler_gateway_status_source_up") == 1
    rig.status.doc["replicas"][0]["state"] = "Teleporting"  # a state this version can't name
    wait_until("m1 to leave", lambda: g.get("/v1/models")[1]["data"] == [], timeout=5)
    assert g.metric("reconciler_gateway_status_source_up") == 0
    assert "cannot read" in g.log_text()
