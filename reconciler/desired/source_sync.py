"""Turn the git source into a desired state, keeping the last good revision in force.

A revision becomes desired only after it is fetched, verified (signature policy,
fast-forward), exported and loaded without a single problem. Anything else is recorded
(reason, message, attempted revision) and the previous desired state stays: desired-
unknown is not desired-empty.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.errors import InvalidDesiredState, Problem
from reconciler.desired.parse_cache import ParseCache
from reconciler.desired.state import DesiredState
from reconciler.desired.validation import validate_revision
from reconciler.ports.files import atomic_write
from reconciler.ports.git import CommitInfo, GitSource, SourceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceFailure:
    """Why the source did not bring a new desired state: one of the two kinds below."""

    reason: str
    message: str
    revision: str | None
    retryable: bool
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class FetchError(SourceFailure):
    """The source could not be read (network, credentials, a broken mirror, or an
    unforeseen error): nothing is known about the head; the next successful fetch clears
    it."""


@dataclass(frozen=True)
class RevisionRefusal(SourceFailure):
    """A fetched revision was judged and refused (signature, history, content). Kept
    until a good revision is in force; `retryable` when the judging itself failed (e.g.
    the disk was full during the export), not the commit."""


class SourceSync:
    """Owns the answer to "what is desired now". Persists the last good revision."""

    def __init__(
        self, source: GitSource, state_dir: Path, max_files: int | None = None
    ) -> None:
        self.source = source
        self.max_files = max_files  # None: the loader's default
        self.record = state_dir / "source.json"
        self.fetched: CommitInfo | None = None
        self.attempted: CommitInfo | None = None
        self.good: CommitInfo | None = None
        self.desired: DesiredState | None = None
        self.failure: FetchError | RevisionRefusal | None = None
        self.fetched_at: float | None = None
        # a push mostly changes a file or two: the others' parse is reused
        self.parse_cache = ParseCache()
        self._restore()

    def _restore(self) -> None:
        """After a restart, bring back the last good revision without the network."""
        try:
            data = json.loads(self.record.read_text())
            info = CommitInfo(**data["good"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        try:
            path = self.source.export(info.revision)
            self.desired = validate_revision(path, revision=info.revision,
                                             max_files=self.max_files, cache=self.parse_cache)
            self.good = info
            log.info("restored last good revision", extra={"revision": info.revision})
        except (SourceError, InvalidDesiredState) as exc:
            log.error(
                "cannot restore last good revision",
                extra={"revision": info.revision, "error": str(exc)},
            )

    def sync(self, now: float) -> bool:
        """Fetch and maybe adopt a new revision. True when the desired state changed."""
        try:
            head = self.source.fetch()
        except SourceError as exc:
            self.failure = FetchError(exc.reason, exc.message, exc.revision, exc.retryable)
            log.warning("fetch failed", extra={"reason": exc.reason, "error": exc.message})
            return False
        self.fetched = head
        self.fetched_at = now
        if self.good is not None and head.revision == self.good.revision:
            self.attempted = head
            self.failure = None
            return False
        if (
            self.attempted is not None
            and head.revision == self.attempted.revision
            and self.failure is not None
            and not self.failure.retryable
        ):
            return False  # same bad commit: the verdict cannot change until a new push
        self.attempted = head
        try:
            self.source.verify(
                head.revision, last_accepted=self.good.revision if self.good else None
            )
            path = self.source.export(head.revision)
            desired = validate_revision(path, revision=head.revision, max_files=self.max_files,
                                        cache=self.parse_cache)
        except SourceError as exc:
            self.failure = RevisionRefusal(
                exc.reason, exc.message, head.revision, exc.retryable
            )
            log.error(
                "revision refused",
                extra={"revision": head.revision, "reason": exc.reason, "error": exc.message},
            )
            return False
        except InvalidDesiredState as exc:
            self.failure = RevisionRefusal(
                "InvalidDesiredState", str(exc), head.revision, False, tuple(exc.problems)
            )
            log.error("revision invalid", extra={"revision": head.revision, "error": str(exc)})
            return False
        self.desired = desired
        self.good = head
        self.failure = None
        atomic_write(
            self.record,
            json.dumps({"good": head.__dict__}, indent=1).encode(),
        )
        log.info("new desired revision", extra={"revision": head.revision, "subject": head.subject})
        return True


# --- refused revisions apart from fetch errors (what the daemon reports and counts) ---------


@dataclass(frozen=True)
class SyncOutcome:
    """What one `SourceHealth.sync` call brought, for metrics and the error log."""

    fetched: bool  # the fetch itself succeeded
    fetch_failure: FetchError | None = None  # the fetch failed (count every time)
    new_refusal: RevisionRefusal | None = None  # a revision refused, first verdict only

    @property
    def error(self) -> str | None:
        """The line for the daemon's error log, if this sync brought one."""
        if self.new_refusal is not None:
            return f"{self.new_refusal.reason}: {self.new_refusal.message}"
        failed = self.fetch_failure
        if failed is None:
            return None
        # an unforeseen exception (a bug, an odd OS error): its text alone
        return failed.message if failed.reason == "SyncError" else (
            f"{failed.reason}: {failed.message}")


class SourceHealth:
    """Keeps "this revision was refused" apart from "the source could not be reached".

    A refusal stays until a good revision is in force again (only a new commit clears
    it); a fetch error stays until the next successful fetch. A refusal is reported once
    per (revision, reason): a fetch failure in between makes `SourceSync` judge the same
    commit again, which is not a new refusal.
    """

    def __init__(self, sync: SourceSync) -> None:
        self.source_sync = sync
        self.refusal: RevisionRefusal | None = None
        self.fetch_error: FetchError | None = None
        self.last_fetch_success: float | None = None  # wall time

    @property
    def failure(self) -> SourceFailure | None:
        """The one to show: a refusal outranks a fetch error (it needs a person)."""
        return self.refusal if self.refusal is not None else self.fetch_error

    def sync(self, now: float, wall: float) -> SyncOutcome:
        sync = self.source_sync
        before_fetch = sync.fetched_at
        before_failure = sync.failure
        try:
            sync.sync(now)
        except Exception as exc:  # a bug or an unforeseen OS error must not end the loop
            log.exception("sync failed")
            self.fetch_error = FetchError("SyncError", str(exc), None, True)
            return SyncOutcome(fetched=False, fetch_failure=self.fetch_error)
        failure = sync.failure
        outcome = SyncOutcome(fetched=False)
        if sync.fetched_at != before_fetch:
            self.fetch_error = None
            self.last_fetch_success = wall
            new: RevisionRefusal | None = None
            # after a successful fetch the sync's failure is a verdict on the head
            if isinstance(failure, RevisionRefusal) and failure is not before_failure:
                prev = self.refusal
                if prev is None or (prev.revision, prev.reason) != (
                    failure.revision, failure.reason
                ):
                    new = failure
                self.refusal = failure
            outcome = SyncOutcome(fetched=True, new_refusal=new)
        elif isinstance(failure, FetchError):
            self.fetch_error = failure
            outcome = SyncOutcome(fetched=False, fetch_failure=failure)
        if (
            sync.good is not None
            and sync.attempted is not None
            and sync.good.revision == sync.attempted.revision
        ):
            self.refusal = None
        return outcome
