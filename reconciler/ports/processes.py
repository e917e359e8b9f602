"""The engine-process port: start, find, probe and stop the processes this node owns.

One port serves every member role (vLLM engines, Ray head and worker nodes): each is a
child in its own session and process group, with a log file and a state file under the
state dir. Ownership is the state file (pid + process start time + spec hash); a
process without one is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from reconciler.core.errors import EngineStartError
from reconciler.core.vocabulary import Health, LaunchSpec, MemberKey, ProcessObservation
from reconciler.ports.clock import Clock, SystemClock
from reconciler.ports.crashpoints import crash_point
from reconciler.ports.files import atomic_write

__all__ = [
    "EngineRecord",
    "LocalProcessPort",
    "ProcStat",
    "ProcessPort",
    "check_port_free",
    "is_listening",
    "launch_host",
    "port_holders",
    "probe_engine",
    "read_stat",
    "read_state_files",
    "rotate_log",
    "who_holds_port",
]

# Env markers set by reconciler.core.launch (repeated here: ports import nothing from the core).
MARKER_MEMBER = "RECONCILER_MEMBER"
MARKER_SPEC_HASH = "RECONCILER_SPEC_HASH"
# Set by this port on every child: which state dir owns it and the port it serves. With
# them a restarted daemon finds (and adopts) a member whose state file was never written
# (killed between start and write) or was lost, and never touches another daemon's.
MARKER_STATE_DIR = "RECONCILER_STATE_DIR"
MARKER_PORT = "RECONCILER_PORT"


class ProcessPort(Protocol):
    def list(self) -> list[ProcessObservation]:
        """Every owned member, alive or exited, with its latest health. No side effects
        beyond reading state files and probing."""
        ...

    def start(self, launch: LaunchSpec) -> ProcessObservation:
        """Start the member; raises EngineStartError (e.g. port taken by a stranger)."""
        ...

    def stop(self, member: MemberKey, grace_s: float) -> bool:
        """SIGTERM the group, wait up to grace_s, then SIGKILL. True once confirmed gone
        (and its port free); its state file is removed then."""
        ...

    def forget(self, member: MemberKey) -> None:
        """Drop the state of a member whose process already exited."""
        ...

    def log_path(self, member: MemberKey) -> Path: ...

    def owned_pids(self) -> frozenset[int]:
        """Pids of owned processes and all their descendants (to tell foreign GPU users)."""
        ...


# =============================================================================================
# The real implementation: local child processes, /proc and HTTP probes.
# =============================================================================================

log = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
_ANY_V4 = "0.0.0.0"  # noqa: S104 (a value to compare and test-bind, not a listen address)
_WILDCARDS = frozenset({"", _ANY_V4, "::", "*"})
_HOST_FLAGS = ("--host", "--node-ip-address")
_TCP_LISTEN = "0A"
_TCP_TIME_WAIT = "06"
_FULL_PROBE_EVERY_S = 30.0


# --- /proc -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that ownership and tree walks need."""

    pid: int
    comm: str
    state: str  # R, S, D, Z (zombie), X (dead), ...
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # field 22: clock ticks after boot; with the pid, a unique identity

    @property
    def gone(self) -> bool:
        return self.state in ("Z", "X")


