"""LocalProcessPort with real processes: a tiny OpenAI-like HTTP server plays the engine.

Also the in-memory FakeProcessPort (same behaviour, checked on the same scenarios) and
the streaming chat client against the fake server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.core.errors import EngineStartError
from reconciler.core.vocabulary import LaunchSpec, MemberKey, ProcessObservation, ReplicaKey
from reconciler.ports.openai_client import ChatError, chat
from reconciler.ports.processes import (
    EngineRecord,
    LocalProcessPort,
    read_stat,
    read_state_files,
    rotate_log,
)
from reconciler.testing.processes import FakeProcessPort

ROOT = Path(__file__).resolve().parents[2]
FAKE_SERVER = ROOT / "testrigs" / "engines" / "fake_openai_server.py"
ENGINE = MemberKey(ReplicaKey("tiny", 0), "engine")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_launch(
    *flags: str,
    member: MemberKey = ENGINE,
    port: int | None = None,
    spec_hash: str = "h1",
    served_name: str = "fake-model",
) -> LaunchSpec:
    port = port or free_port()
    argv = (
        sys.executable,
        str(FAKE_SERVER),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        served_name,
        *flags,
    )
    return LaunchSpec(
        member=member,
        spec_hash=spec_hash,
        argv=argv,
        env={"RECONCILER_MEMBER": member.slug, "RECONCILER_SPEC_HASH": spec_hash, "X_TEST": "1"},
        port=port,
        gpus=(0,),
        startup_timeout_s=30.0,
        served_name=served_name,
        host="127.0.0.1",
        probe_timeout_s=0.3,
    )


def wait_for(
    port: LocalProcessPort | FakeProcessPort,
    member: MemberKey,
    pred: Callable[[ProcessObservation], bool],
    timeout: float = 10.0,
) -> ProcessObservation:
    deadline = time.monotonic() + timeout
    last: ProcessObservation | None = None
    while time.monotonic() < deadline:
        obs = {o.member: o for o in port.list()}
        last = obs.get(member)
        if last is not None and pred(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out; last observation: {last}")


def alive(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and not st.gone


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def make_port(state_dir: Path) -> Iterator[Callable[..., LocalProcessPort]]:
    """make_port(**kw) -> a port over `state_dir`; everything still running is stopped
    (SIGKILL at once) and every port closed at teardown."""
    ports: list[LocalProcessPort] = []

    def make(**kw: object) -> LocalProcessPort:
        args: dict[str, object] = {"log_max_bytes": 1 << 20, "log_backups": 2}
        args.update(kw)
        port = LocalProcessPort(state_dir, probe_interval_s=0.1, **args)  # type: ignore[arg-type]
        ports.append(port)
        return port

    yield make
    if ports:
        last = ports[-1]
        for obs in last.list():
            if obs.running:
                last.stop(obs.member, 0.0)
            else:
                last.forget(obs.member)
    for port in ports:
        port.close()


# --- start, probe, crash ------------------------------------------------------------------


def test_start_reports_starting_then_ready(make_port: Callable[..., LocalProcessPort]) -> None:
    port = make_port(base_env={"FROM_BASE": "b"})
    launch = fake_launch("--ready-after", "2.0", "--loading", "hang")
    obs = port.start(launch)
    assert obs.running and obs.health == "starting" and obs.pid > 0

    record = json.loads((port.state_dir / "engines" / f"{ENGINE.slug}.json").read_text())
    stat = read_stat(obs.pid)
    assert stat is not None
    assert record["pid"] == obs.pid and record["start_ticks"] == stat.start_ticks
    assert record["argv"] == list(launch.argv)
    assert (record["spec_hash"], record["port"], record["gpus"]) == ("h1", launch.port, [0])
    assert stat.session == obs.pid and stat.pgrp == obs.pid  # own session and group

    # While the server accepts no connection the probe times out: still "starting".
    hung = wait_for(port, ENGINE, lambda o: "no answer" in o.detail)
    assert hung.health == "starting"

    ready = wait_for(port, ENGINE, lambda o: o.health == "ready")
    assert ready.pid == obs.pid and ready.unhealthy_since is None

    env = dict(
        item.split(b"=", 1)
        for item in Path(f"/proc/{obs.pid}/environ").read_bytes().split(b"\0")
        if b"=" in item
    )
    assert env[b"RECONCILER_MEMBER"] == ENGINE.slug.encode()
    assert env[b"X_TEST"] == b"1" and env[b"FROM_BASE"] == b"b"
    assert b"PYTEST_CURRENT_TEST" not in env  # the daemon's environment does not leak
    log_text = port.log_path(ENGINE).read_text()
    assert "--- reconciler: starting tiny/0/engine hash h1" in log_text
    assert "fake-engine: listening" in log_text
    assert port.owned_pids() == {obs.pid}


def test_start_twice_is_refused(make_port: Callable[..., LocalProcessPort]) -> None:
    port = make_port()
    port.start(fake_launch())
    with pytest.raises(EngineStartError, match="already running"):
        port.start(fake_launch())


def test_wrong_served_name_never_gets_ready(make_port: Callable[..., LocalProcessPort]) -> None:
    port = make_port()
    launch = fake_launch(served_name="other")
    launch = LaunchSpec(**{**launch.__dict__, "served_name": "wanted"})
    port.start(launch)
    obs = wait_for(port, ENGINE, lambda o: "not 'wanted'" in o.detail)
    assert obs.health == "starting"


def test_crash_reports_exit_code_and_calls_on_exit(
    make_port: Callable[..., LocalProcessPort],
) -> None:
    exited: list[MemberKey] = []
    woke = threading.Event()

    def on_exit(member: MemberKey) -> None:
        exited.append(member)
        woke.set()

    port = make_port(on_exit=on_exit)
    obs = port.start(fake_launch("--exit-after", "0.5", "--exit-code", "3"))
    assert woke.wait(10)
    assert exited == [ENGINE]
    gone = next(o for o in port.list() if o.member == ENGINE)
    assert not gone.running and gone.exit_code == 3 and gone.pid == obs.pid
    assert "exiting with code 3" in gone.detail  # the last log line says why
    # the exit code is kept for the next daemon too
    state = port.state_dir / "engines" / f"{ENGINE.slug}.json"
    assert json.loads(state.read_text())["exit_code"] == 3
    port.forget(ENGINE)
    assert port.list() == [] and not state.exists()


def test_unhealthy_only_after_ready(make_port: Callable[..., LocalProcessPort]) -> None:
    port = make_port()
    port.start(fake_launch("--fail-health-after", "0.5"))
    wait_for(port, ENGINE, lambda o: o.health == "ready")
    bad = wait_for(port, ENGINE, lambda o: o.health == "unhealthy")
    assert bad.unhealthy_since is not None and "/health answered 500" in bad.detail
    assert bad.running


def test_missing_executable_is_a_permanent_start_error(
    make_port: Callable[..., LocalProcessPort],
) -> None:
    port = make_port()
    launch = fake_launch()
    launch = LaunchSpec(**{**launch.__dict__, "argv": ("/nonexistent/vllm", "serve")})
    with pytest.raises(EngineStartError, match="cannot run") as err:
        port.start(launch)
    assert not err.value.retryable
    assert port.list() == []


def test_port_taken_by_a_stranger(make_port: Callable[..., LocalProcessPort]) -> None:
    port = make_port()
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        taken = int(stranger.getsockname()[1])
        with pytest.raises(EngineStartError) as err:
            port.start(fake_launch(port=taken))
    message = str(err.value)
    assert f"port {taken} is taken by pid {os.getpid()} (" in message
    assert err.value.retryable
    assert port.list() == []
    assert not port.log_path(ENGINE).exists()


def test_ray_role_is_ready_once_its_port_listens(
    make_port: Callable[..., LocalProcessPort],
) -> None:
    port = make_port()
    head = MemberKey(ReplicaKey("big", 0), "ray-head")
    port.start(fake_launch("--ready-after", "0.5", "--loading", "refuse", member=head))
    first = next(o for o in port.list() if o.member == head)
    assert first.health == "starting"
    wait_for(port, head, lambda o: o.health == "ready")


# --- stop --------------------------------------------------------------------------------


def test_stop_by_sigterm(make_port: Callable[..., LocalProcessPort]) -> None:
    port = make_port()
    launch = fake_launch()
    obs = port.start(launch)
    wait_for(port, ENGINE, lambda o: o.health == "ready")
    t0 = time.monotonic()
    assert port.stop(ENGINE, grace_s=5.0)
    assert time.monotonic() - t0 < 4.0  # well within the grace period: no SIGKILL
    assert not alive(obs.pid)
    assert port.list() == []
    assert "SIGTERM: exiting" in port.log_path(ENGINE).read_text()


def test_stop_falls_back_to_sigkill_and_kills_the_group(
    make_port: Callable[..., LocalProcessPort],
) -> None:
    port = make_port()
    launch = fake_launch("--ignore-sigterm", "--spawn-child")
    obs = port.start(launch)
    wait_for(port, ENGINE, lambda o: o.health == "ready")
    owned = port.owned_pids()
    assert obs.pid in owned and len(owned) == 2  # the server and its child
    t0 = time.monotonic()
    assert port.stop(ENGINE, grace_s=0.5)
    took = time.monotonic() - t0
    assert 0.5 <= took < 3.0
    assert not any(alive(pid) for pid in owned)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", launch.port))  # the port is free
    assert port.list() == [] and port.owned_pids() == frozenset()
    assert not (port.state_dir / "engines" / f"{ENGINE.slug}.json").exists()


def test_crashed_engine_leftovers_without_markers_are_killed_on_forget(
    make_port: Callable[..., LocalProcessPort],
) -> None:
    """kill -9 of vLLM's API server leaves EngineCore and workers (re-parented to init,
    no env markers) holding memory; forgetting the crashed member must end them."""
    port = make_port()
    obs = port.start(fake_launch("--spawn-child", "--spawn-child-clean-env"))
    wait_for(port, ENGINE, lambda o: o.health == "ready")
    owned = port.owned_pids()
    child = next(pid for pid in owned if pid != obs.pid)
    os.kill(obs.pid, signal.SIGKILL)
    wait_for(port, ENGINE, lambda o: not o.running)
    assert alive(child)  # orphaned, as vLLM's EngineCore is
    port.forget(ENGINE)
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_stop_of_unknown_member_is_a_no_op(make_port: Callable[..., LocalProcessPort]) -> None:
    assert make_port().stop(ENGINE, 1.0)


# --- adoption ----------------------------------------------------------------------------


def test_second_port_instance_adopts_and_stops(
    make_port: Callable[..., LocalProcessPort],
) -> None:
    first = make_port()
    obs = first.start(fake_launch())
    wait_for(first, ENGINE, lambda o: o.health == "ready")
    first.close()

    second = make_port()
    adopted = wait_for(second, ENGINE, lambda o: o.health == "ready")
    # started_at is derived from the kernel start ticks (10 ms resolution) on each list()
    assert adopted.pid == obs.pid and abs(adopted.started_at - obs.started_at) < 0.5
    assert adopted.spec_hash == "h1" and adopted.running
    assert second.owned_pids() == {obs.pid}
    (dry,) = read_state_files(second.state_dir)  # the read-only view of `plan --state-dir`
    assert (dry.pid, dry.running, dry.health) == (obs.pid, True, "ready")
    assert second.stop(ENGINE, 5.0)
    assert not alive(obs.pid)


@pytest.mark.parametrize("lost", [False, True], ids=["from-its-state-file", "from-env-markers"])
def test_a_member_knows_its_drain_and_leader_after_a_daemon_restart(
    make_port: Callable[..., LocalProcessPort], state_dir: Path, lost: bool,
) -> None:
    """What a deleted deployment's member needs to drain (core/drain.py) survives a daemon
    restart, also when its state file was lost (adopted from its env markers)."""
    first = make_port()
    obs = first.start(dataclasses.replace(fake_launch(), drain_s=12.0, leader="n1"))
    assert (obs.drain_s, obs.leader) == (12.0, "n1")
    wait_for(first, ENGINE, lambda o: o.health == "ready")
    first.close()
    if lost:
        (state_dir / "engines" / f"{ENGINE.slug}.json").unlink()
    second = make_port()
    adopted = wait_for(second, ENGINE, lambda o: o.running)
    assert (adopted.pid, adopted.drain_s, adopted.leader) == (obs.pid, 12.0, "n1")
    (dry,) = read_state_files(second.state_dir)
    assert (dry.drain_s, dry.leader) == (12.0, "n1")


def test_a_state_file_from_before_drains_were_recorded_reads_the_drain_from_argv() -> None:
    rec = EngineRecord(ENGINE, 1, 1, ("vllm", "--shutdown-timeout", "30"), "h1", 8000, (), 0.0)
    old = rec.to_json()
    del old["drain_s"], old["leader"]
    back = EngineRecord.from_json(old)
    assert (back.drain_s, back.leader) == (30.0, "")
    now = dataclasses.replace(rec, drain_s=5.0, leader="n2")
    assert EngineRecord.from_json(now.to_json()) == now


def test_adopted_exit_is_detected_by_polling(make_port: Callable[..., LocalProcessPort]) -> None:
    first = make_port()
    obs = first.start(fake_launch("--exit-after", "1.0", "--exit-code", "4"))
    first.close()
    woke = threading.Event()
    second = make_port(on_exit=lambda m: woke.set())
    assert next(o for o in second.list() if o.member == ENGINE).running
    assert woke.wait(10)
    gone = next(o for o in second.list() if o.member == ENGINE)
    assert not gone.running and gone.pid == obs.pid


DAEMON = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from reconciler.core.vocabulary import LaunchSpec, MemberKey, ReplicaKey
    from reconciler.ports.processes import LocalProcessPort
    state, server, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = LocalProcessPort(Path(state), 1 << 20, 1, probe_interval_s=0.1)
    member = MemberKey(ReplicaKey("tiny", 0), "engine")
    obs = p.start(LaunchSpec(
        member, "h1",
        (sys.executable, server, "--port", str(port), "--model", "fake-model"),
        {}, port, (), 30.0, "fake-model"))
    print(obs.pid, flush=True)
    time.sleep(3600)
    """
)


