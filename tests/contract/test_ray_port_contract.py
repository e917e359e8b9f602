"""The Ray port's contract: the real port over real `ray start` processes and the fake
(reconciler.testing.ray_nodes) answer the same scenarios the same way.

One scenario walks a replica's Ray cluster through its life on three test hosts: nothing
at the address yet (None, not "empty"); a head alone; a worker of the same spec hash
joins (counted, its GPU too); a worker of another hash joins (listed as mismatched, not
counted); a counted worker dies (lost, no longer alive); the head dies (None again).

The real run starts `ray start --head/--address --block` from the engine environment
(.venv-engine) in network namespaces (198.18.0.0/15), reads the head's GCS with
`SubprocessRayPort`, and kills each node's process group (never `ray stop`). It needs
root and ~3 GB of memory; run it under the heavy lock:

    flock /work/heavy.lock timeout 900 .venv/bin/python -m pytest tests/contract -m ray
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from reconciler.core.ray_argv import (
    SPEC_HASH_LABEL,
    gcs_address,
    ray_head_argv,
    ray_node_env,
    ray_port_plan,
    ray_worker_argv,
)
from reconciler.core.vocabulary import RayView
from reconciler.ports.ray_nodes import RayClusterView, SubprocessRayPort
from reconciler.testing.ray_nodes import FakeRayNodes
from testrigs.multinode_cluster import engine_python, ray_unavailable_reason
from testrigs.netns import NetnsHarness, netns_unavailable_reason

HASH = "aaaa1111"
OTHER = "bbbb2222"
IPS = ("198.18.0.11", "198.18.0.12", "198.18.0.13")


class ReadsRay(Protocol):
    def cluster(self, gcs_address: str) -> RayClusterView | None: ...
    def view(self, gcs_address: str, spec_hash: str | None = None) -> RayView | None: ...


class RayWorld(Protocol):
    """Three hosts, one replica's Ray cluster on them, and the port that reads it."""

    port: ReadsRay
    ips: tuple[str, ...]
    address: str

    def start_head(self, host: int, spec_hash: str, gpus: int) -> object: ...
    def join(self, host: int, spec_hash: str, gpus: int) -> object: ...
    def kill(self, node: object) -> None: ...
    def eventually(self, what: str, fn: Callable[[], Any], timeout: float = 60) -> Any: ...


class FakeWorld:
    def __init__(self) -> None:
        self.nodes = FakeRayNodes()
        self.port: ReadsRay = self.nodes
        self.ips: tuple[str, ...] = IPS
        self.address = f"{IPS[0]}:23000"

    def start_head(self, host: int, spec_hash: str, gpus: int) -> object:
        return self.nodes.start_head(self.address, self.ips[host], spec_hash, gpus)

    def join(self, host: int, spec_hash: str, gpus: int) -> object:
        return self.nodes.join(self.address, self.ips[host], spec_hash, gpus)

    def kill(self, node: object) -> None:
        self.nodes.kill(str(node))

    def eventually(self, what: str, fn: Callable[[], Any], timeout: float = 60) -> Any:
        got = fn()  # a fake is consistent at once: "eventually" must already hold
        assert got, f"{what}: not so right away (fake)"
        return got


