"""Phi-3 (and Phi-3.5 / Phi-4-mini, which llama.cpp also runs as ``phi3``): fused projections, LongRoPE.

What changes relative to Qwen2 (the forward pass itself is the same):

- ``attn_qkv`` holds q, k and v stacked along the output rows, ``[nh*hs + 2*nkv*hs, C]``;
  ``map_weights`` splits it by rows into three matrices at load (zero-copy row views).
- ``ffn_up`` holds gate and up stacked, ``[2F, C]``, **gate first** (llama.cpp ``LLM_FFN_SWIGLU``
  on the fused tensor; transformers ``Phi3MLP``: ``gate, up = gate_up_proj(x).chunk(2)``).
- No biases anywhere. NEOX ("rotate half") RoPE over ``phi3.rope.dimension_count`` dimensions,
  which may be fewer than the head size (Phi-4-mini rotates 96 of 128).
- LongRoPE (128k variants): per-pair frequency divisors ``rope_factors_long.weight`` and
  ``rope_factors_short.weight`` ([rope_dims/2]) and ``phi3.rope.scaling.attn_factor``, which
  multiplies cos and sin. Like llama.cpp we pick the long factors when the context we run
  with exceeds ``phi3.rope.scaling.original_context_length`` (transformers decides per call by
  the sequence length; the two agree whenever a sequence stays on one side of that length).
- ``output.weight`` absent: the output projection is the embedding (tied), as in Phi-4-mini.
- ``phi3.attention.sliding_window`` (Phi-3-mini-4k: 2047) is read into ``extra`` but not
  applied: attention is fully causal, as in llama.cpp, which disables Phi-3's sliding window.
  Only sequences longer than the window differ from transformers' windowed mask.

Older conversions store q/k/v and gate/up separately; both layouts load.
Tokenizer: SentencePiece (``tokenizer.ggml.model = llama``) with BOS added; the chat template
wraps turns in ``<|user|>``/``<|assistant|>`` and ``<|end|>``, and ``<|end|>`` and ``<|endoftext|>``
end generation (``ref/tokenizer.py`` finds them by text, as llama.cpp does).

References: transformers ``Phi3ForCausalLM`` / ``_compute_longrope_parameters``; llama.cpp
``LLM_ARCH_PHI3`` (``llm_build_phi3``, ``get_rope_factors``) and ``Phi3MiniModel`` in convert_hf_to_gguf.py.
"""
from __future__ import annotations

from llama_beta.config import VECTOR_TYPES, MetadataView, ModelConfig, common_hparams

ARCH = "phi3"
ROPE_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")


def config(gguf) -> ModelConfig:
    hp = common_hparams(gguf, ARCH)
    mv = MetadataView(gguf, ARCH)
    attn_factor = mv.float("rope.scaling.attn_factor", 1.0, lo=1e-3, hi=1e3)
    window = mv.int("attention.sliding_window", 0, lo=0)
    return ModelConfig(**hp, rope_neox=True, attn_factor=attn_factor,
                       tied_embeddings="output.weight" not in gguf.tensors,
                       fused_qkv="blk.0.attn_qkv.weight" in gguf.tensors,
                       fused_gate_up="blk.0.ffn_gate.weight" not in gguf.tensors,
                       extra={"rope_factors": [n for n in ROPE_FACTORS if n in gguf.tensors],
                              "sliding_window": window})


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
