"""A replica's Ray head restarts at the same address while a stranger on the host still
names that address (the real `ray start` 2.60, on loopback).

`ray start --head` refuses to start when the address recorded in its temp dir's
`ray_current_cluster` (the same temp dir after a restart at the same spec hash) appears in
the command line of any process on the host: "Ray is trying to start at A, but is already
running at A". After a fate-sharing restart the followers' old raylets and workers still
name the address while they give up; on hosts sharing one process table (the test hosts,
the GPU check) that cost 12 s or failed the restart. The launch spec lists that file as
stale and the process port removes it before the start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from reconciler.core.launch import NodeContext, ray_launch, ray_temp_dir
from reconciler.core.placement import place
from reconciler.core.vocabulary import MemberKey, ReplicaKey
from reconciler.ports.processes import LocalProcessPort
from testrigs import builders
from testrigs.multinode_cluster import engine_python, ray_unavailable_reason

pytestmark = [pytest.mark.system, pytest.mark.ray]


def _free_block(size: int = 100) -> int:
    for start in range(42000, 60000, size):
        socks = []
        try:
            for port in (start, start + 1, start + 2, start + 3, start + 4, start + 5,
                         start + 6, start + 7, start + 8, start + 9):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def test_head_restarts_while_a_stranger_still_names_its_address() -> None:
    reason = ray_unavailable_reason()
    if reason:
        pytest.skip(reason)
    ray_exe = str(engine_python().with_name("ray"))
    start = _free_block()
    state = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths
    cluster = builders.cluster(
        builders.node("n1", gpus=1, ip="127.0.0.1"),
        builders.node("n2", gpus=1, ip="127.0.0.2"),
        ports={"engine": {"start": 8000, "end": 8099}, "ray": {"start": start,
                                                                  "end": start + 99}},
    )
    dep = builders.deployment("big", executor="ray", parallelism={"tensor": 1, "pipeline": 2},
                              placement={"nodes": ["n1", "n2"]})
    desired = builders.desired(cluster, dep)
    placement = place(desired).replicas[ReplicaKey("big", 0)]
    ctx = NodeContext(name=placement.leader, python=str(engine_python()), ray=ray_exe,
                      state_dir=str(state))
    launch = ray_launch(ctx, cluster, dep, placement, "h1", ())
    assert launch.member == MemberKey(ReplicaKey("big", 0), "ray-head")
    temp = Path(ray_temp_dir(str(state), launch.member, "h1"))
    address = f"{launch.host}:{launch.port}"
    assert launch.stale_files == (str(temp / "ray_current_cluster"),)

    # A previous start at this spec hash left its address behind, and a stranger (a
    # follower's dying raylet, here a sleeping python) still names it on its command line.
    # (the sleeping python stands in for the dying raylet)
    temp.mkdir(parents=True)
    (temp / "ray_current_cluster").write_text(address)
    # Ray looks only at processes whose executable is named `raylet`.
    raylet = state / "raylet"
    raylet.symlink_to(os.path.realpath(sys.executable))
    stranger = subprocess.Popen(
        [str(raylet), "-c", "import time; time.sleep(120)", f"--gcs-address={address}"],
        start_new_session=True,
    )
    port = LocalProcessPort(state, log_max_bytes=1 << 20, log_backups=1)
    try:
        port.start(launch)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            obs = {o.member: o for o in port.list()}[launch.member]
            assert obs.running, (port.log_path(launch.member).read_text()[-2000:])
            with socket.socket() as s:
                if s.connect_ex((str(launch.host), launch.port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the head never bound its GCS port")
        log = port.log_path(launch.member).read_text()
        assert "already running" not in log
    finally:
        assert port.stop(launch.member, 10.0)
        port.close()
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait(10)
