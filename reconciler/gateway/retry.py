"""When to try another replica. Pure.

Only before the first byte has gone to the client: after that the client has part of an
answer and a second replica would send a different one. Retried: the connection failed
(refused, reset, no route) or the engine hung up before answering, or it answered 503
(starting, dead engine, or its own drain). Not retried: a timeout waiting for the first
byte (the engine may still be working on it; a retry would double the load exactly when
it is highest), any other status (400/404/422/500 say the same on every replica).
"""

from __future__ import annotations

from typing import Literal

Failure = Literal["connect", "disconnected", "timeout", "status"]


def may_retry(failure: Failure, *, status: int | None, sent_to_client: bool, attempt: int,
              max_attempts: int) -> bool:
    if sent_to_client or attempt >= max_attempts:
        return False
    if failure in ("connect", "disconnected"):
        return True
    return failure == "status" and status == 503
