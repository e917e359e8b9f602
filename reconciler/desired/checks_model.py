"""The model reference and the parallel sizes the model can be split into.

A hub id is handed to vLLM as the model argument, and vLLM loads any argument that names
an existing directory from disk: a "hub id" like `/etc` or `../../srv/x` is a local path
that escapes the node's allowed model roots. Tensor parallel must divide the attention
heads (vLLM asserts it at load time, after minutes of start-up); pipeline parallel needs a
layer per stage.
"""

from __future__ import annotations

import re
from typing import Any

from reconciler.core.errors import Problem
from reconciler.desired.model_config import read_config
from reconciler.desired.yaml_positions import Document
from schemas.v1alpha1 import ModelDeployment

# Hugging Face repo ids: [org/]name, each part letters, digits, '-', '_', '.'; no '..',
# no leading or trailing '.' or '-' (huggingface_hub's validate_repo_id)
HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"^(?:{HUB_PART}/)?{HUB_PART}$")


def check_hub_id(doc: Document, dep: ModelDeployment) -> list[Problem]:
    hub = dep.spec.model.hub_id
    if hub is None:
        return []
    where = ("spec", "model", "hubId")
    if hub.startswith(("/", "~", ".")) or ".." in hub or "\\" in hub:
        return [
            doc.problem(
                where,
                f"{hub!r} is a local path, not a hub id: vLLM would load it from the node's "
                "disk, outside the allowed model roots; use model.path for local models, or "
                "an 'org/name' hub id",
            )
        ]
    if hub.startswith("-"):
        return [
            doc.problem(where, f"{hub!r} starts with '-': vLLM would read it as an option; "
                        "use an 'org/name' hub id")
        ]
    if not HUB_ID.match(hub):
        return [
            doc.problem(
                where,
                f"{hub!r} is not a hub id ('org/name': letters, digits, '-', '_', '.'); for "
                "a model on local disk use model.path",
            )
        ]
    return []


def _config(dep: ModelDeployment) -> dict[str, Any] | None:
    path = dep.spec.model.path
    if path is None:
        return None
    data = read_config(path)
    if data is None:
        return None
    text = data.get("text_config", data)
    return text if isinstance(text, dict) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def model_shape(dep: ModelDeployment) -> tuple[int | None, int | None, int | None, str]:
    """(attention heads, KV heads, layers, where from): config.json here, else declared."""
    config = _config(dep)
    if config is not None:
        heads = _int(config.get("num_attention_heads"))
        kv = _int(config.get("num_key_value_heads")) or heads
        return heads, kv, _int(config.get("num_hidden_layers")), "config.json"
    arch = dep.spec.model.architecture
    if arch is not None:
        return arch.num_attention_heads, arch.num_kv_heads, arch.num_layers, "architecture"
    return None, None, None, ""


def check_parallel_split(doc: Document, dep: ModelDeployment) -> list[Problem]:
    par = dep.spec.parallelism
    heads, kv_heads, layers, source = model_shape(dep)
    problems: list[Problem] = []
    tp = par.tensor
    if heads is not None and heads % tp:
        options = [d for d in range(1, heads + 1) if heads % d == 0 and d <= 64]
        problems.append(
            doc.problem(
                ("spec", "parallelism", "tensor"),
                f"tensor parallel {tp} does not divide the model's {heads} attention heads "
                f"({source}); vLLM refuses it at load time; use one of {options[-6:]}",
            )
        )
    elif kv_heads is not None and (kv_heads % tp if kv_heads >= tp else tp % kv_heads):
        problems.append(
            doc.problem(
                ("spec", "parallelism", "tensor"),
                f"tensor parallel {tp} cannot split the model's {kv_heads} KV heads "
                f"({source}): it must divide them, or be a multiple of them",
            )
        )
    if layers is not None and par.pipeline > layers:
        problems.append(
            doc.problem(
                ("spec", "parallelism", "pipeline"),
                f"pipeline parallel {par.pipeline} exceeds the model's {layers} layers "
                f"({source}): a stage would hold no layer; use at most {layers}",
            )
        )
    return problems
