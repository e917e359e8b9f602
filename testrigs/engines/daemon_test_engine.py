"""A trivial stand-in for `python -m vllm.entrypoints.openai.api_server` for daemon tests.

Accepts (and ignores) any vLLM flag; serves `GET /health` (200) and `GET /v1/models`
listing `--served-model-name`. Standard library only.

TEST_ENGINE_EXIT_AFTER_S=<seconds> in its environment makes it exit with code 3 that long
after it started serving (a flapping engine for backoff tests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="model")
    parser.add_argument("--served-model-name", default=None)
    args, _unknown = parser.parse_known_args()
    name = args.served_model_name or args.model

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/health":
                body = b""
            elif self.path == "/v1/models":
                body = json.dumps({"data": [{"id": name, "root": args.model}]}).encode()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"daemon-test-engine serving {name} on {args.host}:{args.port}", flush=True)
    exit_after = os.environ.get("TEST_ENGINE_EXIT_AFTER_S")
    if exit_after:
        timer = threading.Timer(float(exit_after), lambda: os._exit(3))
        timer.daemon = True
        timer.start()
    server.serve_forever()


if __name__ == "__main__":
    main()
