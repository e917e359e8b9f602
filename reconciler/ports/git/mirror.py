"""The private bare mirror: checked before use, cleaned of stale locks, re-created when
broken. It lives under the source's checkout dir and may be deleted at any time."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil

import git

from reconciler.ports.git.protocol import SourceError, TemporarySourceError
from reconciler.ports.git.runner import GitRunner, tail

_log = logging.getLogger(__name__)


class Mirror:
    def __init__(self, runner: GitRunner) -> None:
        self.runner = runner
        self.complete: set[str] = set()  # revisions whose objects were all readable

    def ensure(self) -> None:
        if not self.looks_usable():
            self.recreate("missing" if not self.runner.mirror.exists() else "unusable")
        self.remove_stale_locks()

    def looks_usable(self) -> bool:
        m = self.runner.mirror
        if not ((m / "HEAD").is_file() and (m / "objects").is_dir() and (m / "refs").is_dir()):
            return False
        try:
            res = self.runner.run(["rev-parse", "--is-bare-repository"], check=False)
        except SourceError:
            return False
        return res.status == 0 and res.text == "true"

    def remove_stale_locks(self) -> None:
        # We hold the lock on checkout_dir, so any *.lock left here is from a killed run.
        candidates = [
            self.runner.mirror / n
            for n in ("packed-refs.lock", "HEAD.lock", "config.lock", "shallow.lock", "index.lock")
        ]
        refs = self.runner.mirror / "refs"
        if refs.is_dir():
            candidates += list(refs.rglob("*.lock"))
        for lock in candidates:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
                _log.warning("git mirror stale lock removed", extra={"file": str(lock)})

    def healthy(self) -> bool:
        if not self.looks_usable():
            return False
        res = self.runner.run(
            ["fsck", "--connectivity-only", "--no-dangling", "--no-progress"], check=False
        )
        return res.status == 0

    def objects_complete(self, sha: str) -> bool:
        # Only the revision's own tree is read (export) and the commit graph is walked by
        # merge-base; walking every object of the history on each fetch grew with the
        # repo's age. A sha once found complete stays complete in an append-only mirror.
        if sha in self.complete:
            return True
        res = self.runner.run(
            ["rev-list", "--objects", "--no-walk", "--missing=error", sha], check=False
        )
        if res.status == 0:
            self.complete.add(sha)
        return res.status == 0

    def recreate(self, why: str) -> None:
        self.complete.clear()
        # "missing" is every first start (no mirror yet): normal, so INFO; anything
        # else is a repair an operator may want to know about.
        _log.log(
            logging.INFO if why == "missing" else logging.WARNING,
            "git mirror re-created",
            extra={"why": why, "dir": str(self.runner.mirror)},
        )
        tmp = self.runner.root / f".mirror-new-{secrets.token_hex(4)}"
        try:
            if self.runner.mirror.exists() or self.runner.mirror.is_symlink():
                trash = self.runner.root / f".mirror-old-{secrets.token_hex(4)}"
                os.replace(self.runner.mirror, trash)
                shutil.rmtree(trash, ignore_errors=True)
            self.runner.git.execute(
                ["git", "init", "--quiet", "--bare", str(tmp)],
                kill_after_timeout=self.runner.config.timeout_s,
                env=self.runner.base_env(),
            )
            settings = [
                ("gc.autoDetach", "false"),  # no detached gc racing with our deletes
                ("maintenance.autoDetach", "false"),
                ("fetch.fsckObjects", "true"),  # refuse malformed objects and paths
                ("core.logAllRefUpdates", "false"),
                ("core.hooksPath", os.devnull),
            ]
            for key, value in settings:
                self.runner.git.execute(
                    ["git", f"--git-dir={tmp}", "config", key, value],
                    kill_after_timeout=self.runner.config.timeout_s,
                )
            os.replace(tmp, self.runner.mirror)
        except (OSError, git.GitCommandError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            detail = exc.strerror if isinstance(exc, OSError) else tail(str(exc.stderr))
            raise TemporarySourceError(
                "CheckoutCorrupt",
                f"cannot re-create git mirror in {self.runner.root}: {detail}",
            ) from None

