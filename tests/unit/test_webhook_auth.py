from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.daemon.webhook_auth import WebhookAuth, hmac_sha256_hex, verify_webhook

SECRET = b"s3cret"
BODY = b'{"ref":"refs/heads/main"}'
DIGEST = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()


def test_hmac_helper_matches_stdlib() -> None:
    assert hmac_sha256_hex(SECRET, BODY) == DIGEST
    assert hmac_sha256_hex(SECRET.decode(), BODY) == DIGEST


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": f"sha256={DIGEST}"},
        {"x-hub-signature-256": f"sha256={DIGEST.upper()}"},
        {"X-Gitea-Signature": DIGEST},
        {"X-Forgejo-Signature": DIGEST},
        {"X-Forgejo-Signature": DIGEST, "X-Gitea-Signature": DIGEST},
        {"X-Gitea-Signature": DIGEST, "X-Hub-Signature-256": f"sha256={DIGEST}"},
        {"X-Signature": f"sha256={DIGEST}"},
        {"X-Signature": f"SHA256={DIGEST}"},
        {"X-Gitlab-Token": "s3cret"},
        {"X-Gitlab-Token": " s3cret "},
    ],
    ids=lambda h: ",".join(h),
)
def test_ok(headers: dict[str, str]) -> None:
    assert verify_webhook({"Content-Type": "application/json", **headers}, BODY, SECRET) is (
        WebhookAuth.OK
    )
    assert verify_webhook(headers, BODY, SECRET.decode()) is WebhookAuth.OK


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"X-Hub-Signature": "sha1=0123"},  # the legacy SHA-1 header is not accepted
        {"X-Gitlab-Event": "Push Hook"},
    ],
)
def test_missing(headers: dict[str, str]) -> None:
    assert verify_webhook(headers, BODY, SECRET) is WebhookAuth.MISSING


WRONG = hmac.new(b"other", BODY, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Hub-Signature-256": f"sha256={WRONG}"},
        {"X-Hub-Signature-256": DIGEST},  # prefix missing
        {"X-Hub-Signature-256": f"sha1={DIGEST}"},
        {"X-Hub-Signature-256": f"sha256={DIGEST[:-2]}"},
        {"X-Hub-Signature-256": f"sha256={DIGEST}00"},
        {"X-Hub-Signature-256": "sha256=" + "zz" * 32},
        {"X-Hub-Signature-256": ""},
        {"X-Gitea-Signature": f"sha256={DIGEST}"},  # Gitea sends bare hex
        {"X-Gitea-Signature": WRONG},
        {"X-Forgejo-Signature": WRONG, "X-Gitea-Signature": DIGEST},
        {"X-Signature": DIGEST},
        {"X-Signature": "sha256=\u00e9" + DIGEST[1:]},
        {"X-Gitlab-Token": "wrong"},
        {"X-Gitlab-Token": ""},
        {"X-Gitlab-Token": "s3cret\u00e9"},
        {"X-Gitlab-Token": "s3cret", "X-Hub-Signature-256": f"sha256={WRONG}"},
    ],
    ids=repr,
)
def test_bad(headers: dict[str, str]) -> None:
    assert verify_webhook(headers, BODY, SECRET) is WebhookAuth.BAD


def test_body_is_what_is_signed() -> None:
    headers = {"X-Hub-Signature-256": f"sha256={DIGEST}"}
    assert verify_webhook(headers, BODY + b" ", SECRET) is WebhookAuth.BAD
    assert verify_webhook(headers, b"", SECRET) is WebhookAuth.BAD


def test_empty_secret_never_authenticates() -> None:
    empty = hmac.new(b"", BODY, hashlib.sha256).hexdigest()
    assert verify_webhook({"X-Hub-Signature-256": f"sha256={empty}"}, BODY, b"") is (
        WebhookAuth.BAD
    )
    assert verify_webhook({"X-Gitlab-Token": ""}, BODY, "") is WebhookAuth.BAD
    assert verify_webhook({}, BODY, "") is WebhookAuth.MISSING


def test_repeated_headers_all_must_verify() -> None:
    good = ("X-Hub-Signature-256", f"sha256={DIGEST}")
    bad = ("x-hub-signature-256", f"sha256={WRONG}")
    assert verify_webhook([good, good], BODY, SECRET) is WebhookAuth.OK
    assert verify_webhook([good, bad], BODY, SECRET) is WebhookAuth.BAD
    assert verify_webhook([bad, good], BODY, SECRET) is WebhookAuth.BAD


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=512))
def test_roundtrip(secret: bytes, body: bytes) -> None:
    sig = hmac_sha256_hex(secret, body)
    for headers in (
        {"X-Hub-Signature-256": f"sha256={sig}"},
        {"X-Gitea-Signature": sig},
        {"X-Signature": f"sha256={sig}"},
    ):
        assert verify_webhook(headers, body, secret) is WebhookAuth.OK
        assert verify_webhook(headers, body + b"x", secret) is WebhookAuth.BAD
