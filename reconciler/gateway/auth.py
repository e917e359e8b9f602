"""API keys: only their SHA-256 digests are held; each key optionally limited to some
served models. Pure (reading the key files is `load_keyring`'s caller's business).

A request without a valid key gets 401; a valid key asking for a model outside its list
gets 403. With no keys configured the gateway is open (it listens on localhost by default).
Keys are compared digest against digest in constant time over the whole set, and only
the key's *name* (from the node config) ever reaches logs and metrics.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyEntry:
    name: str
    digest: bytes
    models: frozenset[str] | None = None  # None: every model

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


@dataclass(frozen=True)
class AuthDecision:
    status: int  # 200, 401 or 403
    message: str = ""
    key: KeyEntry | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def entry(name: str, key: str, models: Iterable[str] | None = None) -> KeyEntry:
    if not key:
        raise ValueError(f"API key {name!r} is empty")
    return KeyEntry(name, digest(key), frozenset(models) if models is not None else None)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyRing:
    def __init__(self, entries: Iterable[KeyEntry] = ()) -> None:
        self._entries = tuple(entries)

    @property
    def open(self) -> bool:
        return not self._entries

    def identify(self, authorization: str | None) -> AuthDecision:
        """401 unless the header carries a known key (or no keys are configured)."""
        if self.open:
            return AuthDecision(200)
        token = bearer(authorization)
        if token is None:
            return AuthDecision(401, "Missing API key: send 'Authorization: Bearer <key>'.")
        d = digest(token)
        found: KeyEntry | None = None
        for e in self._entries:  # no early exit: time does not say which entry matched
            if hmac.compare_digest(e.digest, d):
                found = e
        if found is None:
            return AuthDecision(401, "Incorrect API key provided.")
        return AuthDecision(200, key=found)

    def authorize(self, authorization: str | None, model: str) -> AuthDecision:
        return self.may_use(self.identify(authorization), model)

    @staticmethod
    def may_use(who: AuthDecision, model: str) -> AuthDecision:
        """`who` (from identify) narrowed to one model: 403 when its key may not use it."""
        if not who.ok or who.key is None or who.key.allows(model):
            return who
        return AuthDecision(403, f"This API key may not use the model {model!r}.", who.key)

    def visible(self, authorization: str | None, models: Iterable[str]) -> list[str] | None:
        """The models /v1/models shows to this caller; None when unauthenticated."""
        who = self.identify(authorization)
        if not who.ok:
            return None
        return sorted(m for m in models if who.key is None or who.key.allows(m))
