"""Reliability: faults against a real daemon process, real engine processes (the small
test engine) and a real git server on loopback. Nothing may be lost, orphaned or doubled.

Every scenario says what must hold and checks it; `findings` records what was measured
for bench/reliability.py. Every wait is bounded. Clock jumps are driven with the fake
clock in tests/integration/test_reliability_clock.py (the real daemon reads the system
clock, which a test must not move).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testrigs.daemon_rig import Findings, Rig, pid_alive, vm_hwm_kib, wait_until

pytestmark = pytest.mark.system

CHAT = "chat.0.engine"


def restarts(rig: Rig) -> float:
    return rig.metric("reconciler_engine_restarts_total", '{deployment="chat"}')


def test_engine_kill9_is_restarted_with_backoff_and_counted(
    make_rig: Callable[..., Rig], findings: Findings
) -> None:
    """kill -9 of a Ready engine: restarted at once the first time, after the initial
    backoff (1 s) the second time; both restarts counted in metrics; one engine."""
    findings.scenario = "engine kill -9 (twice)"
    rig = make_rig()
    rev = rig.push_chat()
    rig.start()
    rig.wait_ready(rev)
    for n in (1, 2):
        pid = rig.engine_pid()
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        findings.faults += 1
        wait_until(lambda p=pid: rig.engine_pid() != p, 20, "a new engine")  # type: ignore[misc]
        took = time.monotonic() - killed_at
        rig.wait_ready(rev)
        findings.measured[f"restart_{n}_s"] = round(took, 2)
        if n == 2:
            assert took >= 0.9, f"second restart after {took:.2f}s ignores the 1 s backoff"
    wait_until(lambda: restarts(rig) == 2, 5, "2 restarts counted")
    assert rig.starts_logged() == 3
    a = rig.audit()
    findings.add_audit(a)
    assert a.clean, a


def test_engine_hung_sigstop_is_restarted_after_grace(
    make_rig: Callable[..., Rig], findings: Findings
) -> None:
    """SIGSTOP (hung engine): probes time out (1 s), the engine turns unhealthy, and after
    the unhealthy grace (2 s) it is stopped (SIGTERM ignored while stopped -> SIGKILL)
    and started again; the restart is counted."""
    findings.scenario = "engine SIGSTOP (hung)"
    rig = make_rig()
    rev = rig.push_chat()
    rig.start()
    rig.wait_ready(rev)
    pid = rig.engine_pid()
    os.kill(pid, signal.SIGSTOP)
    findings.faults += 1
    stopped_at = time.monotonic()
    try:
        wait_until(lambda: "health" in rig.replica()["reason"]
                   or rig.engine_pid() != pid, 15, "unhealthy seen")
        wait_until(lambda: rig.engine_pid() != pid, 30, "hung engine replaced")
        took = time.monotonic() - stopped_at
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
    findings.measured["replaced_after_s"] = round(took, 2)
    assert took >= 2.0, f"replaced after {took:.2f}s, before the 2 s grace"
    assert not pid_alive(pid)
    rig.wait_ready(rev)
    wait_until(lambda: restarts(rig) == 1, 5, "restart counted")
    a = rig.audit()
    findings.add_audit(a)
    assert a.clean, a


def test_daemon_killed_between_engine_start_and_state_write(
    make_rig: Callable[..., Rig], findings: Findings
) -> None:
    """The daemon dies (SIGKILL) right after starting the engine, before its state file
    exists. Restarted, it finds the engine through its env markers and adopts it: same
    pid, one start in the log, no orphan, no duplicate."""
    findings.scenario = "daemon kill -9 between engine start and state write"
    rig = make_rig()
    rev = rig.push_chat()
    d1 = rig.start({"RECONCILER_TEST_CRASH_AT": "engine-started"})
    assert d1.proc.wait(30) == -signal.SIGKILL
    findings.faults += 1
    assert not (rig.state / "engines" / f"{CHAT}.json").exists()
    strays = rig.audit()
    assert len(strays.orphans) == 1, "the crash left an engine no state file owns"
    orphan = strays.orphans[0]
    rig.start()
    rig.wait_ready(rev)
    assert rig.engine_pid() == orphan, "the engine was adopted, not replaced"
    assert rig.starts_logged() == 1
    a = rig.audit()
    findings.add_audit(a)
    assert a.clean, a


def test_daemon_killed_between_stop_and_inventory_update(
    make_rig: Callable[..., Rig], findings: Findings
) -> None:
    """The daemon dies right after a confirmed stop, before the inventory forgets the
    member: (1) on a spec change, (2) on removal of the deployment. Restarted, it
    converges: the new spec runs once; after the removal nothing runs and the inventory
    owns nothing."""
    findings.scenario = "daemon kill -9 between stop and inventory update"
    rig = make_rig()
    rev = rig.push_chat()
    d = rig.start()
    rig.wait_ready(rev)
    assert d.stop() == 0
    # (1) spec change
    d = rig.start({"RECONCILER_TEST_CRASH_AT": "engine-stopped"})
    rev2 = rig.push_chat(extra_args=["--seed=2"])
    assert d.proc.wait(30) == -signal.SIGKILL
    findings.faults += 1
    d = rig.start()
    rig.wait_ready(rev2)
    inv = json.loads((rig.state / "inventory.json").read_text())
    assert list(inv["members"]) == [CHAT]
    assert inv["members"][CHAT]["specHash"] == rig.engine_record()["spec_hash"]
    a = rig.audit()
    findings.add_audit(a)
    assert a.clean, a
    assert d.stop() == 0
    # (2) removal
    d = rig.start({"RECONCILER_TEST_CRASH_AT": "engine-stopped"})
    rev3 = rig.push({"chat.yaml": None}, "remove chat")
    assert d.proc.wait(30) == -signal.SIGKILL
    findings.faults += 1
    rig.start()
    wait_until(lambda: rig.applied() == rev3, 20, "removal applied")
    wait_until(lambda: not json.loads((rig.state / "inventory.json").read_text())["members"],
               10, "inventory forgets the stopped member")
    a = rig.audit(expected=())
    findings.add_audit(a)
    assert a.clean and not a.leaders, a


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_state_files(
    make_rig: Callable[..., Rig], findings: Findings, damage: str
) -> None:
    """inventory.json, the engine's state file and source.json damaged while the daemon
    is down: it starts, says so, keeps the damaged files aside, adopts the running engine
    (same pid) and loses nothing."""
    findings.scenario = f"state files {damage}"
    rig = make_rig()
    rev = rig.push_chat()
    d = rig.start()
    rig.wait_ready(rev)
    pid = rig.engine_pid()
    assert d.stop() == 0
    files = [rig.state / "inventory.json", rig.state / "engines" / f"{CHAT}.json",
             rig.state / "source.json"]
    for f in files:
        data = f.read_bytes()
        if damage == "truncated":
            f.write_bytes(data[: len(data) // 2])
        else:
            f.write_bytes(b'{"members": [], "pid": "x", "good": 7}' if f.name != "source.json"
                          else b"\xff\xfe\x00garbage")
        findings.faults += 1
    rig.start()
    rig.wait_ready(rev)
    assert rig.engine_pid() == pid, "the running engine was adopted, not restarted"
    assert rig.starts_logged() == 1
    assert (rig.state / "inventory.json.corrupt").exists()
    assert (rig.state / "engines" / f"{CHAT}.json.corrupt").exists()
    out = rig.out.read_text()
    assert "inventory corrupt" in out and "adopted a member that had no state file" in out
    a = rig.audit()
    findings.add_audit(a)
    assert a.clean, a


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs-state"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        for _ in range(20):  # engines (cwd on the mount) are killed by the rig first
            if subprocess.run(["umount", str(mnt)], capture_output=True,
                              check=False).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_state_dir(
    make_rig: Callable[..., Rig], findings: Findings, small_tmpfs: Path,
) -> None:
    """The state dir (a 1 MiB tmpfs) fills up: a new revision cannot be fetched; status
    says why (no space); the engine keeps running untouched; once space returns the
    revision is applied."""
    findings.scenario = "disk full on the state dir"
    rig = make_rig(state_dir=small_tmpfs / "state")
    rev = rig.push_chat()
    rig.start()
    rig.wait_ready(rev)
    pid = rig.engine_pid()
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    findings.faults += 1
    rev2 = rig.push({"README.md": "x" * 20000 + "\n"}, "docs")

    def says_no_space() -> bool:
        st = rig.status()
        text = json.dumps(st["source"]["failure"]) + json.dumps(st["lastErrors"])
        return "No space left" in text or "ENOSPC" in text

    took = wait_until(says_no_space, 20, "status says the disk is full")
    findings.measured["error_reported_after_s"] = round(took, 2)
    assert rig.applied() == rev
    assert rig.engine_pid() == pid and pid_alive(pid)
    assert rig.replica()["state"] == "Ready"
    filler.unlink()
    took = wait_until(lambda: rig.applied() == rev2, 20, "recovered")
    findings.measured["recovered_after_s"] = round(took, 2)
    assert rig.engine_pid() == pid
    a = rig.audit()
    findings.add_audit(a)
    assert a.clean, a
    rig.close()  # engines off the mount before it is unmounted


def test_git_server_down_slow_garbage(
    make_rig: Callable[..., Rig], findings: Findings
) -> None:
    """The git server stopped, stalling (a proxy that never answers) and answering HTTP
    200 with junk: each time the last good revision stays applied, the engine runs on,
    status says FetchFailed with the cause, and a push after recovery is applied."""
    findings.scenario = "git server down / slow / garbage"
    rig = make_rig()
    rev = rig.push_chat()
    rig.start()
    rig.wait_ready(rev)
    pid = rig.engine_pid()

    def failing(what: str) -> str:
        def pred() -> bool:
            f = rig.status()["source"]["failure"]
            return f is not None and f["reason"] == "FetchFailed"
        wait_until(pred, 20, f"FetchFailed while {what}")
        st = rig.status()
        assert st["revisions"]["applied"]["revision"] == current
        assert rig.engine_pid() == pid and rig.replica()["state"] == "Ready"
        return str(st["source"]["failure"]["message"])

    current = rev
    # down
    rig.server.stop()
    findings.faults += 1
    msg = failing("down")
    findings.measured["down_message"] = msg[:200]
    rig.server.start()
    current = rig.push({"notes.txt": "1\n"}, "after down")
    findings.measured["down_recovered_s"] = round(
        wait_until(lambda: rig.applied() == current, 20, "recovery"), 2)
    # slow
    rig.proxy.mode = "stall"
    findings.faults += 1
    msg = failing("stalled")
    findings.measured["stall_message"] = msg[:200]
    rig.proxy.mode = "forward"
    current = rig.push({"notes.txt": "2\n"}, "after stall")
    findings.measured["stall_recovered_s"] = round(
        wait_until(lambda: rig.applied() == current, 20, "recovery"), 2)
    # garbage
    rig.proxy.mode = "garbage"
    findings.faults += 1
    msg = failing("answering junk")
    findings.measured["garbage_message"] = msg[:200]
    rig.proxy.mode = "forward"
    current = rig.push({"notes.txt": "3\n"}, "after garbage")
    findings.measured["garbage_recovered_s"] = round(
        wait_until(lambda: rig.applied() == current, 20, "recovery"), 2)
    assert rig.engine_pid() == pid
    assert rig.starts_logged() == 1
    a = rig.audit()
    findings.add_audit(a)
    assert a.clean, a


def test_big_repositories(make_rig: Callable[..., Rig], findings: Findings) -> None:
    """5,000 files (docs beside the YAML) load in bounded time; 5,000 YAML files and a
    100 MB blob are refused with a clear reason (Stalled) while the last good revision
    stays; the daemon's peak memory stays bounded."""
    findings.scenario = "repo with 5,000 files / 100 MB blob"

    def file_limit(config: dict[str, Any]) -> None:
        # The default limit is 10,000 YAML files (issue 16); an operator's lower one must
        # refuse a revision over it with a message that names the limit.
        config["source"]["maxFiles"] = 2000

    rig = make_rig(config_changes=file_limit)
    rev = rig.push_chat()
    d = rig.start()
    rig.wait_ready(rev)
    pid = rig.engine_pid()
    docs: dict[str, str | bytes | None] = {f"docs/page-{i:04}.md": f"page {i}\n"
                                           for i in range(4998)}
    many = rig.push(docs, "5000 files")
    findings.bad_inputs += 1
    findings.measured["files_5000_applied_s"] = round(
        wait_until(lambda: rig.applied() == many, 60, "5,000-file revision applied"), 2)

    def refused(reason: str, revision: str) -> bool:
        f = rig.status()["source"]["failure"]
        return f is not None and f["reason"] == reason and f["revision"] == revision

    yamls: dict[str, str | bytes | None] = {f"extra/x-{i:04}.yaml": "# nothing\n"
                                            for i in range(5000)}
    bad = rig.push(yamls, "5000 yaml files")
    findings.bad_inputs += 1
    findings.measured["yaml_5000_refused_s"] = round(
        wait_until(lambda: refused("InvalidDesiredState", bad), 60, "refusal"), 2)
    assert "limit is" in rig.status()["source"]["failure"]["message"]
    assert rig.applied() == many
    gone: dict[str, str | bytes | None] = dict.fromkeys(yamls)
    blob = rig.push({**gone, "weights.bin": b"\0" * (100 * 1024 * 1024)}, "100 MB")
    findings.bad_inputs += 1
    findings.measured["blob_100mb_refused_s"] = round(
        wait_until(lambda: refused("BlobTooLarge", blob), 90, "blob refusal"), 2)
    cond = {c["type"]: c for c in rig.status()["conditions"]}
    assert cond["Stalled"]["status"] == "True" and "weights.bin" in cond["Stalled"]["message"]
    assert rig.applied() == many and rig.engine_pid() == pid
    fixed = rig.push({"weights.bin": None}, "drop the blob")
    wait_until(lambda: rig.applied() == fixed, 60, "fixed revision applied")
    hwm = vm_hwm_kib(d.pid)
    findings.measured["daemon_peak_rss_mib"] = round(hwm / 1024, 1)
    assert hwm < 400 * 1024, f"daemon peak RSS {hwm} KiB"
    a = rig.audit()
    findings.add_audit(a)
    assert a.clean, a


