"""A model directory's config.json, read once per revision check.

The fit table (fit.model_facts) and the parallelism checks (checks_model.model_shape) both
read it for every deployment: at 2,000 deployments that was 4,000 opens per revision, half
of them repeats. Inside `one_read_each()` (check_revision's extent) each directory is read
once; outside it, every call reads the disk, as a config may change between checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

_memo: ContextVar[dict[str, dict[str, Any] | None] | None] = ContextVar(
    "model_config_memo", default=None
)


def read_config(model_dir: str) -> dict[str, Any] | None:
    """The parsed `<model_dir>/config.json` when it is a JSON object, else None. Callers
    only read it (the same object goes to each caller within one check)."""
    memo = _memo.get()
    if memo is not None and model_dir in memo:
        return memo[model_dir]
    try:
        data = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        data = None
    found = data if isinstance(data, dict) else None
    if memo is not None:
        memo[model_dir] = found
    return found


@contextmanager
def one_read_each() -> Iterator[None]:
    token = _memo.set({})
    try:
        yield
    finally:
        _memo.reset(token)
