"""Read-only, bounded access to the engines' log files in the state dir, for the console
(`GET /logs` lists them, `GET /logs/<member>?offset=N` reads a piece).

A member name must match the state dir's own file names (`<deployment>.<index>.<role>`,
reconciler.core.vocabulary.MemberKey.slug) before it is joined to a path, and the file is
opened with O_NOFOLLOW: no name reaches a file outside `<state dir>/logs`. One answer is
at most `MAX_CHUNK` bytes; a reader follows by asking again from `next`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from reconciler.core.errors import PermanentError

MEMBER_RE = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.[0-9]{1,5}\.(engine|ray-head|ray-worker)$"
)
MAX_CHUNK = 256 * 1024
DEFAULT_TAIL = 64 * 1024
MAX_LISTED = 500


class LogNotFound(PermanentError, LookupError):
    """No such member, or no log of it on this node."""

    reason = "LogNotFound"


def valid_member(name: str) -> bool:
    return bool(MEMBER_RE.match(name))


def list_logs(state_dir: Path) -> list[dict[str, Any]]:
    logs = state_dir / "logs"
    out: list[dict[str, Any]] = []
    try:
        entries = sorted(os.scandir(logs), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        member = e.name.removesuffix(".log")
        if not e.name.endswith(".log") or not valid_member(member):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append({"member": member, "size": st.st_size, "modified": int(st.st_mtime)})
        if len(out) >= MAX_LISTED:
            break
    return out


def read_log(state_dir: Path, member: str, offset: int | None,
             limit: int = MAX_CHUNK) -> dict[str, Any]:
    """A piece of one member's log: from `offset` (None: the last DEFAULT_TAIL bytes) up to
    `limit` bytes. A file shorter than `offset` was rotated: reading starts over at 0."""
    if not valid_member(member):
        raise LogNotFound(f"not a member name: {member[:80]!r}")
    path = state_dir / "logs" / f"{member}.log"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise LogNotFound(f"no log for {member} on this node") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise LogNotFound(f"no log for {member} on this node")
        size = st.st_size
        limit = max(1, min(limit, MAX_CHUNK))
        reset = offset is not None and offset > size
        if offset is None:
            start = max(0, size - DEFAULT_TAIL)
        elif reset:
            start = 0
        else:
            start = max(0, offset)
        fh.seek(start)
        data = fh.read(min(limit, max(0, size - start)))
    return {"member": member, "offset": start, "next": start + len(data), "size": size,
            "reset": reset, "text": data.decode("utf-8", errors="replace")}
