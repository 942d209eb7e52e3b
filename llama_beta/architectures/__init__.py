"""One small adapter per architecture: GGUF metadata and tensor names -> the shared forward pass.

An adapter module defines
- ``ARCH``: the ``general.architecture`` string it handles;
- ``config(gguf) -> ModelConfig``: hyperparameters from metadata;
- ``extra_tensors(cfg) -> {name: (shape, allowed types)}`` (optional): tensors beyond the standard ones;
- ``layer_tensors(cfg, i) -> {role: name}``: the tensors of block ``i`` under the roles the
  forward pass knows (``attn_norm``, ``wq``/``wk``/``wv`` or ``wqkv``, ``bq``/``bk``/``bv``, ``wo``,
  ``ffn_norm``, ``w_gate``/``w_up`` or ``w_gate_up``, ``w_down``).

Adding an architecture is one file here plus a line in ``_ADAPTERS`` (and a test).
"""
from __future__ import annotations

import importlib

from llama_beta.config import MATRIX_TYPES, VECTOR_TYPES, ModelConfig

_ADAPTERS = {"qwen2": "qwen2", "phi3": "phi3", "llama": "llama"}


def supported() -> list[str]:
    return sorted(_ADAPTERS)


def get(arch: str):
    module = _ADAPTERS.get(arch)
    return importlib.import_module(f"llama_beta.architectures.{module}") if module else None


def global_tensors(cfg: ModelConfig) -> dict:
    """Embedding, final norm and (unless tied to the embedding) the output matrix."""
    C, V = cfg.dim, cfg.vocab_size
    out = {"token_embd.weight": ((V, C), MATRIX_TYPES), "output_norm.weight": ((C,), VECTOR_TYPES)}
    if not cfg.tied_embeddings:
        out["output.weight"] = ((V, C), MATRIX_TYPES)
    return out


def role_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The expected numpy-order shape of every per-block role (rows = outputs of a projection)."""
    C, F = cfg.dim, cfg.ffn_dim
    q_rows, kv_rows = cfg.n_heads * cfg.head_size, cfg.n_kv_heads * cfg.head_size
    return {"attn_norm": (C,), "ffn_norm": (C,),
            "wq": (q_rows, C), "wk": (kv_rows, C), "wv": (kv_rows, C), "wqkv": (q_rows + 2 * kv_rows, C),
            "bq": (q_rows,), "bk": (kv_rows,), "bv": (kv_rows,), "wo": (C, q_rows),
            "w_gate": (F, C), "w_up": (F, C), "w_gate_up": (2 * F, C), "w_down": (C, F)}


def expected_tensors(cfg: ModelConfig, adapter) -> dict:
    """Every tensor the forward pass will read, with its shape and allowed types."""
    out = global_tensors(cfg)
    shapes = role_shapes(cfg)
    for i in range(cfg.n_layers):
        for role, name in adapter.layer_tensors(cfg, i).items():
            shape = shapes[role]
            out[name] = (shape, VECTOR_TYPES if len(shape) == 1 else MATRIX_TYPES)
    if hasattr(adapter, "extra_tensors"):
        out.update(adapter.extra_tensors(cfg))
    return out
