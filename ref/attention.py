"""Causal grouped-query attention over a KV cache: the NumPy reference.

What it does. Each query vector at position $p$ is compared with the keys of
every earlier position (and its own), the scores become weights through a
softmax, and the output is the weighted average of the values:

$$
\\mathrm{out}_{t,h} = \\sum_{s=0}^{p_t} w_{t,h,s}\\, v_{s,g(h)},
\\qquad
w_{t,h,s} = \\frac{e^{a_{t,h,s} - m_{t,h}}}{\\sum_{s'=0}^{p_t} e^{a_{t,h,s'} - m_{t,h}}},
\\qquad
a_{t,h,s} = \\frac{q_{t,h} \\cdot k_{s,g(h)}}{\\sqrt{hs}},
$$

where $p_t = \\mathrm{start\\_pos} + t$ is the position of query $t$,
$m_{t,h} = \\max_s a_{t,h,s}$ (subtracting it changes nothing mathematically and
keeps $e^x \\le 1$), and $g(h) = \\lfloor h / (nh / nkv) \\rfloor$ maps a query head
to the key/value head it shares with ``kv_mul = nh // nkv`` other query heads
(grouped-query attention; ``nkv == nh`` is ordinary multi-head attention).

The KV cache of one layer is two float32 arrays ``[S_max, nkv, hs]``, position-major:
row ``s`` holds the keys (values) of position ``s`` for every kv head. A forward pass
over ``T`` new tokens first appends their keys and values with :func:`kv_append`,
then attends with :func:`attention`.

Two formulations are given, and the tests check they agree:
- :func:`attention` walks the queries one at a time, like llama2.c's ``forward()``:
  query ``t`` sees cache rows ``0 .. start_pos + t``.
- :func:`attention_dense` builds the whole masked score matrix at once,
  $\\mathrm{softmax}(QK^T/\\sqrt{hs} + M)V$ with $M_{ts} = -\\infty$ for $s > p_t$.

What it leaves out: RoPE (applied to q and k before they arrive here, see
``ref/rope.py``), dropout, attention sinks, sliding windows, ALiBi, soft-capping,
quantized caches.

References: Vaswani et al. 2017, "Attention Is All You Need" (scaled dot-product
attention); Ainslie et al. 2023, "GQA"; llama2.c ``forward()`` (per-head loop over
the cache); transformers ``eager_attention_forward`` with ``repeat_kv``;
llama.cpp ``llm_graph_context::build_attn_mha``.
"""
from __future__ import annotations

import numpy as np


def kv_append(k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start_pos: int) -> None:
    """Write the keys/values of ``T`` new tokens into cache rows ``start_pos .. start_pos+T-1`` (in place).

    A float16 cache (``kv_type="f16"``) stores each value rounded to the nearest float16, ties to even
    (NumPy's cast, the same as the kernels' ``cvt.rn.f16.f32``): a relative error of at most 2^-11 per value
    while |value| >= 2^-14; past 65504 it would become inf."""
    T = k.shape[0]  # k, v: [T, nkv, hs]; caches: [S_max, nkv, hs]
    if start_pos < 0 or start_pos + T > k_cache.shape[0]:
        raise ValueError(f"kv_append: rows {start_pos}..{start_pos + T - 1} do not fit a cache of {k_cache.shape[0]} rows")
    k_cache[start_pos:start_pos + T] = k
    v_cache[start_pos:start_pos + T] = v


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax in float32 with the row maximum subtracted first (so no exp overflows)."""
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, start_pos: int) -> np.ndarray:
    """Causal GQA attention of ``T`` queries at positions ``start_pos .. start_pos+T-1``.

    q: [T, nh, hs]; k_cache, v_cache: [S, nkv, hs] holding at least ``start_pos + T`` rows.
    Returns [T, nh, hs] float32.
    """
    T, nh, hs = q.shape
    nkv = k_cache.shape[1]
    kv_mul = nh // nkv  # query heads per kv head; kv_head = h // kv_mul
    scale = np.float32(1.0 / np.sqrt(hs))
    out = np.empty((T, nh, hs), dtype=np.float32)
    keys = k_cache[:start_pos + T].astype(np.float32, copy=False)  # [start_pos + T, nkv, hs]; a float16
    values = v_cache[:start_pos + T].astype(np.float32, copy=False)  # cache widens exactly, once per call
    for t in range(T):
        n = start_pos + t + 1  # query t sees cache rows 0 .. start_pos + t
        qt = q[t].reshape(nkv, kv_mul, hs)  # [nh, hs] -> [nkv, kv_mul, hs]: heads grouped by kv head
        k = keys[:n]  # [n, nkv, hs]
        v = values[:n]  # [n, nkv, hs]
        scores = np.einsum("gmd,ngd->gmn", qt, k) * scale  # [nkv, kv_mul, n]
        w = softmax(scores, axis=-1)  # [nkv, kv_mul, n], rows sum to 1
        out[t] = np.einsum("gmn,ngd->gmd", w, v).reshape(nh, hs)  # [nkv, kv_mul, hs] -> [nh, hs]
    return out


def attention_dense(q: np.ndarray, k: np.ndarray, v: np.ndarray, start_pos: int) -> np.ndarray:
    """The same function as one masked matrix product: softmax(Q K^T / sqrt(hs) + M) V.

    q: [T, nh, hs]; k, v: [S, nkv, hs] with S >= start_pos + T (only the first
    start_pos + T rows are read). Returns [T, nh, hs] float32.
    """
    T, nh, hs = q.shape
    S = start_pos + T  # keys the last query can see
    k, v = k[:S], v[:S]  # [S, nkv, hs]
    nkv = k.shape[1]
    kv_mul = nh // nkv
    k_rep = np.repeat(k, kv_mul, axis=1)  # [S, nkv, hs] -> [S, nh, hs]: head h reads kv head h // kv_mul
    v_rep = np.repeat(v, kv_mul, axis=1)  # [S, nh, hs]
    scores = np.einsum("thd,shd->hts", q, k_rep) / np.float32(np.sqrt(hs))  # [nh, T, S]
    pos = start_pos + np.arange(T)[:, None]  # [T, 1] position of each query
    mask = np.where(np.arange(S)[None, :] <= pos, 0.0, -np.inf).astype(np.float32)  # [T, S]
    w = softmax(scores + mask, axis=-1)  # [nh, T, S]
    return np.einsum("hts,shd->thd", w, v_rep).astype(np.float32)  # [T, nh, hs]
