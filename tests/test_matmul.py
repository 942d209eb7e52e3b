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
EXAMPLES = 60 if ON_GPU else 10


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
