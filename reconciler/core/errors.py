"""The exception tree and the located problem report.

Every error says whether retrying can help (`retryable`): a fetch timeout can, a
schema error in a commit cannot until someone pushes a fix.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the desired state, located for a person to fix."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ReconcilerError(Exception):
    """Base of every error the reconciler raises on purpose."""

    retryable = False
    reason = "Error"


class InvalidDesiredState(ReconcilerError):
    """The documents of a revision do not load or validate; not retryable."""

    reason = "InvalidDesiredState"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"{len(self.problems)} problem(s): {shown}{more}")


class ConfigError(ReconcilerError):
    """The node-local config file is unusable."""

    reason = "InvalidNodeConfig"


class TemporaryError(ReconcilerError):
    """Something outside may recover by itself: retry with backoff."""

    retryable = True
    reason = "Temporary"


class EngineStartError(ReconcilerError):
    """An engine could not be started (port taken, executable missing...)."""

    reason = "EngineStartFailed"

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
