"""The decode products on the tensor cores (numba_kernels/matmul.py v12) against NumPy.

v12 rounds x' (x, or RMSNorm(x) * nw) to float16 and sums exactly what the reference below sums:
the dequantized weights times the float16 x', in float64. Tolerances, in units of M = sum_k |x'_k W_nk|:
- without the norm both sides round the same float32 x, and the codes (u - z) and the products are
  exact: the kernel's error is its float32 sums, the mma's over a group and the lanes' over the groups
  and the split parts: gamma_(K/32 + 40) (a generous count of float32 additions in a row's sum);
- with the norm the kernel's x' comes from a float32 RMS scale and the reference's from float64: an x'_k
  near a float16 rounding boundary may round to the neighbour, 2^-11 |x'_k w_k| per term; so the bound
  adds 2^-11 M. (A wrong fragment layout is off by the size of the result itself.)
Exact checks: the bias is one float32 addition, and mma=None picks v12 for these types.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ON_GPU, assert_close, requires_cuda
from ref.ggml import GGMLType
from ref.quants import dequantize
from ref.rmsnorm import rmsnorm
from ref.swiglu import swiglu

U = 2.0 ** -24
TYPES = [GGMLType.Q5_0, GGMLType.Q8_0]
EPS = 1e-5
# (tiles, splits) per block; the simulator pays per thread and per mma (two block barriers each)
CONFIGS = [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (4, 1), (2, 4)] if ON_GPU else [(1, 1), (1, 2), (2, 1)]
EXAMPLES = 40 if ON_GPU else 6
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def km():
    from numba_kernels import matmul
    return matmul


def dev(a):
    from numba import cuda
    return None if a is None else cuda.to_device(np.ascontiguousarray(a))


def reference(x, nw, w, gt, K):
    """(y, bound) in float64: y = dequantize(W) . float16(x'); see the module docstring."""
    xn = x if nw is None else rmsnorm(x, nw, EPS)
    xh = xn.astype(np.float16).astype(np.float64)
    W = dequantize(w, gt, (w.shape[0], K)).astype(np.float64)
    terms = np.abs(W) @ np.abs(xh)
    gamma = (K // 32 + 40) * U
    return W @ xh, gamma * terms + (2.0 ** -11 * terms if nw is not None else 0.0)


def assert_within(got, want, bound, name):
    assert_close(np.asarray(got, np.float64) / (bound + 1e-30), want / (bound + 1e-30), atol=1.0, rtol=0.0,
                 name=f"{name} (in units of the bound)")


@requires_cuda
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), gt=st.sampled_from(TYPES), n=st.integers(1, 70 if ON_GPU else 20),
       groups=st.sampled_from([1, 2, 4, 8, 28] if ON_GPU else [1, 2, 4]), cfg=st.sampled_from(CONFIGS),
       norm=st.booleans(), with_bias=st.booleans(), accumulate=st.booleans())
def test_matvec_matches_ref(seed, gt, n, groups, cfg, norm, with_bias, accumulate):
    if groups % cfg[1]:
        cfg = (cfg[0], 1)                                  # the split must divide the groups
    rng = np.random.default_rng(seed)
    K = 32 * groups
    x = (rng.standard_normal(K) * rng.uniform(0.1, 4.0)).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    w = km().random_weight(rng, gt, n, K)
    b = rng.standard_normal(n).astype(np.float32) if with_bias else None
    res = rng.standard_normal(n).astype(np.float32)
    out = dev(res if accumulate else np.zeros(n, np.float32))
    km().launch_decode_mma(dev(x), dev(w), gt, K, out, bias=dev(b), norm_weight=dev(nw), eps=EPS,
                           accumulate=accumulate, config=cfg)
    want, bound = reference(x, nw, w, gt, K)
    got = out.copy_to_host().astype(np.float64)
    if accumulate:
        got = got - res                                    # (one float32 addition: 1u of each side more)
        bound = bound + U * (np.abs(res) + np.abs(want))
    if with_bias:
        got = got - b
        bound = bound + U * (np.abs(b) + np.abs(want))
    assert_within(got, want, bound, f"v12 {gt.name} N={n} K={K} cfg={cfg} norm={norm} bias={with_bias} "
                                    f"acc={accumulate}")


