"""Qwen2 / Qwen2.5: llama-style blocks with biases on the q, k and v projections, NEOX RoPE.

Differences from llama that matter here: ``attn_q/k/v`` carry a bias, RoPE rotates halves
(pairs ``(i, i + hs/2)``), and small models tie ``output.weight`` to the embedding.
Reference: transformers ``Qwen2ForCausalLM``; llama.cpp ``LLM_ARCH_QWEN2``.
"""
from __future__ import annotations

from llama_beta.architectures import llama
from llama_beta.config import ModelConfig, common_hparams

ARCH = "qwen2"


def config(gguf) -> ModelConfig:
    hp = common_hparams(gguf, ARCH)
    return ModelConfig(**hp, rope_neox=True, qkv_bias=True,
                       tied_embeddings="output.weight" not in gguf.tensors)


def layer_tensors(cfg: ModelConfig, i: int) -> dict[str, str]:
    """Llama's block plus the q/k/v biases."""
    p = f"blk.{i}."
    return {**llama.layer_tensors(cfg, i), "bq": p + "attn_q.bias", "bk": p + "attn_k.bias", "bv": p + "attn_v.bias"}
