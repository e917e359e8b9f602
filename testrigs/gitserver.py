"""Real git servers on loopback for system tests, and an operator who pushes to them.

- `HttpGitServer`: git smart HTTP, `git http-backend` run as CGI behind a threaded
  `http.server` on 127.0.0.1. Push works (`http.receivepack` is on in every repo). It can
  require a token (`Authorization: Bearer <t>` or Basic with the token as password) and can
  be made to hang (accepts, never answers) to exercise timeouts.
- `GitDaemonServer`: `git daemon --export-all --enable=receive-pack` on 127.0.0.1.
- Both bind a random free port and can be stopped and started again on the same port.
- `Operator`: a working clone that writes files, commits (optionally ssh-signed) and pushes.

Everything runs with an isolated git config (no system or user config), so the host's
settings never leak into tests. Only loopback addresses are used.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeAlias

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def isolated_git_env(
    home: Path, name: str = "Operator", email: str = "op@example.test"
) -> dict[str, str]:
    """An environment with its own git config: author, main as default branch, no signing."""
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "gitconfig"
    if not cfg.exists():
        cfg.write_text(
            f"[user]\n\tname = {name}\n\temail = {email}\n"
            "[init]\n\tdefaultBranch = main\n"
            "[commit]\n\tgpgsign = false\n"
            "[advice]\n\tdetachedHead = false\n",
            encoding="utf-8",
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        {
            "HOME": str(home),
            "GIT_CONFIG_GLOBAL": str(cfg),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
    )
    return env


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout.strip()


def wait_port(port: int, *, up: bool, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} did not come {'up' if up else 'down'}")


class _RepoRoot:
    """Bare repositories under one directory, named `<name>.git`."""

    kind = "base"

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.port = 0
        root.mkdir(parents=True, exist_ok=True)

    def create_repo(self, name: str) -> str:
        path = self.root / f"{name}.git"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(path), env=self.env)
        git("--git-dir", str(path), "config", "http.receivepack", "true", env=self.env)
        git("--git-dir", str(path), "config", "receive.denyNonFastForwards", "false",
            env=self.env)
        git("--git-dir", str(path), "config", "receive.denyDeleteCurrent", "ignore",
            env=self.env)
        return self.url(name)

    def repo_dir(self, name: str) -> Path:
        return self.root / f"{name}.git"

    def url(self, name: str) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _RepoRoot:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _CgiHandler(BaseHTTPRequestHandler):
    server: _GitHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        self.server.owner.requests.append(format % args)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _authorized(self) -> bool:
        token = self.server.owner.token
        if token is None:
            return True
        header = self.headers.get("Authorization", "")
        self.server.owner.auth_headers.append(header)
        if header == f"Bearer {token}":
            return True
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:]).decode()
            except ValueError:
                return False
            return decoded.partition(":")[2] == token
        return False

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        owner = self.server.owner
        if owner.hang.is_set():
            owner.release.wait(60)
            return
        if not self._authorized():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self._read_body()
        env = dict(owner.env)
        env.update(
            {
                "GIT_PROJECT_ROOT": str(owner.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": self.client_address[0],
                "REMOTE_USER": "operator",
                "SERVER_PROTOCOL": "HTTP/1.0",
                "GATEWAY_INTERFACE": "CGI/1.1",
            }
        )
        if enc := self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = enc
        if proto := self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = proto
        proc = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60,
            check=False,
        )
        raw = proc.stdout
        sep = raw.find(b"\r\n\r\n")
        head, payload = (raw[:sep], raw[sep + 4 :]) if sep >= 0 else raw.split(b"\n\n", 1)
        status, reason = 200, "OK"
        headers = []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                code, _, reason = value.strip().partition(" ")
                status = int(code)
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _GitHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: HttpGitServer


class HttpGitServer(_RepoRoot):
    """git smart HTTP on 127.0.0.1 (`git http-backend` as CGI)."""

    kind = "http"

    def __init__(self, root: Path, env: dict[str, str], *, token: str | None = None) -> None:
        super().__init__(root, env)
        self.token = token
        self.port = free_port()
        self.hang = threading.Event()  # set: accept requests and never answer
        self.release = threading.Event()
        self.requests: list[str] = []
        self.auth_headers: list[str] = []
        self._server: _GitHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, name: str) -> str:
        return f"http://{LOOPBACK}:{self.port}/{name}.git"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        self.release.clear()
        server = _GitHTTPServer((LOOPBACK, self.port), _CgiHandler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"git-http-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self.release.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)


class GitDaemonServer(_RepoRoot):
    """`git daemon` on 127.0.0.1 with push enabled."""

    kind = "git"

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        super().__init__(root, env)
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = root.parent / f"git-daemon-{self.port}.log"

    def url(self, name: str) -> str:
        return f"git://{LOOPBACK}:{self.port}/{name}.git"

    @property
    def running(self) -> bool:
        return self._proc is not None

    def start(self) -> None:
        if self._proc is not None:
            return
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                ["git", "daemon", "--export-all", "--enable=receive-pack", "--reuseaddr",
                 "--informative-errors", f"--listen={LOOPBACK}", f"--port={self.port}",
                 f"--base-path={self.root}"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        try:
            wait_port(self.port, up=True)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        wait_port(self.port, up=False)


class Operator:
    """A person with a clone: writes files, commits, pushes."""

    def __init__(self, workdir: Path, url: str, env: dict[str, str], *,
                 branch: str = "main", push_config: tuple[str, ...] = ()) -> None:
        self.dir = workdir
        self.url = url
        self.env = env
        self.branch = branch
        self._push_config = push_config
        workdir.mkdir(parents=True, exist_ok=True)
        self.git("init", "--quiet", f"--initial-branch={branch}")
        self.git("remote", "add", "origin", url)

    def git(self, *args: str, check: bool = True) -> str:
        return git(*args, cwd=self.dir, env=self.env, check=check)

    def write(self, files: dict[str, str | bytes | None]) -> None:
        for name, content in files.items():
            path = self.dir / name
            if content is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")

    def commit(self, files: dict[str, str | bytes | None], message: str = "change",
               *, sign_with: Path | None = None) -> str:
        self.write(files)
        self.git("add", "--all")
        args = ["commit", "--quiet", "--allow-empty", "-m", message]
        if sign_with is not None:
            args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={sign_with}", *args, "-S"]
        self.git(*args)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def push(self, *, force: bool = False) -> None:
        cfg = [arg for item in self._push_config for arg in ("-c", item)]
        args = [*cfg, "push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}"]
        if force:
            args.insert(len(cfg) + 1, "--force")
        self.git(*args)

    def commit_and_push(self, files: dict[str, str | bytes | None], message: str = "change",
                        *, sign_with: Path | None = None) -> str:
        sha = self.commit(files, message, sign_with=sign_with)
        self.push()
        return sha

    def reset_hard(self, revision: str) -> None:
        self.git("reset", "--quiet", "--hard", revision)

    def delete_remote_branch(self) -> None:
        cfg = [arg for item in self._push_config for arg in ("-c", item)]
        self.git(*cfg, "push", "--quiet", "origin", f":refs/heads/{self.branch}")


def ssh_keypair(directory: Path, name: str) -> tuple[Path, str]:
    """An ed25519 key without passphrase: (private key path, public key line)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
                   check=True, capture_output=True, timeout=30)
    return key, (directory / f"{name}.pub").read_text(encoding="utf-8").strip()


def allowed_signers(path: Path, entries: dict[str, str]) -> Path:
    """Write an allowed-signers file: principal -> public key line."""
    path.write_text(
        "".join(f'{who} namespaces="git" {pub}\n' for who, pub in entries.items()),
        encoding="utf-8",
    )
    return path


GitServer: TypeAlias = HttpGitServer | GitDaemonServer
