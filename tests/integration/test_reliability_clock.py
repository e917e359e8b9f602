"""Clock jumps, driven through the fake clock (the real daemon reads the system clock,
which a test must not move): the daemon over stateful fakes, `iterate()` by hand.

What must hold after a jump forward or backward by a day or an hour: no restart storm
(at most the one restart a jump can legitimately cause, over 30 iterations), no negative
timer in any status reason, and backoff waits at most one delay after a backward jump.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.core.vocabulary import MemberKey, ReplicaKey
from reconciler.daemon.loop import Daemon
from reconciler.daemon.wiring import DaemonPorts
from reconciler.testing.clock import FakeClock
from reconciler.testing.git_source import FakeGitSource
from reconciler.testing.gpus import FakeGpuPort
from reconciler.testing.processes import FakeProcessPort
from schemas.nodeconfig import NodeConfig
from testrigs.daemon_rig import Findings

CHAT = MemberKey(ReplicaKey("chat", 0), "engine")
CLUSTER = """\
apiVersion: reconciler.dev/v1alpha1
kind: Cluster
metadata: {name: t}
spec:
  nodes:
    - name: n0
      address: 127.0.0.1
      gpus: {count: 1, model: NVIDIA H100 80GB HBM3, memoryGib: 80}
"""
CHAT_YAML = """\
apiVersion: reconciler.dev/v1alpha1
kind: ModelDeployment
metadata: {name: chat}
spec:
  model: {path: /models/chat, servedName: chat}
  port: 8000
  probes: {startupTimeoutSeconds: 600}
"""
DAY = 86400.0
HOUR = 3600.0


class ClockRig:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock(1_700_000_000.0)
        self.source = FakeGitSource()
        self.source.commit({"cluster.yaml": CLUSTER, "chat.yaml": CHAT_YAML}, subject="chat")
        self.procs = FakeProcessPort(tmp / "state", clock=self.clock)
        config = NodeConfig.model_validate({
            "nodeName": "n0",
            "source": {"url": "https://git.example.test/c.git"},
            "stateDir": str(tmp / "state"),
            "engine": {"python": "/opt/vllm/bin/python", "unhealthyGracePeriodSeconds": 30},
            "backoff": {"initialSeconds": 10, "maxSeconds": 300, "jitter": 0},
        })
        self.daemon = Daemon(config, listen=False, ports_override=DaemonPorts(
            source=self.source, gpus=FakeGpuPort(1), processes=self.procs, clock=self.clock))

    def run(self, n: int = 1, step: float = 1.0) -> None:
        for _ in range(n):
            self.daemon.request_fetch("test")
            self.daemon.iterate()
            self.clock.advance(step)

    def replica(self) -> dict[str, Any]:
        reps: list[dict[str, Any]] = self.daemon.status()["replicas"]
        return reps[0]

    def timers(self) -> list[float]:
        reason = str(self.replica()["reason"])
        return [float(x) for x in re.findall(r"(-?\d+(?:\.\d+)?)s\b", reason)]


@pytest.fixture
def findings(request: pytest.FixtureRequest) -> Iterator[Findings]:
    f = Findings(test=request.node.nodeid)
    yield f
    f.write()


@pytest.fixture
def crig(tmp_path: Path) -> Iterator[ClockRig]:
    r = ClockRig(tmp_path)
    yield r
    r.daemon.shutdown()


@pytest.mark.parametrize("jump", [DAY, -DAY, HOUR, -HOUR])
def test_clock_jump_no_restart_storm(crig: ClockRig, findings: Findings, jump: float) -> None:
    findings.scenario = f"clock jump {jump:+.0f}s (fake clock)"
    crig.run()
    crig.procs.set_health(CHAT, "ready")
    crig.run(3)
    assert crig.replica()["state"] == "Ready"
    # ready engine: a jump changes nothing
    crig.clock.advance(jump)
    findings.faults += 1
    crig.run(30)
    assert crig.procs.start_count(CHAT) == 1 and crig.procs.stop_count() == 0
    assert crig.replica()["state"] == "Ready"
    # crash loop: two crashes put the replica into backoff (10 s), then the clock jumps
    for _ in range(2):
        crig.procs.crash(CHAT)
        crig.run()
        if crig.procs.process(CHAT) is not None and crig.procs.process(CHAT).running:  # type: ignore[union-attr]
            crig.procs.set_health(CHAT, "ready")
            crig.run()
    assert crig.replica()["state"] == "CrashLoopBackOff", crig.replica()
    starts = crig.procs.start_count(CHAT)
    crig.clock.advance(jump)
    findings.faults += 1
    crig.run()
    timers = crig.timers()
    assert all(t >= 0 for t in timers), crig.replica()
    assert all(t <= 10 for t in timers), f"backoff waits the jump: {crig.replica()}"
    crig.run(30)  # 30 s of fake time: the 10 s backoff passes once
    restarted = crig.procs.start_count(CHAT) - starts
    findings.measured[f"restarts_after_jump_{jump:+.0f}"] = restarted
    assert restarted == 1, f"{restarted} restarts after the jump"
    # a loading engine: a forward jump past the startup timeout may stop it once, never
    # in a storm
    proc = crig.procs.process(CHAT)
    assert proc is not None and proc.running
    before = crig.procs.start_count(CHAT)
    crig.clock.advance(jump)
    findings.faults += 1
    crig.run(60)
    extra = crig.procs.start_count(CHAT) - before
    findings.measured[f"starts_while_loading_after_jump_{jump:+.0f}"] = extra
    assert extra <= 1, f"{extra} starts after a jump while loading"
    assert all(t >= 0 for t in crig.timers()), crig.replica()