def test_engine_survives_daemon_kill_9_and_is_adopted(
    make_port: Callable[..., LocalProcessPort], state_dir: Path
) -> None:
    net_port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(state_dir), str(FAKE_SERVER), str(net_port)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert daemon.stdout is not None
        engine_pid = int(daemon.stdout.readline())
    finally:
        daemon.kill()
        daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()
    assert alive(engine_pid)

    port = make_port()
    obs = wait_for(port, ENGINE, lambda o: o.health == "ready")
    assert obs.pid == engine_pid
    time.sleep(0.3)
    assert alive(engine_pid)  # writes to its log did not kill it (no pipe to a dead reader)
    assert port.stop(ENGINE, 5.0)
    assert not alive(engine_pid)


def test_pid_reuse_guard(make_port: Callable[..., LocalProcessPort], state_dir: Path) -> None:
    """A state file whose pid now belongs to another process (start ticks differ) is an
    exited member: the stranger is never reported, listed as ours or signalled."""
    me = read_stat(os.getpid())
    assert me is not None
    engines = state_dir / "engines"
    engines.mkdir(parents=True)
    record = {
        "member": ENGINE.slug,
        "pid": os.getpid(),
        "start_ticks": me.start_ticks + 1,
        "argv": ["vllm"],
        "spec_hash": "h0",
        "port": free_port(),
        "gpus": [0],
        "started_at": 1.0,
    }
    (engines / f"{ENGINE.slug}.json").write_text(json.dumps(record))
    port = make_port()
    (obs,) = port.list()
    assert not obs.running and obs.exit_code is None and obs.pid == os.getpid()
    assert port.owned_pids() == frozenset()
    assert port.stop(ENGINE, 0.1)  # nothing of ours to signal; we are still here
    assert port.list() == []


