"""Where a crashed engine's restart is decided (reconciler/core/restarts.py): a crash or
a failing health check becomes a failure, the backoff decides when the next start comes,
a healthy period forgives the failures, and the records apply.py persists follow the
same forgiveness rule."""

from __future__ import annotations

import pytest

from reconciler.core.backoff import BackoffPolicy
from reconciler.core.plan import plan
from reconciler.core.restarts import after_failure, after_ready
from reconciler.core.spec_hash import spec_hash
from reconciler.core.vocabulary import (
    Inventory,
    ProcessObservation,
    Reap,
    ReplicaKey,
    RestartRecord,
    Stop,
)
from testrigs.builders import cluster, ctx, deployment, desired, gpus, node, observed, proc
from tests.unit.core.plan_helpers import EMPTY, kinds

LLAMA = ReplicaKey("llama", 0)
C = cluster(node("n0"))
D = deployment("llama")
H = spec_hash(C, D)
DEAD = proc("llama", spec_hash=H, running=False, exit_code=137)


def restarts(**record: float | int) -> Inventory:
    return Inventory(restarts={LLAMA: RestartRecord(**record)})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("procs", "inventory", "now", "expected", "state"),
    [
        pytest.param((DEAD,), EMPTY, 100.0, ["Reap:llama/0/engine", "Start:llama/0/engine"],
                     None, id="first-crash-restarts-at-once"),
        # second failure: 10 s (+-10 % jitter) before the next start
        pytest.param((DEAD,), restarts(failures=1, last_failure_at=100.0), 101.0,
                     ["Reap:llama/0/engine"], "CrashLoopBackOff", id="second-crash-backs-off"),
        pytest.param((), restarts(failures=2, last_failure_at=101.0), 105.0, [], None,
                     id="within-the-delay-nothing-starts"),
        pytest.param((), restarts(failures=2, last_failure_at=101.0), 113.0,
                     ["Start:llama/0/engine"], None, id="delay-passed-restarts"),
        pytest.param((), restarts(failures=6, last_failure_at=1000.0, ready_since=1000.0),
                     1700.0, ["Start:llama/0/engine"], None,
                     id="forgiven-after-a-healthy-period"),
    ],
)
def test_crash_restarts_at_once_then_backs_off(
    procs: tuple[ProcessObservation, ...],
    inventory: Inventory,
    now: float,
    expected: list[str],
    state: str | None,
) -> None:
    p = plan(desired(C, D), observed("n0", gpus(8), *procs), inventory, now, ctx("n0"))
    assert kinds(p) == expected
    if state is not None:
        assert p.replicas[LLAMA].state == state
    if procs:
        reap = p.actions[0]
        assert isinstance(reap, Reap) and reap.failure and "code 137" in reap.reason


LOADING = proc("llama", spec_hash=spec_hash(C, deployment(
    "llama", probes={"startupTimeoutSeconds": 60})), health="starting", started_at=0.0)
HUNG = proc("llama", spec_hash=H, health="unhealthy", unhealthy_since=100.0)


@pytest.mark.parametrize(
    ("probes", "running", "now", "why"),
    [
        pytest.param({"startupTimeoutSeconds": 60}, LOADING, 59.0, None,
                     id="loading-within-the-startup-timeout"),
        pytest.param({"startupTimeoutSeconds": 60}, LOADING, 61.0, "startup timeout",
                     id="startup-timeout-stops-with-failure"),
        pytest.param({}, HUNG, 110.0, None, id="unhealthy-within-the-grace-period"),
        pytest.param({}, HUNG, 131.0, "unhealthy for 31s", id="hung-engine-stopped-after-grace"),
    ],
)
def test_failing_health_stops_with_failure(
    probes: dict[str, int], running: ProcessObservation, now: float, why: str | None
) -> None:
    d = deployment("llama", probes=probes) if probes else D
    p = plan(desired(C, d), observed("n0", gpus(8), running), EMPTY, now, ctx("n0"))
    if why is None:
        assert p.empty
        return
    assert kinds(p)[0] == "Stop:llama/0/engine"
    stop = p.actions[0]
    assert isinstance(stop, Stop) and stop.failure and why in stop.reason


POLICY = BackoffPolicy(reset_after_s=600.0)


@pytest.mark.parametrize(
    ("old", "now", "failures"),
    [
        pytest.param(None, 10.0, 1, id="first-failure"),
        pytest.param(RestartRecord(failures=3, last_failure_at=5.0, total_restarts=3), 10.0, 4,
                     id="consecutive-failures-add-up"),
        pytest.param(RestartRecord(failures=3, ready_since=100.0, total_restarts=3), 699.0, 4,
                     id="ready-too-briefly-is-not-forgiven"),
        pytest.param(RestartRecord(failures=3, ready_since=100.0, total_restarts=3), 700.0, 1,
                     id="ready-for-reset-after-is-forgiven"),
    ],
)
def test_a_failure_record_follows_the_one_forgiveness_rule(
    old: RestartRecord | None, now: float, failures: int
) -> None:
    new = after_failure(old, now, "exited (code 1)", POLICY)
    assert new.failures == failures
    # the rule plan() uses for the delay agrees with the record written
    assert POLICY.effective_failures(old or RestartRecord(), now) + 1 == failures
    assert new.last_failure_at == now and new.ready_since is None
    assert new.total_restarts == (old.total_restarts if old else 0) + 1
    assert new.last_reason == "exited (code 1)"


def test_readiness_is_recorded_once_per_ready_period() -> None:
    first = after_ready(None, 50.0)
    assert first == RestartRecord(ready_since=50.0)
    assert after_ready(first, 60.0) is None, "already ready: nothing to write"
    again = after_ready(after_failure(first, 70.0, "crash", POLICY), 80.0)
    assert again is not None and again.ready_since == 80.0 and again.failures == 1
