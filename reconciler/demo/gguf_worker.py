"""GGUF -> bf16 safetensors, run by the ENGINE environment's python (torch, transformers,
gguf, accelerate), never imported by the daemon: `reconciler.demo.prepare_model` starts it
as a script (`<engine python> gguf_worker.py GGUF OUT`), so it imports nothing from
reconciler/ and only the standard library at module level.

transformers dequantizes the GGUF while loading it (`from_pretrained(dir, gguf_file=...)`,
tokenizer and chat template included). `save_pretrained` refuses a model still flagged as
GGUF-quantized, although its weights are plain tensors by then: the flag (the model's
quantizer and `config.quantization_config`) is cleared before saving.

Progress goes to stderr, one line a step; the last stdout line is a JSON summary.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

T0 = time.monotonic()


def step(text: str) -> None:
    print(f"[prepare-model] {time.monotonic() - T0:5.1f}s  {text}", file=sys.stderr, flush=True)


def convert(gguf: Path, out: Path) -> dict[str, Any]:
    step("importing torch and transformers (engine environment)")
    import torch  # type: ignore[import-not-found]
    from transformers import (  # type: ignore[import-not-found]
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    step(f"loading the tokenizer from {gguf.name}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    step("loading and dequantizing the weights")
    # float32 is transformers' fast path for GGUF (asked for bf16 it warns and casts every
    # matmul); the cast to bf16 comes after, on plain tensors
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    step("casting to bf16")
    model = model.to(torch.bfloat16)
    # the weights are plain bf16 tensors now; only the flag says "GGUF-quantized"
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):  # a read-only property in some versions
                setattr(model, attr, False if attr == "is_quantized" else None)
    step(f"writing safetensors to {out}")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    params = sum(p.numel() for p in model.parameters())
    step(f"done: {params:,} parameters")
    return {"parameters": params, "architecture": type(model).__name__}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: gguf_worker.py GGUF OUT_DIR", file=sys.stderr)
        return 2
    summary = convert(Path(argv[0]), Path(argv[1]))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
