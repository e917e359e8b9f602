"""/status serializes each published document once: the same bytes until the next publish,
then the new document (never a stale one)."""

from __future__ import annotations

import json
import urllib.request

from reconciler.daemon.http_api import HttpApi
from reconciler.daemon.metrics import Metrics
from schemas.status import NodeStatus
from testrigs.status_docs import node_status


def test_status_is_the_published_one() -> None:
    published: list[NodeStatus] = [node_status("n0")]

    def current() -> NodeStatus:
        return published[-1]

    api = HttpApi("127.0.0.1", 0, metrics=Metrics(), status=current,
                  healthz=lambda: (True, "ok"), webhook_secret=lambda: None,
                  on_webhook=lambda: None)
    port = api.port

    def get() -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            doc: dict[str, object] = json.loads(r.read())
            return doc


    api.start()
    try:
        first = api.status_body()
        assert api.status_body() is first  # not serialized again
        assert get()["node"] == "n0"
        published.append(node_status("n1"))
        assert get()["node"] == "n1"
        assert api.status_body() is not first
    finally:
        api.stop()