@requires_cuda
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), gtg=st.sampled_from(TYPES), gtu=st.sampled_from(TYPES),
       f=st.integers(1, 40 if ON_GPU else 18), split=st.sampled_from([1, 2]), norm=st.booleans(),
       fused=st.booleans())
def test_swiglu_matches_ref(seed, gtg, gtu, f, split, norm, fused):
    rng = np.random.default_rng(seed)
    K = 64
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    if fused:                                              # Phi-3's gate_up tensor: gate rows, then up rows
        gtu = gtg
        wgu = km().random_weight(rng, gtg, 2 * f, K)
        wg, wu, args = wgu[:f], wgu[f:], (dev(wgu), gtg, dev(wgu), gtg, f)
    else:
        wg, wu = km().random_weight(rng, gtg, f, K), km().random_weight(rng, gtu, f, K)
        args = (dev(wg), gtg, dev(wu), gtu, 0)
    out = dev(np.zeros(f, np.float32))
    km().launch_decode_mma_swiglu(dev(x), *args, K, out, norm_weight=dev(nw), eps=EPS, config=(2, split))
    (g, gb), (u, ub) = reference(x, nw, wg, gtg, K), reference(x, nw, wu, gtu, K)
    want = swiglu(g, u)
    # silu'(g) <= 1.1 and |silu(g)| <= |g| carry the errors of g and u; 8u for expf, the division, the product
    bound = 1.1 * gb * (np.abs(u) + ub) + (np.abs(g) + gb) * ub + 8 * U * np.abs(want)
    assert_within(out.copy_to_host(), want, bound, f"v12 swiglu {gtg.name}/{gtu.name} F={f} split={split} "
                                                   f"norm={norm} fused={fused}")


@requires_cuda
@pytest.mark.parametrize("default_on", [False, True])
def test_public_functions_follow_the_default_and_bias_is_one_addition(monkeypatch, default_on):
    """decode_matvec(mma=None) is v12 bit for bit when LLAMA_BETA_DECODE_MMA is on (DECODE_MMA), the float32
    kernels bit for bit when off; the bias is one float32 addition; mma=True refuses a type v12 cannot read."""
    monkeypatch.setattr(km(), "DECODE_MMA", default_on)
    gt = GGMLType.Q5_0
    rng = np.random.default_rng(4)
    K, n = 64, 19
    x, nw = rng.standard_normal(K).astype(np.float32), rng.uniform(0.5, 1.5, K).astype(np.float32)
    w, b = km().random_weight(rng, gt, n, K), rng.standard_normal(n).astype(np.float32)
    outs = [dev(np.zeros((1, n), np.float32)) for _ in range(4)]
    for o, mma in zip(outs, (None, True, False)):
        km().decode_matvec(dev(x), dev(w), gt, K, o, norm_weight=dev(nw), eps=EPS, mma=mma)
    km().decode_matvec(dev(x), dev(w), gt, K, outs[3], bias=dev(b), norm_weight=dev(nw), eps=EPS, mma=True)
    default, v12, plain, biased = (o.copy_to_host()[0] for o in outs)
    np.testing.assert_array_equal(default, v12 if default_on else plain)
    np.testing.assert_array_equal(biased, (v12 + b).astype(np.float32))
    want, bound = reference(x, nw, w, gt, K)
    assert_within(v12, want, bound, "public v12")
    with pytest.raises(ValueError, match="v12"):
        km().decode_matvec(dev(x), dev(km().random_weight(rng, GGMLType.Q4_K, 2, 256)), GGMLType.Q4_K, 256,
                           dev(np.zeros(2, np.float32)), mma=True)
