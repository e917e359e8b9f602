"""Test hosts as Linux network namespaces joined by a bridge in a namespace of its own.

Each test host is a network namespace with loopback up and one veth interface whose peer is a
port of a Linux bridge. The bridge lives in a separate namespace, so nothing is added to the
root namespace and parallel runs (each with its own random suffix) cannot collide: interface
names and addresses are namespace-local, namespace names carry the suffix.

Addresses come from 198.18.0.0/15 (RFC 2544, set aside for network testing): by default
198.18.0.11/24, .12, .13, ...

Processes are started through ``ip netns exec`` in a new session (so pid == pgid) and are
remembered; :meth:`NetnsHarness.teardown` signals only those process groups, then SIGKILLs
whatever is still inside the harness's own namespaces (``ip netns pids``: daemons that left
the group, e.g. Ray's raylet and GCS, can only be there because we started them), and finally
deletes the namespaces.

Usage::

    with NetnsHarness(3) as net:
        head, w1, w2 = net.hosts
        proc = net.popen(head, ["python", "-m", "http.server", "8000"])
        net.run(w1, ["curl", f"http://{head.ip}:8000/"])
        net.link_down(w1)  # cable cut: w1 sees NO-CARRIER, the others see silence
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

__all__ = [
    "NetnsError",
    "NetnsHarness",
    "NetnsHost",
    "netns_unavailable_reason",
]

_IP = "ip"
_BRIDGE = "br0"
_HOST_IF = "eth0"


class NetnsError(RuntimeError):
    """An ``ip`` command the harness needs failed."""


@dataclass(frozen=True)
class NetnsHost:
    """One test host: a network namespace with one address on the test bridge."""

    __test__ = False  # not a pytest test class

    name: str  # logical name, e.g. "h1"
    netns: str  # namespace name, unique per harness
    ip: str  # address on the bridge network, e.g. "198.18.0.11"
    prefixlen: int
    ifname: str  # interface inside the host namespace
    bridge_port: str  # the veth peer inside the bridge namespace

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefixlen}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([_IP, *args], capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def netns_unavailable_reason() -> str | None:
    """Why network-namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespace tests need root (euid is not 0)"
    if shutil.which(_IP) is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"rtprobe-{secrets.token_hex(4)}"
    try:
        added = _ip("netns", "add", probe, check=False)
        if added.returncode != 0:
            return f"`ip netns add` failed: {added.stderr.strip()}"
        bridge = _ip("-n", probe, "link", "add", "brprobe", "type", "bridge", check=False)
        if bridge.returncode != 0:
            return f"cannot create a Linux bridge: {bridge.stderr.strip()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` is unavailable: {exc}"
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _ip("netns", "del", probe, check=False)
    return None


