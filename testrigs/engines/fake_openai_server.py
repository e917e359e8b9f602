"""A tiny stand-in for a vLLM OpenAI server, for tests of the process port and chat client.

Serves `GET /health`, `GET /v1/models` and a streaming `POST /v1/chat/completions`, with
flags to misbehave the ways real engines do:

  --ready-after S       not ready for S seconds; meanwhile, per --loading:
                        "hang"    listen at once but accept nothing (probes time out; what
                                  vLLM does while loading weights after binding its socket)
                        "refuse"  bind the port only once ready
                        "503"     answer /health with 503
  --ignore-sigterm      SIGTERM does nothing (stop must fall back to SIGKILL)
  --exit-after S --exit-code N   exit with N after S seconds
  --fail-health-after S /health answers 500 from S seconds after becoming ready
  --log-bytes-per-sec N write N bytes a second of log lines to stdout
  --spawn-child         start a child process (same group, like vLLM's engine core)

Standard library only; runs under any python3.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ARGS: argparse.Namespace
STARTED = time.monotonic()
READY_AT: float | None = None


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} fake-engine: {text}", flush=True)


def ready() -> bool:
    return bool(time.monotonic() - STARTED >= ARGS.ready_after)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        global READY_AT
        if not ready():
            self._send_json(503, {"error": "loading"})
            return
        if READY_AT is None:
            READY_AT = time.monotonic()
        if self.path == "/health":
            failing = (
                ARGS.fail_health_after is not None
                and time.monotonic() - READY_AT >= ARGS.fail_health_after
            )
            self._send_json(500 if failing else 200, {})
        elif self.path == "/v1/models":
            models = [{"id": ARGS.model, "object": "model"}]
            self._send_json(200, {"object": "list", "data": models})
        else:
            self._send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/v1/chat/completions" or not ready():
            self._send_json(404 if ready() else 503, {"error": "no"})
            return
        if request.get("model") != ARGS.model:
            self._send_json(404, {"error": {"message": f"model {request.get('model')} unknown"}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        words = ["", "Hello", " from", " the", " fake", " engine."]
        for i, word in enumerate(words):
            delta: dict[str, str] = (
                {"role": "assistant", "content": ""} if i == 0 else {"content": word}
            )
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "model": ARGS.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.02)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def spam(rate: int) -> None:
    line = "x" * 99
    while True:
        for _ in range(max(1, rate // 100 // 10)):
            print(line, flush=True)
        time.sleep(0.1)


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--loading", choices=["hang", "refuse", "503"], default="503")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--fail-health-after", type=float, default=None)
    parser.add_argument("--log-bytes-per-sec", type=int, default=0)
    parser.add_argument("--spawn-child", action="store_true")
    parser.add_argument("--spawn-child-clean-env", action="store_true",
                        help="the child gets an empty env, as vLLM's EngineCore has no markers")
    ARGS = parser.parse_args()

    if ARGS.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:

        def on_sigterm(*_: object) -> None:
            say("SIGTERM: exiting")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_sigterm)
    say(f"pid {os.getpid()} pgid {os.getpgid(0)} member {os.environ.get('RECONCILER_MEMBER')}")
    if ARGS.spawn_child:
        # a grandchild that lives as long as it is not killed (like vLLM's EngineCore)
        env = {} if ARGS.spawn_child_clean_env else None
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], env=env)
    if ARGS.exit_after is not None:

        def bail() -> None:
            time.sleep(ARGS.exit_after)
            say(f"exiting with code {ARGS.exit_code}")
            os._exit(ARGS.exit_code)

        threading.Thread(target=bail, daemon=True).start()
    if ARGS.log_bytes_per_sec:
        threading.Thread(target=spam, args=(ARGS.log_bytes_per_sec,), daemon=True).start()

    if ARGS.loading == "refuse":
        time.sleep(max(0.0, ARGS.ready_after - (time.monotonic() - STARTED)))
    family = socket.AF_INET6 if ":" in ARGS.host else socket.AF_INET
    ThreadingHTTPServer.address_family = family
    server = ThreadingHTTPServer((ARGS.host, ARGS.port), Handler)  # binds and listens
    server.daemon_threads = True
    say(f"listening on {ARGS.host}:{ARGS.port}")
    if ARGS.loading == "hang":
        time.sleep(max(0.0, ARGS.ready_after - (time.monotonic() - STARTED)))
    say("ready")
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
