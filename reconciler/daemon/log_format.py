"""One JSON object per log line, for the journal; and the filter that keeps secrets out.

Only the entry point (`reconciler run`) calls `configure()`; library modules just use
`logging.getLogger(__name__)` and log a constant message plus key/values in `extra`:

    log.info("new desired revision", extra={"revision": sha, "subject": subject})

becomes

    {"ts": "2025-01-01T00:00:00.123Z", "level": "info", "logger": "reconciler.desired.source_sync",
     "msg": "new desired revision", "revision": "...", "subject": "..."}

`reconcile_id` is an ordinary extra key; when a record carries one it comes right after
`msg`. `RedactSecrets` replaces every configured secret value (webhook secret, git token,
engine secret env files) with `***` in the message, its arguments, every extra value and
the traceback, before any handler formats the record.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from reconciler.control.reconcile_id import current_reconcile_id

__all__ = ["JsonFormatter", "RedactSecrets", "configure", "redact"]

REDACTED = "***"

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 1, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}




def redact(value: Any, secrets: Iterable[str]) -> Any:
    """`value` with every secret replaced; containers are walked, other types kept."""
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
        cleaned = redact(text, secrets)
        return cleaned if cleaned != text else value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v, secrets) for v in value)
    if isinstance(value, BaseException):
        text = str(value)
        cleaned = redact(text, secrets)
        return cleaned if cleaned != text else value
    return value


class RedactSecrets(logging.Filter):
    """Attach to handlers. `provider()` returns the current secret values (reloadable)."""

    def __init__(self, provider: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self._provider = provider

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            secrets = sorted({s for s in self._provider() if s}, key=len, reverse=True)
        except Exception:  # a broken provider must not silence logging
            secrets = []
        if not secrets:
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_info:
            record.exc_info = None  # exc_text now holds it, redacted below
        record.msg = redact(str(record.msg), secrets)
        if record.args:
            if isinstance(record.args, dict):
                record.args = redact(record.args, secrets)
            else:
                record.args = tuple(redact(a, secrets) for a in record.args)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, secrets)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, redact(value, secrets))
        return True


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "reconcile_id", None) or current_reconcile_id.get()
        if rid is not None:
            out["reconcile_id"] = str(rid)
        for key, value in vars(record).items():
            if key in _STANDARD or key in out or key.startswith("_"):
                continue
            out[key] = _jsonable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


_configured_lock = threading.Lock()


def configure(
    level: int | str = logging.INFO,
    secrets: Callable[[], Iterable[str]] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route the root logger to one JSON handler (stderr: the journal). Entry points only."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    if secrets is not None:
        handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    with _configured_lock:
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(level)
    # chatty libraries: their INFO is not ours
    for name in ("apscheduler", "git", "watchfiles", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return handler
