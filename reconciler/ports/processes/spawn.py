"""Starting a member: its environment (with our ownership markers) and the child itself,
in its own session, writing straight into its log file."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from reconciler.core.errors import EngineStartRefused
from reconciler.core.vocabulary import LaunchSpec
from reconciler.ports.processes.log_rotation import HEADER_PREFIX
from reconciler.ports.processes.proc import (
    MARKER_DRAIN_S,
    MARKER_HOST,
    MARKER_LEADER,
    MARKER_MEMBER,
    MARKER_PORT,
    MARKER_SERVED_NAME,
    MARKER_SPEC_HASH,
    MARKER_STATE_DIR,
)

__all__ = ["child_env", "spawn"]


def child_env(
    launch: LaunchSpec, base_env: Mapping[str, str], state_marker: str
) -> dict[str, str]:
    """The daemon's own environment does not leak into a member (PATH, HOME and LANG
    aside); the markers say whose member it is and what it serves (see adoption.py)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update(base_env)
    env.update(launch.env)
    env.setdefault(MARKER_MEMBER, launch.member.slug)
    env.setdefault(MARKER_SPEC_HASH, launch.spec_hash)
    env[MARKER_STATE_DIR] = state_marker
    env[MARKER_PORT] = str(launch.port)
    env[MARKER_HOST] = launch.host or ""
    env[MARKER_SERVED_NAME] = launch.served_name
    env[MARKER_DRAIN_S] = "" if launch.drain_s is None else f"{launch.drain_s:g}"
    env[MARKER_LEADER] = launch.leader
    return env


def spawn(
    launch: LaunchSpec, env: Mapping[str, str], log_path: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """Start the member's leader in a new session (its pid is the group and session id)
    with stdout and stderr appended to `log_path` after a header line."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        header = (
            f"{HEADER_PREFIX} starting {launch.member} hash {launch.spec_hash} at "
            f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {shlex.join(launch.argv)}\n"
        )
        os.write(log_fd, header.encode())
        return subprocess.Popen(
            list(launch.argv),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:  # executable missing, not executable, ...
        raise EngineStartRefused(
            f"{launch.member}: cannot run {launch.argv[0]!r}: {exc.strerror or exc}"
        ) from exc
    finally:
        os.close(log_fd)
