"""Llama (TinyLlama-style): the plain block - no biases, separate projections, interleaved RoPE.

llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` so that its "normal"
(interleaved-pair) RoPE matches the original rotate-half model; we therefore rotate
interleaved pairs ``(2i, 2i+1)`` here. Reference: llama.cpp ``LLM_ARCH_LLAMA``.
"""
from __future__ import annotations

from llama_beta.config import ModelConfig, common_hparams

ARCH = "llama"


def config(gguf) -> ModelConfig:
    hp = common_hparams(gguf, ARCH)
    return ModelConfig(**hp, rope_neox=False, tied_embeddings="output.weight" not in gguf.tensors)


def layer_tensors(cfg: ModelConfig, i: int) -> dict[str, str]:
    p = f"blk.{i}."
    roles = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
             "wo": "attn_output.weight", "ffn_norm": "ffn_norm.weight", "w_gate": "ffn_gate.weight",
             "w_up": "ffn_up.weight", "w_down": "ffn_down.weight"}
    return {role: p + name for role, name in roles.items()}
