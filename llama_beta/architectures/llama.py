"""Llama (TinyLlama-style, Llama 2/3): the plain block - no biases, separate projections, interleaved RoPE.

llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` so that its "normal"
(interleaved-pair) RoPE matches the original rotate-half model; we therefore rotate
interleaved pairs ``(2i, 2i+1)`` here (transformers' GGUF loader undoes the permutation
instead and rotates halves: the same model, ``tests/test_llama_arch.py``).

Llama 3.1-style RoPE scaling is stored by the converter as ready-made per-pair frequency
divisors ``rope_freqs.weight`` [rope_dims/2]; like llama.cpp we apply them at every position
when present (through the same ``freq_factors`` as Phi-3's LongRoPE).
Reference: llama.cpp ``LLM_ARCH_LLAMA``.
"""
from __future__ import annotations

from llama_beta.config import VECTOR_TYPES, ModelConfig, common_hparams

ARCH = "llama"
ROPE_FREQS = "rope_freqs.weight"


def config(gguf) -> ModelConfig:
    hp = common_hparams(gguf, ARCH)
    return ModelConfig(**hp, rope_neox=False, tied_embeddings="output.weight" not in gguf.tensors,
                       extra={"rope_factors": [ROPE_FREQS] if ROPE_FREQS in gguf.tensors else []})


def layer_tensors(cfg: ModelConfig, i: int) -> dict[str, str]:
    p = f"blk.{i}."
    roles = {"attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
             "wo": "attn_output.weight", "ffn_norm": "ffn_norm.weight", "w_gate": "ffn_gate.weight",
             "w_up": "ffn_up.weight", "w_down": "ffn_down.weight"}
    return {role: p + name for role, name in roles.items()}


def extra_tensors(cfg: ModelConfig) -> dict:
    """Llama 3.1 frequency divisors, one per rotated pair, when the file has them."""
    return {name: ((cfg.rope_dims // 2,), VECTOR_TYPES) for name in cfg.extra.get("rope_factors", [])}
