"""SourceHealth keeps a refused revision apart from a fetch error, and reports each
refusal once: what the daemon counts (metrics) and logs (status lastErrors)."""

from __future__ import annotations

from pathlib import Path

from reconciler.desired.source_sync import SourceHealth, SourceSync
from reconciler.testing.git_source import FakeGitSource
from testrigs.multinode_cluster import cluster_yaml_of

CLUSTER = cluster_yaml_of([("n0", "127.0.0.1")], gpus=1)
BROKEN = "apiVersion: reconciler.dev/v1alpha1\nkind: Model\n"


def test_refusal_once_fetch_errors_apart_and_a_good_commit_clears(tmp_path: Path) -> None:
    source = FakeGitSource()
    good = source.commit({"cluster.yaml": CLUSTER})
    health = SourceHealth(SourceSync(source, tmp_path))
    now = 0.0

    def sync() -> tuple[bool, str | None, str | None, str | None]:
        nonlocal now
        now += 1.0
        out = health.sync(now, 1000.0 + now)
        failed = out.fetch_failure.reason if out.fetch_failure is not None else None
        refused = out.new_refusal.reason if out.new_refusal is not None else None
        return out.fetched, failed, refused, out.error

    assert sync() == (True, None, None, None)
    assert health.failure is None and health.last_fetch_success == 1001.0

    bad = source.commit({"x.yaml": BROKEN}, subject="typo")
    fetched, failed, refused, error = sync()
    assert (fetched, failed, refused) == (True, None, "InvalidDesiredState")
    assert error is not None and error.startswith("InvalidDesiredState: ")
    assert health.refusal is not None and health.refusal.revision == bad
    assert sync() == (True, None, None, None)  # the same commit again: no new refusal

    source.set_down()
    assert sync() == (False, "FetchFailed", None, "FetchFailed: fake remote is down")
    # the refusal outranks the fetch error (it needs a person); both are kept
    assert health.failure is health.refusal and health.fetch_error is not None
    source.set_down(False)
    # judged again after the outage, still the same refusal: not counted twice
    assert sync() == (True, None, None, None)
    assert health.fetch_error is None and health.last_fetch_success == 1000.0 + now

    source.commit({"x.yaml": None}, subject="fix")
    assert sync() == (True, None, None, None)
    assert health.failure is None and health.source_sync.good is not None
    assert health.source_sync.good.revision != good


def test_an_unforeseen_error_is_a_retryable_fetch_error(tmp_path: Path) -> None:
    source = FakeGitSource()
    source.commit({"cluster.yaml": CLUSTER})
    sync = SourceSync(source, tmp_path)
    health = SourceHealth(sync)

    def boom(now: float) -> bool:
        raise RuntimeError("disk on fire")

    sync.sync = boom  # type: ignore[method-assign]
    out = health.sync(1.0, 2.0)
    assert not out.fetched and out.fetch_failure is not None
    assert (out.fetch_failure.reason, out.fetch_failure.retryable) == ("SyncError", True)
    assert out.error == "disk on fire" and health.failure is out.fetch_failure
