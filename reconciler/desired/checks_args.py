"""extraArgs that vLLM reads differently from how they look.

vLLM's argument parser turns '_' into '-' in option names, accepts unique prefixes of an
option (argparse's abbreviations) and reads one list item as one argument. So
`--max_model_len`, `--max-model` and `-tp8` override typed fields as surely as
`--max-model-len`, and `"--max-num-seqs 256"` reaches vLLM as one unknown option.
"""

from __future__ import annotations

import shlex

from reconciler.core.errors import Problem
from reconciler.desired.yaml_positions import Document
from schemas.v1alpha1 import MANAGED_FLAGS, ModelDeployment

_LONG_MANAGED = sorted(f for f in MANAGED_FLAGS if f.startswith("--"))
_SHORT_MANAGED = sorted(f for f in MANAGED_FLAGS if not f.startswith("--"))
MIN_PREFIX = 6  # '--' plus 4 characters: shorter prefixes are ambiguous in vLLM anyway


def vllm_spelling(flag: str) -> str:
    """The option name vLLM's FlexibleArgumentParser looks up for `flag`."""
    if not flag.startswith("--"):
        return flag
    body = flag[2:].split(".", 1)[0]  # --json-arg.key is the json-arg option
    return "--" + body.replace("_", "-")


def _managed_as(arg: str) -> str | None:
    """The managed flag this argument sets in another spelling, if any."""
    flag = arg.split("=", 1)[0]
    if flag in MANAGED_FLAGS:
        return None  # the schema refuses the plain spelling with its own message
    norm = vllm_spelling(flag)
    if norm in MANAGED_FLAGS:
        return norm
    if norm.startswith("--") and len(norm) >= MIN_PREFIX:
        hits = [m for m in _LONG_MANAGED if m.startswith(norm)]
        if len(hits) == 1:
            return hits[0]
    for short in _SHORT_MANAGED:
        if arg.startswith(short) and not arg.startswith("--"):
            return short  # -tp8, -tp=8
    return None


def check_extra_args(doc: Document, dep: ModelDeployment) -> list[Problem]:
    problems: list[Problem] = []
    args = dep.spec.engine.extra_args
    for i, arg in enumerate(args):
        where = ("spec", "engine", "extraArgs", i)
        # `--flag value` packed into one item; after an `=` the value may hold spaces
        # (JSON overrides such as --hf-overrides={"a": 1} are one argument on purpose).
        if arg.startswith("-") and any(ch.isspace() for ch in arg.split("=", 1)[0]):
            try:
                words = shlex.split(arg)
            except ValueError:
                words = arg.split()
            problems.append(
                doc.problem(
                    where,
                    f"{arg!r} packs {len(words)} words into one argument (vLLM receives it "
                    f"as one option name); write one item per word: {words}",
                )
            )
            continue
        if i == 0 and not arg.startswith("-"):
            problems.append(
                doc.problem(
                    where,
                    f"{arg!r} is a value with no option before it: vLLM would read it as a "
                    "second model argument; put its option first",
                )
            )
            continue
        if arg == "--":
            problems.append(
                doc.problem(where, "'--' ends vLLM's options: everything after it is ignored "
                            "or misread; remove it")
            )
            continue
        flag = vllm_spelling(arg.split("=", 1)[0])
        if flag == "--config":
            problems.append(
                doc.problem(
                    where,
                    "--config reads more options from a file on the node, out of sight of "
                    "validation and of the spec hash; put them in typed fields or extraArgs",
                )
            )
            continue
        managed = _managed_as(arg)
        if managed is not None:
            problems.append(
                doc.problem(
                    where,
                    f"{arg.split('=', 1)[0]!r} is {managed} in another spelling (vLLM reads "
                    "'_' as '-' and accepts unique prefixes), which is set from a typed "
                    "field; use that field instead",
                )
            )
    return problems
