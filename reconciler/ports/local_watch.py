"""Watch a repository on the local file system and wake the loop when its refs may have
changed (watchfiles: inotify, or polling where forced).

Not git: nothing here reads or trusts the repository. The callback only wakes the loop;
what changed is read by the git source's `fetch()` like on any other tick.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import watchfiles

_log = logging.getLogger(__name__)


def find_git_dirs(repo: Path) -> list[Path]:
    """The directories holding HEAD and refs for a work tree or bare repository:
    `.git` (directory or `gitdir:` file), plus the common dir of a linked worktree."""
    repo = repo.resolve()
    dot = repo / ".git"
    if dot.is_dir():
        gitdir = dot
    elif dot.is_file():
        content = dot.read_text(encoding="utf-8").strip()
        if not content.startswith("gitdir:"):
            raise ValueError(f"{dot} is not a gitdir file")
        gitdir = (repo / content.removeprefix("gitdir:").strip()).resolve()
    elif (repo / "HEAD").is_file() and (repo / "objects").is_dir():
        gitdir = repo
    else:
        raise ValueError(f"{repo} is not a git repository")
    dirs = [gitdir]
    common = gitdir / "commondir"
    if common.is_file():
        dirs.append((gitdir / common.read_text(encoding="utf-8").strip()).resolve())
    return dirs


class LocalRefWatcher:
    """Calls `callback()` (from a background thread) when the refs of a local repository
    may have changed: HEAD, packed-refs or anything under refs/heads. The callback only
    wakes the loop; it gets no payload. Exceptions from the callback are logged."""

    def __init__(
        self,
        repo: Path | str,
        callback: Callable[[], None],
        *,
        debounce_ms: int = 200,
        force_polling: bool | None = None,
        name: str = "git-ref-watcher",
    ) -> None:
        self._dirs = find_git_dirs(Path(repo))
        self._callback = callback
        self._debounce_ms = debounce_ms
        self._force_polling = force_polling
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def watched(self) -> list[Path]:
        return list(self._dirs)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> LocalRefWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _relevant(self, _change: object, path: str) -> bool:
        p = Path(path)
        for d in self._dirs:
            try:
                rel = p.relative_to(d).parts
            except ValueError:
                continue
            if rel in (("HEAD",), ("packed-refs",)):
                return True
            if len(rel) >= 3 and rel[:2] == ("refs", "heads") and not rel[-1].endswith(".lock"):
                return True
        return False

    def _main(self) -> None:
        while not self._stop.is_set():
            try:
                for _changes in watchfiles.watch(
                    *self._dirs,
                    watch_filter=self._relevant,
                    debounce=self._debounce_ms,
                    step=50,
                    stop_event=self._stop,
                    recursive=True,
                    force_polling=self._force_polling,
                    raise_interrupt=False,
                ):
                    try:
                        self._callback()
                    except Exception:
                        _log.exception("git ref watcher callback failed")
            except Exception as exc:
                level = (
                    logging.DEBUG
                    if isinstance(exc, OSError) and exc.errno in (errno.ENOENT,)
                    else logging.WARNING
                )
                _log.log(level, "git ref watcher restarting", extra={"error": repr(exc)})
                self._stop.wait(1.0)
