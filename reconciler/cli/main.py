"""The `reconciler` command line: one module per command group, registered here.

Nothing imports this module but the entry points, so there is no import loop: every group
imports only `reconciler.cli.common` and the layers below.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reconciler.cli import diff, engine, gateway, lock, node, plan, validate
from reconciler.cli.common import EXIT_INVALID, EXIT_OK, Registry

GROUPS = (validate, plan, diff, lock, node, engine, gateway)


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


if __name__ == "__main__":
    sys.exit(main())