def read_stat(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """Parse /proc/<pid>/stat; None if there is no such process (or it can't be read)."""
    try:
        data = (proc / str(pid) / "stat").read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    # comm (field 2) is in parentheses and may itself hold spaces and parentheses
    left, right = data.find("("), data.rfind(")")
    if left < 0 or right < left:
        return None
    rest = data[right + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            comm=data[left + 1 : right],
            state=rest[0],
            ppid=int(rest[1]),
            pgrp=int(rest[2]),
            session=int(rest[3]),
            start_ticks=int(rest[19]),
        )
    except (IndexError, ValueError):
        return None


def _all_pids(proc: Path = Path("/proc")) -> list[int]:
    try:
        return [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []


def _all_stats() -> dict[int, ProcStat]:
    stats: dict[int, ProcStat] = {}
    for pid in _all_pids():
        st = read_stat(pid)
        if st is not None:
            stats[pid] = st
    return stats


def _has_markers(pid: int, slug: str, spec_hash: str) -> bool:
    """Does the process carry our env markers for this member (inherited from the leader)?"""
    env = read_environ(pid)
    return (
        env is not None
        and env.get(MARKER_MEMBER) == slug
        and env.get(MARKER_SPEC_HASH) == spec_hash
    )


def read_environ(pid: int) -> dict[str, str] | None:
    """A process's initial environment from /proc, None when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(os.fsdecode(a) for a in raw.split(b"\0")[:-1])


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _wall_start(start_ticks: int) -> float | None:
    """The wall-clock time a process started, from its start ticks and the boot time."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return None


def _age_seconds(start_ticks: int) -> float | None:
    """Seconds since a process started, on the kernel's monotonic clock (/proc/uptime)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(errors="replace").strip()
    except OSError:
        return "?"


# --- ports -------------------------------------------------------------------------------------


def launch_host(argv: Sequence[str]) -> str | None:
    """The address a member binds, read from its command line (vLLM --host, Ray
    --node-ip-address); None when the command does not say."""
    for i, arg in enumerate(argv):
        for flag in _HOST_FLAGS:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def _probe_host(host: str | None) -> str:
    if host is None or host in ("", _ANY_V4, "*"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _socket_inodes(port: int) -> list[tuple[int, bool]]:
    """(inode, listening) of every TCP socket bound to local `port` in this net namespace."""
    found: list[tuple[int, bool]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            try:
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                inode = int(fields[9])
            except (IndexError, ValueError):
                continue
            if local_port == port and inode != 0:
                found.append((inode, fields[3] == _TCP_LISTEN))
    return found


def is_listening(port: int) -> bool:
    """Is any TCP socket listening on `port` (any address) in this net namespace?"""
    return any(listening for _, listening in _socket_inodes(port))


def port_holders(port: int) -> list[int]:
    """Pids holding a socket bound to `port`, listeners first (inode lookup over /proc/*/fd)."""
    entries = _socket_inodes(port)
    if not entries:
        return []
    rank = {f"socket:[{inode}]": (0 if listening else 1) for inode, listening in entries}
    holders: dict[int, int] = {}
    for pid in _all_pids():
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in rank:
                holders[pid] = min(holders.get(pid, 9), rank[target])
    return sorted(holders, key=lambda p: (holders[p], p))


def _in_time_wait(port: int) -> bool:
    """Is there a TCP connection in TIME_WAIT whose local port is `port`? (No process owns
    one. If the connection's socket lacked SO_REUSEADDR, e.g. an outgoing connection that
    got `port` as its ephemeral port, it blocks binding `port` until it expires.)"""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            try:
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == _TCP_TIME_WAIT:
                    return True
            except (IndexError, ValueError):
                continue
    return False


def who_holds_port(port: int) -> str:
    """'pid 123 (nginx)' (up to three holders), a closed connection in TIME_WAIT, or 'an
    unknown process'."""
    pids = port_holders(port)
    if not pids:
        if _in_time_wait(port):
            return (
                "a closed connection in TIME_WAIT (no process; it expires within 60s; "
                "engine ports inside the ephemeral range "
                "/proc/sys/net/ipv4/ip_local_port_range are prone to this)"
            )
        return "an unknown process"
    shown = ", ".join(f"pid {p} ({_comm(p)})" for p in pids[:3])
    return shown + (f" and {len(pids) - 3} more" if len(pids) > 3 else "")


def check_port_free(host: str | None, port: int) -> str | None:
    """None if `port` can be bound on `host` (all addresses when None); else why not.

    Binds a throwaway socket with SO_REUSEADDR, as the servers we start do: on Linux that
    still fails while anyone listens on the port (same or wildcard address) but ignores
    TIME_WAIT leftovers of a server that just stopped.
    """
    addr = _ANY_V4 if host is None or host in _WILDCARDS - {"::"} else host
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is taken by {who_holds_port(port)}"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"address {addr} is not configured on this host"
            return f"port {port} on {addr}: {exc.strerror or exc}"
    return None


# --- log files -----------------------------------------------------------------------------------


def rotate_log(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy-truncate rotation: path -> path.1 -> ... -> path.<backups>, then truncate path.

    The engine holds its log open with O_APPEND, so after the truncation its next write
    lands at offset 0 of the same file. Lines written between the copy and the truncation
    are lost (a small window, accepted: see LocalProcessPort for why not a pipe).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    if backups > 0:
        for index in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def _last_log_line(path: Path, limit: int = 300) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for raw in reversed(tail.splitlines()):
        line = raw.strip()
        if line and not line.startswith("--- reconciler:"):
            return line[-limit:]
    return ""


# --- state files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineRecord:
    """The state file of one member: what makes a process ours (pid + start ticks)."""

    member: MemberKey
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    spec_hash: str
    port: int
    gpus: tuple[int, ...]
    started_at: float  # wall clock (the daemon's Clock)
    host: str | None = None
    served_name: str = ""
    probe_timeout_s: float = 2.0
    probe_period_s: float = 5.0
    ready_at: float | None = None  # first time it was seen ready (survives a daemon restart)
    exit_code: int | None = None  # written by the waiter of the daemon that started it

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_FORMAT_VERSION,
            "member": self.member.slug,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "argv": list(self.argv),
            "spec_hash": self.spec_hash,
            "port": self.port,
            "gpus": list(self.gpus),
            "started_at": self.started_at,
            "host": self.host,
            "served_name": self.served_name,
            "probe_timeout_s": self.probe_timeout_s,
            "probe_period_s": self.probe_period_s,
            "ready_at": self.ready_at,
            "exit_code": self.exit_code,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineRecord:
        return cls(
            member=MemberKey.from_slug(str(data["member"])),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            argv=tuple(str(a) for a in data["argv"]),
            spec_hash=str(data["spec_hash"]),
            port=int(data["port"]),
            gpus=tuple(int(g) for g in data["gpus"]),
            started_at=float(data["started_at"]),
            host=None if data.get("host") is None else str(data["host"]),
            served_name=str(data.get("served_name", "")),
            probe_timeout_s=float(data.get("probe_timeout_s", 2.0)),
            probe_period_s=float(data.get("probe_period_s", 5.0)),
            ready_at=None if data.get("ready_at") is None else float(data["ready_at"]),
            exit_code=None if data.get("exit_code") is None else int(data["exit_code"]),
        )


def read_state_files(state_dir: Path) -> list[ProcessObservation]:
    """What the state dir says this node owns, without probing, threads or signals (for
    a dry-run `plan` beside a running daemon). Liveness is checked through /proc (pid +
    start ticks); health is the last one recorded: "ready" if the member was ever seen
    ready by a daemon, else "starting". Unreadable files are reported as exited."""
    found: list[ProcessObservation] = []
    for path in sorted((Path(state_dir) / "engines").glob("*.json")):
        try:
            member = MemberKey.from_slug(path.stem)
        except ValueError:
            continue
        try:
            rec = EngineRecord.from_json(json.loads(path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            found.append(
                ProcessObservation(
                    member, "", 0, False, 0.0, 0, (), "unhealthy", detail="state file unreadable"
                )
            )
            continue
        st = read_stat(rec.pid) if rec.pid > 0 else None
        running = st is not None and st.start_ticks == rec.start_ticks and not st.gone
        found.append(
            ProcessObservation(
                member=rec.member,
                spec_hash=rec.spec_hash,
                pid=rec.pid,
                running=running,
                started_at=rec.started_at,
                port=rec.port,
                gpus=rec.gpus,
                health=("ready" if rec.ready_at is not None else "starting")
                if running
                else "unhealthy",
                exit_code=None if running else rec.exit_code,
            )
        )
    return found


# --- health probes -------------------------------------------------------------------------------


def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, bytes]:
    # http.client, not urllib: urllib would send probes through $http_proxy.
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read(1 << 20)
    finally:
        conn.close()


def probe_engine(
    host: str, port: int, served_name: str, timeout: float, *, models: bool = True
) -> tuple[bool, str]:
    """(ready, detail): `GET /health` is 200 and `GET /v1/models` lists `served_name`
    (the second request only when `models`)."""
    try:
        status, _ = _http_get(host, port, "/health", timeout)
        if status != 200:
            return False, f"/health answered {status}"
        if not models:
            return True, ""
        status, body = _http_get(host, port, "/v1/models", timeout)
    except TimeoutError:
        return False, f"no answer from {host}:{port} within {timeout:g}s"
    except ConnectionRefusedError:
        return False, f"nothing listening on {host}:{port}"
    except (OSError, http.client.HTTPException) as exc:
        return False, f"probe of {host}:{port} failed: {type(exc).__name__}: {exc}"
    if status != 200:
        return False, f"/v1/models answered {status}"
    try:
        ids = [str(m.get("id")) for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return False, "/v1/models answered something that is not a model list"
    if served_name and served_name not in ids:
        return False, f"/v1/models lists {ids}, not {served_name!r}"
    return True, ""


# --- the port ------------------------------------------------------------------------------------


@dataclass
class _Tracked:
    """What this daemon knows about one member beyond its state file."""

    record: EngineRecord
    popen: subprocess.Popen[bytes] | None = None  # set when this port instance started it
    health: Health = "starting"
    detail: str = ""
    unhealthy_since: float | None = None
    exited: bool = False
    exit_code: int | None = None
    exit_notified: bool = False
    stopping: bool = False
    last_full_probe: float = -1e9  # time.monotonic() of the last /health + /v1/models
    halt: threading.Event = field(default_factory=threading.Event)
    prober: threading.Thread | None = None

    @property
    def was_ready(self) -> bool:
        return self.record.ready_at is not None


class LocalProcessPort:
    """Engine and Ray processes as children of this daemon, owned through state files.

    Files under ``state_dir``: ``engines/<slug>.json`` (one state file per member, written
    atomically) and ``logs/<slug>.log`` (+ ``.1`` ... ``.<log_backups>``).

    Threads: one *waiter* per child this instance started (``Popen.wait``; records the
    exit code, then calls ``on_exit``) and one *prober* per known member (HTTP probe for
    engines, a listening check for Ray nodes, /proc polling for the exit of adopted
    processes, which are not our children, then ``on_exit`` too; log rotation). ``list()``
    only reads state files, /proc and the probers' last results: it never waits for a
    slow engine.

    Logs: the child writes straight into its log file (O_APPEND), and the prober rotates
    it by copy-truncate once it exceeds ``log_max_bytes``. Not a pipe pumped by a daemon
    thread: the engine must outlive the daemon (restart, upgrade, kill -9) and a pipe
    whose reader died makes the engine's next write fail with EPIPE/SIGPIPE; a file keeps
    working and an adopting daemon keeps rotating it. The cost: lines written between the
    copy and the truncation are lost, and the file may pass the limit by what is written
    in one probe interval.

    Exit codes follow ``subprocess``: negative N means killed by signal N. They are known
    for children of this instance (and persisted into the state file for the next
    daemon); for adopted processes they are None.
    """

    def __init__(
        self,
        state_dir: Path,
        log_max_bytes: int,
        log_backups: int,
        base_env: Mapping[str, str] | None = None,
        on_exit: Callable[[MemberKey], None] | None = None,
        *,
        clock: Clock | None = None,
        probe_interval_s: float = 1.0,
        kill_wait_s: float = 10.0,
        on_health: Callable[[MemberKey], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.engines_dir = self.state_dir / "engines"
        self.logs_dir = self.state_dir / "logs"
        self.engines_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.base_env = dict(base_env or {})
        self.on_exit = on_exit
        # called (from a prober thread) when a member's health changes, e.g. starting ->
        # ready: without it the daemon would see a new Ready only at its next resync
        self.on_health = on_health
        self.clock: Clock = clock or SystemClock()
        self.probe_interval_s = probe_interval_s
        self.kill_wait_s = kill_wait_s
        self._lock = threading.RLock()
        self._tracked: dict[MemberKey, _Tracked] = {}
        self._closed = False
        self._state_marker = str(self.state_dir.resolve())
        self.recovered: list[str] = []  # what _recover_unrecorded did, for tests and logs
        self._recover_unrecorded()
        self._refresh()  # adopt what the state dir says we own; probes start at once

    # --- the Protocol ----------------------------------------------------------------------

    def list(self) -> list[ProcessObservation]:
        self._refresh()
        with self._lock:
            tracked = sorted(self._tracked.values(), key=lambda t: t.record.member)
            for t in tracked:
                self._check_exit(t)
            return [self._observe(t) for t in tracked]

    def start(self, launch: LaunchSpec) -> ProcessObservation:
        if self._closed:
            raise EngineStartError("the process port is closed", retryable=False)
        member = launch.member
        self._refresh()
        with self._lock:
            old = self._tracked.get(member)
            if old is not None:
                self._check_exit(old)
                if not old.exited:
                    raise EngineStartError(
                        f"{member} is already running as pid {old.record.pid}", retryable=False
                    )
        if old is not None:
            self.forget(member)
        if not launch.argv:
            raise EngineStartError(f"{member}: empty command line", retryable=False)
        host = launch_host(launch.argv)
        # port 0: a member that serves nothing (a headless mp follower rank)
        taken = check_port_free(host, launch.port) if launch.port else None
        if taken is not None:
            raise EngineStartError(f"{member}: {taken}")

        env = self._child_env(launch)
        log_path = self.log_path(member)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            header = (
                f"--- reconciler: starting {member} hash {launch.spec_hash} at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {shlex.join(launch.argv)}\n"
            )
            os.write(log_fd, header.encode())
            popen = subprocess.Popen(
                list(launch.argv),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:  # executable missing, not executable, ...
            raise EngineStartError(
                f"{member}: cannot run {launch.argv[0]!r}: {exc.strerror or exc}",
                retryable=False,
            ) from exc
        finally:
            os.close(log_fd)

        crash_point("engine-started")  # test-only: a daemon killed before the state file
        # Not reaped before the waiter starts, so /proc/<pid>/stat exists (maybe a zombie).
        stat = read_stat(popen.pid)
        record = EngineRecord(
            member=member,
            pid=popen.pid,
            start_ticks=stat.start_ticks if stat is not None else -1,
            argv=tuple(launch.argv),
            spec_hash=launch.spec_hash,
            port=launch.port,
            gpus=tuple(launch.gpus),
            started_at=self.clock.now(),
            host=host,
            served_name=launch.served_name,
            probe_timeout_s=launch.probe_timeout_s,
            probe_period_s=launch.probe_period_s,
        )
        tracked = _Tracked(record=record, popen=popen)
        with self._lock:  # a concurrent _refresh must not adopt it as a stranger's
            try:
                self._write_record(record)
            except OSError as exc:
                _signal_group(popen.pid, signal.SIGKILL)
                popen.wait()
                raise EngineStartError(f"{member}: cannot write its state file: {exc}") from exc
            previous = self._tracked.get(member)
            if previous is not None:
                previous.halt.set()
            self._tracked[member] = tracked
            self._start_prober(tracked)
        threading.Thread(
            target=self._wait_child, args=(tracked,), name=f"wait-{member.slug}", daemon=True
        ).start()
        log.info("started member", extra={"member": str(member), "pid": popen.pid})
        return self._observe(tracked)

    def stop(self, member: MemberKey, grace_s: float) -> bool:
        self._refresh()
        with self._lock:
            tracked = self._tracked.get(member)
            if tracked is None:
                return True  # nothing of ours
            tracked.stopping = True
        rec = tracked.record
        targets = self._member_processes(rec)
        if targets:
            self._signal(rec, targets, signal.SIGTERM)
            alive = self._wait_gone(rec, targets, grace_s)
            if alive:
                log.warning(
                    "member ignored SIGTERM, sending SIGKILL",
                    extra={"member": str(member), "pids": sorted(alive)},
                )
                self._signal(rec, alive, signal.SIGKILL)
                alive = self._wait_gone(rec, alive, self.kill_wait_s)
            if alive:
                log.error(
                    "member survived SIGKILL", extra={"member": str(member), "pids": sorted(alive)}
                )
                with self._lock:
                    tracked.stopping = False
                return False
        if tracked.popen is not None:
            try:
                tracked.popen.wait(timeout=self.kill_wait_s)  # reaped (by us or the waiter)
            except subprocess.TimeoutExpired:
                return False
        if not self._wait_port_free(rec):
            with self._lock:
                tracked.stopping = False
            return False
        self._drop(member)
        return True

    def forget(self, member: MemberKey) -> None:
        """Drop an exited member. Leftovers of its group (e.g. a worker process orphaned by
        a crashed server) are killed first: they may still hold GPU memory."""
        self._refresh()
        with self._lock:
            tracked = self._tracked.get(member)
            if tracked is None:
                self._state_path(member).unlink(missing_ok=True)
                return
            self._check_exit(tracked)
            if not tracked.exited:
                # never drop ownership of a live process: the next list() shows it running
                log.error("forget of a running member refused", extra={"member": str(member)})
                return
        leftovers = self._member_processes(tracked.record)
        if leftovers:
            self._signal(tracked.record, leftovers, signal.SIGKILL)
            self._wait_gone(tracked.record, leftovers, self.kill_wait_s)
        self._drop(member)

    def log_path(self, member: MemberKey) -> Path:
        return self.logs_dir / f"{member.slug}.log"

    def owned_pids(self) -> frozenset[int]:
        self._refresh()
        with self._lock:
            records = [t.record for t in self._tracked.values()]
        stats = _all_stats()
        pids: set[int] = set()
        for rec in records:
            pids.update(self._member_processes(rec, stats))
        return frozenset(pids)

    # --- extras ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the probers (not the processes: engines outlive the daemon)."""
        with self._lock:
            self._closed = True
            tracked = list(self._tracked.values())
        for t in tracked:
            t.halt.set()
        for t in tracked:
            if t.prober is not None and t.prober is not threading.current_thread():
                t.prober.join(timeout=5)

    def record(self, member: MemberKey) -> EngineRecord | None:
        with self._lock:
            t = self._tracked.get(member)
            return None if t is None else t.record

    # --- internals ------------------------------------------------------------------------

    def _state_path(self, member: MemberKey) -> Path:
        return self.engines_dir / f"{member.slug}.json"

    def _write_record(self, record: EngineRecord) -> None:
        data = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        with self._lock:
            atomic_write(self._state_path(record.member), data)

    def _update_record(self, tracked: _Tracked, **changes: Any) -> None:
        """Rewrite the state file with `changes`, unless it was dropped meanwhile."""
        with self._lock:
            tracked.record = replace(tracked.record, **changes)
            if self._tracked.get(tracked.record.member) is not tracked:
                return
            path = self._state_path(tracked.record.member)
            try:
                on_disk = json.loads(path.read_bytes())
            except (OSError, ValueError):
                return
            if on_disk.get("pid") != tracked.record.pid:
                return
            try:
                self._write_record(tracked.record)
            except OSError as exc:
                log.warning(
                    "cannot update state file", extra={"path": str(path), "error": str(exc)}
                )

    def _child_env(self, launch: LaunchSpec) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("LANG", "C.UTF-8")
        env.update(self.base_env)
        env.update(launch.env)
        env.setdefault(MARKER_MEMBER, launch.member.slug)
        env.setdefault(MARKER_SPEC_HASH, launch.spec_hash)
        env[MARKER_STATE_DIR] = self._state_marker
        env[MARKER_PORT] = str(launch.port)
        return env

    def _recover_unrecorded(self) -> None:
        """At start: find processes of this state dir that no state file owns, and adopt
        or kill them.

        A member process carries MARKER_STATE_DIR and MARKER_MEMBER in its environment
        (inherited by its children). One that no live state file owns exists when the
        previous daemon was killed between starting it and writing its state file, or when
        its state file was lost or corrupted. A session leader (a member process proper)
        is adopted: its state file is written back from /proc (pid, start ticks, command
        line, spec hash and port markers); a corrupt file is kept as ``.corrupt``. Of two
        leaders for one member the older is kept. Anything else (a second leader, children
        of a dead leader) is killed. Processes of other state dirs are never touched.
        """
        records: dict[MemberKey, EngineRecord] = {}
        for path in sorted(self.engines_dir.glob("*.json")):
            try:
                member = MemberKey.from_slug(path.stem)
                records[member] = EngineRecord.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        stats = _all_stats()
        owned: set[int] = set()
        for rec in records.values():
            owned.update(self._member_processes(rec, stats))
        me = os.getpid()
        strays: dict[int, dict[str, str]] = {}
        for pid, st in stats.items():
            if st.gone or pid == me or pid in owned:
                continue
            env = read_environ(pid)
            if env is None or env.get(MARKER_STATE_DIR) != self._state_marker:
                continue
            if MARKER_MEMBER in env:
                strays[pid] = env
        if not strays:
            return
        adopted: set[int] = set()
        for pid in sorted(strays, key=lambda p: (stats[p].start_ticks, p)):
            st, env = stats[pid], strays[pid]
            if st.session != pid:
                continue  # not a member's leader
            try:
                member = MemberKey.from_slug(env[MARKER_MEMBER])
            except ValueError:
                continue
            known = records.get(member)
            if known is not None and self._alive(known, stats):
                continue  # the member already has an owned (or just adopted) leader
            record = self._record_from_proc(member, st, env)
            path = self._state_path(member)
            if path.exists() and known is None:
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(path.name + ".corrupt"))
            try:
                self._write_record(record)
            except OSError as exc:
                log.error("cannot write the state file of a found member",
                          extra={"member": str(member), "pid": pid, "error": str(exc)})
                continue
            records[member] = record
            adopted.add(pid)
            self.recovered.append(f"adopted {member} pid {pid}")
            log.warning("adopted a member that had no state file",
                        extra={"member": str(member), "pid": pid})
        for pid in adopted:
            owned.update(self._member_processes(records[MemberKey.from_slug(
                strays[pid][MARKER_MEMBER])], stats))
        doomed = {
            pid: stats[pid].start_ticks
            for pid in strays
            if pid not in owned and stats[pid].session not in adopted
        }
        for pid, ticks in sorted(doomed.items()):
            now_st = read_stat(pid)
            if now_st is None or now_st.start_ticks != ticks or now_st.gone:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if now_st.session == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            self.recovered.append(f"killed stray pid {pid} ({strays[pid].get(MARKER_MEMBER)})")
            log.warning("killed a stray member process",
                        extra={"pid": pid, "member": strays[pid].get(MARKER_MEMBER)})
        deadline = time.monotonic() + self.kill_wait_s
        while doomed and time.monotonic() < deadline:
            doomed = {
                pid: ticks for pid, ticks in doomed.items()
                if (cur := read_stat(pid)) is not None and cur.start_ticks == ticks and not cur.gone
            }
            if doomed:
                time.sleep(0.05)

    def _record_from_proc(
        self, member: MemberKey, st: ProcStat, env: Mapping[str, str]
    ) -> EngineRecord:
        argv = _cmdline(st.pid)
        try:
            port = int(env.get(MARKER_PORT) or _flag_value(argv, "--port") or 0)
        except ValueError:
            port = 0
        gpus = tuple(
            int(g) for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip().isdigit()
        )
        return EngineRecord(
            member=member,
            pid=st.pid,
            start_ticks=st.start_ticks,
            argv=argv,
            spec_hash=env.get(MARKER_SPEC_HASH, ""),
            port=port,
            gpus=gpus,
            started_at=_wall_start(st.start_ticks) or self.clock.now(),
            host=launch_host(argv),
            served_name=_flag_value(argv, "--served-model-name") or "",
        )

    def _refresh(self) -> None:
        """Sync the tracked set with the state files: adopt new ones, drop vanished ones."""
        found: dict[MemberKey, EngineRecord | None] = {}
        for path in sorted(self.engines_dir.glob("*.json")):
            try:
                member = MemberKey.from_slug(path.stem)
            except ValueError:
                log.warning("ignoring a state file of unknown name", extra={"path": str(path)})
                continue
            try:
                found[member] = EngineRecord.from_json(json.loads(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable state file", extra={"path": str(path), "error": str(exc)})
                found[member] = None
        with self._lock:
            for member in list(self._tracked):
                gone = self._tracked[member]
                if member not in found and gone.popen is None:
                    # dropped by another port instance over the same state dir
                    gone.halt.set()
                    del self._tracked[member]
            for member, rec in found.items():
                t: _Tracked | None = self._tracked.get(member)
                if rec is None:
                    # an exited record with pid 0: the core reaps it through forget()
                    if t is None:
                        broken = EngineRecord(member, 0, -1, (), "", 0, (), 0.0)
                        self._tracked[member] = _Tracked(
                            record=broken, exited=True, detail="state file unreadable"
                        )
                    continue
                if t is not None and t.record.pid == rec.pid:
                    continue
                if t is not None:
                    t.halt.set()
                adopted = _Tracked(record=rec, exit_code=rec.exit_code)
                self._tracked[member] = adopted
                self._check_exit(adopted)
                if not adopted.exited and not self._closed:
                    log.info("adopted member", extra={"member": str(member), "pid": rec.pid})
                    self._start_prober(adopted)

    def _alive(self, rec: EngineRecord, stats: Mapping[int, ProcStat] | None = None) -> bool:
        """Is the leader still the process we started (same pid and start ticks, no zombie)?"""
        if rec.pid <= 0:
            return False
        st = stats.get(rec.pid) if stats is not None else read_stat(rec.pid)
        return st is not None and st.start_ticks == rec.start_ticks and not st.gone

    def _check_exit(self, tracked: _Tracked) -> None:
        """Record the exit of the leader (child: via poll; adopted: via /proc)."""
        if tracked.exited:
            return
        if tracked.popen is not None:
            code = tracked.popen.poll()
            if code is None and self._alive(tracked.record):
                return
            if code is None:
                code = tracked.popen.wait()  # a zombie: reap it now
            tracked.exit_code = code
        elif self._alive(tracked.record):
            return
        tracked.exited = True
        tracked.health = "unhealthy"
        line = _last_log_line(self.log_path(tracked.record.member))
        tracked.detail = f"last log line: {line}" if line else ""

    def _observe(self, t: _Tracked) -> ProcessObservation:
        rec = t.record
        started_at = rec.started_at
        if not t.exited:
            # Age from the kernel's monotonic start ticks, placed on the daemon's clock:
            # a wall-clock jump then moves "now" and "started_at" together, so it can
            # neither fire a startup timeout early nor postpone it.
            age = _age_seconds(rec.start_ticks)
            if age is not None:
                started_at = self.clock.now() - age
        return ProcessObservation(
            member=rec.member,
            spec_hash=rec.spec_hash,
            pid=rec.pid,
            running=not t.exited,
            started_at=started_at,
            port=rec.port,
            gpus=rec.gpus,
            health=t.health,
            exit_code=t.exit_code if t.exited else None,
            unhealthy_since=t.unhealthy_since if t.health == "unhealthy" else None,
            detail=t.detail,
        )

    def _notify_exit(self, tracked: _Tracked) -> None:
        with self._lock:
            if tracked.exit_notified:
                return
            tracked.exit_notified = True
        if self.on_exit is not None:
            try:
                self.on_exit(tracked.record.member)
            except Exception:
                log.exception("on_exit callback failed")

    def _wait_child(self, tracked: _Tracked) -> None:
        assert tracked.popen is not None
        code = tracked.popen.wait()
        with self._lock:
            self._check_exit(tracked)
            tracked.exit_code = code
            if not tracked.stopping:
                self._update_record(tracked, exit_code=code)
        log.info(
            "member exited",
            extra={"member": str(tracked.record.member), "pid": tracked.record.pid, "code": code},
        )
        tracked.halt.set()
        self._notify_exit(tracked)

    def _start_prober(self, tracked: _Tracked) -> None:
        thread = threading.Thread(
            target=self._probe_loop,
            args=(tracked,),
            name=f"probe-{tracked.record.member.slug}",
            daemon=True,
        )
        tracked.prober = thread
        thread.start()

    def _probe_loop(self, tracked: _Tracked) -> None:
        log_path = self.log_path(tracked.record.member)
        while not tracked.halt.is_set():
            with self._lock:
                self._check_exit(tracked)
                exited = tracked.exited
            if exited:
                if tracked.popen is None:  # adopted: no waiter will tell the loop
                    self._notify_exit(tracked)
                return
            self._probe_once(tracked)
            try:
                rotate_log(log_path, self.log_max_bytes, self.log_backups)
            except OSError as exc:
                log.warning("log rotation failed", extra={"path": str(log_path), "error": str(exc)})
            # Probe fast while loading (readiness matters), at the deployment's period
            # once ready: every probe costs the daemon CPU and the engine a log line.
            # Children we started report their exit through the waiter at once anyway.
            interval = self.probe_interval_s
            if tracked.health == "ready":
                interval = max(interval, tracked.record.probe_period_s)
            tracked.halt.wait(interval)

    def _probe_once(self, tracked: _Tracked) -> None:
        rec = tracked.record
        if rec.port == 0:
            # serves nothing (a headless mp follower rank): ready while it runs
            ok, detail = True, ""
        elif rec.member.role == "engine":
            # Once ready, /health alone each interval and the model list now and then:
            # every request is a line in the engine's access log.
            full = (
                tracked.health != "ready"
                or time.monotonic() - tracked.last_full_probe >= _FULL_PROBE_EVERY_S
            )
            ok, detail = probe_engine(
                _probe_host(rec.host),
                rec.port,
                rec.served_name,
                rec.probe_timeout_s,
                models=full,
            )
            if ok and full:
                tracked.last_full_probe = time.monotonic()
        else:
            ok = is_listening(rec.port)
            detail = "" if ok else f"port {rec.port} is not listening yet"
        now = self.clock.now()
        with self._lock:
            if tracked.exited or tracked.halt.is_set():
                return
            before = tracked.health
            self._apply_probe(tracked, ok, detail, now)
            changed = tracked.health != before
        if changed and self.on_health is not None:
            try:
                self.on_health(rec.member)
            except Exception:
                log.exception("on_health callback failed")

    def _apply_probe(self, tracked: _Tracked, ok: bool, detail: str, now: float) -> None:
        """Record one probe result (under the lock)."""
        if ok:
            tracked.health, tracked.detail, tracked.unhealthy_since = "ready", "", None
            if tracked.record.ready_at is None:
                self._update_record(tracked, ready_at=now)
        elif tracked.was_ready:
            if tracked.health != "unhealthy":
                tracked.unhealthy_since = now
            tracked.health, tracked.detail = "unhealthy", detail
        else:
            tracked.health, tracked.detail = "starting", detail

    def _member_processes(
        self, rec: EngineRecord, stats: Mapping[int, ProcStat] | None = None
    ) -> dict[int, int]:
        """pid -> start ticks of the member's processes: the leader (if still the same
        process), its descendants, and members of its session that carry our env markers
        (descendants orphaned when the leader died)."""
        if rec.pid <= 0:
            return {}
        stats = stats if stats is not None else _all_stats()
        found: dict[int, int] = {}
        if self._alive(rec, stats):
            found[rec.pid] = rec.start_ticks
            children: dict[int, list[int]] = {}
            for st in stats.values():
                children.setdefault(st.ppid, []).append(st.pid)
            todo = [rec.pid]
            while todo:
                for child in children.get(todo.pop(), []):
                    if child not in found and not stats[child].gone:
                        found[child] = stats[child].start_ticks
                        todo.append(child)
        slug = rec.member.slug
        # The session we created at start (sid = the engine's pid) still holds its
        # children after the engine dies: vLLM's EngineCore and workers are re-parented to
        # init and do not carry our env markers (vLLM spawns them with its own env). They
        # are ours when the session leader is our process or gone; a live stranger that
        # reused the pid as a session leader has other start ticks, and its session is
        # left alone unless its members carry our markers.
        leader = stats.get(rec.pid)
        session_ours = leader is None or leader.gone or leader.start_ticks == rec.start_ticks
        for st in stats.values():
            if (
                st.session == rec.pid
                and st.pid not in found
                and not st.gone
                and st.start_ticks >= rec.start_ticks
                and (session_ours or _has_markers(st.pid, slug, rec.spec_hash))
            ):
                found[st.pid] = st.start_ticks
        return found

    def _signal(self, rec: EngineRecord, targets: Mapping[int, int], sig: signal.Signals) -> None:
        if self._alive(rec):
            _signal_group(rec.pid, sig)  # the group also catches processes forked just now
        for pid, ticks in targets.items():
            st = read_stat(pid)
            if st is not None and st.start_ticks == ticks and not st.gone:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)

    def _wait_gone(
        self, rec: EngineRecord, targets: Mapping[int, int], timeout: float
    ) -> dict[int, int]:
        """Wait until none of `targets` (nor new members of the group) is alive; return
        those still alive at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            alive = {
                pid: ticks
                for pid, ticks in targets.items()
                if (st := read_stat(pid)) is not None and st.start_ticks == ticks and not st.gone
            }
            alive.update(self._member_processes(rec))
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.05)

    def _wait_port_free(self, rec: EngineRecord, timeout: float = 3.0) -> bool:
        if rec.port == 0:
            return True
        deadline = time.monotonic() + timeout
        while True:
            taken = check_port_free(rec.host, rec.port)
            if taken is None or taken.startswith("address "):
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        holders = port_holders(rec.port)
        if holders:
            # our processes are all gone: whoever holds it now is a stranger; the next
            # start will say so
            log.warning("port taken by another process after stop", extra={"detail": taken})
            return True
        log.error("port still taken after stop", extra={"detail": taken})
        return False

    def _drop(self, member: MemberKey) -> None:
        with self._lock:
            tracked = self._tracked.pop(member, None)
            self._state_path(member).unlink(missing_ok=True)
        if tracked is not None:
            tracked.halt.set()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