class NetnsHarness:
    """N test hosts joined by a bridge; owns its namespaces and the processes it starts."""

    __test__ = False

    def __init__(
        self,
        n_hosts: int,
        *,
        prefix: str = "rt",
        subnet: str = "198.18.0",
        first_host_octet: int = 11,
        prefixlen: int = 24,
    ) -> None:
        if not 1 <= n_hosts <= 200:
            raise ValueError(f"n_hosts must be in 1..200, got {n_hosts}")
        if first_host_octet + n_hosts > 255:
            raise ValueError("host addresses would run past .254")
        self.suffix = secrets.token_hex(3)
        self.prefix = prefix
        self.bridge_ns = f"{prefix}-{self.suffix}-br"
        self.hosts: list[NetnsHost] = [
            NetnsHost(
                name=f"h{i + 1}",
                netns=f"{prefix}-{self.suffix}-h{i + 1}",
                ip=f"{subnet}.{first_host_octet + i}",
                prefixlen=prefixlen,
                ifname=_HOST_IF,
                bridge_port=f"p{i + 1}",
            )
            for i in range(n_hosts)
        ]
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._torn_down = False

    # -- lifecycle -----------------------------------------------------------------------

    def setup(self) -> NetnsHarness:
        try:
            self._add_ns(self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "set", "lo", "up")
            _ip("-n", self.bridge_ns, "link", "add", _BRIDGE, "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", _BRIDGE, "up")
            for host in self.hosts:
                self._add_ns(host.netns)
                _ip("-n", host.netns, "link", "set", "lo", "up")
                # Both ends are created directly inside their namespaces: nothing touches
                # the root namespace, so names cannot collide with other runs.
                _ip(
                    "link", "add", host.ifname, "netns", host.netns, "type", "veth",
                    "peer", "name", host.bridge_port, "netns", self.bridge_ns,
                )  # fmt: skip
                _ip("-n", self.bridge_ns, "link", "set", host.bridge_port, "master", _BRIDGE)
                _ip("-n", self.bridge_ns, "link", "set", host.bridge_port, "up")
                _ip("-n", host.netns, "addr", "add", host.cidr, "dev", host.ifname)
                _ip("-n", host.netns, "link", "set", host.ifname, "up")
        except BaseException:
            self.teardown()
            raise
        return self

    def __enter__(self) -> NetnsHarness:
        return self.setup()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)

    def host(self, name: str) -> NetnsHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    # -- processes -----------------------------------------------------------------------

    @staticmethod
    def _argv(host: NetnsHost, argv: Sequence[str]) -> list[str]:
        # `ip netns exec` (not in batch mode) execs the command in place: the pid we get
        # back is the command's own pid.
        return [_IP, "netns", "exec", host.netns, *argv]

    def run(
        self,
        host: NetnsHost,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        timeout: float = 60.0,
        check: bool = False,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the host to completion, capturing text output."""
        proc = self.popen(host, argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            out, err = proc.communicate()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._procs.remove(proc)
        text_out = out.decode(errors="replace") if out else ""
        text_err = err.decode(errors="replace") if err else ""
        result = subprocess.CompletedProcess(list(argv), proc.returncode, text_out, text_err)
        if check:
            result.check_returncode()
        return result

    def popen(
        self,
        host: NetnsHost,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.STDOUT,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a command in the host in a new session (pgid == pid); teardown ends it."""
        if self._torn_down:
            raise NetnsError("harness is torn down")
        proc = subprocess.Popen(
            self._argv(host, argv),
            env=dict(env) if env is not None else None,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    @staticmethod
    def kill(
        proc: subprocess.Popen[Any], sig: int = signal.SIGKILL, *, grace: float = 0.0
    ) -> int | None:
        """Signal a process group this harness started; optionally escalate to SIGKILL."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            if grace > 0 and sig != signal.SIGKILL:
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
        else:
            # The leader is gone; its group may still have members.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None

    def pids_in(self, host: NetnsHost | str) -> list[int]:
        """Pids of all processes inside one of this harness's namespaces."""
        ns = host.netns if isinstance(host, NetnsHost) else host
        if ns not in self._namespaces:
            raise NetnsError(f"{ns} is not a namespace of this harness")
        out = _ip("netns", "pids", ns, check=False).stdout
        return [int(tok) for tok in out.split() if tok.isdigit()]

    # -- links ---------------------------------------------------------------------------

    def link_down(self, host: NetnsHost) -> None:
        """Cut the host's cable: its bridge port goes down.

        The host's interface keeps its address but loses carrier (packets are dropped, no
        error to the sender); the other hosts just stop hearing from it.
        """
        _ip("-n", self.bridge_ns, "link", "set", host.bridge_port, "down")

    def link_up(self, host: NetnsHost) -> None:
        _ip("-n", self.bridge_ns, "link", "set", host.bridge_port, "up")

    # -- teardown ------------------------------------------------------------------------

    def teardown(self, grace: float = 3.0) -> None:
        """End every process this harness started, then delete its namespaces. Idempotent."""
        self._torn_down = True
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            self.kill(proc, signal.SIGKILL)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        # Leftovers that left our process groups (setpgrp'd daemons) but live in our
        # namespaces: only we put processes there.
        for _ in range(50):
            leftover = [pid for ns in self._namespaces for pid in self.pids_in(ns)]
            if not leftover:
                break
            for pid in leftover:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)
        self._namespaces = []
