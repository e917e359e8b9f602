"""Engine log files: copy-truncate rotation and the last line (the reason a member died).

The engine holds its log open with O_APPEND and outlives the daemon, which is why the port
writes logs to a file, not a pipe (see LocalProcessPort).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HEADER_PREFIX = "--- reconciler:"  # lines the port writes itself (start headers)


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



def log_tail_lines(path: Path, max_bytes: int = 64 * 1024) -> list[str]:
    """The lines the process wrote since its last start header, oldest first, from the
    last `max_bytes` of the log (the cause of a crash sits up to ~50 lines above its end)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = tail.splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is cut
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(HEADER_PREFIX):
            return lines[i + 1:]
    return lines


def last_log_line(path: Path, limit: int = 300) -> str:
    """The last line the process wrote (not one of our headers), at most `limit` chars."""
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
        if line and not line.startswith(HEADER_PREFIX):
            return line[-limit:]
    return ""

