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
        │   ├── PermanentSourceError    the commit itself is refused (unsigned, too large,
        │   │                           not a fast-forward...)   (ports/git/protocol.py)
        │   ├── RevisionError           a revision cannot be resolved or exported for
        │   │                           `reconciler diff`   (desired/revisions.py)
        │   ├── GatewayConfigError      the gateway's keys cannot be read   (gateway/server.py;
        │   │                           also a ValueError)
        │   ├── LogNotFound             no such member or log   (daemon/engine_logs.py; also
        │   │                           a LookupError)
        │   ├── PrepareError            a step of preparing the demo model failed
        │   │                           (demo/prepare_model.py)
        │   └── _TooLarge               a YAML document over the size limit, reported as a
        │                               Problem   (desired/yaml_positions.py, private)
        └── TemporaryError              something outside may recover by itself: retry
            ├── EngineStartFailed       the start failed this time (port taken, state
            │                           file not writable)
            ├── TemporarySourceError    network, disk, a broken mirror   (ports/git/protocol.py)
            ├── GitFailed               one git command failed   (ports/git/runner.py)
            ├── ChatError               the engine did not answer a chat   (ports/openai_client.py)
            ├── RayQueryError           the Ray head could not be asked   (ports/ray_nodes.py)
            ├── RayJoinError            the fake Ray found no head to join   (testing/ray_nodes.py;
            │                           also a RuntimeError)
            └── _NvmlBroken             NVML as a whole stopped working; the observation is
                                        abandoned   (ports/gpus.py, private)

Two families cut across the tree, so callers can catch one concern whatever its
retry class: `EngineStartError` (EngineStartRefused | EngineStartFailed) and
`SourceError` (PermanentSourceError | TemporarySourceError, in ports/git/protocol.py).
An error that also derives from a builtin (ValueError, LookupError, RuntimeError) keeps
it, so older `except` clauses still catch it. A test
(tests/unit/core/test_error_tree.py) checks that every exception class defined under
reconciler/ is in this tree.
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
