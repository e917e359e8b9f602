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


def test_the_body_says_what_the_document_says() -> None:
    """Written by pydantic-core (model_dump_json), the body reads back as exactly what
    model_dump(mode="json") gives, non-ASCII text and small and large floats included."""
    st = node_status("nœud-0", [{"deployment": "d", "index": 0, "role": "single",
                                 "nodes": ["nœud-0"], "state": "Ready", "specHash": "h",
                                 "reason": "prêt ✓ \u2028 \"quoted\" \\ tab\t"}],
                     notes=["Déploiement", "\x00\x1f"])
    st = st.model_copy(update={"daemon": st.daemon.model_copy(
        update={"uptime_seconds": 1e-7})})
    api = HttpApi("127.0.0.1", 0, metrics=Metrics(), status=lambda: st,
                  healthz=lambda: (True, "ok"), webhook_secret=lambda: None,
                  on_webhook=lambda: None)
    try:
        body = api.status_body()
        assert json.loads(body) == st.model_dump(mode="json")
        assert json.loads(body) == json.loads(json.dumps(st.model_dump(mode="json"), indent=1))
        assert body.endswith(b"}\n")
    finally:
        api.stop()
