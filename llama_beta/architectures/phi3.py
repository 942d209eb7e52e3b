"""Phi-3: fused projections and (for long-context variants) LongRoPE.

What changes relative to Qwen2: ``attn_qkv`` holds q, k and v stacked along the output
rows (split after the product), ``ffn_up`` holds gate and up stacked (gate first, as in
llama.cpp and transformers' ``Phi3MLP``), no biases, and RoPE may carry per-frequency
factors (``rope_factors_long/short.weight``) plus an attention factor
(``phi3.rope.scaling.attn_factor``). Older conversions store q/k/v separately; both load.
Reference: transformers ``Phi3ForCausalLM``; llama.cpp ``LLM_ARCH_PHI3``.
"""
from __future__ import annotations

from llama_beta.config import VECTOR_TYPES, MetadataView, ModelConfig, common_hparams

ARCH = "phi3"


def config(gguf) -> ModelConfig:
    hp = common_hparams(gguf, ARCH)
    mv = MetadataView(gguf, ARCH)
    attn_factor = mv.float("rope.scaling.attn_factor", 1.0, lo=1e-3, hi=1e3)
    return ModelConfig(**hp, rope_neox=True, attn_factor=attn_factor,
                       tied_embeddings="output.weight" not in gguf.tensors,
                       fused_qkv="blk.0.attn_qkv.weight" in gguf.tensors,
                       fused_gate_up="blk.0.ffn_gate.weight" not in gguf.tensors,
                       extra={"rope_factors": [n for n in ("rope_factors_long.weight", "rope_factors_short.weight")
                                               if n in gguf.tensors]})


def layer_tensors(cfg: ModelConfig, i: int) -> dict[str, str]:
    p = f"blk.{i}."
    roles = {"attn_norm": "attn_norm.weight", "wo": "attn_output.weight", "ffn_norm": "ffn_norm.weight",
             "w_down": "ffn_down.weight"}
    roles.update({"wqkv": "attn_qkv.weight"} if cfg.fused_qkv else
                 {"wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight"})
    roles.update({"w_gate_up": "ffn_up.weight"} if cfg.fused_gate_up else
                 {"w_gate": "ffn_gate.weight", "w_up": "ffn_up.weight"})
    return {role: p + name for role, name in roles.items()}


def extra_tensors(cfg: ModelConfig) -> dict:
    """LongRoPE per-frequency factors, one per rotated pair, when the file has them."""
    return {name: ((cfg.rope_dims // 2,), VECTOR_TYPES) for name in cfg.extra.get("rope_factors", [])}
