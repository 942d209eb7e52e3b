"""Causal grouped-query attention with a KV cache, on the CPU reference.

Run: python examples/05_attention.py

What you see:
1. the attention weights of one query form a probability distribution over the earlier positions;
2. prefilling a prompt in one call gives the same outputs as feeding it one token at a time,
   appending each token's key/value to the cache first (this is why a KV cache works);
3. with GQA several query heads read the same cached key/value head, so the cache is
   nh / nkv times smaller than plain multi-head attention would need.
"""
import numpy as np

from ref.attention import attention, attention_dense, kv_append, softmax

rng = np.random.default_rng(0)
T, nh, nkv, hs, S_max = 6, 14, 2, 64, 32  # Qwen2.5-0.5B head layout, a short prompt
kv_mul = nh // nkv

q = rng.standard_normal((T, nh, hs), dtype=np.float32)  # [T, nh, hs]
k = rng.standard_normal((T, nkv, hs), dtype=np.float32)  # [T, nkv, hs]
v = rng.standard_normal((T, nkv, hs), dtype=np.float32)  # [T, nkv, hs]

# 1. weights of the last query, head 0 (kv head 0): a softmax over positions 0..T-1
scores = k[:, 0] @ q[T - 1, 0] / np.sqrt(hs)  # [T]
w = softmax(scores)
print(f"weights of query {T - 1}, head 0 over positions 0..{T - 1}:", np.round(w, 3), "sum =", w.sum())

# 2. prefill: append all T rows, attend with all T queries at once
k_cache = np.zeros((S_max, nkv, hs), np.float32)  # [S_max, nkv, hs], position-major
v_cache = np.zeros((S_max, nkv, hs), np.float32)
kv_append(k, v, k_cache, v_cache, start_pos=0)
prefill = attention(q, k_cache, v_cache, start_pos=0)  # [T, nh, hs]

# ... versus decode: one token at a time, the cache growing by one row per step
k_cache2 = np.zeros_like(k_cache)
v_cache2 = np.zeros_like(v_cache)
steps = []
for t in range(T):
    kv_append(k[t:t + 1], v[t:t + 1], k_cache2, v_cache2, start_pos=t)
    steps.append(attention(q[t:t + 1], k_cache2, v_cache2, start_pos=t))  # [1, nh, hs]
decode = np.concatenate(steps)  # [T, nh, hs]
print("prefill vs incremental decode: max |diff| =", np.abs(prefill - decode).max())
print("prefill vs dense softmax(QK^T/sqrt(hs) + mask) V: max |diff| =",
      np.abs(prefill - attention_dense(q, k, v, 0)).max())

# 3. the GQA saving: bytes of K and V cache per token per layer
gqa_bytes = 2 * nkv * hs * 4
mha_bytes = 2 * nh * hs * 4
print(f"cache per token per layer: {gqa_bytes} B with nkv={nkv} (kv_mul={kv_mul}), "
      f"{mha_bytes} B if every head had its own K/V ({mha_bytes // gqa_bytes}x more)")
