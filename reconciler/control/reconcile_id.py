"""The id of the tick in progress, read by the daemon's log formatter.

Set by the reconcile loop for the length of one tick, so every line logged during the
tick (plan, apply, ports) carries its id without threading it through every call.
"""

from __future__ import annotations

import contextvars

current_reconcile_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "reconcile_id", default=None
)