class RealWorld:
    def __init__(self, net: NetnsHarness, python: Path, tmp: Path) -> None:
        self.net = net
        self.ips = tuple(h.ip for h in net.hosts)
        self.ports = ray_port_plan(23000, 23040)
        self.address = gcs_address(self.ips[0], self.ports)
        self.ray_exe = str(python.parent / "ray")
        self.tmp = tmp
        self.base = {
            "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            # notice dead nodes in ~3 s instead of Ray's default 15 s
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        head = net.hosts[0]
        self.port: ReadsRay = SubprocessRayPort(
            str(python), timeout_s=20, env=self.base,
            argv_prefix=["ip", "netns", "exec", head.netns],
        )
        self.logs = tmp / "logs"
        self.logs.mkdir()

    def _start(self, host: int, argv: list[str]) -> subprocess.Popen[bytes]:
        h = self.net.hosts[host]
        env = ray_node_env(self.base, h.ip, [host], nccl_ifname=h.ifname, gloo_ifname=h.ifname)
        with open(self.logs / f"{h.name}.log", "ab") as log:
            return self.net.popen(h, argv, env, stdout=log)

    def start_head(self, host: int, spec_hash: str, gpus: int) -> object:
        return self._start(host, ray_head_argv(
            self.ray_exe, self.ips[host], self.ports, gpus, str(self.tmp / f"h{host}"),
            num_cpus=1, object_store_memory=80 << 20, labels={SPEC_HASH_LABEL: spec_hash},
        ))

    def join(self, host: int, spec_hash: str, gpus: int) -> object:
        return self._start(host, ray_worker_argv(
            self.ray_exe, self.address, self.ips[host], self.ports, gpus,
            temp_dir=str(self.tmp / f"h{host}"), num_cpus=1, object_store_memory=80 << 20,
            labels={SPEC_HASH_LABEL: spec_hash},
        ))

    def kill(self, node: object) -> None:
        assert isinstance(node, subprocess.Popen)
        self.net.kill(node, signal.SIGKILL)  # the whole `ray start --block` group

    def eventually(self, what: str, fn: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(self.logs.iterdir()))
        raise AssertionError(f"{what}: not within {timeout:.0f} s (last {last!r})\n{logs}")


@pytest.fixture(params=[
    "fake",
    pytest.param("real", marks=[pytest.mark.system, pytest.mark.ray, pytest.mark.netns,
                                pytest.mark.timeout(240)]),
])
def world(request: pytest.FixtureRequest) -> Iterator[RayWorld]:
    if request.param == "fake":
        yield FakeWorld()
        return
    reason = netns_unavailable_reason() or ray_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    python = engine_python()
    tmp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # Ray's socket paths are short
    net = NetnsHarness(3, prefix="rc")
    net.setup()
    try:
        yield RealWorld(net, python, tmp)
    finally:
        net.teardown()
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(world: RayWorld, n: int, spec_hash: str = HASH) -> RayView | None:
    v = world.port.view(world.address, spec_hash)
    return v if v is not None and len(v.alive_nodes) == n else None


def test_a_replica_cluster_forms_counts_by_hash_and_loses_members(world: RayWorld) -> None:
    ip0, ip1, ip2 = world.ips
    assert world.port.view(world.address, HASH) is None  # nothing there: unknown, not empty

    head = world.start_head(0, HASH, gpus=1)
    v = world.eventually("the head alone", lambda: _alive(world, 1))
    assert v == RayView(alive_nodes=(ip0,), gpus=1.0, mismatched=(), lost=(), notes=())
    full = world.port.cluster(world.address)
    assert full is not None and full.head() is not None
    assert full.head().ip == ip0  # type: ignore[union-attr]
    assert full.cluster_ray_version == full.client_ray_version  # same env on every host

    member = world.join(1, HASH, gpus=1)
    v = world.eventually("a worker at the head's hash", lambda: _alive(world, 2))
    assert v.alive_nodes == tuple(sorted((ip0, ip1))) and v.gpus == 2.0
    assert v.mismatched == () and v.lost == ()

    world.join(2, OTHER, gpus=1)
    v = world.eventually(
        "a worker at another hash",
        lambda: (x := world.port.view(world.address, HASH)) is not None and x.mismatched and x,
    )
    assert v.mismatched == (f"{ip2} at {OTHER}",)
    assert v.alive_nodes == tuple(sorted((ip0, ip1))) and v.gpus == 2.0  # not counted
    every = world.port.view(world.address, None)
    assert every is not None and every.alive_nodes == tuple(sorted((ip0, ip1, ip2)))

    world.kill(member)
    v = world.eventually(
        "the dead worker lost",
        lambda: (x := world.port.view(world.address, HASH)) is not None and x.lost and x,
    )
    assert v.lost == (ip1,) and v.alive_nodes == (ip0,) and v.gpus == 1.0
    assert v.mismatched == (f"{ip2} at {OTHER}",)

    world.kill(head)
    world.eventually("no answer once the head is gone",
                     lambda: world.port.view(world.address, HASH) is None)
