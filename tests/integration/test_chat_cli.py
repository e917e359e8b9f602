"""`reconciler chat`: through a gateway (one model, and --compare of two) and straight to
an engine found through the daemon's /status, against stand-in engine processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.cli.main import main
from testrigs.gateway_rig import (
    Engine,
    Gateway,
    StatusServer,
    replica_entry,
    start_engine,
    start_gateway,
    status_doc,
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[StatusServer, Gateway, list[Engine]]]:
    engines = [start_engine("m1", extra=["--tokens", "8", "--token-delay", "0.01"]),
               start_engine("m2", extra=["--tokens", "4"])]
    status = StatusServer(status_doc("n1", "127.0.0.1", {"d1": "m1", "d2": "m2"}, [
        replica_entry("d1", 0, "n1", engines[0].port),
        replica_entry("d2", 0, "n1", engines[1].port)]))
    g = start_gateway(tmp_path, status.url)
    g.wait_models({"m1", "m2"})
    yield status, g, engines
    g.stop()
    status.close()
    for e in engines:
        e.stop()


def test_chat_through_the_gateway(cluster: tuple[StatusServer, Gateway, list[Engine]],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, g, _ = cluster
    base = f"http://127.0.0.1:{g.port}"
    # a deployment name becomes its served name through the daemon's status
    assert main(["chat", "d1", "hello", "--gateway", base, "--url", status.url]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(" tok0 tok1")
    assert "-- m1 (replica d1/0): time to first token" in out.err and "tokens/s" in out.err
    assert main(["chat", "--compare", "m1", "m2", "hi", "--gateway", base]) == 0
    out = capsys.readouterr()
    assert "=== m1" in out.out and "=== m2" in out.out and out.out.count("tokens/s") == 2
    assert main(["chat", "nope", "hi", "--gateway", base]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_chat_straight_to_an_engine_without_a_gateway(
        cluster: tuple[StatusServer, Gateway, list[Engine]],
        capsys: pytest.CaptureFixture[str]) -> None:
    status, _, _ = cluster
    assert main(["chat", "d2", "hello", "--url", status.url]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(" tok0") and "d2/0 at http://127.0.0.1:" in out.err
    assert main(["chat", "--compare", "m1", "m2", "hi", "--url", status.url]) == 2
    assert "needs a gateway" in capsys.readouterr().err
