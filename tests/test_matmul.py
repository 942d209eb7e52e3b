"""Matrix products over quantized weights: ref/matmul.py and numba_kernels/matmul.py.

Tolerances. A float32 sum of K products has a rounding error of at most
gamma_K * sum_k |x_k W_k| with gamma_K ~ K * 2^-24 (Higham, ch. 4), whatever the order;
the reference (BLAS order) and the kernels (per-lane sums, then a shuffle tree) each
carry such an error, so they may differ by twice that. The bound is relative to the
magnitude of the *terms*, not of the result (terms cancel), hence ``assert_close_terms``
below. It is loose in practice (errors are ~sqrt(K) * 2^-24 * magnitude) yet far below
what a wrong weight produces (about magnitude / K, e.g. 2e-3 vs 6e-5 at K = 512).
Exact checks (no tolerance) where the arithmetic is exact: adding the bias, and scaling
x by a power of two.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from numba import cuda   # (a module global: the simulator swaps it inside the kernels defined here)
from hypothesis import strategies as st

from conftest import ON_GPU, assert_close, requires_cuda
from ref.ggml import BLOCK_SIZES, GGMLType, row_bytes
from ref.matmul import matmul as ref_matmul, term_magnitude
from ref.quants import dequantize

U = 2.0 ** -24  # unit roundoff of float32
KERNEL_TYPES = [GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q5_K,
                GGMLType.Q6_K, GGMLType.F16, GGMLType.F32]
MAX_N = 300 if ON_GPU else 70
MAX_T = 100 if ON_GPU else 6
MAX_BLOCKS_K = 24 if ON_GPU else 4   # blocks per row (of 32 or 256 weights)
EXAMPLES = 60 if ON_GPU else 20


def compose_decorators(*decorators):
    """One decorator applying ``decorators`` (the first outermost)."""
    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


def random_weight(rng, ggml_type, N, K):
    """Random valid raw blocks [N, row_bytes]: random bytes with finite float16 scales."""
    from numba_kernels.matmul import random_weight as rw
    return rw(rng, ggml_type, N, K)


def assert_close_terms(actual, expected, magnitude, K, name):
    """|actual - expected| <= (2 gamma_K + 8u) * magnitude, magnitude = sum_k |x_k W_k| (+ |bias|).

    2 gamma_K: two float32 sums of K terms in different orders; 8u: the bias add and the
    fused multiply-adds the GPU may use when decoding K-quant weights ((d sc) q - dmin m).
    Both sides are divided by the magnitude so the one helper (conftest.assert_close) applies.
    """
    gamma = K * U / (1 - K * U)
    scale = np.asarray(magnitude, dtype=np.float64) + 1e-30
    assert_close(np.asarray(actual, np.float64) / scale, np.asarray(expected, np.float64) / scale,
                 atol=2 * gamma + 8 * U, rtol=0.0, name=f"{name} (in units of sum|x w|)")


def problem(draw_seed, ggml_type, N, n_blocks, T, with_bias):
    rng = np.random.default_rng(draw_seed)
    K = n_blocks * max(BLOCK_SIZES[ggml_type][0], 8)   # F16/F32: 8-element groups
    w = random_weight(rng, ggml_type, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    return x, w, K, bias


cases = st.tuples(st.integers(0, 2 ** 32 - 1), st.sampled_from(KERNEL_TYPES), st.integers(1, MAX_N),
                  st.integers(1, MAX_BLOCKS_K), st.booleans())


# --- the reference ----------------------------------------------------------------------------
@settings(deadline=None, max_examples=30)
@given(cases, st.integers(1, MAX_T))
def test_ref_is_dequantize_then_matmul(case, T):
    seed, gt, N, nb, with_bias = case
    x, w, K, bias = problem(seed, gt, N, nb, T, with_bias)
    W = dequantize(w, gt, (N, K)).astype(np.float64)
    exact = x.astype(np.float64) @ W.T + (0 if bias is None else bias)
    got = ref_matmul(x, w, gt, K, bias)
    assert got.dtype == np.float32 and got.shape == (T, N)
    mag = term_magnitude(x, w, gt, K) + (0 if bias is None else np.abs(bias))
    # one float32 matrix product against float64: half of the kernel-vs-ref bound suffices
    assert_close_terms(got, exact, mag / 2, K, f"ref {gt.name}")


def test_ref_vector_input_is_one_token():
    rng = np.random.default_rng(1)
    w = random_weight(rng, GGMLType.Q8_0, 5, 64)
    x = rng.standard_normal(64).astype(np.float32)
    assert ref_matmul(x, w, GGMLType.Q8_0, 64).shape == (5,)
    np.testing.assert_array_equal(ref_matmul(x, w, GGMLType.Q8_0, 64), ref_matmul(x[None], w, GGMLType.Q8_0, 64)[0])


def test_ref_rejects_bad_weight():
    w = np.zeros((3, row_bytes(GGMLType.Q8_0, 64)), np.uint8)
    with pytest.raises(ValueError, match="Q8_0"):
        ref_matmul(np.zeros((1, 96), np.float32), w, GGMLType.Q8_0, 96)   # row bytes for K=96
    with pytest.raises(ValueError, match="whole number"):
        ref_matmul(np.zeros((1, 40), np.float32), w, GGMLType.Q8_0, 40)


# --- the kernels ------------------------------------------------------------------------------
def _kernels():
    from numba_kernels import matmul as km
    return km


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(cases)
def test_matvec_matches_ref(case):
    km = _kernels()
    seed, gt, N, nb, with_bias = case
    x, w, K, bias = problem(seed, gt, N, nb, 1, with_bias)
    want = ref_matmul(x, w, gt, K, bias)
    mag = term_magnitude(x, w, gt, K) + (0 if bias is None else np.abs(bias))
    got = km.matvec(x[0], w, gt, K, bias)                 # [K] -> [N]
    assert got.shape == (N,)
    assert_close_terms(got, want[0], mag[0], K, f"matvec {gt.name} N={N} K={K}")
    from numba import cuda
    v2 = cuda.device_array(N, np.float32)                 # matvec picks v1 for small N: test v2 too
    b_d = None if bias is None else cuda.to_device(bias)
    km.launch_matvec_v2(cuda.to_device(x[0]), cuda.to_device(w), gt, K, b_d, v2)
    assert_close_terms(v2.copy_to_host(), want[0], mag[0], K, f"matvec_v2 {gt.name} N={N} K={K}")


@requires_cuda
@settings(deadline=None, max_examples=max(EXAMPLES // 2, 6), suppress_health_check=[HealthCheck.too_slow])
@given(cases, st.integers(1, MAX_T))
def test_matmul_matches_ref(case, T):
    km = _kernels()
    seed, gt, N, nb, with_bias = case
    x, w, K, bias = problem(seed, gt, N, nb, T, with_bias)
    want = ref_matmul(x, w, gt, K, bias)
    mag = term_magnitude(x, w, gt, K) + (0 if bias is None else np.abs(bias))
    got = km.matmul(x, w, gt, K, bias)
    assert got.shape == (T, N)
    assert_close_terms(got, want, mag, K, f"matmul {gt.name} T={T} N={N} K={K}")


@requires_cuda
@pytest.mark.parametrize("gt", [GGMLType.Q8_0, GGMLType.Q6_K])
def test_both_matvec_versions_and_one_token_matmul_agree(gt):
    km = _kernels()
    from numba import cuda
    x, w, K, _ = problem(7, gt, 37, 2, 1, False)
    mag = term_magnitude(x, w, gt, K)[0]
    x_d, w_d = cuda.to_device(x[0]), cuda.to_device(w)
    outs = []
    for launch in (km.launch_matvec_v1, km.launch_matvec_v2):
        o = cuda.device_array(37, np.float32)
        launch(x_d, w_d, gt, K, None, o)
        outs.append(o.copy_to_host())
    # v1 and v2 decode and sum in the same order; only where x comes from differs
    np.testing.assert_array_equal(outs[0], outs[1])
    # T=1 prefill == decode, up to summation order (tiles of 32 vs per-lane + shuffle tree)
    assert_close_terms(km.matmul(x, w, gt, K)[0], outs[0], mag, K, "matmul T=1 vs matvec")
    assert km.matvec(x, w, gt, K).shape == (1, 37)            # [1, K] -> [1, N]


@requires_cuda
def test_bias_is_added_exactly_and_scaling_is_exact():
    km = _kernels()
    gt = GGMLType.Q5_0
    x, w, K, bias = problem(3, gt, 20, 3, 2, True)
    plain = km.matvec(x[0], w, gt, K)
    # the same sum plus one float32 rounding of the addition
    np.testing.assert_array_equal(km.matvec(x[0], w, gt, K, bias), (plain + bias).astype(np.float32))
    # scaling x by 2^-3 scales every product and partial sum exactly (no overflow/underflow here)
    np.testing.assert_array_equal(km.matvec(x[0] * np.float32(0.125), w, gt, K), plain * np.float32(0.125))
    mm = km.matmul(x, w, gt, K)
    np.testing.assert_array_equal(km.matmul(x, w, gt, K, bias), (mm + bias).astype(np.float32))


@requires_cuda
def test_device_arrays_and_out_stay_on_device():
    km = _kernels()
    from numba import cuda
    gt = GGMLType.Q8_0
    x, w, K, bias = problem(5, gt, 9, 2, 3, True)
    w_d, b_d = cuda.to_device(w), cuda.to_device(bias)
    out = cuda.device_array((1, 9), np.float32)
    assert km.matvec(cuda.to_device(x[:1]), w_d, gt, K, b_d, out=out) is out
    cuda.synchronize()
    np.testing.assert_array_equal(out.copy_to_host()[0], km.matvec(x[0], w, gt, K, bias))
    y = km.matmul(cuda.to_device(x), w_d, gt, K, b_d)
    assert _is_device(y) and y.shape == (3, 9)


def _is_device(a):
    return hasattr(a, "copy_to_host")


@requires_cuda
def test_unsupported_type_and_bad_shapes_raise():
    km = _kernels()
    w = np.zeros((4, row_bytes(GGMLType.Q2_K, 256)), np.uint8)
    with pytest.raises(ValueError, match="Q2_K is not supported"):
        km.matvec(np.zeros(256, np.float32), w, GGMLType.Q2_K, 256)
    w = np.zeros((4, row_bytes(GGMLType.Q8_0, 64)), np.uint8)
    with pytest.raises(ValueError, match=r"\[K\] or \[1, K\]"):
        km.matvec(np.zeros((2, 64), np.float32), w, GGMLType.Q8_0, 64)
    with pytest.raises(ValueError, match="uint8"):
        km.matmul(np.zeros((2, 32), np.float32), w, GGMLType.Q8_0, 32)


# --- decode8: the weights every product decodes ------------------------------------------------
def _decode_kernel(gt):
    km = _kernels()
    dec = km.DECODERS[gt]

    @cuda.jit
    def decode_all(wa, wb, K, out):
        # thread per octet: out[n, 8 o : 8 o + 8] = decode8 of row n, weights 8 o ..
        i = cuda.grid(1)
        if i < out.shape[0] * (K // 8):
            n, o = i // (K // 8), i % (K // 8)
            w = cuda.local.array(8, np.float32)
            dec(wa, wb, n, 8 * o, w, 0)
            for j in range(8):
                out[n, 8 * o + j] = w[j]
    return decode_all


@requires_cuda
@pytest.mark.parametrize("gt", KERNEL_TYPES, ids=[t.name for t in KERNEL_TYPES])
def test_decode8_gives_the_reference_weights(gt):
    """Every octet the products decode equals ``ref.quants.dequantize``: bit for bit for the types whose decode is one
    product (or none), within one rounding for Q4_K/Q5_K (d sc q - dmin m: on the GPU the product and the difference
    may be fused into one FMA, which skips the product's rounding; |error| <= u (|d sc q| + |dmin m|))."""
    from numba import cuda
    km = _kernels()
    rng = np.random.default_rng(int(gt))
    N, K = 3, 2 * max(BLOCK_SIZES[gt][0], 32)
    w = random_weight(rng, gt, N, K)
    out = cuda.device_array((N, K), np.float32)
    wa, wb = km._views(cuda.to_device(w), gt)
    _decode_kernel(gt)[-(-N * K // 8 // 64), 64](wa, wb, K, out)
    got, want = out.copy_to_host(), dequantize(w, gt, (N, K)).astype(np.float32)
    if gt in (GGMLType.Q4_K, GGMLType.Q5_K):
        np.testing.assert_allclose(got, want, rtol=0, atol=float(2 * U * np.abs(want).max() + 1e-30) * 4)
    else:
        np.testing.assert_array_equal(got, want)


# --- a real tensor ----------------------------------------------------------------------------
@requires_cuda
def test_real_model_rows(qwen_model_path):
    gguf = pytest.importorskip("ref.gguf")
    km = _kernels()
    f = gguf.GGUFFile(qwen_model_path)
    rng = np.random.default_rng(0)
    seen = set()
    for name, info in f.tensors.items():
        gt = info.ggml_type
        if len(info.shape) != 2 or gt not in km.DECODERS or gt in seen:
            continue
        seen.add(gt)
        N, K = info.shape
        rows = np.ascontiguousarray(f.raw(name)[: (64 if ON_GPU else 6)])
        x = rng.standard_normal((1, K)).astype(np.float32)
        want = ref_matmul(x, rows, gt, K)
        mag = term_magnitude(x, rows, gt, K)
        assert_close_terms(km.matvec(x[0], rows, gt, K), want[0], mag[0], K, f"{name} ({gt.name})")
    assert {GGMLType.Q8_0, GGMLType.Q5_0} <= seen, f"expected Q8_0 and Q5_0 tensors, saw {seen}"


# --- v10: the prefill kernels (matmul_prefill, matmul_prefill_swiglu) ---------------------------
# In the simulator the launches use SIM_PREFILL_CONFIG (8 tokens x 8 rows, 2 groups splitting K),
# so T and N up to 12-20 cover several tiles and partial tiles; the real configurations get one
# tiny launch each below. Shapes stay small: the simulator runs every thread in Python.
PREFILL_T = 100 if ON_GPU else 12
PREFILL_N = 300 if ON_GPU else 12
PREFILL_EXAMPLES = 40 if ON_GPU else 25


def prefill_problem(seed, gt, N, nb, T):
    """x [T, K], w [N, row_bytes], K, a residual [T, N] and a bias [N]; K-quants get one block per
    row in the simulator (256 weights is already a few seconds there)."""
    rng = np.random.default_rng(seed)
    elems = BLOCK_SIZES[gt][0]
    K = (nb if elems < 256 or ON_GPU else 1) * max(elems, 8)
    w = random_weight(rng, gt, N, K)
    x = rng.standard_normal((T, K)).astype(np.float32)
    return x, w, K, rng.standard_normal((T, N)).astype(np.float32), rng.standard_normal(N).astype(np.float32)


# (seed, type, T, N, blocks per row, with bias, accumulate): the draws of the prefill product tests
prefill_cases = compose_decorators(
    settings(deadline=None, max_examples=PREFILL_EXAMPLES, suppress_health_check=[HealthCheck.too_slow]),
    given(st.integers(0, 2 ** 32 - 1), st.sampled_from(KERNEL_TYPES), st.integers(1, PREFILL_T),
          st.integers(1, PREFILL_N), st.integers(1, 2), st.booleans(), st.booleans()))


def _prefill(km, x, w, gt, K, out, bias=None, accumulate=False, config=None, mma=False):
    from numba import cuda
    o = cuda.to_device(out)
    km.matmul_prefill(cuda.to_device(x), cuda.to_device(w), gt, K, o, accumulate=accumulate, config=config,
                      bias=None if bias is None else cuda.to_device(bias), mma=mma)
    return o.copy_to_host()


def _prefill_case(km, seed, gt, T, N, nb, with_bias, accumulate, mma=False):
    """A random problem run through matmul_prefill (v10, or v11 with ``mma``): x, w, K, res, bias, the result
    (``res`` is the start of ``out`` with ``accumulate``, else NaN: plain mode must overwrite)."""
    x, w, K, res, bias = prefill_problem(seed, gt, N, nb, T)
    bias = bias if with_bias else None
    start = res if accumulate else np.full((T, N), np.nan, np.float32)
    return x, w, K, res, bias, _prefill(km, x, w, gt, K, start, bias, accumulate, mma=mma)


@requires_cuda
@prefill_cases
def test_prefill_matches_ref(seed, gt, T, N, nb, with_bias, accumulate):
    km = _kernels()
    x, w, K, res, bias, got = _prefill_case(km, seed, gt, T, N, nb, with_bias, accumulate)
    want = ref_matmul(x, w, gt, K, bias) + (res if accumulate else 0)
    mag = term_magnitude(x, w, gt, K) + (0 if bias is None else np.abs(bias)) + (np.abs(res) if accumulate else 0)
    # two float32 sums of K terms (the kernel's per-group partial sums, then the groups in order) plus
    # the bias and residual additions: within assert_close_terms' 2 gamma_K + 8u of the terms' magnitude
    assert_close_terms(got, want, mag, K, f"matmul_prefill {gt.name} T={T} N={N} K={K}")


def _swiglu_want(x, wg, gt, wu, ut, K):
    """ref: silu(g) u and the error scale (sum|x w_g| + |g|) (sum|x w_u| + |u|) of the product."""
    from ref.swiglu import swiglu
    g, u = ref_matmul(x, wg, gt, K), ref_matmul(x, wu, ut, K)
    gm, um = term_magnitude(x, wg, gt, K), term_magnitude(x, wu, ut, K)
    return swiglu(g, u), (gm + np.abs(g)) * (um + np.abs(u))


def _assert_swiglu_close(got, want, scale, K, name):
    # error of silu(g) u: |silu'| <= 1.1 times g's error times |u|, plus |silu(g)| <= |g| times u's error,
    # each error within 2 gamma_K + 8u of its terms' magnitude (as assert_close_terms), plus a few ulps of
    # exp, the division and the product: twice assert_close_terms' bound relative to `scale`
    gamma = K * U / (1 - K * U)
    assert_close(got / scale, want / scale, atol=2 * (2 * gamma + 8 * U), rtol=0.0, name=name)


@requires_cuda
@settings(deadline=None, max_examples=max(PREFILL_EXAMPLES - 2, 4), suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(KERNEL_TYPES), st.sampled_from(KERNEL_TYPES),
       st.integers(1, PREFILL_T), st.integers(1, PREFILL_N))
def test_prefill_swiglu_matches_ref(seed, gt, ut, T, F):
    x, wg, wu, K, got = _swiglu_case(seed, gt, ut, T, F)
    want, scale = _swiglu_want(x, wg, gt, wu, ut, K)
    _assert_swiglu_close(got, want, scale, K, f"swiglu {gt.name}/{ut.name} T={T} F={F}")


def _swiglu_case(seed, gt, ut, T, F, mma=False):
    """A random SwiGLU pair (one block of the larger type per row) through matmul_prefill_swiglu (v10, or v11
    with ``mma``): x, w_gate, w_up, K, the result."""
    from numba import cuda
    rng = np.random.default_rng(seed)
    K = max(BLOCK_SIZES[gt][0], BLOCK_SIZES[ut][0], 8)
    wg, wu = random_weight(rng, gt, F, K), random_weight(rng, ut, F, K)
    x = (4 * rng.standard_normal((T, K))).astype(np.float32)    # |g| up to ~20: silu's tails too
    o = cuda.to_device(np.full((T, F), np.nan, np.float32))
    _kernels().matmul_prefill_swiglu(cuda.to_device(x), cuda.to_device(wg), gt, cuda.to_device(wu), ut, K, o, mma=mma)
    return x, wg, wu, K, o.copy_to_host()


@requires_cuda
def test_prefill_swiglu_fused_gate_up_equals_two_tensors():
    km = _kernels()
    from numba import cuda
    rng = np.random.default_rng(11)
    T, F, K, gt = 5, 6, 64, GGMLType.Q4_0
    wgu = random_weight(rng, gt, 2 * F, K)                        # Phi-3 ffn_up: gate rows, then up rows
    x = rng.standard_normal((T, K)).astype(np.float32)
    fused, two = cuda.device_array((T, F), np.float32), cuda.device_array((T, F), np.float32)
    km.matmul_prefill_swiglu(x, wgu, gt, None, None, K, fused)
    km.matmul_prefill_swiglu(x, wgu[:F], gt, np.ascontiguousarray(wgu[F:]), gt, K, two)
    # the same rows, decoded and summed in the same order: bit for bit
    np.testing.assert_array_equal(fused.copy_to_host(), two.copy_to_host())


@requires_cuda
def test_prefill_product_equals_matmul_prefill():
    """PrefillProduct (weight views and tiles decided once, flat buffers) launches what matmul_prefill and
    matmul_prefill_swiglu launch: the same kernel on the same bytes, so the results are bit for bit equal,
    for two token counts through one object, and a mismatched bias is refused."""
    km = _kernels()
    from numba import cuda
    rng = np.random.default_rng(13)
    K, N, t = 64, 6, GGMLType.Q8_0
    w, wu = cuda.to_device(random_weight(rng, t, N, K)), cuda.to_device(random_weight(rng, GGMLType.Q4_0, N, K))
    bias = cuda.to_device(rng.standard_normal(N).astype(np.float32))
    plain = km.PrefillProduct(w, t, K, bias=bias, accumulate=True, mma=False)      # v10, as matmul_prefill
    pair = km.PrefillProduct(w, t, K, up=(wu, GGMLType.Q4_0, 0), mma=False)
    for T in (3, 5):
        x = cuda.to_device(rng.standard_normal((T, K)).astype(np.float32))
        start = rng.standard_normal((T, N)).astype(np.float32)
        want, got = cuda.to_device(start), cuda.to_device(start)
        km.matmul_prefill(x, w, t, K, want, bias=bias, accumulate=True)
        plain(x.reshape(T * K), got.reshape(T * N), T)
        np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())
        want, got = cuda.device_array((T, N), np.float32), cuda.device_array((T, N), np.float32)
        km.matmul_prefill_swiglu(x, w, t, wu, GGMLType.Q4_0, K, want)
        pair(x.reshape(T * K), got.reshape(T * N), T)
        np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())
    with pytest.raises(ValueError, match="bias"):
        km.PrefillProduct(w, t, K, bias=cuda.to_device(np.zeros(N + 1, np.float32)))


@requires_cuda
@pytest.mark.parametrize("ci", range(4))
def test_prefill_every_config_one_partial_tile(ci):
    """Each production configuration once (one block: T, N smaller than its tile; F32 with K = 40 ends
    mid-step), plain with bias and, for the largest tile, SwiGLU with two types."""
    km = _kernels()
    cfg = km.PREFILL_CONFIGS[ci]
    gt = (GGMLType.Q8_0, GGMLType.F32, GGMLType.Q5_0, GGMLType.F16)[ci]
    x, w, K, res, bias = prefill_problem(ci, gt, 5, 5 if gt == GGMLType.F32 else 1, 3)   # F32: K = 40
    got = _prefill(km, x, w, gt, K, res, bias, True, cfg)
    mag = term_magnitude(x, w, gt, K) + np.abs(bias) + np.abs(res)
    # as test_prefill_matches_ref: two sums of K terms, the bias and the residual addition
    assert_close_terms(got, res + ref_matmul(x, w, gt, K, bias), mag, K, f"config {tuple(cfg)} {gt.name}")
    if ci == 1:
        from numba import cuda
        rng = np.random.default_rng(5)
        wg, wu = random_weight(rng, GGMLType.Q5_0, 4, 32), random_weight(rng, GGMLType.Q8_0, 4, 32)
        xs = rng.standard_normal((3, 32)).astype(np.float32)
        o = cuda.device_array((3, 4), np.float32)
        km.matmul_prefill_swiglu(xs, wg, GGMLType.Q5_0, wu, GGMLType.Q8_0, 32, o, config=cfg)
        want, scale = _swiglu_want(xs, wg, GGMLType.Q5_0, wu, GGMLType.Q8_0, 32)
        _assert_swiglu_close(o.copy_to_host(), want, scale, 32, f"swiglu config {tuple(cfg)}")


@requires_cuda
def test_prefill_bias_and_residual_are_one_addition_each():
    km = _kernels()
    gt = GGMLType.Q5_0
    x, w, K, res, bias = prefill_problem(3, gt, 9, 2, 10)
    plain = _prefill(km, x, w, gt, K, np.zeros_like(res))
    # the same sums (same configuration, fixed order), then float32(y + b), then float32(r + that)
    np.testing.assert_array_equal(_prefill(km, x, w, gt, K, res, bias, True), res + (plain + bias))
    # T = 1 is an ordinary (partial) tile; matmul() runs v10 by default and v3 on request
    np.testing.assert_array_equal(km.matmul(x[:1], w, gt, K), plain[:1])
    mag = term_magnitude(x, w, gt, K)
    # v3 sums in another order (32-weight steps, one thread per output): the usual bound
    assert_close_terms(km.matmul(x, w, gt, K, version=3), plain, mag, K, "v3 vs v10")


@requires_cuda
def test_prefill_rejects_bad_shapes():
    km = _kernels()
    from numba import cuda
    gt = GGMLType.Q8_0
    w = np.zeros((4, row_bytes(gt, 64)), np.uint8)
    x, out = np.zeros((2, 64), np.float32), cuda.device_array((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"x must be \[2, 64\]"):
        km.matmul_prefill(np.zeros((2, 32), np.float32), w, gt, 64, out)
    with pytest.raises(ValueError, match=r"out must be \[2, 4\]"):
        km.matmul_prefill(x, w, gt, 64, cuda.device_array((2, 5), np.float32))
    with pytest.raises(ValueError, match="device array"):
        km.matmul_prefill(x, w, gt, 64, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"bias must be \[4\]"):
        km.matmul_prefill(x, w, gt, 64, out, bias=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="does not tile"):
        km.matmul_prefill(x, w, gt, 64, out, config=(8, 8, 16, 16, 1, 12))
    with pytest.raises(ValueError, match="gate and up need F = 4 rows"):
        km.matmul_prefill_swiglu(x, w, gt, w[:3], gt, 64, out)
    with pytest.raises(ValueError, match="fused gate_up needs 2F = 8 rows"):
        km.matmul_prefill_swiglu(x, w, gt, None, None, 64, out)
    with pytest.raises(ValueError, match="version must be 3, 10 or 11"):
        km.matmul(x, w, gt, 64, version=4)


def test_prefill_config_grid_arithmetic(monkeypatch):
    """The launch heuristic on an H200 (132 SMs) at T = 512: the tiles prefill_config's docstring lists."""
    km = _kernels()
    monkeypatch.setattr(km, "_sm_count", lambda: 132)
    big, tall, square, small = km.PREFILL_CONFIGS
    assert big not in km.PREFILL_AUTO                                   # measured slower: never chosen
    for N, want in ((16384, tall), (9216, tall), (4864, tall), (3072, square), (896, small), (128, small)):
        assert km.prefill_config(512, N) == want, N
    assert km.prefill_config(512, 4864, swiglu=True) == tall          # 32 gate + 32 up rows a tile
    assert km.prefill_grid(tall, 512, 4864) == (76, 4)
    assert km.prefill_grid(tall, 512, 4864, swiglu=True) == (152, 4)
    assert km.prefill_grid(big, 512, 4864, swiglu=True) == (76, 4)
    assert km.prefill_grid(small, 512, 896) == (28, 8)
    for cfg in km.PREFILL_CONFIGS:
        assert km.prefill_smem(cfg) <= km.SMEM_LIMIT and km.prefill_sizes(cfg)[4] == 256


# --- v11: the prefill product on the tensor cores (float16 operands, float32 sums) ----------------
# v11 rounds x and the decoded W to float16 and sums exact products in float32, so it is compared with
# the float32 product of the ROUNDED operands (the same float32 bound as v10), and separately with the
# float32 reference within the rounding of the operands. In the simulator ``ptx.mma_f16`` is the Python
# statement of the instruction's fragment layout; on the GPU these tests check the real instruction.
def _half(a):
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def _rounded_ref(x, w, gt, K, bias=None):
    """(x16 W16^T (+ bias), sum|x16 W16|): the product v11 computes, and its rounding scale."""
    W = _half(dequantize(w, gt, (w.shape[0], K))).astype(np.float64)
    xh = _half(x).astype(np.float64)
    y = xh @ W.T + (0 if bias is None else bias)
    return y, np.abs(xh) @ np.abs(W).T


@requires_cuda
@prefill_cases
def test_prefill_mma_matches_rounded_ref(seed, gt, T, N, nb, with_bias, accumulate):
    km = _kernels()
    x, w, K, res, bias, got = _prefill_case(km, seed, gt, T, N, nb, with_bias, accumulate, mma=True)
    y, mag = _rounded_ref(x, w, gt, K, bias)
    want = y + (res if accumulate else 0)
    mag = mag + (0 if bias is None else np.abs(bias)) + (np.abs(res) if accumulate else 0)
    # exact float16 products summed in float32 (the tensor cores' order), then the bias and residual
    # additions: the float32 bound of assert_close_terms
    assert_close_terms(got, want, mag, K, f"v11 {gt.name} T={T} N={N} K={K}")
    # against the float32 product: each operand rounded to float16 moves a term by at most 2^-11 of
    # its size (x and W: 2 * 2^-11 + 2^-22), on top of the float32 sums
    scale = term_magnitude(x, w, gt, K) + (0 if bias is None else np.abs(bias)) + (np.abs(res) if accumulate else 0)
    want32 = ref_matmul(x, w, gt, K, bias) + (res if accumulate else 0)
    gamma = K * U / (1 - K * U)
    assert_close(got / scale, want32 / scale, atol=2 * 2.0 ** -11 + 2.0 ** -22 + 2 * gamma + 8 * U, rtol=0.0,
                 name="v11 vs float32")


@requires_cuda
@settings(deadline=None, max_examples=max(PREFILL_EXAMPLES - 5, 4), suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(KERNEL_TYPES), st.sampled_from(KERNEL_TYPES),
       st.integers(1, PREFILL_T), st.integers(1, PREFILL_N))
def test_prefill_mma_swiglu_matches_rounded_ref(seed, gt, ut, T, F):
    from ref.swiglu import swiglu
    x, wg, wu, K, got = _swiglu_case(seed, gt, ut, T, F, mma=True)
    (g, gm), (u, um) = _rounded_ref(x, wg, gt, K), _rounded_ref(x, wu, ut, K)
    # as _assert_swiglu_close, with the gate and up products of the rounded operands
    _assert_swiglu_close(got, swiglu(g.astype(np.float32), u.astype(np.float32)),
                         (gm + np.abs(g)) * (um + np.abs(u)), K, f"v11 swiglu {gt.name}/{ut.name} T={T} F={F}")


@requires_cuda
@pytest.mark.parametrize("ci", range(4))
def test_prefill_mma_every_config(ci):
    """Each v11 tile once on a problem of several tiles with partial ones at both edges (the simulator:
    small tiles of its own), plain with bias and residual, and the SwiGLU pair of two types."""
    km = _kernels()
    from numba import cuda
    # the simulator: one warp with K-steps of 32 and 64, four n8-tiles, two warps
    cfg = km.MMA_CONFIGS[ci] if ON_GPU else km.MmaConfig(*((1, 1, 1, 2, 1), (1, 1, 1, 2, 2), (1, 1, 1, 4, 1),
                                                            (2, 1, 1, 2, 1))[ci])
    bm, bn, _ = km.mma_sizes(cfg)
    T, N = (2 * bm + 3, 2 * bn + 5) if ON_GPU else (bm + 3, bn + 5)
    gt = (GGMLType.Q8_0, GGMLType.F32, GGMLType.Q5_0, GGMLType.F16)[ci]
    x, w, K, res, bias = prefill_problem(ci, gt, N, 2, T)
    got = _prefill(km, x, w, gt, K, res, bias, True, cfg, mma=True)
    y, mag = _rounded_ref(x, w, gt, K, bias)
    # as test_prefill_mma_matches_rounded_ref
    assert_close_terms(got, res + y, mag + np.abs(bias) + np.abs(res), K, f"v11 config {tuple(cfg)} {gt.name}")
    rng = np.random.default_rng(ci)
    wg, wu = random_weight(rng, GGMLType.Q5_0, N, 64), random_weight(rng, GGMLType.Q8_0, N, 64)
    xs = rng.standard_normal((T, 64)).astype(np.float32)
    o = cuda.device_array((T, N), np.float32)
    km.matmul_prefill_swiglu(xs, wg, GGMLType.Q5_0, wu, GGMLType.Q8_0, 64, o, config=cfg, mma=True)
    from ref.swiglu import swiglu
    (g, gm), (u, um) = _rounded_ref(xs, wg, GGMLType.Q5_0, 64), _rounded_ref(xs, wu, GGMLType.Q8_0, 64)
    _assert_swiglu_close(o.copy_to_host(), swiglu(g.astype(np.float32), u.astype(np.float32)),
                         (gm + np.abs(g)) * (um + np.abs(u)), 64, f"v11 swiglu config {tuple(cfg)}")


@requires_cuda
def test_prefill_product_picks_v11_and_matches_matmul_prefill():
    """PrefillProduct(mma=True) launches what matmul_prefill(mma=True) launches (bit for bit), v11 is
    PrefillProduct's default where the tensor cores are there, and a v10 tile is refused for v11."""
    km = _kernels()
    from numba import cuda
    rng = np.random.default_rng(17)
    K, N, T, t = 64, 6, 5, GGMLType.Q5_0
    w = cuda.to_device(random_weight(rng, t, N, K))
    x = cuda.to_device(rng.standard_normal((T, K)).astype(np.float32))
    want, got = cuda.device_array((T, N), np.float32), cuda.device_array((T, N), np.float32)
    km.matmul_prefill(x, w, t, K, want, mma=True)
    km.PrefillProduct(w, t, K, mma=True)(x.reshape(T * K), got.reshape(T * N), T)
    np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())
    assert km.PrefillProduct(w, t, K).mma == (km.PREFILL_MMA and km.mma_supported())
    assert not km.PrefillProduct(w, t, K, mma=False).mma
    with pytest.raises(ValueError, match="does not tile"):
        km.PrefillProduct(w, t, K, mma=True, config=(1, 1, 1, 3, 1))(x.reshape(T * K), got.reshape(T * N), T)


def test_mma_config_rules(monkeypatch):
    """v11's tile choice on an H200 (132 SMs) at T = 512, as mma_config's docstring states it."""
    km = _kernels()
    monkeypatch.setattr(km, "_sm_count", lambda: 132)
    for N, K, swiglu, want in ((4864, 896, True, km.MMA_WIDE), (4864, 896, False, km.MMA_WIDE),
                               (16384, 3072, False, km.MMA_WIDE), (896, 896, False, km.MMA_MID),
                               (896, 4864, False, km.MMA_LONG), (3072, 8192, False, km.MMA_LONG),
                               (128, 896, False, km.MMA_NARROW)):
        assert km.mma_config(512, N, K, swiglu) == want, (N, K, swiglu)
    # split-K only for long rows on a grid short of 2 blocks per SM: 896 x 4864 (56 blocks) in 2 parts
    assert km.mma_split(km.MMA_LONG, 512, 896, 4864) == 2
    assert km.mma_split(km.MMA_LONG, 512, 3072, 8192) == 2                  # Phi-3's down: 192 blocks
    assert km.mma_split(km.MMA_WIDE, 512, 4864, 896, swiglu=True) == 1
    assert km.mma_split(km.MMA_MID, 512, 896, 896) == 1                      # short rows: never split
    assert km.mma_grid(km.MMA_WIDE, 512, 4864, swiglu=True) == (152, 4)      # 32 gate + 32 up rows a tile
    for cfg in km.MMA_CONFIGS + (km.SIM_MMA_CONFIG,):
        km._check_mma_config(cfg)                                           # every tile tiles
        assert km.mma_smem(cfg) <= km.SMEM_LIMIT


@requires_cuda
@pytest.mark.parametrize("split", [2, 3])
def test_prefill_mma_split_k_is_deterministic_and_exact(split):
    """v11 split along K (grid z; the last block of a tile adds the parts in order): the same rounded-ref
    bound, bit-for-bit the same result on a second launch (the counters reset themselves), and SwiGLU too."""
    km = _kernels()
    from numba import cuda
    rng = np.random.default_rng(split)
    gt, T, N = GGMLType.Q4_K, (70 if ON_GPU else 5), (300 if ON_GPU else 9)
    K = 256 * (8 if ON_GPU else 1)                    # the simulator: 8 K-steps of 32 in 2-3 parts
    w = cuda.to_device(random_weight(rng, gt, N, K))
    x = rng.standard_normal((T, K)).astype(np.float32)
    res, bias = rng.standard_normal((T, N)).astype(np.float32), rng.standard_normal(N).astype(np.float32)
    product = km.PrefillProduct(w, gt, K, bias=cuda.to_device(bias), accumulate=True, split=split)
    runs = []
    for _ in range(2):
        o = cuda.to_device(res)
        product(cuda.to_device(x).reshape(T * K), o.reshape(T * N), T)
        runs.append(o.copy_to_host())
    np.testing.assert_array_equal(runs[0], runs[1])
    y, mag = _rounded_ref(x, w.copy_to_host(), gt, K, bias)
    # the parts are float32 sums added in float32: still sums of K terms, the bound of assert_close_terms
    assert_close_terms(runs[0], res + y, mag + np.abs(bias) + np.abs(res), K, f"v11 split {split}")
    wu = cuda.to_device(random_weight(rng, GGMLType.Q6_K, N, K))
    pair = km.PrefillProduct(w, gt, K, up=(wu, GGMLType.Q6_K, 0), split=split)
    o = cuda.device_array((T, N), np.float32)
    pair(cuda.to_device(x).reshape(T * K), o.reshape(T * N), T)
    from ref.swiglu import swiglu
    (g, gm), (u, um) = _rounded_ref(x, w.copy_to_host(), gt, K), _rounded_ref(x, wu.copy_to_host(), GGMLType.Q6_K, K)
    _assert_swiglu_close(o.copy_to_host(), swiglu(g.astype(np.float32), u.astype(np.float32)),
                         (gm + np.abs(g)) * (um + np.abs(u)), K, f"v11 split {split} swiglu")


@requires_cuda
def test_prefill_qkv_one_launch_equals_three_products():
    """PrefillQKV (Q, K and V of one x in one launch, each matrix its own type and bias) computes what three
    v11 PrefillProducts with the same tile compute: the same tiles and sums, so bit for bit; several tiles
    per matrix and a partial last one (the simulator: 16-row tiles)."""
    km = _kernels()
    from numba import cuda
    rng = np.random.default_rng(23)
    K, T = 64, (70 if ON_GPU else 5)
    cfg = km.MMA_MID if ON_GPU else km.SIM_MMA_CONFIG
    rows = (300, 40, 72) if ON_GPU else (20, 9, 16)
    types = (GGMLType.Q5_0, GGMLType.Q5_0, GGMLType.Q8_0)
    mats = [(cuda.to_device(random_weight(rng, t, n, K)), t, cuda.to_device(rng.standard_normal(n).astype(np.float32))
             if i != 1 else None) for i, (t, n) in enumerate(zip(types, rows))]
    x = cuda.to_device(rng.standard_normal((T, K)).astype(np.float32)).reshape(T * K)
    got = [cuda.to_device(np.full(T * n, np.nan, np.float32)) for n in rows]
    km.PrefillQKV(mats, K, config=cfg)(x, got, T)
    for (w, t, b), g, n in zip(mats, got, rows):
        want = cuda.device_array(T * n, np.float32)
        km.PrefillProduct(w, t, K, bias=b, mma=True, config=cfg)(x, want, T)
        np.testing.assert_array_equal(g.copy_to_host(), want.copy_to_host())
    with pytest.raises(ValueError, match="3 matrices"):
        km.PrefillQKV(mats[:2], K)


@requires_cuda
@pytest.mark.parametrize("split", [1, 2])
def test_prefill_x16_equals_float32_x_bit_for_bit(split):
    """v11 reading x as float16 pairs (x16, packed by ``launch_pack_f16``) computes exactly what it computes from
    float32 x, which its staging rounds with the same cvt.rn: the plain product with bias and residual, the
    SwiGLU pair, split along K, and the one-launch Q/K/V; x values at the top of float16's range and below its
    normal range included. A v10 product and an odd count of floats to pack are refused."""
    km = _kernels()
    from numba import cuda
    rng = np.random.default_rng(40 + split)
    gt, T, N = GGMLType.Q4_K, (70 if ON_GPU else 5), (300 if ON_GPU else 9)
    K = 256 * (8 if ON_GPU else 1)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[0, :4] = [65504.0, -6.5e4, 3e-6, 1e-8]          # float16's largest, rounded to it, subnormal, rounded to 0
    x_d = cuda.to_device(x).reshape(T * K)
    x16 = cuda.device_array(T * K // 2, np.uint32)
    km.launch_pack_f16(x_d, x16, T * K)
    np.testing.assert_array_equal(x16.copy_to_host().view(np.float16), x.reshape(-1).astype(np.float16))
    w = cuda.to_device(random_weight(rng, gt, N, K))
    wu = cuda.to_device(random_weight(rng, GGMLType.Q6_K, N, K))
    res, bias = rng.standard_normal((T, N)).astype(np.float32), cuda.to_device(rng.standard_normal(N).astype(np.float32))
    for kw in (dict(bias=bias, accumulate=True), dict(up=(wu, GGMLType.Q6_K, 0))):
        outs = []
        for xa, flag in ((x_d, False), (x16, True)):
            o = cuda.to_device(res).reshape(T * N)
            km.PrefillProduct(w, gt, K, mma=True, split=split, x16=flag, **kw)(xa, o, T)
            outs.append(o.copy_to_host())
        np.testing.assert_array_equal(outs[1], outs[0])
    mats = [(w, gt, bias), (wu, GGMLType.Q6_K, None), (w, gt, None)]
    got = [[cuda.device_array(T * N, np.float32) for _ in range(3)] for _ in range(2)]
    km.PrefillQKV(mats, K)(x_d, got[0], T)
    km.PrefillQKV(mats, K, x16=True)(x16, got[1], T)
    for a, b in zip(*got):
        np.testing.assert_array_equal(b.copy_to_host(), a.copy_to_host())
    with pytest.raises(ValueError, match="x16.*needs v11"):
        km.PrefillProduct(w, gt, K, mma=False, x16=True)
    with pytest.raises(ValueError, match="must be even"):
        km.launch_pack_f16(x_d, x16, 3)


@requires_cuda
def test_prefill_x16_rows_ending_inside_a_k_step():
    """x16's 16-byte loads (4 pairs) past K read zeros: F16 rows of K = 32 n + 8 (the last K-step holds one
    load's worth of weights) equal the float32-x product bit for bit."""
    km = _kernels()
    from numba import cuda
    rng = np.random.default_rng(7)
    T, N, K = (37, 70, 296) if ON_GPU else (3, 5, 72)
    x = rng.standard_normal((T, K)).astype(np.float32)
    x_d = cuda.to_device(x).reshape(T * K)
    x16 = cuda.device_array(T * K // 2, np.uint32)
    km.launch_pack_f16(x_d, x16, T * K)
    w = cuda.to_device(random_weight(rng, GGMLType.F16, N, K))
    outs = []
    for xa, flag in ((x_d, False), (x16, True)):
        o = cuda.device_array(T * N, np.float32)
        km.PrefillProduct(w, GGMLType.F16, K, mma=True, x16=flag)(xa, o, T)
        outs.append(o.copy_to_host())
    np.testing.assert_array_equal(outs[1], outs[0])


def test_prefill_x16_refuses_an_unaligned_x():
    """The 16-byte loads need x16 to start 16-byte aligned (a slice of a buffer may not): refused in one line."""
    km = _kernels()

    class Slice:                                   # what a device array tells about its memory
        def __init__(self, address):
            self.__cuda_array_interface__ = {"data": (address, False)}

    km._check_x_layout(Slice(4096), "PrefillProduct")
    with pytest.raises(ValueError, match="16-byte aligned"):
        km._check_x_layout(Slice(4096 + 4), "PrefillProduct")


# --- v23: float16 weights decoded once, then a float16 GEMM (twenty-third session) ---------------------------
def _pack(km, x, tile):
    """x float32 [T, K] on the device as float16 pairs: uint32 [T K / 2], or with ``tile`` v23's tile order
    (``tile_words(T, K)`` words, the padding rows NaN: they must never reach a stored output)."""
    from numba import cuda
    T, K = x.shape
    x16 = cuda.to_device(np.full(km.tile_words(T, K) if tile else T * K // 2, 0x7E007E00, np.uint32))
    km.launch_pack_f16(cuda.to_device(x).reshape(T * K), x16, T * K, tile_k=K if tile else 0)
    return x16


@requires_cuda
def test_pack_f16_tile_order_moves_the_plain_pairs():
    """``launch_pack_f16(tile_k=K)`` writes the same float16 pairs as the plain packing, each where
    ``ref.matmul.a_tile_index`` says (tokens in blocks of 16, each K-step's pairs as the mma's A operands); K not a
    multiple of 32, or a count that is not whole rows, is refused."""
    from ref.matmul import a_tile_index
    km = _kernels()
    T, K = 21, 96
    x = np.random.default_rng(2).standard_normal((T, K)).astype(np.float32)
    plain, tiled = (_pack(km, x, f).copy_to_host() for f in (False, True))
    np.testing.assert_array_equal(tiled[a_tile_index(T, K)], plain.reshape(T, K // 2))
    for k, n in ((80, 160), (96, 100)):
        with pytest.raises(ValueError, match="tile order needs K a multiple of 32"):
            km.launch_pack_f16(_pack(km, x, False), _pack(km, x, True), n, tile_k=k)


@requires_cuda
@pytest.mark.parametrize("tile", [False, True])
def test_norm_pack_f16_equals_rmsnorm_then_pack(tile):
    """The prefill's RMSNorm writing float16 pairs (plain, or v23's tile order) equals ``rmsnorm.rmsnorm`` then
    ``launch_pack_f16`` bit for bit: the same sum of squares per thread, the same products, the same cvt.rn; rows
    long enough for several passes of the block, values past float16's range become inf in both."""
    from numba import cuda

    from numba_kernels import rmsnorm
    km = _kernels()
    rng = np.random.default_rng(5 + tile)
    T, C = 3, 1088                                 # 1088 > 1024 threads: two passes over each row
    x = rng.standard_normal((T, C)).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    w[:2] = 3e5                                    # -> beyond float16's largest
    dx, dw = cuda.to_device(x), cuda.to_device(w)
    n = rmsnorm.rmsnorm(dx, dw, 1e-5)
    words = km.tile_words(T, C) if tile else T * C // 2
    want, got = (cuda.to_device(np.zeros(words, np.uint32)) for _ in range(2))
    km.launch_pack_f16(n.reshape(T * C), want, T * C, tile_k=C if tile else 0)
    km.launch_norm_pack_f16(dx, dw, 1e-5, got, tile_k=C if tile else 0)
    np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())
    assert np.isinf(got.copy_to_host().view(np.float16)).any()
    with pytest.raises(ValueError, match="tile_k must be C"):
        km.launch_norm_pack_f16(dx, dw, 1e-5, got, tile_k=64)


@requires_cuda
@pytest.mark.parametrize("f16w", [False, True])
def test_swiglu_writes_the_next_products_float16_pairs(f16w):
    """The SwiGLU launch writing float16 pairs (out16: plain pairs, or v23's tile order; v11 and v23) equals its
    float32 output packed by ``launch_pack_f16``, bit for bit, with a split along K; an odd feature count, a
    count that is not whole groups of 32 for the tile order, or a plain product asking for pairs is refused."""
    from numba import cuda
    km = _kernels()
    rng = np.random.default_rng(12 + f16w)
    T, K = 21, 64
    x = rng.standard_normal((T, K)).astype(np.float32)
    xa = _pack(km, x, f16w)
    kw = dict(mma=True, x16=True, f16w=f16w, split=2)
    for out16, F in ((km.OUT_PAIRS, 18), (km.OUT_TILES, 32)):
        tile = out16 == km.OUT_TILES
        wg, wu = (cuda.to_device(random_weight(rng, GGMLType.Q8_0, F, K)) for _ in range(2))
        h = cuda.device_array(T * F, np.float32)
        km.PrefillProduct(wg, GGMLType.Q8_0, K, up=(wu, GGMLType.Q8_0, 0), **kw)(xa, h, T)
        want = cuda.to_device(np.zeros(km.tile_words(T, F) if tile else T * F // 2, np.uint32))
        got = cuda.to_device(np.zeros(want.size, np.uint32))
        km.launch_pack_f16(h, want, T * F, tile_k=F if tile else 0)
        km.PrefillProduct(wg, GGMLType.Q8_0, K, up=(wu, GGMLType.Q8_0, 0), out16=out16, **kw)(xa, got, T)
        np.testing.assert_array_equal(got.copy_to_host(), want.copy_to_host())
    for out16, F in ((km.OUT_PAIRS, 17), (km.OUT_TILES, 18)):
        w, w2 = (cuda.to_device(random_weight(rng, GGMLType.Q8_0, F, K)) for _ in range(2))
        with pytest.raises(ValueError, match=f"got {F} features"):
            km.PrefillProduct(w, GGMLType.Q8_0, K, up=(w2, GGMLType.Q8_0, 0), out16=out16, **kw)
    with pytest.raises(ValueError, match="SwiGLU pair"):
        km.PrefillProduct(wg, GGMLType.Q8_0, K, out16=km.OUT_PAIRS, mma=True, x16=True)


@requires_cuda
@pytest.mark.parametrize("swiglu", [False, True])
def test_f16w_rows_are_the_rounded_weights_in_fragment_order(swiglu):
    """v23's decode launch: W16 row r holds W's row (plain: min(r, N - 1); SwiGLU: tiles of BN rows, the gate rows
    of BN / 2 features then their up rows) as float16 pairs of the dequantized weights, in fragment order."""
    from numba import cuda
    from ref.matmul import fragment_order
    km = _kernels()
    rng = np.random.default_rng(8 + swiglu)
    N, K, BN = 11, 256, 8
    gt, ut = GGMLType.Q4_K, GGMLType.Q6_K
    wg, wu = random_weight(rng, gt, N, K), random_weight(rng, ut, N + 3, K)
    rows = -(-N // (BN // 2 if swiglu else BN)) * BN
    w16 = cuda.to_device(np.zeros(rows * K // 2, np.uint32))
    ga, gb = km._views(cuda.to_device(wg), gt)
    ua, ub = km._views(cuda.to_device(wu), ut)
    km.launch_f16w((ga, gb, ua, ub), (gt, ut), 3, N, K, w16, 0, rows, BN, swiglu)
    g, u = dequantize(wg, gt, (N, K)), dequantize(wu, ut, (N + 3, K))[3:]
    r = np.arange(rows)
    if swiglu:
        f = np.minimum((r // BN) * (BN // 2) + r % (BN // 2), N - 1)
        want = np.where((r % BN >= BN // 2)[:, None], u[f], g[f])
    else:
        want = g[np.minimum(r, N - 1)]
    pairs = want.astype(np.float16).view(np.uint32)                      # [rows, K / 2]
    np.testing.assert_array_equal(w16.copy_to_host().reshape(rows, K // 2), fragment_order(pairs))


F16W_TYPES = [GGMLType.Q4_K, GGMLType.Q6_K, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.F16, GGMLType.F32]


@requires_cuda
@settings(deadline=None, max_examples=25 if ON_GPU else 6, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from(F16W_TYPES), st.integers(1, 150 if ON_GPU else 20),
       st.integers(1, 300 if ON_GPU else 20), st.sampled_from(["plain", "bias+residual", "swiglu"]),
       st.sampled_from([1, 2]))
def test_f16w_equals_v11_bit_for_bit(seed, gt, T, N, mode, split):
    """v23 (W decoded once to float16, then the GEMM over fragment-order x16 and W16) computes v11's bits: the same
    float16 operands and the same chain of mma per output, for every type, token and row counts that are not
    multiples of the tiles, the residual add with a bias, the SwiGLU pair (up rows from an offset of another
    type), and the split along K."""
    from numba import cuda
    km = _kernels()
    rng = np.random.default_rng(seed)
    K = BLOCK_SIZES[gt][0] * int(rng.integers(1, 3)) if BLOCK_SIZES[gt][0] > 32 else 32 * int(rng.integers(1, 5))
    x = rng.standard_normal((T, K)).astype(np.float32)
    w = cuda.to_device(random_weight(rng, gt, N, K))
    kw = {"plain": {}, "swiglu": dict(up=(cuda.to_device(random_weight(rng, GGMLType.Q8_0 if K % 256 else
                                                                       GGMLType.Q4_K, N + 2, K)),
                                          GGMLType.Q8_0 if K % 256 else GGMLType.Q4_K, 2)),
          "bias+residual": dict(bias=cuda.to_device(rng.standard_normal(N).astype(np.float32)), accumulate=True)}[mode]
    res = rng.standard_normal(T * N).astype(np.float32)
    outs = []
    for x16, f16w in ((_pack(km, x, False), False), (_pack(km, x, True), True)):   # (v23's padding rows: NaN)
        o = cuda.to_device(res)
        km.PrefillProduct(w, gt, K, mma=True, split=split, x16=True, f16w=f16w, **kw)(x16, o, T)
        outs.append(o.copy_to_host())
    np.testing.assert_array_equal(outs[1], outs[0])


@requires_cuda
def test_f16w_tile_and_split_can_be_forced_for_a_sweep(monkeypatch):
    """LLAMA_BETA_F16W_CONFIG / LLAMA_BETA_F16W_SPLIT (read at import into F16W_CONFIG / F16W_SPLIT) replace the
    tile and split v23 would choose, for every product; a tile that does not tile is refused."""
    km = _kernels()
    monkeypatch.setattr(km, "F16W_CONFIG", (2, 2, 2, 2))
    assert km.f16w_config(512, 9216) == km.MmaConfig(2, 2, 2, 2, 1)
    monkeypatch.setattr(km, "F16W_CONFIG", (2, 2, 2, 3))
    with pytest.raises(ValueError, match="does not tile"):
        km.f16w_config(512, 9216)
    monkeypatch.setattr(km, "F16W_CONFIG", None)
    monkeypatch.setattr(km, "F16W_SPLIT", 4)
    from numba import cuda
    w = cuda.to_device(random_weight(np.random.default_rng(0), GGMLType.Q8_0, 8, 256))
    product = km.PrefillProduct(w, GGMLType.Q8_0, 256, mma=True, x16=True, f16w=True)
    assert product._launch_for(4)[1][2] == 4                    # grid z: the split


@requires_cuda
def test_f16w_qkv_one_launch_equals_v11():
    """v23's Q, K and V in one launch (three W16 stacked, each padded to whole tiles) equal v11's PrefillQKV bit
    for bit, each matrix its own type and bias; v23 without x16 or with K not a multiple of 32 is refused."""
    from numba import cuda
    km = _kernels()
    rng = np.random.default_rng(31)
    K, T = 64, (70 if ON_GPU else 5)
    rows = (300, 40, 72) if ON_GPU else (20, 9, 16)
    types = (GGMLType.Q5_0, GGMLType.Q5_0, GGMLType.Q8_0)
    mats = [(cuda.to_device(random_weight(rng, t, n, K)), t, cuda.to_device(rng.standard_normal(n).astype(np.float32))
             if i != 1 else None) for i, (t, n) in enumerate(zip(types, rows))]
    x = rng.standard_normal((T, K)).astype(np.float32)
    got = [[cuda.to_device(np.full(T * n, np.nan, np.float32)) for n in rows] for _ in range(2)]
    km.PrefillQKV(mats, K, x16=True)(_pack(km, x, False), got[0], T)
    km.PrefillQKV(mats, K, x16=True, f16w=True)(_pack(km, x, True), got[1], T)
    for a, b in zip(*got):
        np.testing.assert_array_equal(b.copy_to_host(), a.copy_to_host())
    with pytest.raises(ValueError, match="x16"):
        km.PrefillQKV(mats, K, f16w=True)
    if T % 16:                                     # x16 without the padding rows of its last block of 16 tokens
        with pytest.raises(ValueError, match="whole blocks of 16 tokens"):
            km.PrefillQKV(mats, K, x16=True, f16w=True)(_pack(km, x, False), got[1], T)
    w = cuda.to_device(random_weight(rng, GGMLType.F16, 4, 40))
    with pytest.raises(ValueError, match="multiple of 32, got K=40"):
        km.PrefillProduct(w, GGMLType.F16, 40, mma=True, x16=True, f16w=True)
