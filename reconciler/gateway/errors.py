"""Error bodies in OpenAI's format, so OpenAI clients show the message instead of a parse
error: ``{"error": {"message", "type", "param", "code"}}``. Pure."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# status -> OpenAI's error type names (as the OpenAI API and vLLM answer them)
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    502: "api_error",
    503: "service_unavailable",
    504: "timeout_error",
}


def error_body(status: int, message: str, *, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "api_error"),
            "param": param,
            "code": code if code is not None else str(status),
        }
    }


def error_bytes(status: int, message: str, *, code: str | None = None,
                param: str | None = None) -> bytes:
    return json.dumps(error_body(status, message, code=code, param=param)).encode()


def unknown_model(model: str, known: Iterable[str]) -> tuple[int, str]:
    names = sorted(known)
    there = ", ".join(repr(n) for n in names[:20]) if names else "none"
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    return 404, f"The model {model!r} does not exist. Models served here: {there}{more}."


def no_replica(model: str, retry_after_s: int) -> tuple[int, str]:
    return 503, (f"The model {model!r} has no Ready replica right now (starting, "
                 f"restarting or draining); retry in {retry_after_s} s.")
