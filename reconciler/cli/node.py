"""Daemon commands: `run`, `status`, `sync`, `install-systemd`.

Exit codes as elsewhere: 0 ok, 1 a runtime failure (or, for `status`, a node not Ready
or unreachable), 2 invalid input or a refused revision.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.cli.common import EXIT_INVALID, EXIT_OK, Handler
from reconciler.desired.node_config import InvalidNodeConfig, load_node_config, read_secret
from reconciler.ports.git import CommitInfo, SourceError
from reconciler.ports.peer_fanout import ask_all
from reconciler.ports.peers import PeerAddress, fetch_status
from schemas.nodeconfig import NodeConfig

__all__ = ["load_node_config", "register", "render_text"]  # load_node_config: for cli_engine

EXIT_FAILED = 1
DEFAULT_CONFIG = Path("/etc/reconciler/node.yaml")
REPO_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)


def register(sub: Any, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser("run", help="run the node daemon (the systemd service)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--once", action="store_true", help="one fetch and one tick, then exit")
    p.add_argument("--log-level", default=os.environ.get("RECONCILER_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    handlers["run"] = cmd_run

    p = sub.add_parser("status", help="show a node's (or the whole cluster's) status")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="node config: ask its listen address")
    where.add_argument("--url", help="daemon URL, e.g. http://127.0.0.1:9400")
    p.add_argument("--cluster", action="store_true",
                   help="ask every node of the Cluster document at address:statusPort")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--timeout", type=float, default=3.0, help="for the node asked first")
    p.add_argument("--peer-timeout", type=float, default=1.0, metavar="S",
                   help="--cluster: give each other node this long to answer")
    p.add_argument("--concurrency", type=int, default=32, metavar="N",
                   help="--cluster: ask at most this many nodes at once")
    handlers["status"] = cmd_status

    p = sub.add_parser("sync", help="one fetch + verify + load; print the revisions")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    handlers["sync"] = cmd_sync

    p = sub.add_parser("install-systemd", help="install the unit file and an example config")
    p.add_argument("--prefix", type=Path, default=Path("/"))
    p.add_argument("--dry-run", action="store_true")
    handlers["install-systemd"] = cmd_install_systemd


def _load(path: Path) -> NodeConfig | None:
    try:
        return load_node_config(path)
    except InvalidNodeConfig as exc:
        for p in exc.problems:
            print(f"error: {p}", file=sys.stderr)
        print(f"{path}: INVALID, {len(exc.problems)} problem(s)", file=sys.stderr)
        return None


def _config_secrets(config: NodeConfig) -> list[str]:
    out = []
    for path in (config.webhook.secret_file, config.source.token_file,
                 *config.engine.secret_env_files.values()):
        try:
            value = read_secret(path)
        except OSError:
            continue
        if value:
            out.append(value)
    return out


# --- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from reconciler.daemon import log_format as logjson
    from reconciler.daemon.loop import Daemon
    from reconciler.daemon.sdnotify import Notifier

    # State, logs, the git mirror and engine files are nobody else's business: whatever
    # umask we were started with (systemd sets UMask=0027), never create group-writable
    # or world-accessible files. Engines inherit it.
    os.umask(os.umask(0o027) | 0o027)
    config = _load(args.config)
    if config is None:
        return EXIT_INVALID
    holder: dict[str, Any] = {"secrets": tuple(_config_secrets(config))}

    def secrets() -> Sequence[str]:
        daemon: Daemon | None = holder.get("daemon")
        if daemon is not None:
            return daemon.secret_values()
        values: tuple[str, ...] = holder["secrets"]
        return values

    logjson.configure(args.log_level, secrets)
    notifier = Notifier.from_env()
    try:
        daemon = Daemon(config, config_path=args.config.absolute(), notifier=notifier,
                        listen=not args.once)
    except (OSError, ValueError) as exc:
        log.error("daemon cannot start", extra={"error": str(exc)})
        return EXIT_FAILED
    holder["daemon"] = daemon
    if args.once:
        from reconciler.daemon.conditions import is_stalled
        from reconciler.daemon.status import one_line

        status = daemon.run_once()
        print(one_line(status))
        failure = status.source.failure
        refused = failure is not None and not failure.retryable
        return EXIT_INVALID if refused or is_stalled(daemon.sync.failure) else EXIT_OK
    log.info("starting", extra={"node": config.node_name, "config": str(args.config),
                                "listen": f"{config.listen.address}:{config.listen.port}"})
    return daemon.run()


# --- status ----------------------------------------------------------------------------------


def _base_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    if args.config is not None:
        config = _load(args.config)
        if config is None:
            raise SystemExit(EXIT_INVALID)
        host = config.listen.address
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 (a value to compare)
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{config.listen.port}"
    return "http://127.0.0.1:9400"


def _get(url: str, timeout: float) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"unsupported URL {url!r} (http://host:port)")
    return fetch_status(parts.hostname, parts.port or 80, timeout)


def _cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in status.get("conditions", []):
        if c.get("type") == kind:
            return dict(c)
    return {}


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _short(rev: Any) -> str:
    return str(rev)[:12] if rev else "-"


def render_text(nodes: list[tuple[str, str, dict[str, Any] | None, str]]) -> str:
    """nodes: (name, endpoint, status or None, error)."""
    workers = []
    replicas: dict[tuple[str, int], tuple[dict[str, Any], bool]] = {}
    members: dict[tuple[str, int], list[str]] = {}  # "node:head+engine" per node asked
    deployments: dict[str, dict[str, Any]] = {}
    for name, endpoint, st, error in nodes:
        if st is None:
            workers.append([name, endpoint, "Unreachable", "-", "-", "-", "-", "-", "-",
                            error[:60]])
            continue
        ready = _cond(st, "Ready")
        stalled = _cond(st, "Stalled")
        gpus = st.get("gpus", {})
        counts = gpus.get("counts", {})
        declared = (gpus.get("declared") or {}).get("count", "-")
        observed = gpus.get("observed", {}).get("count", 0)
        state = "Stalled" if stalled.get("status") == "True" else (
            "Ready" if ready.get("status") == "True" else ready.get("reason", "Unknown"))
        workers.append([
            st.get("node", name), endpoint, state,
            f"{declared}/{observed}" + (" (sim)" if gpus.get("simulated") else ""),
            str(counts.get("assigned", 0)), str(counts.get("free", 0)),
            str(counts.get("foreign", 0)), str(counts.get("missing", 0)),
            _short((st.get("revisions", {}).get("applied") or {}).get("revision")),
            (stalled.get("message") or ready.get("message") or "")[:60],
        ])
        for d in st.get("deployments", []):
            deployments.setdefault(d["name"], d)
        for r in st.get("replicas", []):
            key = (r["deployment"], r["index"])
            authoritative = bool(r["nodes"]) and r["nodes"][0] == st.get("node")
            if key not in replicas or (authoritative and not replicas[key][1]):
                replicas[key] = (r, authoritative)
            running = [_ROLE_SHORT.get(m.get("role", ""), "?") for m in r.get("members", [])
                       if m.get("running")]
            members.setdefault(key, []).append(
                f"{st.get('node', name)}:{'+'.join(running) or '-'}"
            )
    out = ["WORKERS", _table(
        ["NAME", "ENDPOINT", "STATE", "GPUS(decl/obs)", "ASSIGNED", "FREE", "FOREIGN",
         "MISSING", "APPLIED", "MESSAGE"], workers)]
    dep_rows = []
    for name, d in sorted(deployments.items()):
        mine = [r for (dn, _), (r, _a) in replicas.items() if dn == name]
        ready_n = sum(1 for r in mine if r["state"] == "Ready")
        states = sorted({r["state"] for r in mine})
        par = d.get("parallelism", {})
        dep_rows.append([
            name, d.get("servedName", ""), f"{ready_n}/{d.get('replicas', 0)}",
            f"tp{par.get('tensor', 1)} pp{par.get('pipeline', 1)}",
            str(d.get("port", "")), ",".join(states) or "-",
            "suspended" if d.get("suspend") else "",
        ])
    out += ["", "DEPLOYMENTS", _table(
        ["NAME", "SERVED", "READY", "PARALLEL", "PORT", "STATES", "NOTE"], dep_rows)]
    rep_rows = [
        [f"{r['deployment']}/{r['index']}", r["state"], r["role"], ",".join(r["nodes"]) or "-",
         " ".join(members.get(key, [])) or "-", _ray_column(r),
         ",".join(str(g) for g in r["gpus"]) or "-", str(r["port"] or "-"),
         r["specHash"][:12], r["reason"][:90]]
        for key, (r, _a) in sorted(replicas.items())
    ]
    out += ["", "REPLICAS", _table(
        ["REPLICA", "STATE", "ROLE", "NODES", "MEMBERS", "RAY", "GPUS", "PORT", "SPEC",
         "REASON"], rep_rows)]
    return "\n".join(out)


_ROLE_SHORT = {"ray-head": "head", "ray-worker": "worker", "engine": "engine"}


def _ray_column(r: dict[str, Any]) -> str:
    """Leader rows: Ray members at the spec hash / nodes placed (and lost ones)."""
    ray = r.get("ray")
    if not ray:
        return "-"
    text = f"{len(ray.get('members', []))}/{len(r.get('nodes', []))}"
    if ray.get("lost"):
        text += f" lost {','.join(ray['lost'])}"
    if ray.get("mismatched"):
        text += f" other-hash {','.join(ray['mismatched'])}"
    return text


def cmd_status(args: argparse.Namespace) -> int:
    base = _base_url(args)
    try:
        local = _get(base + "/status", args.timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        print(f"error: {base}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    nodes: list[tuple[str, str, dict[str, Any] | None, str]] = []
    if args.cluster and local.get("cluster"):
        listed = local["cluster"]["nodes"]
        others = [PeerAddress(n["name"], n["address"], int(n["statusPort"]))
                  for n in listed if n["name"] != local.get("node")]
        # all at once, each within --peer-timeout: down nodes cost one timeout, not one each
        answers = {a.peer.name: a for a in ask_all(
            others, fetch_status, timeout_s=args.peer_timeout, concurrency=args.concurrency)}
        for n in listed:
            endpoint = f"{n['address']}:{n['statusPort']}"
            if n["name"] not in answers:
                nodes.append((n["name"], endpoint, local, ""))
                continue
            a = answers[n["name"]]
            nodes.append((n["name"], endpoint, a.status, a.error))
    else:
        nodes.append((str(local.get("node", "?")), urlsplit(base).netloc, local, ""))
    if args.format == "json":
        if args.cluster:
            print(json.dumps({"nodes": [
                {"name": n, "endpoint": e, "reachable": s is not None, "error": err,
                 "status": s} for n, e, s, err in nodes]}, indent=1))
        else:
            print(json.dumps(local, indent=1))
    else:
        print(render_text(nodes))
    healthy = all(s is not None and _cond(s, "Ready").get("status") == "True"
                  for _, _, s, _ in nodes)
    return EXIT_OK if healthy else EXIT_FAILED


# --- sync ------------------------------------------------------------------------------------


def _describe(info: CommitInfo | None) -> str:
    if info is None:
        return "-"
    return f"{info.revision[:12]} {info.subject!r} by {info.author}"


def cmd_sync(args: argparse.Namespace) -> int:
    """Fetch, verify and load once, without changing what the daemon has accepted: the
    mirror is shared (it has a lock), the last-good record is read from a copy."""
    from reconciler.daemon import log_format as logjson
    from reconciler.daemon.wiring import git_source_config
    from reconciler.desired.source_sync import SourceSync
    from reconciler.ports.git import GitPythonSource

    config = _load(args.config)
    if config is None:
        return EXIT_INVALID
    secrets = _config_secrets(config)
    logjson.configure("WARNING", lambda: secrets)
    try:
        source = GitPythonSource(git_source_config(config))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    applied: str | None = None
    try:
        inv = json.loads((config.state_dir / "inventory.json").read_text())
        applied = inv.get("appliedRevision")
    except (OSError, ValueError):
        pass
    with tempfile.TemporaryDirectory(prefix="reconciler-sync-") as tmp:
        record = config.state_dir / "source.json"
        if record.is_file():
            shutil.copyfile(record, Path(tmp) / "source.json")
        sync = SourceSync(source, Path(tmp), config.source.max_files)
        try:
            sync.sync(0.0)
        except SourceError as exc:  # pragma: no cover - sync catches its own
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(f"fetched:   {_describe(sync.fetched)}")
    print(f"attempted: {_describe(sync.attempted)}")
    print(f"last good: {_describe(sync.good)}")
    applied_info = next((i for i in (sync.good, sync.attempted, sync.fetched)
                         if i is not None and i.revision == applied), None)
    print(f"applied:   {_describe(applied_info) if applied_info else _short(applied)}")
    failure = sync.failure
    if failure is None:
        desired = sync.desired
        if desired is not None:
            print(f"ok: cluster {desired.cluster.metadata.name!r}, "
                  f"{len(desired.deployments)} deployment(s)")
        return EXIT_OK
    print(f"refused: {failure.reason}: {failure.message}", file=sys.stderr)
    for p in failure.problems:
        print(f"error: {p}", file=sys.stderr)
    return EXIT_FAILED if failure.retryable else EXIT_INVALID


# --- install-systemd -------------------------------------------------------------------------


def cmd_install_systemd(args: argparse.Namespace) -> int:
    unit_src = REPO_ROOT / "systemd" / "reconciler.service"
    example_src = REPO_ROOT / "systemd" / "node.example.yaml"
    if not unit_src.is_file():
        print(f"error: {unit_src} not found (run from a source checkout; see docs/install.md)",
              file=sys.stderr)
        return EXIT_FAILED
    prefix: Path = args.prefix
    exe = Path(sys.prefix) / "bin" / "reconciler"
    unit = unit_src.read_text().replace("/opt/reconciler/venv/bin/reconciler", str(exe))
    steps: list[tuple[str, Path, str | None]] = [
        ("write", prefix / "etc/systemd/system/reconciler.service", unit),
        ("mkdir", prefix / "etc/reconciler", None),
        ("mkdir", prefix / "var/lib/reconciler", None),
    ]
    node_yaml = prefix / "etc/reconciler/node.yaml"
    if not node_yaml.exists():
        steps.append(("write", node_yaml, example_src.read_text()))
    for what, path, content in steps:
        print(f"{what} {path}" + (" (dry run)" if args.dry_run else ""))
        if args.dry_run:
            continue
        if what == "mkdir":
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content or "")
            path.chmod(0o644 if path.suffix == ".service" else 0o640)
    print("next: edit /etc/reconciler/node.yaml, then: systemctl daemon-reload && "
          "systemctl enable --now reconciler")
    return EXIT_OK
