"""The git source port: fetch the cluster repo, check it, and materialize a revision.

- protocol.py: GitSource, its config, CommitInfo and SourceError
- urls.py: checks of the URL, branch and path from the node config; URL redaction
- runner.py: running git on the mirror (timeouts, ssh options, credentials kept off
  command lines and out of messages)
- mirror.py: the private bare mirror (checked, stale locks removed, re-created)
- verify.py: signature policy and fast-forward; export.py: a revision into a directory
- source.py: GitPythonSource, the real implementation (reconciler.testing.git_source
  holds the fake)
"""

from reconciler.ports.git.protocol import (
    CommitInfo,
    GitSource,
    GitSourceConfig,
    PermanentSourceError,
    SignaturePolicy,
    SourceError,
    SourceErrorReason,
    TemporarySourceError,
)
from reconciler.ports.git.source import GitPythonSource
from reconciler.ports.git.urls import (
    check_branch_name,
    check_url,
    is_local_url,
    normalize_repo_path,
    redact_url,
)

__all__ = [
    "CommitInfo",
    "GitPythonSource",
    "GitSource",
    "GitSourceConfig",
    "PermanentSourceError",
    "SignaturePolicy",
    "SourceError",
    "SourceErrorReason",
    "TemporarySourceError",
    "check_branch_name",
    "check_url",
    "is_local_url",
    "normalize_repo_path",
    "redact_url",
]
