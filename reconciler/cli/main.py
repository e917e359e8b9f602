"""The `reconciler` command line: one module per command group, registered here.

Nothing imports this module but the entry points, so there is no import loop: every group
imports only `reconciler.cli.common` and the layers below.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reconciler.cli import diff, engine, gateway, lock, models, node, plan, validate
from reconciler.cli.common import EXIT_INVALID, EXIT_OK, Registry
from reconciler.core.errors import ReconcilerError
from reconciler.core.printable import escape_controls

GROUPS = (validate, plan, diff, lock, node, engine, gateway, models)


def build_parser() -> tuple[argparse.ArgumentParser, Registry]:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="GitOps reconciler for GPU clusters serving LLMs with vLLM over Ray.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: Registry = {}
    for group in GROUPS:
        group.register(sub, handlers)
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_INVALID
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    # One clear line, never a traceback, when what a command needs is missing: its node
    # config (ConfigError), a daemon or engine that does not answer, a file (OSError;
    # urllib's URLError is one).
    except ReconcilerError as exc:
        print(f"error: {escape_controls(str(exc))}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        print(f"error: {escape_controls(_os_error(exc))}", file=sys.stderr)
        return EXIT_INVALID


def _os_error(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)  # URLError: why the connection failed
    if reason is not None:
        return f"cannot reach the daemon or engine: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