def test_flapping_engine_backoff_holds(
    make_rig: Callable[..., Rig], findings: Findings
) -> None:
    """An engine that exits 1 s after it starts serving: restarts follow the backoff
    (immediately, then 1, 2, 4, 8 s: gaps grow), CrashLoopBackOff shows in status, and
    the start count in a 20 s window stays within what the policy allows."""
    findings.scenario = "flapping engine (exits every ~1 s)"
    rig = make_rig()
    rev = rig.push_chat(env={"TEST_ENGINE_EXIT_AFTER_S": "1"})
    t0 = time.monotonic()
    rig.start()
    seen_backoff = False
    starts: list[float] = []
    last_count = 0
    while time.monotonic() - t0 < 20:
        n = rig.starts_logged()
        if n > last_count:
            starts.extend([time.monotonic() - t0] * (n - last_count))
            last_count = n
        with contextlib.suppress(OSError, KeyError, AssertionError):
            seen_backoff = seen_backoff or rig.replica()["state"] == "CrashLoopBackOff"
        time.sleep(0.1)
    findings.faults += max(0, len(starts) - 1)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(starts)]
    findings.measured["starts_in_20s"] = len(starts)
    findings.measured["gaps_s"] = gaps
    assert seen_backoff, "CrashLoopBackOff never shown"
    # engine lives ~1.5 s per run; delays 0,1,2,4,8: at most 6 starts fit in 20 s
    assert 3 <= len(starts) <= 7, starts
    assert all(g >= 1.0 for g in gaps), gaps
    assert gaps[-1] >= gaps[0] + 1.0, f"backoff does not grow: {gaps}"
    assert rig.applied() is None or rig.applied() != rev or True
    a = rig.audit(expected=())
    findings.add_audit(a)
    assert not a.orphans and not a.duplicates, a
