"""Run the gateway: read the node config, load the API keys, start the routing table
updates and serve until SIGTERM/SIGINT.

On SIGTERM the listener closes at once and streams in flight get
`shutdown_grace_seconds` to finish (aiohttp's shutdown_timeout); the daemon and its
engines are separate processes and are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiohttp import web

from reconciler.core.errors import PermanentError
from reconciler.desired.node_config import read_secret
from reconciler.gateway import console
from reconciler.gateway.auth import KeyRing, entry
from reconciler.gateway.discovery import Discovery
from reconciler.gateway.proxy import GatewayState, Settings, build_app
from schemas.nodeconfig import GatewayConfig, NodeConfig

_log = logging.getLogger(__name__)


class GatewayConfigError(PermanentError, ValueError):
    """The gateway part of the node config cannot be used (a key file unreadable, empty)."""

    reason = "InvalidGatewayConfig"


def load_keys(config: GatewayConfig) -> KeyRing:
    entries = []
    for k in config.api_keys:
        try:
            key = read_secret(k.file)
        except OSError as exc:
            raise GatewayConfigError(f"gateway.apiKeys {k.name}: cannot read {k.file}: "
                                     f"{exc.strerror}") from None
        if key is None:
            raise GatewayConfigError(f"gateway.apiKeys {k.name}: {k.file} is empty")
        entries.append(entry(k.name, key, k.models))
    return KeyRing(entries)


def settings_of(config: GatewayConfig) -> Settings:
    engine_key = None
    if config.engine_key_file is not None:
        try:
            engine_key = read_secret(config.engine_key_file)
        except OSError as exc:
            raise GatewayConfigError(f"gateway.engineKeyFile: cannot read "
                                     f"{config.engine_key_file}: {exc.strerror}") from None
    return Settings(
        max_body_bytes=config.max_body_bytes,
        max_attempts=config.max_attempts,
        connect_timeout_s=config.connect_timeout_seconds,
        first_byte_timeout_s=config.first_byte_timeout_seconds,
        client_write_timeout_s=config.client_write_timeout_seconds,
        retry_after_s=config.retry_after_seconds,
        max_connections=config.max_connections,
        engine_key=engine_key,
    )


def daemon_url(node: NodeConfig, config: GatewayConfig) -> str:
    if config.daemon_url:
        return config.daemon_url
    host = node.listen.address
    if host in ("0.0.0.0", "::"):  # noqa: S104 (we connect, not bind)
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{node.listen.port}"


async def serve(node: NodeConfig, *, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    config = node.gateway or GatewayConfig()
    state = GatewayState(settings=settings_of(config), keys=load_keys(config))
    if state.keys.open:
        _log.warning("gateway has no API keys configured: anyone who reaches %s:%d may "
                     "use every model", config.listen.address, config.listen.port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    discovery = Discovery(
        local_url=daemon_url(node, config), peers=config.peers,
        interval_s=config.status_interval_seconds, stale_s=config.status_stale_seconds,
        on_table=state.set_table,
        on_source=lambda src, ok: state.metrics.source_up.labels(src).set(1 if ok else 0),
    )
    app = build_app(state)
    app[console.SOURCES] = console.Sources(discovery.local_url, config.peers, state.keys)
    runner = web.AppRunner(app, handler_cancellation=True,
                           shutdown_timeout=config.shutdown_grace_seconds, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.listen.address, config.listen.port, backlog=4096,
                       reuse_address=True)
    await site.start()
    updates = asyncio.create_task(discovery.run(stop), name="routing-table")
    _log.info("gateway listening on %s:%d, routing from %s", config.listen.address,
              config.listen.port, discovery.local_url)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        _log.info("gateway stopping: streams in flight get up to %.0f s",
                  config.shutdown_grace_seconds)
        await runner.cleanup()
        await updates


def run(node: NodeConfig) -> None:
    asyncio.run(serve(node))
