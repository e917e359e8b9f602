"""The exception tree and the located problem report.

Whether retrying can help is the error's *type*, never a flag passed when raising it:
a fetch timeout is a `TemporaryError`, a schema error in a commit a `PermanentError`
(it stays wrong until someone pushes a fix). `retryable` and `reason` are class
attributes that status and metrics read; `except TemporaryError` is how code retries.

    Exception
    └── ReconcilerError                 every error the reconciler raises on purpose
        ├── PermanentError              retrying cannot help until a person changes something
        │   ├── InvalidDesiredState     a revision's documents do not load or validate
        │   ├── ConfigError             the node-local config file is unusable
        │   │   └── InvalidNodeConfig       (desired/node_config.py)
        │   ├── EngineStartRefused      the start cannot work as asked (already running,
        │   │                           empty command line, not executable)
        │   ├── IllegalTransition       a replica state change outside the lifecycle table
        │   │                           (core/lifecycle.py; a bug)
        │   └── PermanentSourceError    the commit itself is refused (unsigned, too large,
        │                               not a fast-forward...)   (ports/git_source.py)
        └── TemporaryError              something outside may recover by itself: retry
            ├── EngineStartFailed       the start failed this time (port taken, state
            │                           file not writable)
            ├── TemporarySourceError    network, disk, a broken mirror  (ports/git_source.py)
            ├── ChatError               the engine did not answer a chat  (ports/openai_client.py)
            └── RayQueryError           the Ray head could not be asked  (ports/ray_nodes.py)

Two families cut across the tree, so callers can catch one concern whatever its
retry class: `EngineStartError` (EngineStartRefused | EngineStartFailed) and
`SourceError` (PermanentSourceError | TemporarySourceError, in ports/git_source.py).
Private control-flow errors of a module (e.g. NVML as a whole broken) derive from
`TemporaryError` too and never leave their module.
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


class PermanentError(ReconcilerError):
    """Retrying cannot help: a person must change the input (a commit, the node config)."""

    retryable = False


class TemporaryError(ReconcilerError):
    """Something outside may recover by itself: retry with backoff."""

    retryable = True
    reason = "Temporary"


class InvalidDesiredState(PermanentError):
    """The documents of a revision do not load or validate."""

    reason = "InvalidDesiredState"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"{len(self.problems)} problem(s): {shown}{more}")


class ConfigError(PermanentError):
    """The node-local config file is unusable."""

    reason = "InvalidNodeConfig"


class EngineStartError(ReconcilerError):
    """An engine could not be started. Raise one of its two kinds, never this one."""

    reason = "EngineStartFailed"


class EngineStartRefused(EngineStartError, PermanentError):
    """The start cannot work as asked (already running, empty command line, not an
    executable): the same launch would fail the same way."""


class EngineStartFailed(EngineStartError, TemporaryError):
    """The start failed this time (port taken by a stranger, state file not writable):
    the restart backoff tries again."""

    reason = "EngineStartFailed"
