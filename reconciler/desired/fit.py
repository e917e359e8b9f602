"""Will the model fit? Weights plus the KV cache of one full-length sequence against
the replica's GPU memory budget (GPUs x memory x gpu memory utilization).

GPUStack estimates weight files x 1.2 + 2 GiB and ignores the KV cache; vLLM refuses to
start when even one sequence of max-model-len tokens does not fit, so we count it.
Facts come from the model directory (config.json, safetensors sizes) when it exists on
this machine, else from the architecture declared in the deployment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reconciler.core.printable import escape_controls
from reconciler.core.topology import candidate_nodes, node_stats, replica_shape
from reconciler.desired.model_config import read_config
from reconciler.desired.state import DesiredState
from schemas.v1alpha1 import ModelDeployment

GIB = 1024**3
DTYPE_BYTES = {
    "float32": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "fp8": 1.0,
    "fp8_e4m3": 1.0,
    "fp8_e5m2": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}
TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(frozen=True)
class ModelFacts:
    parameters: float | None
    weight_bytes: float | None  # measured from files when available
    dtype: str  # stored weights dtype
    num_layers: int | None
    kv_elems_per_token_layer: int | None  # elements cached per token per layer
    max_position: int | None
    source: str


@dataclass(frozen=True)
class FitRow:
    deployment: str
    nodes: int
    gpus: int
    weights_gib: float | None
    kv_gib: float | None
    budget_gib: float | None
    verdict: str  # "fits", "does not fit", "unknown", "cpu"
    detail: str

    @property
    def fails(self) -> bool:
        return self.verdict == "does not fit"


def _weight_bytes_on_disk(path: Path) -> float | None:
    index = path / "model.safetensors.index.json"
    try:
        meta = json.loads(index.read_text()).get("metadata", {})
        if isinstance(meta, dict) and isinstance(meta.get("total_size"), int | float):
            return float(meta["total_size"])
    except (OSError, ValueError, AttributeError):
        pass
    files = list(path.glob("*.safetensors"))
    return float(sum(f.stat().st_size for f in files)) if files else None


def _stored_dtype(text: dict[str, Any], config: dict[str, Any]) -> str:
    """transformers 4.56+ writes `dtype` where older versions wrote `torch_dtype`."""
    for where in (text, config):
        for key in ("dtype", "torch_dtype"):
            if isinstance(where.get(key), str):
                return str(where[key])
    return ""


def model_facts(dep: ModelDeployment) -> ModelFacts:
    src = dep.spec.model
    declared = src.architecture
    config = read_config(src.path) if src.path else None
    if config is not None:
        text = config.get("text_config", config)
        layers = int(text.get("num_hidden_layers", 0)) or None
        heads = int(text.get("num_attention_heads", 0)) or None
        kv_heads = int(text.get("num_key_value_heads", heads or 0)) or None
        hidden = int(text.get("hidden_size", 0)) or None
        head_dim = text.get("head_dim") or (hidden // heads if hidden and heads else None)
        if text.get("kv_lora_rank"):
            kv_elems: int | None = int(text["kv_lora_rank"]) + int(text.get("qk_rope_head_dim", 0))
        elif kv_heads and head_dim:
            kv_elems = 2 * kv_heads * int(head_dim)
        else:
            kv_elems = None
        stored = TORCH_DTYPES.get(_stored_dtype(text, config), "")
        quant = config.get("quantization_config")
        if isinstance(quant, dict) and "fp8" in str(quant.get("quant_method", "")):
            stored = "fp8"
        dtype = src.weights_dtype if src.weights_dtype != "auto" else (stored or "bfloat16")
        return ModelFacts(
            parameters=declared.parameters if declared else None,
            weight_bytes=_weight_bytes_on_disk(Path(src.path)) if src.path else None,
            dtype=dtype,
            num_layers=layers,
            kv_elems_per_token_layer=kv_elems,
            max_position=text.get("max_position_embeddings"),
            source="config.json",
        )
    if declared is not None:
        if declared.kv_lora_rank:
            kv = declared.kv_lora_rank + (declared.qk_rope_head_dim or 0)
        else:
            kv = 2 * declared.num_kv_heads * declared.head_dim
        return ModelFacts(
            parameters=declared.parameters,
            weight_bytes=None,
            dtype=src.weights_dtype if src.weights_dtype != "auto" else "bfloat16",
            num_layers=declared.num_layers,
            kv_elems_per_token_layer=kv,
            max_position=None,
            source="declared",
        )
    return ModelFacts(None, None, "bfloat16", None, None, None, "none")


def check_fit(state: DesiredState) -> list[FitRow]:
    rows = []
    for name, dep in state.deployments.items():
        rows.append(check_deployment(state, name, dep))
    return rows


def check_deployment(state: DesiredState, name: str, dep: ModelDeployment) -> FitRow:
    """The estimate, unless the deployment overrides it (spec.fit.override + reason)."""
    row = estimate_deployment(state, name, dep)
    policy = dep.spec.fit
    if not policy.override:
        return row
    return replace(
        row,
        verdict="overridden",
        detail=f"estimate says {row.verdict}: {row.detail}; overridden: {policy.reason}",
    )


def estimate_deployment(state: DesiredState, name: str, dep: ModelDeployment) -> FitRow:
    nodes = candidate_nodes(state.cluster, dep)
    shape = replica_shape(state.cluster, dep, nodes)
    if isinstance(shape, str):
        return FitRow(name, 0, 0, None, None, None, "unknown", shape)
    facts = model_facts(dep)
    weights: float | None = facts.weight_bytes
    if weights is None and facts.parameters is not None:
        weights = facts.parameters * DTYPE_BYTES.get(facts.dtype, 2.0)
    engine = dep.spec.engine
    max_len = engine.max_model_len or facts.max_position
    kv: float | None = None
    if facts.num_layers and facts.kv_elems_per_token_layer and max_len:
        kv_dtype = engine.kv_cache_dtype
        if kv_dtype == "auto":
            # the cache follows the activation dtype; fp8/int checkpoints compute in bf16
            act = engine.dtype if engine.dtype != "auto" else facts.dtype
            kv_dtype_bytes = DTYPE_BYTES[act] if act in ("float32", "float16", "bfloat16") else 2.0
        else:
            kv_dtype_bytes = DTYPE_BYTES[kv_dtype]
        kv = facts.num_layers * facts.kv_elems_per_token_layer * kv_dtype_bytes * max_len
    weights_gib = weights / GIB if weights is not None else None
    kv_gib = kv / GIB if kv is not None else None
    if shape.gpus_per_node == 0:
        return FitRow(
            name,
            1,
            0,
            weights_gib,
            kv_gib,
            None,
            "cpu",
            "CPU engine: KV space comes from VLLM_CPU_KVCACHE_SPACE",
        )
    util = (
        engine.gpu_memory_utilization or state.cluster.spec.engine_defaults.gpu_memory_utilization
    )
    mem = node_stats(state.cluster, nodes).min_memory_gib(shape.gpus_per_node)
    budget = shape.gpus * mem * util
    if weights_gib is None:
        return FitRow(
            name,
            shape.nodes,
            shape.gpus,
            None,
            kv_gib,
            budget,
            "unknown",
            "no config.json here and no declared architecture",
        )
    need = weights_gib + (kv_gib or 0.0)
    if need <= budget:
        verdict, detail = "fits", f"{budget - need:.1f} GiB to spare"
    else:
        verdict = "does not fit"
        detail = (
            f"needs {need:.1f} GiB (weights {weights_gib:.1f} + KV {kv_gib or 0:.1f}) but "
            f"{shape.gpus} GPUs x {mem:g} GiB x {util:g} = {budget:.1f} GiB"
        )
    if kv_gib is None:
        detail += "; KV cache not counted (unknown max model len or shape)"
    return FitRow(name, shape.nodes, shape.gpus, weights_gib, kv_gib, budget, verdict, detail)


def format_table(rows: list[FitRow]) -> str:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    header = ("DEPLOYMENT", "NODES", "GPUS", "WEIGHTS GiB", "KV GiB", "BUDGET GiB", "VERDICT")
    body = [
        (
            r.deployment,
            str(r.nodes),
            str(r.gpus),
            num(r.weights_gib),
            num(r.kv_gib),
            num(r.budget_gib),
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    for r in rows:
        if r.verdict != "fits":
            lines.append(f"  {r.deployment}: {escape_controls(r.detail)}")
    return "\n".join(lines)
