"""Generate a tiny random-weight Llama-style model that vLLM on the CPU can serve.

No weights can be downloaded on the test machines, so system tests make their model at
run time. This module writes a complete Hugging Face model folder without torch or
transformers (the daemon's environment stays light): weights with numpy and
``safetensors.numpy``, a byte-level BPE tokenizer trained from scratch with
``tokenizers`` on a small built-in corpus, and the JSON files vLLM reads (config,
generation config, tokenizer config with a chat template, special tokens map).

The output is deterministic for a given seed: the same seed gives byte-identical files.

Shape choices (see docs/vllm-cpu-notes.md): hidden 256 with 4 heads gives head_dim 64,
which the vLLM CPU attention kernel accepts (head_dim 16 was refused). Weights are
float32 because numpy has no bfloat16; vLLM casts them at load time when ``--dtype``
asks for another type.

Usage::

    python -m reconciler.demo.tinymodel --out /tmp/tiny-llama [--seed 0] [--shards 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

__all__ = [
    "CHAT_TEMPLATE",
    "TinyModelSpec",
    "main",
    "make_tiny_model",
]

UNK: Final = "<unk>"
BOS: Final = "<s>"
EOS: Final = "</s>"
PAD: Final = "<pad>"
SPECIAL_TOKENS: Final = (UNK, BOS, EOS, PAD)  # ids 0..3 in this order

CHAT_TEMPLATE: Final = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_CORPUS: Final = """\
The reconciler reads the desired state from git and makes the cluster match it.
Each tick it observes the engines, plans the smallest set of actions, and applies them.
A deployment names a model, the number of replicas, and the GPUs each replica needs.
vLLM serves large language models with paged attention and continuous batching.
Ray places workers on nodes; tensor parallel shards a layer across GPUs of one node.
Pipeline parallel splits the layers across nodes. Data parallel runs whole replicas.
The health endpoint answers when the engine is ready; the models endpoint lists names.
Hello! How are you today? I am fine, thank you. What can I do for you?
user: Say something short. assistant: Here is something short.
system: You are a helpful assistant. Answer briefly and clearly.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 128 256 512 1024 2048 4096.
Punctuation: , . ; : ! ? ' " ( ) [ ] { } < > / \\ | - _ + = * & ^ % $ # @ ~ `
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
GPU memory utilization, max model length, dtype, kv cache dtype, served model name.
Stop the old engine, start the new one, wait until it is healthy, then drain traffic.
"""


@dataclasses.dataclass(frozen=True)
class TinyModelSpec:
    """Shapes of the generated model; defaults match what vLLM on the CPU accepts."""

    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    initializer_range: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B",
                special_tokens=[(BOS, bos_id)],
            ),
        ]
    )
    for i, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != i:
            raise RuntimeError(f"special token {token!r} did not get id {i}")
    return tokenizer


def _weights(spec: TinyModelSpec, seed: int) -> dict[str, np.ndarray[Any, np.dtype[np.float32]]]:
    rng = np.random.default_rng(seed)
    h, i, hd = spec.hidden_size, spec.intermediate_size, spec.head_dim
    q_out = spec.num_attention_heads * hd
    kv_out = spec.num_key_value_heads * hd

    def normal(*shape: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return rng.normal(0.0, spec.initializer_range, size=shape).astype(np.float32)

    def ones(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.ones((n,), dtype=np.float32)

    tensors: dict[str, np.ndarray[Any, np.dtype[np.float32]]] = {
        "model.embed_tokens.weight": normal(spec.vocab_size, h),
    }
    for layer in range(spec.num_hidden_layers):
        p = f"model.layers.{layer}"
        tensors[f"{p}.self_attn.q_proj.weight"] = normal(q_out, h)
        tensors[f"{p}.self_attn.k_proj.weight"] = normal(kv_out, h)
        tensors[f"{p}.self_attn.v_proj.weight"] = normal(kv_out, h)
        tensors[f"{p}.self_attn.o_proj.weight"] = normal(h, q_out)
        tensors[f"{p}.mlp.gate_proj.weight"] = normal(i, h)
        tensors[f"{p}.mlp.up_proj.weight"] = normal(i, h)
        tensors[f"{p}.mlp.down_proj.weight"] = normal(h, i)
        tensors[f"{p}.input_layernorm.weight"] = ones(h)
        tensors[f"{p}.post_attention_layernorm.weight"] = ones(h)
    tensors["model.norm.weight"] = ones(h)
    tensors["lm_head.weight"] = normal(spec.vocab_size, h)
    return tensors


def _config(spec: TinyModelSpec) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": SPECIAL_TOKENS.index(BOS),
        "eos_token_id": SPECIAL_TOKENS.index(EOS),
        "pad_token_id": SPECIAL_TOKENS.index(PAD),
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": spec.initializer_range,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "mlp_bias": False,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": spec.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": spec.vocab_size,
    }


def _tokenizer_config(spec: TinyModelSpec) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(i): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, tok in enumerate(SPECIAL_TOKENS)
        },
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.max_position_embeddings,
        "padding_side": "left",
        "chat_template": CHAT_TEMPLATE,
    }


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _save_weights(
    dest: pathlib.Path,
    tensors: dict[str, np.ndarray[Any, np.dtype[np.float32]]],
    shards: int,
) -> None:
    metadata = {"format": "pt"}
    if shards == 1:
        save_file(tensors, str(dest / "model.safetensors"), metadata=metadata)
        (dest / "model.safetensors").chmod(0o644)
        return
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for index in range(shards):
        chunk = names[index * per_shard : (index + 1) * per_shard]
        fname = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in chunk}
        save_file(part, str(dest / fname), metadata=metadata)
        (dest / fname).chmod(0o644)
        for name in chunk:
            weight_map[name] = fname
            total += tensors[name].nbytes
    _write_json(
        dest / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )


def make_tiny_model(dest: pathlib.Path, *, seed: int = 0, shards: int = 1) -> pathlib.Path:
    """Write a tiny random-weight LlamaForCausalLM model folder to ``dest``; return it.

    ``shards`` > 1 splits the weights into that many files plus a
    ``model.safetensors.index.json`` (whose ``metadata.total_size`` is the weight bytes).
    Existing files of the same names in ``dest`` are overwritten.
    """
    if shards < 1:
        raise ValueError("shards must be >= 1")
    spec = TinyModelSpec()
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(spec.vocab_size)
    if tokenizer.get_vocab_size() > spec.vocab_size:
        raise RuntimeError("tokenizer vocabulary is larger than the model's")
    tokenizer.save(str(dest / "tokenizer.json"), pretty=True)

    _save_weights(dest, _weights(spec, seed), shards)
    _write_json(dest / "config.json", _config(spec))
    _write_json(
        dest / "generation_config.json",
        {
            "bos_token_id": SPECIAL_TOKENS.index(BOS),
            "eos_token_id": SPECIAL_TOKENS.index(EOS),
            "pad_token_id": SPECIAL_TOKENS.index(PAD),
            "do_sample": False,
        },
    )
    _write_json(dest / "tokenizer_config.json", _tokenizer_config(spec))
    _write_json(
        dest / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD},
    )
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tinymodel", description="Write a tiny random-weight Llama model for vLLM tests."
    )
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--shards", type=int, default=1, help="weight files (default 1)")
    args = parser.parse_args(argv)
    out = make_tiny_model(args.out, seed=args.seed, shards=args.shards)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
