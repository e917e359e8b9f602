"""Running git against the private bare mirror, through gitpython's `Git.execute`.

Credentials never reach a command line (gitpython logs those at DEBUG and puts them into
`GitCommandError`): tokens travel in `GIT_CONFIG_*` environment variables, and any text
that comes back from git is scrubbed of the token and of URL user info before it is
logged or raised.
"""

from __future__ import annotations

import base64
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import git

from reconciler.core.errors import TemporaryError
from reconciler.ports.git.protocol import GitSourceConfig, TemporarySourceError
from reconciler.ports.git.urls import redact_url, url_scheme


def config_env(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """git config through the environment (git >= 2.31): never on a command line."""
    env = {"GIT_CONFIG_COUNT": str(len(pairs))}
    for i, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def tail(text: str, lines: int = 4) -> str:
    """The last few non-empty lines of git's stderr, on one line."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return "; ".join(kept[-lines:])


@dataclass(frozen=True)
class Result:
    status: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace").strip()


class GitFailed(TemporaryError):
    """One git command exited non-zero; the caller words it as a SourceError."""

    def __init__(self, args: Sequence[str], result: Result) -> None:
        super().__init__(f"git {args[0] if args else ''} exited {result.status}")
        self.result = result


class GitRunner:
    """git with the source's timeouts, ssh options and credentials, on one mirror."""

    def __init__(self, config: GitSourceConfig, url: str, root: Path) -> None:
        self.config = config
        self.url = url
        self.root = root
        self.mirror = root / "mirror.git"
        self.git = git.Git(str(root))
        self.secret: str | None = None  # the last token read, for scrubbing output

    def base_env(self) -> dict[str, str]:
        cfg = self.config
        timeout = max(1, math.ceil(cfg.timeout_s))
        ssh = [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={timeout}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            f"ServerAliveCountMax={max(1, timeout // 5)}",
        ]
        if cfg.ssh_key_file is not None:
            ssh += ["-i", str(cfg.ssh_key_file), "-o", "IdentitiesOnly=yes"]
        if cfg.ssh_known_hosts_file is not None:
            ssh += [
                "-o",
                f"UserKnownHostsFile={cfg.ssh_known_hosts_file}",
                "-o",
                "StrictHostKeyChecking=yes",
            ]
        return {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_HTTP_LOW_SPEED_LIMIT": "1000",
            "GIT_HTTP_LOW_SPEED_TIME": str(timeout),
            "GIT_SSH_COMMAND": shlex.join(ssh),
            "GIT_SSH_VARIANT": "ssh",
        }

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        config: Sequence[tuple[str, str]] = (),
        check: bool = True,
        output_stream: BinaryIO | None = None,
        istream: BinaryIO | None = None,
        timeout_s: float | None = None,
    ) -> Result:
        """Run `git --git-dir=<mirror> <args>`; never raises GitCommandError."""
        full_env = self.base_env()
        full_env.update(config_env([("credential.helper", ""), *config]))
        if env:
            full_env.update(env)
        command = ["git", f"--git-dir={self.mirror}", *args]
        try:
            raw = self.git.execute(
                command,
                with_extended_output=True,
                with_exceptions=False,
                kill_after_timeout=timeout_s or self.config.timeout_s,
                env=full_env,
                stdout_as_string=False,
                output_stream=output_stream,
                istream=istream,
            )
        except git.GitCommandNotFound as exc:
            raise TemporarySourceError("FetchFailed", "git executable not found") from exc
        status, out, err = cast("tuple[int, bytes | str | None, str | bytes]", raw)
        stdout = out if isinstance(out, bytes) else b""
        stderr = self.scrub(err if isinstance(err, str) else err.decode("utf-8", "replace"))
        result = Result(int(status), stdout, stderr)
        if check and result.status != 0:
            raise GitFailed(args, result)
        return result

    def scrub(self, text: str) -> str:
        if self.secret:
            text = text.replace(self.secret, "***")
        return redact_url(text)


    def auth_config(self) -> list[tuple[str, str]]:
        cfg = self.config
        if cfg.token_file is None:
            return []
        scheme = url_scheme(self.url)
        if scheme not in ("http", "https"):
            return []
        try:
            token = cfg.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise TemporarySourceError(
                "FetchFailed",
                f"cannot read token file {cfg.token_file}: {detail}",
            ) from None
        if not token or "\n" in token or "\r" in token:
            raise TemporarySourceError(
                "FetchFailed",
                f"token file {cfg.token_file} is empty or has several lines",
            )
        self.secret = token
        if cfg.token_username is not None:
            basic = base64.b64encode(f"{cfg.token_username}:{token}".encode()).decode()
            header = f"Authorization: Basic {basic}"
        else:
            header = f"Authorization: Bearer {token}"
        return [("http.extraHeader", header)]

