"""Webhook authentication: pure functions, no I/O.

A webhook only wakes the fetch; its payload is never trusted. Still, only a caller that
knows the shared secret may wake us. Supported headers (names are case-insensitive):

- GitHub:          `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`
- Gitea / Forgejo: `X-Gitea-Signature: <hex>`, `X-Forgejo-Signature: <hex>`
- generic:         `X-Signature: sha256=<hex>`
- GitLab:          `X-Gitlab-Token: <the shared secret itself>` (GitLab does not sign)

Every comparison uses `hmac.compare_digest`. When several of these headers are present
(Gitea sends its own and GitHub's, Forgejo sends both of its names), every one of them must
be valid; one bad header makes the request bad.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

__all__ = [
    "SIGNATURE_HEADERS",
    "WebhookAuth",
    "hmac_sha256_hex",
    "verify_webhook",
]

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class WebhookAuth(enum.Enum):
    OK = "ok"  # at least one known header present, all of them valid
    MISSING = "missing"  # none of the known headers present
    BAD = "bad"  # a known header present but not valid (or no secret configured)


# header (lower case) -> prefix before the hex digest; None: a plain token, not an HMAC
SIGNATURE_HEADERS: Mapping[str, str | None] = {
    "x-hub-signature-256": "sha256=",
    "x-gitea-signature": "",
    "x-forgejo-signature": "",
    "x-signature": "sha256=",
    "x-gitlab-token": None,
}


def hmac_sha256_hex(secret: bytes | str, body: bytes) -> str:
    """The lower-case hex HMAC-SHA256 of `body` (what a sender puts in the header)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _items(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> Iterable[tuple[str, str]]:
    if isinstance(headers, Mapping):
        return headers.items()
    return headers


def _check_hmac(value: str, prefix: str, key: bytes, body: bytes) -> bool:
    value = value.strip()
    if prefix:
        if value[: len(prefix)].lower() != prefix:
            return False
        value = value[len(prefix) :]
    if not _HEX64.fullmatch(value):
        return False
    expected = hmac.new(key, body, hashlib.sha256).digest()
    return hmac.compare_digest(bytes.fromhex(value), expected)


def _check_token(value: str, key: bytes) -> bool:
    try:
        given = value.strip().encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, key)


def verify_webhook(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    secret: bytes | str,
) -> WebhookAuth:
    """Check a webhook request against the shared `secret`.

    `headers` is a mapping or (name, value) pairs (pass pairs to see repeated headers, e.g.
    `handler.headers.items()`); `body` is the raw request body, before any decoding.
    An empty secret never authenticates anything (BAD when a header is present).
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    seen = False
    for name, value in _items(headers):
        lname = name.strip().lower()
        if lname not in SIGNATURE_HEADERS:
            continue
        seen = True
        prefix = SIGNATURE_HEADERS[lname]
        if not key or not isinstance(value, str):
            return WebhookAuth.BAD
        valid = _check_token(value, key) if prefix is None else _check_hmac(
            value, prefix, key, body)
        if not valid:
            return WebhookAuth.BAD
    return WebhookAuth.OK if seen else WebhookAuth.MISSING
