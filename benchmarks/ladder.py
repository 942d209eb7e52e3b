"""Rungs of a "ladder" for the fused decode products: the same kernels (launch configuration, x' staging and
the norm, row warm-up, loop, warp reductions, epilogue) with the per-octet work of the dot product replaced,
so that timing each rung says where a launch's time goes.

- ``skeleton``: the octets do nothing and load nothing (the compiler drops the loop's loads): the fixed cost of
  a launch - its place in the graph, staging x', the warm-up loads, the reductions and stores;
- ``loads``: the octets load the same weight words the real ones do and xor them, and the unit's scales are
  still loaded and decoded by the real ``prep``: the memory side of the loop without the quants' decode, x'
  and the FMAs;
- ``full``: the real kernels (nothing replaced).

Used by ``profile_decode.py --ladder RUNG``; the ninth session's question: 10% fewer instructions in the loop
bought 1% (docs/benchmarks.md), so are the products waiting on memory, on their fixed cost, or on the loop?
``install`` must run before the first kernel is built, and with the disk cache off (``LLAMA_BETA_JIT_CACHE=0``):
the rungs change device functions that the cache's key does not see.
"""
from __future__ import annotations

from numba import cuda, float32, uint32

from numba_kernels import matmul
from numba_kernels.runtime import JIT_CACHE
from ref.ggml import GGMLType

RUNGS = ("skeleton", "loads", "full")


@cuda.jit(device=True, inline=True)
def _bits_to_float(t):
    """A finite float in [1, 2) from any 32 bits, so the sums stay finite (and the loads stay live)."""
    return matmul._as_float((t & 0x007FFFFF) | 0x3F800000)


@cuda.jit(device=True, inline=True)
def _keep_scales(a, b):
    """0, but computed from the unit's scales, so their loads in ``prep`` stay (IEEE: x * 0 is not folded)."""
    return (a + b) * float32(0.0)


@cuda.jit(device=True, inline=True)
def _oct_skeleton(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    return float32(0.0)


@cuda.jit(device=True, inline=True)
def _oct_loads_w32(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    """Q4_K: the two uint32 words of quants of octet o (what ``_oct_q4_k`` reads)."""
    return _bits_to_float(w32[h + uint32(2 * o)] ^ w32[h + uint32(2 * o + 1)]) + _keep_scales(a, b)


@cuda.jit(device=True, inline=True)
def _oct_loads_q5_k(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    """Q5_K: the quant words and the 5th-bit words (``_oct_q5_k``)."""
    return _bits_to_float(w32[h + uint32(2 * o)] ^ w32[h + uint32(2 * o + 1)]
                          ^ w32[h2 + uint32(2 * o)] ^ w32[h2 + uint32(2 * o + 1)]) + _keep_scales(a, b)


@cuda.jit(device=True, inline=True)
def _four_words(w16, h):
    """The uint16 words h .. h + 3 as 32 bits (xor of the two halves)."""
    return (int(w16[h]) ^ (int(w16[h + uint32(1)]) << 16)) ^ (int(w16[h + uint32(2)]) ^ (int(w16[h + uint32(3)]) << 16))


@cuda.jit(device=True, inline=True)
def _oct_loads_w16(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    """Q8_0: the four uint16 words of octet o, from h + 4 o (``_oct_q8_0``)."""
    return _bits_to_float(_four_words(w16, h + uint32(4 * o))) + _keep_scales(a, b)


@cuda.jit(device=True, inline=True)
def _oct_loads_q4_0(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    """Q4_0/Q5_0: octets 0, 2 read the words h .. h + 3 and octets 1, 3 the next four (``_oct_q4_0``: the
    high octets take the other nibbles of the same bytes)."""
    return _bits_to_float(_four_words(w16, h + uint32(4 * (o & 1))) ^ e) + _keep_scales(a, b)   # e: Q5_0's qh


@cuda.jit(device=True, inline=True)
def _oct_loads_q6_k(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    """Q6_K: four uint16 words of low bits from h + 4 o and four of high bits from h2 + 4 o (``_oct_q6_k``)."""
    return (_bits_to_float(_four_words(w16, h + uint32(4 * o)) ^ _four_words(w16, h2 + uint32(4 * o)))
            + _keep_scales(a, b))


LOADS = {GGMLType.Q4_K: _oct_loads_w32, GGMLType.Q5_K: _oct_loads_q5_k, GGMLType.Q6_K: _oct_loads_q6_k,
         GGMLType.Q8_0: _oct_loads_w16, GGMLType.Q4_0: _oct_loads_q4_0, GGMLType.Q5_0: _oct_loads_q4_0}


def install(rung: str) -> None:
    """Replace the octet of every quantized type in ``matmul.DOT_PARTS`` (F16/F32 stay) and forget the kernels
    built so far, so the next launches compile with the rung's octets."""
    if rung not in RUNGS:
        raise ValueError(f"ladder rung '{rung}': expected one of {', '.join(RUNGS)}")
    if rung == "full":
        return
    if JIT_CACHE:
        raise SystemExit("the ladder needs LLAMA_BETA_JIT_CACHE=0 (its device functions are not in the cache key)")
    for t, octet in LOADS.items():
        qsh, bb, prep, _, fin = matmul.DOT_PARTS[t]
        matmul.DOT_PARTS[t] = (qsh, bb, prep, _oct_skeleton if rung == "skeleton" else octet, fin)
    matmul.forget_decode_kernels()
