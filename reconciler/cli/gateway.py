"""`reconciler gateway` (the node's OpenAI endpoint) and `reconciler chat` (one chat, or
two models side by side with --compare, through the gateway when one is configured)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reconciler.cli.common import EXIT_INVALID, EXIT_OK, Handler
from reconciler.core.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/reconciler/node.yaml")


def cmd_gateway(args: argparse.Namespace) -> int:
    from reconciler.daemon import log_format as logjson
    from reconciler.desired.node_config import load_node_config, read_secret
    from reconciler.gateway.server import GatewayConfigError, run
    from schemas.nodeconfig import GatewayConfig

    os.umask(os.umask(0o027) | 0o027)
    try:
        config = load_node_config(args.config)
    except ConfigError as exc:
        for p in getattr(exc, "problems", [exc]):
            print(f"error: {p}", file=sys.stderr)
        return EXIT_INVALID
    gw = config.gateway or GatewayConfig()
    secrets: list[str] = []
    for path in [k.file for k in gw.api_keys] + [gw.engine_key_file]:
        try:
            value = read_secret(path)
        except OSError:
            value = None
        if value:
            secrets.append(value)
    logjson.configure(args.log_level, lambda: secrets)
    try:
        run(config)
    except GatewayConfigError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # e.g. the listen address is taken
        print(f"error: gateway cannot listen on {gw.listen.address}:{gw.listen.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


# --- chat ----------------------------------------------------------------------------------------


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.rstrip("/") + "/status", timeout=5) as resp:  # noqa: S310
        data = json.loads(resp.read())
    if not isinstance(data, dict):
        raise ValueError("status is not an object")
    return data


def _daemon_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url)
    from reconciler.desired.node_config import load_node_config

    config = load_node_config(Path(args.config))
    host = config.listen.address
    if host in ("0.0.0.0", "::"):  # noqa: S104 (we connect, not bind)
        host = "127.0.0.1"
    return f"http://{host}:{config.listen.port}"


def _direct_chat(args: argparse.Namespace) -> int:
    from reconciler.ports.openai_client import ChatError, chat

    status = _status(_daemon_url(args))
    served = next(
        (d["servedName"] for d in status.get("deployments", []) if d["name"] == args.deployment),
        None,
    )
    if served is None:
        print(f"error: no deployment {args.deployment!r} in the applied revision", file=sys.stderr)
        return 2
    ready = [
        r for r in status.get("replicas", [])
        if r["deployment"] == args.deployment and r["state"] == "Ready" and r.get("port")
    ]
    if not ready:
        print(f"error: no Ready replica of {args.deployment!r} yet", file=sys.stderr)
        return 2
    replica = ready[0]
    host = replica.get("address") or status.get("address") or "127.0.0.1"
    base = f"http://{host}:{replica['port']}"
    try:
        result = chat(base, served, args.prompt, timeout=args.timeout,
                      max_tokens=getattr(args, "max_tokens", 64))
    except ChatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.text)
    ttft = "n/a" if result.ttft_s is None else f"{result.ttft_s * 1000:.0f} ms"
    print(f"-- {args.deployment}/{replica['index']} at {base}: time to first token {ttft}, "
          f"total {result.total_s:.2f} s", file=sys.stderr)
    return 0


def _gateway_target(args: argparse.Namespace) -> tuple[str, str | None] | None:
    """(gateway base URL, API key) from --gateway/--api-key-file or the node config."""
    from reconciler.desired.node_config import load_node_config, read_secret

    key = read_secret(Path(args.api_key_file)) if args.api_key_file else None
    if key is None and os.environ.get("OPENAI_API_KEY"):
        key = os.environ["OPENAI_API_KEY"]
    if args.gateway:
        return str(args.gateway).rstrip("/"), key
    if args.url or not Path(args.config).is_file():
        return None
    config = load_node_config(Path(args.config))
    if config.gateway is None:
        return None
    host = config.gateway.listen.address
    if host in ("0.0.0.0", "::"):  # noqa: S104 (we connect, not bind)
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.gateway.listen.port}", key


def _served_name(args: argparse.Namespace, target: str) -> str:
    """A deployment name becomes its served model name (from the daemon's status); any
    other name is taken as a served name."""
    try:
        status = _status(_daemon_url(args))
    except (OSError, ValueError, ConfigError):
        return target
    for d in status.get("deployments", []):
        if d.get("name") == target:
            return str(d.get("servedName") or target)
    return target


def _one(base: str, model: str, args: argparse.Namespace, key: str | None) -> Any:
    from reconciler.ports.openai_client import ChatError, chat

    try:
        return chat(base, model, args.prompt, timeout=args.timeout, api_key=key,
                    max_tokens=args.max_tokens)
    except ChatError as exc:
        return exc


def _describe(model: str, result: Any) -> str:
    ttft = "n/a" if result.ttft_s is None else f"{result.ttft_s * 1000:.0f} ms"
    tps = result.tokens_per_s
    speed = "n/a" if tps is None else f"{tps:.1f} tokens/s"
    via = f" (replica {result.replica})" if result.replica else ""
    return (f"-- {model}{via}: time to first token {ttft}, {speed}, "
            f"total {result.total_s:.2f} s")


def cmd_chat(args: argparse.Namespace) -> int:
    from reconciler.ports.openai_client import ChatError

    try:
        via = _gateway_target(args)
    except (OSError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.compare:
        if via is None:
            print("error: --compare needs a gateway (node config `gateway:` or --gateway URL)",
                  file=sys.stderr)
            return EXIT_INVALID
        base, key = via
        models = [_served_name(args, m) for m in args.compare]
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda m: _one(base, m, args, key), models))
        rc = EXIT_OK
        for model, result in zip(models, results, strict=True):
            print(f"=== {model}")
            if isinstance(result, ChatError):
                print(f"error: {result}")
                rc = EXIT_INVALID
            else:
                print(result.text)
                print(_describe(model, result))
        return rc
    if args.target is None:
        print("error: name a deployment or model (or use --compare A B)", file=sys.stderr)
        return EXIT_INVALID
    if via is None:
        args.deployment = args.target
        return _direct_chat(args)  # straight to one engine, as before gateways
    base, key = via
    model = _served_name(args, args.target)
    result = _one(base, model, args, key)
    if isinstance(result, ChatError):
        print(f"error: {result}", file=sys.stderr)
        return EXIT_INVALID
    print(result.text)
    print(_describe(model, result) + f" via {base}", file=sys.stderr)
    return EXIT_OK


def register(sub: Any, handlers: dict[str, Handler]) -> None:
    p = sub.add_parser("gateway", help="run this node's OpenAI gateway (a systemd service)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--log-level", default=os.environ.get("RECONCILER_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    handlers["gateway"] = cmd_gateway

    p = sub.add_parser(
        "chat", help="one chat request (through the gateway when configured), with time to "
                     "first token; --compare A B asks two models at once")
    p.add_argument("target", nargs="?", help="deployment or served model name")
    p.add_argument("prompt")
    p.add_argument("--compare", nargs=2, metavar=("MODEL_A", "MODEL_B"))
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--url", help="the daemon's address: chat straight to an engine it runs")
    p.add_argument("--gateway", help="a gateway's base URL instead of the node config's")
    p.add_argument("--api-key-file", help="file holding the gateway API key "
                                          "(default: $OPENAI_API_KEY)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=120)
    handlers["chat"] = cmd_chat
