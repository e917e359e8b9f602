"""Wiring: the real ports and the core's settings, built from the node config.

Everything here runs once at start (and again for the parts a SIGHUP reload may change);
the loop (reconciler.daemon.loop) only uses what this module builds. Tests hand the loop
their fakes as a `DaemonPorts` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.control.apply import ApplyConfig
from reconciler.core.backoff import BackoffPolicy
from reconciler.core.launch import NodeContext
from reconciler.core.vocabulary import LaunchSpec, MemberKey, ProcessObservation
from reconciler.desired.node_config import load_node_config, read_secret
from reconciler.desired.state import DesiredState
from reconciler.ports.clock import Clock, SystemClock
from reconciler.ports.git import GitPythonSource, GitSource, GitSourceConfig, is_local_url
from reconciler.ports.gpus import GpuPort, gpu_port_from_config
from reconciler.ports.peers import HttpPeers, PeerAddress, PeerPort
from reconciler.ports.processes import LocalProcessPort, ProcessPort
from reconciler.ports.ray_nodes import RayPort, SubprocessRayPort
from schemas.nodeconfig import NodeConfig

log = logging.getLogger(__name__)

# fields a running daemon cannot take over from a reloaded file (its identity, where its
# state lives, the socket it listens on): kept until the next start
RESTART_ONLY_FIELDS = ("node_name", "state_dir", "listen")


@dataclass
class DaemonPorts:
    """What the daemon talks to. Tests pass fakes; `real_ports` builds the real ones."""

    source: GitSource
    gpus: GpuPort
    processes: ProcessPort
    clock: Clock = field(default_factory=SystemClock)
    peers: PeerPort | None = None
    ray: RayPort | None = None
    watch_repo: Path | None = None  # a local repository whose refs wake the fetch


class BeatingProcesses:
    """The process port, with a watchdog beat before and after every call.

    Calls come from the worker thread only, so a beat here is loop progress."""

    def __init__(self, inner: ProcessPort, beat: Callable[[], None]) -> None:
        self.inner = inner
        self._beat = beat

    def list(self) -> list[ProcessObservation]:
        self._beat()
        try:
            return self.inner.list()
        finally:
            self._beat()

    def start(self, launch: LaunchSpec) -> ProcessObservation:
        self._beat()
        try:
            return self.inner.start(launch)
        finally:
            self._beat()

    def stop(self, member: MemberKey, grace_s: float) -> bool:
        self._beat()
        try:
            return self.inner.stop(member, grace_s)
        finally:
            self._beat()

    def forget(self, member: MemberKey) -> None:
        self.inner.forget(member)
        self._beat()

    def log_path(self, member: MemberKey) -> Path:
        return self.inner.log_path(member)

    def owned_pids(self) -> frozenset[int]:
        return self.inner.owned_pids()


def node_context(config: NodeConfig) -> NodeContext:
    engine = config.engine
    b = config.backoff
    return NodeContext(
        name=config.node_name,
        python=str(engine.python),
        ray=str(engine.ray_executable()),
        api_server_module=engine.api_server_module,
        cli_argv=tuple(engine.cli_argv),
        env=dict(engine.env),
        state_dir=str(config.state_dir),
        allowed_model_roots=tuple(str(r) for r in engine.allowed_model_roots),
        unhealthy_grace_s=engine.unhealthy_grace_period_seconds,
        backoff=BackoffPolicy(
            initial_s=b.initial_seconds,
            max_s=b.max_seconds,
            reset_after_s=b.reset_after_seconds,
            jitter=b.jitter,
        ),
    )


def apply_config(config: NodeConfig) -> ApplyConfig:
    return ApplyConfig(
        stop_grace_s=config.engine.stop_grace_period_seconds,
    )


def git_source_config(config: NodeConfig) -> GitSourceConfig:
    s = config.source
    return GitSourceConfig(
        url=s.url,
        branch=s.branch,
        checkout_dir=config.state_dir / "source",
        path=s.path,
        timeout_s=s.timeout_seconds,
        token_file=s.token_file,
        ssh_key_file=s.ssh_key_file,
        signature_policy=s.signature.policy,
        allowed_signers_file=s.signature.allowed_signers_file,
        gpg_home=s.signature.gpg_home,
        allow_non_fast_forward=s.allow_non_fast_forward,
    )


def local_repo_path(url: str) -> Path | None:
    if not is_local_url(url):
        return None
    return Path(url.removeprefix("file://")).expanduser()


def ray_port(config: NodeConfig) -> SubprocessRayPort:
    # the engine env's python reads the head's GCS (the daemon never imports ray);
    # answers are reused for 1 s so a fast tick loop doesn't spawn one per tick
    return SubprocessRayPort(str(config.engine.python), cache_s=1.0)


def peer_addresses(desired: DesiredState | None, node_name: str) -> list[PeerAddress]:
    """Every other node of the Cluster document: where to find the peers a tick asks
    (reconciler.core.peer_choice picks which)."""
    if desired is None:
        return []
    return [
        PeerAddress(n.name, n.address, n.status_port)
        for n in desired.cluster.spec.nodes
        if n.name != node_name
    ]


def real_ports(
    config: NodeConfig,
    *,
    on_exit: Callable[[MemberKey], None],
    on_health: Callable[[MemberKey], None],
    peers: Callable[[], list[PeerAddress]],
) -> DaemonPorts:
    clock = SystemClock()
    processes = LocalProcessPort(
        config.state_dir,
        config.engine.log_max_bytes,
        config.engine.log_backups,
        on_exit=on_exit,
        clock=clock,
        on_health=on_health,
    )
    return DaemonPorts(
        source=GitPythonSource(git_source_config(config)),
        gpus=gpu_port_from_config(config.simulate_gpus, config.node_name, config.managed_gpus),
        processes=processes,
        clock=clock,
        peers=HttpPeers(peers),
        ray=ray_port(config),
        watch_repo=local_repo_path(config.source.url),
    )


def rewire(ports: DaemonPorts, old: NodeConfig, new: NodeConfig) -> bool:
    """Swap the real ports a reloaded config changes. True when the source changed (the
    caller re-points its sync and ref watcher)."""
    if isinstance(ports.processes, LocalProcessPort):
        ports.processes.log_max_bytes = new.engine.log_max_bytes
        ports.processes.log_backups = new.engine.log_backups
    source_changed = new.source != old.source
    if source_changed:
        ports.source = GitPythonSource(git_source_config(new))
        ports.watch_repo = local_repo_path(new.source.url)
    if new.simulate_gpus != old.simulate_gpus or new.managed_gpus != old.managed_gpus:
        ports.gpus = gpu_port_from_config(new.simulate_gpus, new.node_name, new.managed_gpus)
    if new.engine.python != old.engine.python:
        ports.ray = ray_port(new)
    return source_changed


def reread_config(path: Path, old: NodeConfig) -> tuple[NodeConfig, Secrets]:
    """The node config file again, with the secrets it names; fields that need a restart
    keep their old values. Raises what loading raises (the caller keeps the old config)."""
    new = load_node_config(path)
    return keep_restart_only(old, new), Secrets.load(new)


def keep_restart_only(old: NodeConfig, new: NodeConfig) -> NodeConfig:
    """The reloaded config, with the fields that need a restart kept at their old values."""
    kept = {
        f: getattr(old, f) for f in RESTART_ONLY_FIELDS if getattr(new, f) != getattr(old, f)
    }
    if not kept:
        return new
    log.warning("config fields changed that need a restart; kept for now",
                extra={"fields": sorted(kept)})
    return new.model_copy(update=kept)


@dataclass(frozen=True)
class Secrets:
    """The secrets the config names; their values are also what logs must never show."""

    webhook: bytes | None
    values: tuple[str, ...]

    @classmethod
    def load(cls, config: NodeConfig) -> Secrets:
        values: list[str] = []
        webhook = read_secret(config.webhook.secret_file)
        if webhook is not None:
            values.append(webhook)
        token = read_secret(config.source.token_file)
        if token is not None:
            values.append(token)
        values.extend(secret_env(config).values())
        return cls(webhook.encode() if webhook is not None else None, tuple(values))


def secret_env(config: NodeConfig) -> Mapping[str, str]:
    """Engine environment from secret files, read at each start (a rotated file counts)."""
    env: dict[str, str] = {}
    for name, path in config.engine.secret_env_files.items():
        try:
            value = read_secret(path)
        except OSError as exc:
            log.error("secret env file unreadable", extra={"env": name, "file": str(path),
                                                           "error": exc.strerror})
            continue
        if value is not None:
            env[name] = value
    return env
