"""Read the node-local config file with located errors, like the desired-state loader.

    node = load_node_config(Path("/etc/reconciler/node.yaml"))

Problems are reported as `file:line:column: field: message` (the same `Problem` type the
loader uses), all of them at once. Paths in the file should be absolute: a service runs
with `/` as its working directory.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from reconciler.core.errors import ConfigError, Problem
from reconciler.desired.loader import _validation_problems
from reconciler.desired.yaml_positions import read_documents
from schemas.nodeconfig import NodeConfig


class InvalidNodeConfig(ConfigError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        shown = "; ".join(str(p) for p in self.problems[:3])
        more = f" (and {len(self.problems) - 3} more)" if len(self.problems) > 3 else ""
        super().__init__(f"{len(self.problems)} problem(s): {shown}{more}")


def load_node_config(path: Path) -> NodeConfig:
    if not path.is_file():
        raise InvalidNodeConfig([Problem(str(path), 1, 1, "", "file not found")])
    docs, problems = read_documents(path)
    if problems:
        raise InvalidNodeConfig(problems)
    if len(docs) != 1:
        raise InvalidNodeConfig(
            [Problem(str(path), 1, 1, "", f"expected one document, found {len(docs)}")]
        )
    doc = docs[0]
    if not isinstance(doc.data, dict):
        raise InvalidNodeConfig([doc.problem((), "the node config must be a mapping")])
    try:
        return NodeConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise InvalidNodeConfig(_validation_problems(doc, exc)) from None


def read_secret(path: Path | None) -> str | None:
    """A secret file's content without surrounding whitespace; None when unset or empty."""
    if path is None:
        return None
    value = path.read_text(encoding="utf-8").strip()
    return value or None
