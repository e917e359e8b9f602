"""Checks of what the node config says about the repository: URL, branch and path.

Messages never contain credentials: user info in URLs is redacted.
"""

from __future__ import annotations

import re
from pathlib import Path

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ALLOWED_SCHEMES = frozenset({"http", "https", "ssh", "git", "file"})
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def redact_url(url: str) -> str:
    """Drop user info (user:password@) from URLs in `url` (or in any text)."""
    return _URL_USERINFO.sub(r"\1***@", url)


def normalize_repo_path(path: str) -> str:
    """'./clusters/prod/' -> 'clusters/prod'; '' or '.' -> '.'. Refuses escapes."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if path.startswith("/") or any(p == ".." for p in parts):
        raise ValueError(f"path must be relative and inside the repo: {path!r}")
    return "/".join(parts) if parts else "."


def check_branch_name(branch: str) -> None:
    """The subset of git-check-ref-format(1) rules that matter for a branch name."""
    bad = (
        not branch
        or branch.startswith(("-", "/"))
        or branch.endswith(("/", ".", ".lock"))
        or ".." in branch
        or "@{" in branch
        or "//" in branch
        or branch == "@"
        or _BAD_REF_CHARS.search(branch) is not None
        or any(part.startswith(".") for part in branch.split("/"))
    )
    if bad:
        raise ValueError(f"invalid branch name: {branch!r}")


def url_scheme(url: str) -> str | None:
    m = _URL_SCHEME.match(url)
    return m.group(1).lower() if m else None


def is_local_url(url: str) -> bool:
    """True for file:// URLs and plain paths (not scp-like `host:path`)."""
    scheme = url_scheme(url)
    if scheme is not None:
        return scheme == "file"
    colon = url.find(":")
    slash = url.find("/")
    return colon < 0 or (0 <= slash < colon)


def check_url(url: str) -> str:
    """Refuse transports we don't support (ext::, fd::, option injection). Returns the URL
    with local paths made absolute."""
    if not url or url.startswith("-"):
        raise ValueError("git url must not be empty or start with '-'")
    scheme = url_scheme(url)
    if scheme is not None:
        if scheme not in _ALLOWED_SCHEMES:
            raise ValueError(f"unsupported git url scheme: {scheme}")
        return url
    if "::" in url:
        raise ValueError("git remote-helper urls (<transport>::<address>) are not supported")
    if is_local_url(url):
        return str(Path(url).expanduser().absolute())
    return url  # scp-like ssh: [user@]host:path