def test_stale_state_of_dead_process_is_reported_exited(
    make_port: Callable[..., LocalProcessPort], state_dir: Path
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    engines = state_dir / "engines"
    engines.mkdir(parents=True)
    record = {
        "member": ENGINE.slug,
        "pid": dead.pid,
        "start_ticks": 1,
        "argv": ["vllm"],
        "spec_hash": "h0",
        "port": 8000,
        "gpus": [0, 1],
        "started_at": 1.0,
    }
    (engines / f"{ENGINE.slug}.json").write_text(json.dumps(record))
    (engines / "garbage.0.engine.json").write_text("{not json")
    dry = {o.member: o for o in read_state_files(state_dir)}
    assert not dry[ENGINE].running and dry[ENGINE].gpus == (0, 1)
    port = make_port()
    by_member = {o.member: o for o in port.list()}
    stale = by_member[ENGINE]
    assert not stale.running and stale.gpus == (0, 1) and stale.spec_hash == "h0"
    broken = by_member[MemberKey(ReplicaKey("garbage", 0), "engine")]
    assert not broken.running and "unreadable" in broken.detail
    port.forget(ENGINE)
    port.forget(broken.member)
    assert port.list() == []


# --- logs --------------------------------------------------------------------------------


def test_log_rotation(make_port: Callable[..., LocalProcessPort]) -> None:
    port = make_port(log_max_bytes=4096, log_backups=2)
    port.start(fake_launch("--log-bytes-per-sec", "40000"))
    log_path = port.log_path(ENGINE)
    deadline = time.monotonic() + 10
    while not log_path.with_name(log_path.name + ".2").exists():
        assert time.monotonic() < deadline, "never rotated twice"
        time.sleep(0.05)
    time.sleep(0.3)
    assert not log_path.with_name(log_path.name + ".3").exists()
    # bounded by max + what is written between two checks (0.1 s apart at 40 kB/s)
    assert log_path.stat().st_size < 4096 + 20000
    assert log_path.with_name(log_path.name + ".1").stat().st_size > 4096
    # O_APPEND: after truncation the engine writes from offset 0 (no hole of NUL bytes)
    assert not log_path.read_bytes().startswith(b"\0")


def test_rotate_log_without_backups(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"a" * 100)
    assert not rotate_log(path, 100, 0)
    path.write_bytes(b"a" * 101)
    assert rotate_log(path, 100, 0)
    assert path.stat().st_size == 0 and list(tmp_path.iterdir()) == [path]


# --- chat client -------------------------------------------------------------------------


def test_chat_streams_from_the_fake_engine(make_port: Callable[..., LocalProcessPort]) -> None:
    port = make_port()
    launch = fake_launch()
    port.start(launch)
    wait_for(port, ENGINE, lambda o: o.health == "ready")
    result = chat(f"http://127.0.0.1:{launch.port}", "fake-model", "hi", timeout=5.0)
    assert result.text == "Hello from the fake engine."
    assert result.ttft_s is not None and 0 < result.ttft_s <= result.total_s
    with pytest.raises(ChatError, match="404"):
        chat(f"http://127.0.0.1:{launch.port}", "nope", "hi", timeout=5.0)


def test_chat_to_nothing_is_a_chat_error() -> None:
    with pytest.raises(ChatError, match=r"refused|cannot reach"):
        chat(f"http://127.0.0.1:{free_port()}", "m", "hi", timeout=1.0)


# --- the fake port behaves the same ------------------------------------------------------


def test_fake_port_lifecycle() -> None:
    exits: list[MemberKey] = []
    fake = FakeProcessPort(on_exit=exits.append)
    launch = fake_launch(port=8000)
    obs = fake.start(launch)
    assert obs.running and obs.health == "starting"
    with pytest.raises(EngineStartError, match="already running"):
        fake.start(launch)
    fake.set_health(ENGINE, "unhealthy")  # not ready before: still starting
    assert fake.list()[0].health == "starting"
    fake.set_health(ENGINE, "ready")
    fake.hang(ENGINE)
    hung = fake.list()[0]
    assert hung.health == "unhealthy" and hung.unhealthy_since is not None
    fake.crash(ENGINE, 137)
    assert exits == [ENGINE]
    (gone,) = fake.list()
    assert not gone.running and gone.exit_code == 137
    fake.forget(ENGINE)
    assert fake.list() == []
    assert fake.start_count(ENGINE) == 1


def test_fake_port_stop_failures_ports_and_adoption() -> None:
    fake = FakeProcessPort()
    fake.take_port(8000, "pid 123 (nginx)")
    with pytest.raises(EngineStartError, match=r"port 8000 is taken by pid 123 \(nginx\)"):
        fake.start(fake_launch(port=8000))
    fake.start(fake_launch(port=8001))
    fake.add_children(ENGINE, 2)
    assert len(fake.owned_pids()) == 3
    fake.fail_stops(ENGINE)
    assert not fake.stop(ENGINE, 1.0)
    restarted = FakeProcessPort(host=fake.host)  # the daemon restarted
    (adopted,) = restarted.list()
    assert adopted.running
    restarted.crash(ENGINE, 9)
    assert restarted.list()[0].exit_code is None  # not its child: code unknown
    assert fake.list()[0].exit_code == 9
    restarted.forget(ENGINE)
    assert restarted.stop(ENGINE, 1.0) and restarted.stop_count() == 1
    assert fake.stop_count(ENGINE) == 1
