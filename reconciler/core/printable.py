"""Text from git made safe to print on one line.

Keys and values of a revision end up in error lines, plans and status. A control
character inside them would split a line (a crafted key could forge an `error:` line of
its own) or move the cursor; they are shown as Python-style escapes instead.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from typing import TypeVar

# Cc: C0/C1 controls (newline, escape, NUL, DEL); Cf: format characters (bidi overrides
# that reorder what a reader sees); Zl, Zp: the Unicode line and paragraph separators
_UNSAFE = {"Cc", "Cf", "Zl", "Zp"}


def escape_controls(text: str) -> str:
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in _UNSAFE:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


T = TypeVar("T")


def escape_fields(item: T, *names: str) -> T:
    """A copy of a dataclass with the named string fields escaped."""
    changes = {n: escape_controls(getattr(item, n)) for n in names}
    if all(changes[n] == getattr(item, n) for n in names):
        return item
    return replace(item, **changes)  # type: ignore[type-var]
