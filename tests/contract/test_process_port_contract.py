"""The process port's contract: LocalProcessPort over real child processes (the stand-in
OpenAI server, testrigs/engines/fake_openai_server.py) and FakeProcessPort
(reconciler.testing.processes) answer the same scenarios the same way.

Each scenario is written once against a `World`: the port under test plus what only the
world can do (make the engine ready, crash it, restart the daemon, hold a port). The real
world waits for what really happens; the fake world is told.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from reconciler.core.errors import EngineStartError
from reconciler.core.vocabulary import LaunchSpec, MemberKey, ProcessObservation, ReplicaKey
from reconciler.ports.processes import LocalProcessPort, ProcessPort
from reconciler.testing.processes import FakeHost, FakeProcessPort

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "testrigs" / "engines" / "fake_openai_server.py"
ENGINE = MemberKey(ReplicaKey("chat", 0), "engine")
SERVED = "chat-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(port: int, *flags: str, spec_hash: str = "h1") -> LaunchSpec:
    argv = (sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(port),
            "--model", SERVED, *flags)
    return LaunchSpec(
        member=ENGINE, spec_hash=spec_hash, argv=argv,
        env={"RECONCILER_MEMBER": ENGINE.slug, "RECONCILER_SPEC_HASH": spec_hash},
        port=port, gpus=(0,), startup_timeout_s=30.0, served_name=SERVED,
        host="127.0.0.1", probe_timeout_s=0.3,
    )


class World(Protocol):
    port: ProcessPort
    exits: list[MemberKey]  # on_exit calls, in order

    def start(self, spec: LaunchSpec, *, crash_after: float | None = None,
              exit_code: int = 0) -> ProcessObservation: ...
    def become_ready(self, member: MemberKey) -> ProcessObservation: ...
    def crash(self, member: MemberKey) -> ProcessObservation: ...
    def restart_daemon(self) -> None: ...
    def kill_adopted(self, member: MemberKey) -> ProcessObservation: ...
    def hold_port(self, port: int) -> None: ...


def observe(port: ProcessPort, member: MemberKey) -> ProcessObservation | None:
    return next((o for o in port.list() if o.member == member), None)


def eventually(port: ProcessPort, member: MemberKey,
               ok: Callable[[ProcessObservation], bool], timeout: float = 20) -> ProcessObservation:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = observe(port, member)
        if last is not None and ok(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout}s; last: {last}")


class RealWorld:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.exits: list[MemberKey] = []
        self._lock = threading.Lock()
        self._ports: list[LocalProcessPort] = []
        self._held: list[socket.socket] = []
        self.port: ProcessPort = self._new_port()

    def _new_port(self) -> LocalProcessPort:
        p = LocalProcessPort(self.state_dir, 1 << 20, 1, on_exit=self._on_exit,
                             probe_interval_s=0.05, kill_wait_s=5)
        self._ports.append(p)
        return p

    def _on_exit(self, member: MemberKey) -> None:
        with self._lock:
            self.exits.append(member)

    def start(self, spec: LaunchSpec, *, crash_after: float | None = None,
              exit_code: int = 0) -> ProcessObservation:
        if crash_after is not None:
            extra = ("--exit-after", str(crash_after), "--exit-code", str(exit_code))
            spec = LaunchSpec(**{**spec.__dict__, "argv": spec.argv + extra})
        return self.port.start(spec)

    def become_ready(self, member: MemberKey) -> ProcessObservation:
        return eventually(self.port, member, lambda o: o.health == "ready")

    def crash(self, member: MemberKey) -> ProcessObservation:
        return eventually(self.port, member, lambda o: not o.running)

    def restart_daemon(self) -> None:
        for p in self._ports:
            p.close()
        self.port = self._new_port()

    def kill_adopted(self, member: MemberKey) -> ProcessObservation:
        obs = observe(self.port, member)
        assert obs is not None
        os.killpg(obs.pid, signal.SIGKILL)
        return eventually(self.port, member, lambda o: not o.running)

    def hold_port(self, port: int) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen(1)
        self._held.append(s)

    def close(self) -> None:
        for p in self._ports:
            for o in p.list():
                if o.running:
                    p.stop(o.member, 2)
                else:
                    p.forget(o.member)
            p.close()
        for s in self._held:
            s.close()


class FakeWorld:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.host = FakeHost()
        self.exits: list[MemberKey] = []
        self._fake = self._new_port()
        self.port: ProcessPort = self._fake

    def _new_port(self) -> FakeProcessPort:
        return FakeProcessPort(self.state_dir, host=self.host, on_exit=self.exits.append)

    def start(self, spec: LaunchSpec, *, crash_after: float | None = None,
              exit_code: int = 0) -> ProcessObservation:
        obs = self._fake.start(spec)
        self._exit_code = exit_code
        return obs

    def become_ready(self, member: MemberKey) -> ProcessObservation:
        self._fake.set_health(member, "ready")
        return eventually(self.port, member, lambda o: o.health == "ready")

    def crash(self, member: MemberKey) -> ProcessObservation:
        self._fake.crash(member, self._exit_code)
        return eventually(self.port, member, lambda o: not o.running)

    def restart_daemon(self) -> None:
        self._fake = self._new_port()
        self.port = self._fake

    def kill_adopted(self, member: MemberKey) -> ProcessObservation:
        self._fake.crash(member, -9)
        return eventually(self.port, member, lambda o: not o.running)

    def hold_port(self, port: int) -> None:
        self._fake.take_port(port, f"pid {os.getpid()} (python)")

    def close(self) -> None:
        pass


@pytest.fixture(params=["real", "fake"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    w: RealWorld | FakeWorld = (
        RealWorld(tmp_path / "state") if request.param == "real" else FakeWorld(tmp_path / "state")
    )
    try:
        yield w
    finally:
        w.close()


def test_start_reports_starting_then_ready_and_stop_removes_it(world: World) -> None:
    port = free_port()
    obs = world.start(launch(port, "--ready-after", "0.5"))
    assert obs.running and obs.pid > 0 and obs.health == "starting"
    assert (obs.member, obs.spec_hash, obs.port, obs.gpus) == (ENGINE, "h1", port, (0,))
    assert obs.exit_code is None and obs.unhealthy_since is None
    assert obs.pid in world.port.owned_pids()

    ready = world.become_ready(ENGINE)
    assert ready.pid == obs.pid and ready.running and ready.detail == ""

    assert world.port.stop(ENGINE, 5.0)
    assert observe(world.port, ENGINE) is None
    assert obs.pid not in world.port.owned_pids()
    assert world.port.stop(ENGINE, 5.0), "stopping what is gone is confirmed at once"


def test_a_second_start_while_running_is_refused(world: World) -> None:
    world.start(launch(free_port()))
    with pytest.raises(EngineStartError, match="already running"):
        world.start(launch(free_port()))


def test_a_port_held_by_a_stranger_refuses_the_start(world: World) -> None:
    port = free_port()
    world.hold_port(port)
    with pytest.raises(EngineStartError, match=f"port {port} is taken by pid {os.getpid()}"):
        world.start(launch(port))
    assert observe(world.port, ENGINE) is None


def test_a_crash_is_observed_with_its_exit_code_until_forgotten(world: World) -> None:
    obs = world.start(launch(free_port()), crash_after=0.3, exit_code=3)
    crashed = world.crash(ENGINE)
    assert crashed.pid == obs.pid and not crashed.running
    assert (crashed.exit_code, crashed.health) == (3, "unhealthy")
    assert obs.pid not in world.port.owned_pids()
    deadline = time.monotonic() + 10
    while ENGINE not in world.exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ENGINE in world.exits, "on_exit wakes the loop"

    world.port.forget(ENGINE)
    assert observe(world.port, ENGINE) is None
    again = world.start(launch(free_port()))  # the member can start again
    assert again.running and again.pid != obs.pid


def test_a_restarted_daemon_adopts_its_member_and_can_stop_it(world: World) -> None:
    obs = world.start(launch(free_port(), spec_hash="h2"))
    world.become_ready(ENGINE)
    world.restart_daemon()

    adopted = observe(world.port, ENGINE)
    assert adopted is not None and adopted.running
    assert (adopted.pid, adopted.spec_hash, adopted.gpus) == (obs.pid, "h2", (0,))
    assert obs.pid in world.port.owned_pids()
    assert world.port.stop(ENGINE, 5.0)
    assert observe(world.port, ENGINE) is None


def test_an_adopted_member_that_dies_has_no_exit_code(world: World) -> None:
    world.start(launch(free_port()))
    world.restart_daemon()
    dead = world.kill_adopted(ENGINE)
    assert not dead.running and dead.health == "unhealthy"
    assert dead.exit_code is None, "an adopted process is not our child: its code is unknown"


def test_forget_never_drops_a_running_member(world: World) -> None:
    obs = world.start(launch(free_port()))
    world.port.forget(ENGINE)
    still = observe(world.port, ENGINE)
    assert still is not None and still.running and still.pid == obs.pid
