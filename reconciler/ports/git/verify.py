"""Verification of a fetched revision: the signature policy and the fast-forward rule.

Both refusals are permanent for that commit (`PermanentSourceError`): only a new push helps.
"""

from __future__ import annotations

import logging

from reconciler.ports.git.protocol import (
    PermanentSourceError,
    SignaturePolicy,
    TemporarySourceError,
)
from reconciler.ports.git.runner import GitRunner, tail

_log = logging.getLogger(__name__)


def signature_kind(runner: GitRunner, sha: str) -> str | None:
    """The first line of the commit's signature header, or None if unsigned."""
    res = runner.run(["cat-file", "commit", sha], check=False)
    if res.status != 0:
        raise TemporarySourceError(
            "CheckoutCorrupt", f"cannot read commit {sha}", revision=sha
        )
    header = res.stdout.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    for line in header.split("\n"):
        key, _, value = line.partition(" ")
        if key in ("gpgsig", "gpgsig-sha256"):
            return value.strip()
    return None


def verify_signature(runner: GitRunner, sha: str, policy: SignaturePolicy) -> None:
    cfg = runner.config
    kind = signature_kind(runner, sha)
    if kind is None:
        raise PermanentSourceError(
            "SignatureMissing", f"commit {sha} is not signed", revision=sha
        )
    expected = (
        "-----BEGIN SSH SIGNATURE-----"
        if policy == "ssh"
        else ("-----BEGIN PGP SIGNATURE-----")
    )
    if kind != expected:
        raise PermanentSourceError(
            "SignatureInvalid",
            f"commit {sha} carries a signature of another kind than {policy}",
            revision=sha,
        )
    config: list[tuple[str, str]] = []
    env: dict[str, str] = {}
    if policy == "ssh":
        config = [
            ("gpg.format", "ssh"),
            ("gpg.ssh.allowedSignersFile", str(cfg.allowed_signers_file)),
        ]
    else:
        env = {"GNUPGHOME": str(cfg.gpg_home)}
    res = runner.run(
        ["show", "-s", "--format=%G?%x00%GK%x00%GS", sha], config=config, env=env, check=False
    )
    status, _, rest = res.stdout.decode("utf-8", "replace").partition("\x00")
    key, _, signer = rest.rstrip("\n").partition("\x00")
    good = {"G"} if policy == "ssh" else {"G", "U"}
    if res.status == 0 and status in good:
        _log.info(
            "git signature verified",
            extra={"revision": sha, "key": key, "signer": signer, "policy": policy},
        )
        return
    meaning = {
        "B": "bad signature",
        "U": "key not in the allowed signers",
        "X": "signature expired",
        "Y": "key expired",
        "R": "key revoked",
        "E": "signature cannot be checked (unknown key)",
        "N": "no signature",
    }.get(status, f"verification failed ({tail(res.stderr, 1) or status})")
    raise PermanentSourceError(
        "SignatureInvalid",
        f"commit {sha}: {meaning}" + (f" [{key}]" if key else ""),
        revision=sha,
    )


def verify_fast_forward(runner: GitRunner, sha: str, last_accepted: str) -> None:
    res = runner.run(
        ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{last_accepted}^{{commit}}"],
        check=False,
    )
    if res.status != 0:
        # The mirror holds all history of `sha`; a missing commit is not its ancestor.
        raise PermanentSourceError(
            "NonFastForward",
            f"{sha} does not descend from last accepted {last_accepted} "
            "(that commit is no longer reachable)",
            revision=sha,
        )
    last = res.text
    if last == sha:
        return
    res = runner.run(["merge-base", "--is-ancestor", last, sha], check=False)
    if res.status == 0:
        return
    if res.status == 1:
        raise PermanentSourceError(
            "NonFastForward",
            f"{sha} does not descend from last accepted {last} (history was rewritten)",
            revision=sha,
        )
    raise TemporarySourceError(
        "CheckoutCorrupt",
        f"merge-base failed: {tail(res.stderr)}",
        revision=sha,
    )
