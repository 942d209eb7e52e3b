"""Fused decode kernels (numba_kernels/matmul.py v4-v9): decode_matvec, decode_matvec_multi,
decode_matvec_swiglu against the reference composed from ref.rmsnorm, ref.matmul, ref.swiglu.
(The public functions take the tensor-core kernel v12 for Q5_0/Q8_0 by default: these tests ask for
the float32 kernels, ``mma=False``; v12 has tests/test_matvec_mma.py.)

Tolerances, in units of the term magnitude M = sum_k |x'_k W_nk| (+ |bias| + |residual|), the
convention of tests/test_matmul.py:
- 2 gamma_K + 10u without the norm: two float32 sums of K terms in different orders, plus the
  roundings of the bias add, the residual add and the K-quant decode (as test_matmul.py).
- + gamma_K / 2 + 10u with the norm: the kernel sums the squares of x in float32 (the reference in
  float64), so its RMS scale, and with it every x'_k, may differ by that much relative.
- Q4_K/Q5_K: the kernels sum x (d sc q - dmin m) as d sc (sum x q) - dmin m (sum x) (llama.cpp's
  split), whose rounding is bounded by sum |x| (|d sc q| + |dmin m|) <= sum |x| (|W| + 2 |dmin m|):
  M uses that sum for these two types.
- SwiGLU: silu'(g) <= 1.1 and |silu(g)| <= |g| carry the errors of g and u into
  silu(g) u; plus 8u |out| for expf, the division and the product.
Exact checks (no tolerance) where the arithmetic is the same: the residual add, the bias, several
matrices in one launch against one launch each, the fused gate_up tensor against two tensors, and
the scale invariance of RMSNorm (eps = 0, x scaled by 2^3).

The simulator costs a few ms per simulated thread: shapes and example counts are small, and most
examples pin the launch configuration (warps, rows per warp) so that a launch is one or two blocks.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import ON_GPU, assert_close, assert_qkv_rope_equal, requires_cuda
from ref.ggml import BLOCK_SIZES, GGMLType
from ref.matmul import matmul as ref_matmul, term_magnitude
from ref.quants import k_scale_min
from ref.rmsnorm import rmsnorm
from ref.swiglu import swiglu

U = 2.0 ** -24
TYPES = [GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q5_K,
         GGMLType.Q6_K, GGMLType.F16, GGMLType.F32]
# (warps per block, rows per warp); the simulator pays per block and per thread: small blocks
CONFIGS = [(4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (8, 4)] if ON_GPU else [(2, 1), (2, 4), (4, 2), (4, 4)]
WIDTHS = [32, 8, 16]                                         # v4, v5, v6
EXAMPLES = 40 if ON_GPU else 20
EPS = 1e-5
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def km():
    from numba_kernels import matmul
    return matmul


@pytest.fixture(autouse=True)
def float_products(monkeypatch):
    """This file tests the float32 decode products (v4-v18): no launch takes v20's integer products, which the
    default (``LLAMA_BETA_DP4A=auto``) picks for rows of 2048 weights or more (tests/test_matvec_x8.py has v20)."""
    from ref.matmul import X8Choice
    monkeypatch.setattr(km(), "X8", X8Choice())


def dev(a):
    from numba import cuda
    return None if a is None else cuda.to_device(np.ascontiguousarray(a))  # the GPU's reshape needs contiguity


def block_k(gt):
    """Weights per block (32 for F16/F32: the fused kernels want K a multiple of 32 there, else v5)."""
    return max(BLOCK_SIZES[gt][0], 32)


def weight(rng, gt, N, K):
    return km().random_weight(rng, gt, N, K)


def magnitude(x, w, gt, K):
    """sum_k |x_k| |W_nk|, and for Q4_K/Q5_K + 2 sum_k |x_k| |dmin m| (see the module docstring)."""
    mag = term_magnitude(x[None], w, gt, K)[0]
    if gt in (GGMLType.Q4_K, GGMLType.Q5_K):
        blocks = w.reshape(-1, BLOCK_SIZES[gt][1])
        dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)      # [blocks, 1]
        dm = np.repeat(dmin * k_scale_min(blocks[:, 4:16])[1], 32, axis=1)     # [blocks, 256]
        mag = mag + 2 * np.abs(dm.reshape(w.shape[0], K)) @ np.abs(x.astype(np.float64))
    return mag


def tolerance(K, norm):
    gamma = K * U / (1 - K * U)
    return 2 * gamma + 10 * U + ((gamma / 2 + 10 * U) if norm else 0.0)


def reference(x, nw, mats, residual=None):
    """[(y, M)] for mats = [(w, type, K, bias)]: the composition of the NumPy reference stages."""
    xn = x if nw is None else rmsnorm(x, nw, EPS)
    out = []
    for w, gt, K, b in mats:
        y = ref_matmul(xn, w, gt, K, b)
        mag = magnitude(xn, w, gt, K) + (0 if b is None else np.abs(b))
        if residual is not None:
            y, mag = (residual + y).astype(np.float32), mag + np.abs(residual)
        out.append((y, mag))
    return out


def assert_terms(got, want, mag, tol, name):
    scale = np.asarray(mag, np.float64) + 1e-30
    assert_close(np.asarray(got, np.float64) / scale, np.asarray(want, np.float64) / scale, atol=tol, rtol=0.0,
                 name=f"{name} (in units of sum|x' w|)")


def problem(seed, gt, N, nb, norm):
    rng = np.random.default_rng(seed)
    K = nb * block_k(gt)
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    return rng, x, nw, weight(rng, gt, N, K), K


def check_decode_matvec(rng, x, nw, w, gt, K, width, cfg, with_bias, accumulate, label=""):
    """One launch_decode_matvec of W [N, K] against the composition of the reference stages, with a bias
    and a residual (accumulate) drawn from rng when asked."""
    N = w.shape[0]
    b = rng.standard_normal(N).astype(np.float32) if with_bias else None
    res = rng.standard_normal(N).astype(np.float32) if accumulate else None
    (want, mag), = reference(x, nw, [(w, gt, K, b)], res)
    out = dev(res if accumulate else np.zeros(N, np.float32))
    km().launch_decode_matvec(dev(x), dev(w), gt, K, out, bias=dev(b), norm_weight=dev(nw), eps=EPS,
                              accumulate=accumulate, width=width, config=cfg)
    assert_terms(out.copy_to_host(), want, mag, tolerance(K, nw is not None),
                 f"{label}{gt.name} width={width} cfg={cfg} N={N} K={K} norm={nw is not None} bias={with_bias} "
                 f"acc={accumulate}")


# --- decode_matvec: every type, width, launch configuration, with/without norm, bias, residual --
@requires_cuda
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), gt=st.sampled_from(TYPES), nb=st.sampled_from([1, 3, 5] if ON_GPU else [1, 3]),
       width=st.sampled_from(WIDTHS), cfg=st.sampled_from(CONFIGS), extra=st.integers(0, 2 ** 16),
       norm=st.booleans(), with_bias=st.booleans(), accumulate=st.booleans())
def test_decode_matvec_matches_ref(seed, gt, nb, width, cfg, extra, norm, with_bias, accumulate):
    rows_per_block = cfg[0] * cfg[1]
    N = 1 + extra % (rows_per_block + 3)          # 1-2 blocks; N mostly not a multiple of a block's rows
    rng, x, nw, w, K = problem(seed, gt, N, nb, norm)
    check_decode_matvec(rng, x, nw, w, gt, K, width, cfg, with_bias, accumulate)


@requires_cuda
@pytest.mark.parametrize("gt", [GGMLType.Q5_0])
def test_public_decode_matvec_shapes_residual_and_bias_are_exact(gt):
    """[1, K] -> [1, N] with the default launch; accumulate == float32(residual + plain result);
    the bias is one float32 addition."""
    rng, x, nw, w, K = problem(11, gt, 13, 2, True)
    b = rng.standard_normal(13).astype(np.float32)
    res = rng.standard_normal((1, 13)).astype(np.float32)
    w_d, x_d, nw_d = dev(w), dev(x[None]), dev(nw)
    plain, biased, acc = dev(np.zeros((1, 13), np.float32)), dev(np.zeros((1, 13), np.float32)), dev(res)
    assert km().decode_matvec(x_d, w_d, gt, K, plain, norm_weight=nw_d, eps=EPS, mma=False) is plain
    km().decode_matvec(x_d, w_d, gt, K, biased, bias=dev(b), norm_weight=nw_d, eps=EPS, mma=False)
    km().decode_matvec(x_d, w_d, gt, K, acc, bias=dev(b), norm_weight=nw_d, eps=EPS, accumulate=True,
                       mma=False)
    p, bb, a = plain.copy_to_host(), biased.copy_to_host(), acc.copy_to_host()
    np.testing.assert_array_equal(bb, (p + b).astype(np.float32))
    np.testing.assert_array_equal(a, (res + bb).astype(np.float32))
    (want, mag), = reference(x, nw, [(w, gt, K, b)])
    assert_terms(bb[0], want, mag, tolerance(K, True), f"public {gt.name}")


@requires_cuda
def test_rmsnorm_inside_is_scale_invariant():
    """x and 8x give the same x' bit for bit when eps = 0 (power-of-4 scaling of the mean is exact)."""
    gt = GGMLType.Q8_0
    rng, x, nw, w, K = problem(5, gt, 9, 3, True)
    outs = []
    for s in (1.0, 8.0):
        o = dev(np.zeros(9, np.float32))
        km().launch_decode_matvec(dev(x * np.float32(s)), dev(w), gt, K, o, norm_weight=dev(nw), eps=0.0,
                                  config=(4, 4))
        outs.append(o.copy_to_host())
    np.testing.assert_array_equal(outs[0], outs[1])


@requires_cuda
def test_f16_with_k_not_a_multiple_of_32_falls_back_to_v5():
    gt = GGMLType.F16
    rng = np.random.default_rng(2)
    K, N = 40, 5
    x, w = rng.standard_normal(K).astype(np.float32), weight(rng, gt, N, K)
    o = dev(np.zeros(N, np.float32))
    km().decode_matvec(dev(x), dev(w), gt, K, o)
    (want, mag), = reference(x, None, [(w, gt, K, None)])
    assert_terms(o.copy_to_host(), want, mag, tolerance(K, False), "F16 K=40")
    with pytest.raises(ValueError, match="multiple of 32"):
        km().launch_decode_matvec(dev(x), dev(w), gt, K, o, width=32)


# --- several matrices, one launch ------------------------------------------------------------
@requires_cuda
@settings(max_examples=3 if not ON_GPU else 20, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=3),
       rows=st.lists(st.integers(1, 100 if ON_GPU else 9), min_size=3, max_size=3), norm=st.booleans(),
       with_bias=st.booleans())
def test_multi_matches_ref_and_separate_launches(seed, types, rows, norm, with_bias):
    rng = np.random.default_rng(seed)
    K = 256 if any(block_k(t) == 256 for t in types) else 96
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    mats = [(weight(rng, t, n, K), t, K, rng.standard_normal(n).astype(np.float32) if with_bias else None)
            for t, n in zip(types, rows)]
    outs = [dev(np.zeros((1, m[0].shape[0]), np.float32)) for m in mats]
    dmats = [(dev(w), t, k, dev(b)) for w, t, k, b in mats]
    assert km().decode_matvec_multi(dev(x), dmats, outs, norm_weight=dev(nw), eps=EPS) is outs
    for o, (want, mag), m in zip(outs, reference(x, nw, mats), mats):
        got = o.copy_to_host()[0]
        assert_terms(got, want, mag, tolerance(K, norm), f"multi {[t.name for t in types]} {m[1].name}")
    # each row's sum does not depend on its neighbours: one launch each gives the same bits
    w0, t0, _, b0 = dmats[-1]
    alone = dev(np.zeros(mats[-1][0].shape[0], np.float32))
    km().decode_matvec(dev(x), w0, t0, K, alone, bias=b0, norm_weight=dev(nw), eps=EPS, mma=False)
    np.testing.assert_array_equal(alone.copy_to_host(), outs[-1].copy_to_host()[0])


# --- SwiGLU: gate, up and silu(g) u in one launch -------------------------------------------
def assert_swiglu(got, g, gm, u, um, tol, name):
    """|got - silu(g) u| <= tol (1.1 M_g (|u| + M_u) + (|g| + M_g) M_u) + 8u |silu(g) u|."""
    want = swiglu(g, u)
    bound = tol * (1.1 * gm * (np.abs(u) + um) + (np.abs(g) + gm) * um) + 8 * U * np.abs(want) + 1e-30
    assert_close(np.asarray(got, np.float64) / bound, want.astype(np.float64) / bound, atol=1.0, rtol=0.0, name=name)


@requires_cuda
@settings(max_examples=6 if not ON_GPU else 30, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), gtg=st.sampled_from(TYPES), gtu=st.sampled_from(TYPES),
       extra=st.integers(0, 2 ** 16), width=st.sampled_from(WIDTHS), cfg=st.sampled_from(CONFIGS),
       norm=st.booleans(), fused=st.booleans())
def test_swiglu_matches_ref(seed, gtg, gtu, extra, width, cfg, norm, fused):
    F = 1 + extra % (cfg[0] * cfg[1] + 3)
    rng = np.random.default_rng(seed)
    K = max(block_k(gtg), block_k(gtu))
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    if fused:                                        # Phi-3: gate rows 0..F-1, up rows F..2F-1
        wgu = weight(rng, gtg, 2 * F, K)
        (gu, m), = reference(x, nw, [(wgu, gtg, K, None)])
        g, gm, u, um = gu[:F], m[:F], gu[F:], m[F:]
        wg_d, wu_d, gtu, up0 = dev(wgu), None, gtg, F
    else:
        wg, wu = weight(rng, gtg, F, K), weight(rng, gtu, F, K)
        (g, gm), (u, um) = reference(x, nw, [(wg, gtg, K, None), (wu, gtu, K, None)])
        wg_d, wu_d, up0 = dev(wg), dev(wu), 0
    out = dev(np.zeros(F, np.float32))
    km().launch_decode_swiglu(dev(x), wg_d, gtg, wg_d if fused else wu_d, gtu, up0, K, out, norm_weight=dev(nw),
                              eps=EPS, width=width, config=cfg)
    assert_swiglu(out.copy_to_host(), g, gm, u, um, tolerance(K, norm),
                  f"swiglu {gtg.name}/{gtu.name} fused={fused} F={F} width={width} cfg={cfg}")


@requires_cuda
def test_swiglu_fused_tensor_equals_two_tensors():
    """decode_matvec_swiglu(w_up=None) on [gate; up] == the same rows as two tensors, bit for bit."""
    gt = GGMLType.Q4_K
    rng, x, nw, wgu, K = problem(3, gt, 2 * 7, 1, True)
    a, b = dev(np.zeros(7, np.float32)), dev(np.zeros((1, 7), np.float32))
    km().decode_matvec_swiglu(dev(x), dev(wgu), None, gt, None, K, a, norm_weight=dev(nw))
    km().decode_matvec_swiglu(dev(x), dev(wgu[:7]), dev(wgu[7:]), gt, gt, K, b, norm_weight=dev(nw))
    np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host()[0])
    (gu, m), = reference(x, nw, [(wgu, gt, K, None)])
    assert_swiglu(a.copy_to_host(), gu[:7], m[:7], gu[7:], m[7:], tolerance(K, True), "fused gate_up")


@requires_cuda
@pytest.mark.parametrize("kind", ["_warm_row_l2", "_warm_row_loads"])
def test_row_warm_up_changes_no_result(kind, monkeypatch):
    """The warm-up (v17: an L2 bulk prefetch per row; v8: loads) only asks for bytes before x' is staged:
    with and without it, every fused kernel (plain, split-K, Q/K/V, SwiGLU) gives the same bits, rows past N
    included (they warm row N - 1; the simulator's prefetch checks that its bytes lie inside the weight)."""
    k = km()
    monkeypatch.setattr(k, "_warm_row", getattr(k, kind))
    k.forget_decode_kernels()
    rng, x, nw, w, K = problem(5, GGMLType.Q6_K, 11, 2, True)
    wq = weight(rng, GGMLType.Q5_0, 9, K)

    def run():
        outs = [dev(np.zeros(n, np.float32)) for n in (11, 11, 11, 9, 5)]
        k.launch_decode_matvec(dev(x), dev(w), GGMLType.Q6_K, K, outs[0], norm_weight=dev(nw), config=(2, 4))
        k.launch_decode_matvec(dev(x), dev(w), GGMLType.Q6_K, K, outs[1], config=(4, 1, 2))      # split-K
        k.launch_decode_multi(dev(x), [(dev(w), GGMLType.Q6_K, None), (dev(wq), GGMLType.Q5_0, None)],
                              outs[2:4], K, norm_weight=dev(nw), config=(2, 2))
        k.launch_decode_swiglu(dev(x), dev(w), GGMLType.Q6_K, dev(w), GGMLType.Q6_K, 6, K, outs[4], config=(2, 2))
        return [o.copy_to_host() for o in outs]

    monkeypatch.setattr(k, "WARM", True)
    warm = run()
    monkeypatch.setattr(k, "WARM", False)
    for a, b in zip(warm, run()):
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()
    k.forget_decode_kernels()                    # the default warm-up's kernels for the tests after


def test_decode_launch_bounds_are_opt_in(monkeypatch):
    """DECODE_MIN_BLOCKS (an experiment) puts launch bounds of NW warps x b blocks per SM on the fused decode
    kernels; off (0) they get none, and the simulator's jit never does (it takes no launch_bounds)."""
    k = km()
    monkeypatch.setattr(k.config, "ENABLE_CUDASIM", False)
    monkeypatch.setattr(k, "DECODE_MIN_BLOCKS", 0)
    assert "launch_bounds" not in k._decode_jit(8)
    monkeypatch.setattr(k, "DECODE_MIN_BLOCKS", 4)
    assert k._decode_jit(8)["launch_bounds"] == (256, 4) and k._decode_jit(4)["launch_bounds"] == (128, 4)
    monkeypatch.setattr(k.config, "ENABLE_CUDASIM", True)
    assert "launch_bounds" not in k._decode_jit(8)


def _stage_kernels():
    """Kernels running v13's four-loads staging and the one-load loop before it, copying x' out of shared
    memory (``cuda`` a module global, as the simulator needs)."""
    global cuda
    from numba import cuda, float32
    k = km()

    def make(body):
        @cuda.jit
        def stage(x, nw, has_norm, eps, K, out):
            xs = cuda.shared.array(0, float32)
            red = cuda.shared.array(32, float32)
            body(x, nw, has_norm, eps, K, xs, red)
            i = cuda.threadIdx.x
            while i < K + K // 32 + 1:                 # the padding and the spare slot too
                out[i] = xs[i]
                i += cuda.blockDim.x
        return stage

    return make(k._stage_x4), make(k._stage_x1)


@requires_cuda
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), K=st.integers(1, 700), warps=st.sampled_from([1, 2, 4]), norm=st.booleans())
def test_staging_with_four_loads_is_bit_identical(seed, K, warps, norm):
    """v13 stages x' with four loads in flight per thread, stores x raw and scales it in place: the same
    per-thread order of the sum of squares and the same (x * scale) * nw per element as the one-load loop,
    so the same bits at every padded index (K below, between and above multiples of 4 x threads)."""
    four, one = _stage_kernels()
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(K) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    nw = rng.standard_normal(K).astype(np.float32)
    n = K + K // 32 + 1
    outs = []
    for kern in (four, one):
        out = dev(np.zeros(n, np.float32))
        kern[1, 32 * warps, 0, 4 * n](dev(x), dev(nw), norm, np.float32(EPS), K, out)
        outs.append(out.copy_to_host())
    p = np.arange(K)
    np.testing.assert_array_equal(outs[0][p + p // 32], outs[1][p + p // 32])
    want = rmsnorm(x, nw, EPS) if norm else x
    assert_close(outs[0][p + p // 32], want, rtol=K * U + 1e-6, atol=0.0, name="x'")   # float32 sum of squares


@pytest.fixture
def vector_loads(monkeypatch):
    """Set matmul.VECTOR_LOADS (v15) for the kernels built next; the default and its kernels come back after."""
    def use(on):
        monkeypatch.setattr(km(), "VECTOR_LOADS", on)
        km().forget_decode_kernels()
    yield use
    monkeypatch.undo()
    km().forget_decode_kernels()


@requires_cuda
@pytest.mark.parametrize("gt", [GGMLType.Q4_K, GGMLType.Q5_K])
def test_vector_loads_change_no_result(gt, vector_loads):
    """v15 reads a Q4_K/Q5_K unit's quants in 16-byte loads instead of 4-byte ones; the arithmetic is the same,
    so matvec (widths 32 and 16 take the new loads, 8 keeps the old) and SwiGLU give the same bits both ways,
    and the products match the reference."""
    rng, x, nw, w, K = problem(7, gt, 2 * 5, 2, True)
    cfg = (8, 2) if ON_GPU else (2, 2)
    results = []
    for on in (False, True):
        vector_loads(on)
        got = []
        for width in (32, 16, 8):
            out = dev(np.zeros(10, np.float32))
            km().launch_decode_matvec(dev(x), dev(w), gt, K, out, norm_weight=dev(nw), eps=EPS, width=width,
                                      config=cfg)
            got.append(out.copy_to_host())
        act = dev(np.zeros(5, np.float32))
        km().decode_matvec_swiglu(dev(x), dev(w), None, gt, None, K, act, norm_weight=dev(nw))
        got.append(act.copy_to_host())
        results.append(got)
    for old, new in zip(*results):
        np.testing.assert_array_equal(new, old)
    (want, mag), = reference(x, nw, [(w, gt, K, None)])
    for got in results[1][:3]:
        assert_terms(got, want, mag, tolerance(K, True), f"v15 {gt.name}")


@pytest.fixture
def stage_rows(monkeypatch):
    """Set matmul.STAGE_ROWS (v18) and count the launches it serves; the default comes back after."""
    launches = []
    staged = km()._launch_staged_swiglu

    def counting(*args):
        launches.append(args[2])
        staged(*args)

    monkeypatch.setattr(km(), "_launch_staged_swiglu", counting)

    def use(on):
        monkeypatch.setattr(km(), "STAGE_ROWS", on)
        return launches
    yield use
    monkeypatch.undo()


# K per type whose rows are whole multiples of 16 bytes (v18 copies whole rows); Q6_K needs 8 blocks
STAGED_K = {GGMLType.Q4_K: 512, GGMLType.Q5_K: 256, GGMLType.Q6_K: 2048, GGMLType.Q8_0: 256,
            GGMLType.Q5_0: 256, GGMLType.Q4_0: 512}


@requires_cuda
@pytest.mark.parametrize("gt", list(STAGED_K))
def test_staged_rows_change_no_result(gt, stage_rows):
    """v18 copies each warp's gate and up rows into shared memory before the dot products read them; the
    arithmetic is the same, so SwiGLU gives the same bits with and without it: a fused gate_up tensor and two
    tensors, F not a multiple of the rows per block (rows past F copy row F - 1 and are not stored)."""
    K, F = STAGED_K[gt], 11
    rng = np.random.default_rng(int(gt))
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32)
    gate_up, gate, up = weight(rng, gt, 2 * F, K), weight(rng, gt, F, K), weight(rng, gt, F, K)
    results = []
    for on in (False, True):
        launches = stage_rows(on)
        got = []
        for w_g, w_u in ((gate_up, None), (gate, up)):
            act = dev(np.zeros(F, np.float32))
            km().decode_matvec_swiglu(dev(x), dev(w_g), None if w_u is None else dev(w_u), gt, gt, K, act,
                                      norm_weight=dev(nw), eps=EPS, mma=False)
            got.append(act.copy_to_host())
        assert len(launches) == (2 if on else 0), "the staged kernel served these launches"
        results.append(got)
    for old, new in zip(*results):
        np.testing.assert_array_equal(new, old)
    g, gm = reference(x, nw, [(gate, gt, K, None)])[0]
    u, um = reference(x, nw, [(up, gt, K, None)])[0]
    assert_swiglu(results[1][1], g, gm, u, um, tolerance(K, True), f"v18 {gt.name}")


@requires_cuda
def test_staged_rows_leave_rows_of_other_sizes_to_v17(stage_rows):
    """Rows that are not whole multiples of 16 bytes (Q6_K at K = 256: 210 bytes), or gate and up of two types,
    stay on the unstaged kernel."""
    launches = stage_rows(True)
    rng = np.random.default_rng(5)
    for gtg, gtu, K in ((GGMLType.Q6_K, GGMLType.Q6_K, 256), (GGMLType.Q4_K, GGMLType.Q5_K, 256)):
        act = dev(np.zeros(3, np.float32))
        km().decode_matvec_swiglu(dev(rng.standard_normal(K).astype(np.float32)), dev(weight(rng, gtg, 3, K)),
                                  dev(weight(rng, gtu, 3, K)), gtg, gtu, K, act, mma=False)
    assert launches == []


def test_staged_layout_aligns_every_slot():
    """x', then the barriers from a multiple of 8 bytes, then the row slots from a multiple of the row size."""
    for K, NW, rows, rb in ((3072, 8, 4, 1728), (896, 4, 8, 272), (8192, 16, 1, 6720), (32, 1, 1, 16)):
        bar0, slot0, total = km().staged_layout(K, NW, rows, rb)
        assert 8 * bar0 >= 4 * km().xs_floats(K) and slot0 * rb >= 8 * (bar0 + NW)
        assert slot0 * rb - 8 * (bar0 + NW) < rb and total == (slot0 + NW * rows) * rb and rb % 16 == 0


# --- errors --------------------------------------------------------------------------------------
@requires_cuda
def test_bad_arguments_raise():
    k, gt = km(), GGMLType.Q8_0
    rng = np.random.default_rng(0)
    w, x, o = dev(weight(rng, gt, 4, 64)), dev(np.zeros(64, np.float32)), dev(np.zeros(4, np.float32))
    big = k.MAX_K_FUSED + 32
    with pytest.raises(ValueError, match="shared memory"):
        k.decode_matvec(dev(np.zeros(big, np.float32)), dev(weight(rng, gt, 1, big)), gt, big,
                        dev(np.zeros(1, np.float32)))
    with pytest.raises(ValueError, match="out must be"):
        k.decode_matvec(x, w, gt, 64, dev(np.zeros(5, np.float32)))
    with pytest.raises(ValueError, match="Q2_K is not supported"):
        k.decode_matvec(x, dev(np.zeros((4, 84 // 4), np.uint8)), GGMLType.Q2_K, 64, o)
    with pytest.raises(ValueError, match="1-3 matrices"):
        k.decode_matvec_multi(x, [(w, gt, 64, None)] * 4, [o] * 4)
    with pytest.raises(ValueError, match="same K"):
        k.decode_matvec_multi(x, [(w, gt, 64, None), (dev(weight(rng, gt, 4, 32)), gt, 32, None)], [o, o])
    with pytest.raises(ValueError, match="2F = 8 rows"):
        k.decode_matvec_swiglu(x, w, None, gt, None, 64, o)


# --- v7 split-K: S warps share a row, partial sums meet in shared memory ---------------------
# (type, width, (warps, rows per warp, S), blocks of the type, N, norm, bias, accumulate): every type;
# unit counts that do not divide among the S x 32 lanes (K-quants 9 x 8 = 72 units, Q*_0 K = 2208
# = 69 units, F16/F32 width 8: 276 / 204 units); N never a multiple of a block's rows, so the last
# block has idle row groups; the simulator runs 64-128 threads a launch.
SPLIT_CASES = [
    (GGMLType.Q8_0, 32, (2, 1, 2), 69, 3, True, True, True),
    (GGMLType.Q5_0, 32, (4, 2, 2), 69, 5, False, True, False),
    (GGMLType.Q4_0, 32, (2, 2, 2), 69, 3, True, False, True),
    (GGMLType.Q4_K, 32, (2, 1, 2), 9, 3, False, False, True),
    (GGMLType.Q5_K, 32, (2, 1, 2), 9, 1, True, True, False),
    (GGMLType.Q6_K, 32, (4, 1, 4), 9, 2, True, True, True),
    (GGMLType.F16, 8, (2, 1, 2), 69, 3, False, True, True),
    (GGMLType.F32, 16, (2, 2, 2), 102, 3, True, False, False),
]


@requires_cuda
@pytest.mark.parametrize("gt, width, cfg, nb, N, norm, with_bias, accumulate", SPLIT_CASES,
                         ids=[c[0].name for c in SPLIT_CASES])
def test_split_k_matches_ref(gt, width, cfg, nb, N, norm, with_bias, accumulate):
    rng = np.random.default_rng(int(gt) * 7 + N)
    K = nb * (BLOCK_SIZES[gt][0] if gt not in (GGMLType.F16, GGMLType.F32) else 8)
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    w = weight(rng, gt, N, K)
    check_decode_matvec(rng, x, nw, w, gt, K, width, cfg, with_bias, accumulate, label="split ")


@requires_cuda
def test_split_k_residual_and_bias_are_exact():
    """With a split, the bias is still one float32 addition and accumulate == residual + result."""
    gt, cfg = GGMLType.Q8_0, (2, 1, 2)
    rng, x, nw, w, K = problem(13, gt, 3, 80, True)        # 80 units: lanes of both warps, 2 steps for some
    b, res = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    x_d, w_d, nw_d = dev(x), dev(w), dev(nw)
    plain, biased, acc = dev(np.zeros(3, np.float32)), dev(np.zeros(3, np.float32)), dev(res)
    for o, bias, a in ((plain, None, False), (biased, dev(b), False), (acc, dev(b), True)):
        km().launch_decode_matvec(x_d, w_d, gt, K, o, bias=bias, norm_weight=nw_d, eps=EPS, accumulate=a, config=cfg)
    p, bb, a = plain.copy_to_host(), biased.copy_to_host(), acc.copy_to_host()
    np.testing.assert_array_equal(bb, (p + b).astype(np.float32))
    np.testing.assert_array_equal(a, (res + bb).astype(np.float32))
    (want, mag), = reference(x, nw, [(w, gt, K, b)])
    assert_terms(bb, want, mag, tolerance(K, True), "split Q8_0 biased")


def test_split_config_heuristic(monkeypatch):
    """Host-only: which shapes split on a 132-SM GPU, and the config checks."""
    k = km()
    monkeypatch.setattr(k, "_sm_count", lambda: 132)
    assert k.split_config(896, 4864) == (k.SPLIT_WARPS, 1, 4)      # Qwen ffn_down
    assert k.split_config(3072, 8192) == (k.SPLIT_WARPS, 1, 2)     # Phi-3 ffn_down
    assert k.split_config(896, 896) is None                        # 28 units a row: one step already
    assert k.split_config(4864, 896) is None and k.split_config(151936, 896) is None
    assert k.split_config(896, 896, min_split=2) == (k.SPLIT_WARPS, 1, 2)
    monkeypatch.setattr(k, "SPLIT_K", True)                         # the default (LLAMA_BETA_SPLIT_K unset)
    assert k.decode_config(896, 4864) == (k.SPLIT_WARPS, 1, 4)
    assert k.decode_config(4864, 896) == k.fused_config(4864)      # shapes that do not split stay on v4
    monkeypatch.setattr(k, "SPLIT_K", False)                        # LLAMA_BETA_SPLIT_K=0
    assert k.decode_config(896, 4864) == k.fused_config(896)


# --- v9: Q/K/V products, RoPE and the KV append in one launch ---------------------------------
@requires_cuda
@settings(max_examples=6 if not ON_GPU else 8, **SETTINGS)   # GPU: each type triple compiles three kernels (~25 s)
@given(seed=st.integers(0, 2 ** 32 - 1), types=st.lists(st.sampled_from(TYPES), min_size=3, max_size=3),
       heads=st.sampled_from([(2, 1), (3, 3), (4, 2)] if not ON_GPU else [(2, 1), (3, 3), (14, 2), (32, 32)]),
       hs=st.sampled_from([8, 10, 12] if not ON_GPU else [32, 64, 96, 128, 80]), partial=st.booleans(),
       neox=st.booleans(), norm=st.booleans(), with_bias=st.booleans(), factors=st.booleans(),
       pos=st.integers(0, 5 if not ON_GPU else 4000), pairs=st.sampled_from([1, 2]), prefetch=st.booleans())
@example(seed=1, types=[GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.F16], heads=(2, 1), hs=10, partial=False, neox=True,
         norm=True, with_bias=True, factors=False, pos=3, pairs=2, prefetch=True)   # k: 5 slots, a warp's second past the end
@example(seed=52990, types=[GGMLType.Q8_0, GGMLType.Q8_0, GGMLType.Q5_K], heads=(2, 1), hs=8, partial=False,
         neox=False, norm=True, with_bias=False, factors=False, pos=0, pairs=1, prefetch=False)   # once failed: blocks of two sizes
def test_qkv_rope_equals_multi_then_rope_append(seed, types, heads, hs, partial, neox, norm, with_bias, factors,
                                                pos, pairs, prefetch):
    """decode_qkv_rope = decode_matvec_multi into q, k, v, then rope.rope_qk_append: v's cache row and
    every row outside a rotated pair bit for bit (the same row sums); the rotated pairs up to the
    compiler's FMA contraction of the rotation (a few ulp of |a c| + |b s|). With one RoPE pair slot per
    warp and with two (``QKV_ROPE_PAIRS``; odd slot counts leave a warp's second slot past the matrix), with and
    without the L2 prefetch of the cache rows before pos (``KV_PREFETCH``: a hint, it must change nothing)."""
    from numba_kernels import rope

    rng = np.random.default_rng(seed)
    nh, nkv = heads
    K = 256 if any(block_k(t) == 256 for t in types) else 64
    rot = hs // 2 if partial and hs % 4 == 0 else hs
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    mats = [(dev(weight(rng, t, n * hs, K)), t, K, dev(rng.standard_normal(n * hs).astype(np.float32))
             if with_bias else None) for t, n in zip(types, (nh, nkv, nkv))]
    ff = dev(rng.uniform(1.0, 4.0, rot // 2).astype(np.float32)) if factors else None
    kw = dict(rot_dims=rot, neox=neox, freq_scale=0.5, freq_factors=ff, attn_factor=1.25)
    S = pos + 3
    start = rng.standard_normal((2, S, nkv, hs)).astype(np.float32)
    pos_d = dev(np.array([pos], np.int32))
    q1, k1, v1 = dev(np.zeros((1, nh, hs), np.float32)), dev(start[0]), dev(start[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(km(), "QKV_ROPE_PAIRS", pairs)
        mp.setattr(km(), "KV_PREFETCH", prefetch)
        assert km().decode_qkv_rope(dev(x), mats, q1, k1, v1, pos_d, 10000.0, norm_weight=dev(nw), eps=EPS, **kw) is q1
    q2, k, v = (dev(np.zeros((1, n, hs), np.float32)) for n in (nh, nkv, nkv))
    # blocks of the Q/K/V launch's size: x' (its float32 sum of squares over the block) is then the same bits
    warps = km().QKV_ROPE_WARPS if km()._sm_count() else 2
    km().launch_decode_multi(dev(x), [(w, t, b) for w, t, _, b in mats], [q2.reshape(-1), k.reshape(-1), v.reshape(-1)],
                             K, norm_weight=dev(nw), eps=EPS, config=(warps, 1))
    k2, v2 = dev(start[0]), dev(start[1])
    rope.rope_qk_append(q2, k, v, k2, v2, pos_d, 10000.0, **kw)
    assert_qkv_rope_equal((q1, k1, v1), (q2, k2, v2), rot, f"{[t.name for t in types]} hs={hs} rot={rot} neox={neox}")


@requires_cuda
def test_qkv_rope_refuses_mismatched_shapes():
    from numba import cuda

    mats = [(dev(np.zeros((n, 34), np.uint8)), GGMLType.Q8_0, 32, None) for n in (16, 8, 8)]
    q = dev(np.zeros((1, 2, 8), np.float32))
    cache = dev(np.zeros((4, 1, 8), np.float32))
    pos = dev(np.zeros(1, np.int32))
    x = dev(np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="decode_qkv_rope"):           # V with Q's row count
        km().decode_qkv_rope(x, mats[:2] + [mats[0]], q, cache, cache, pos, 1e4)
    with pytest.raises(ValueError, match="decode_qkv_rope"):           # a value cache of two kv heads
        km().decode_qkv_rope(x, mats, q, cache, dev(np.zeros((4, 2, 8), np.float32)), pos, 1e4)
    with pytest.raises(ValueError, match="device arrays"):
        km().decode_qkv_rope(np.zeros(32, np.float32), mats, q, cache, cuda.to_device(np.zeros((4, 1, 8), np.float32)),
                             np.zeros(1, np.int32), 1e4)


_CACHE_KEY_SCRIPT = """
import hashlib, sys
from numba.core.serialize import dumps
from numba_kernels import matmul
from ref.ggml import GGMLType
T = (GGMLType.Q4_K,) * 3
kernels = [*matmul._fused_kernels(T, 32, 4, 4), matmul._qkv_rope_kernel(T, 32, 4),
           matmul._split_kernel(GGMLType.Q4_K, 32, 1, 16, 4)]
# Numba's disk-cache key hashes a kernel's bytecode and the pickle of its closure's cells
# (numba.core.caching.Cache._index_key): the second part is what tells settings apart
print(" ".join(hashlib.sha256(dumps(tuple(c.cell_contents for c in k.py_func.__closure__))).hexdigest()[:16]
               for k in kernels))
"""


@pytest.mark.parametrize("setting", ["LLAMA_BETA_WARM_L2", "LLAMA_BETA_VECTOR_LOADS"])
def test_disk_cache_key_sees_the_decode_settings(setting):
    """v15 and v17 are chosen when the module loads; the kernels built with either choice must have different
    disk-cache keys, else a later process would be handed the other choice's kernels. (Built without the
    simulator, whose kernels are not cached; building compiles nothing, so no GPU is needed.)"""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    keys = {}
    for value in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        env.update({setting: value, "PYTHONPATH": root})
        run = subprocess.run([sys.executable, "-c", _CACHE_KEY_SCRIPT], env=env, cwd=root, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        keys[value] = run.stdout.split()
    assert len(keys["0"]) == len(keys["1"]) == 5
    for off, on in zip(keys["0"], keys["1"]):
        assert off != on


# --- v22: Q8_0 as a quant plane and a scale plane (the output product's layout) ----------------
# (warps, rows per lane group, passes); N is drawn so that the last pass has idle lane groups and,
# with passes > 1, warps whose later passes start past N.
PLANAR_CONFIGS = [(1, 1, 1), (1, 2, 1), (2, 1, 2), (1, 1, 3)]


@requires_cuda
def test_planar_layout_is_the_reference_split():
    """The device repack (``PlanarQ8``) holds exactly ``ref.quants.planar_q8_0``'s planes."""
    from ref.quants import planar_q8_0
    rng = np.random.default_rng(3)
    w = weight(rng, GGMLType.Q8_0, 5, 256)
    planar = km().PlanarQ8(dev(w), 256)
    qs, d = planar_q8_0(w)
    np.testing.assert_array_equal(planar.qs.copy_to_host(), qs)
    np.testing.assert_array_equal(planar.d.copy_to_host().view(np.uint16), d.view(np.uint16))


@requires_cuda
@settings(max_examples=EXAMPLES // 2, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), steps=st.sampled_from([1, 2] if not ON_GPU else [1, 2, 7]),
       cfg=st.sampled_from(PLANAR_CONFIGS), extra=st.integers(0, 2 ** 16), norm=st.booleans(),
       with_bias=st.booleans())
def test_planar_q8_matches_ref(seed, steps, cfg, extra, norm, with_bias):
    nw_, R, passes = cfg
    N = 1 + extra % (nw_ * 4 * R * passes + 5)             # up to one block's rows and a few more
    rng, x, nw, w, K = problem(seed, GGMLType.Q8_0, N, 4 * steps, norm)
    b = rng.standard_normal(N).astype(np.float32) if with_bias else None
    (want, mag), = reference(x, nw, [(w, GGMLType.Q8_0, K, b)])
    out = dev(np.zeros(N, np.float32))
    km().launch_planar_q8(dev(x), km().PlanarQ8(dev(w), K), out, bias=dev(b), norm_weight=dev(nw), eps=EPS,
                          config=cfg)
    assert_terms(out.copy_to_host(), want, mag, tolerance(K, norm), f"v22 cfg={cfg} N={N} K={K} norm={norm}")


@requires_cuda
def test_planar_bias_is_one_addition_and_bad_shapes_raise():
    rng, x, nw, w, K = problem(5, GGMLType.Q8_0, 9, 8, True)
    b = rng.standard_normal(9).astype(np.float32)
    planar = km().PlanarQ8(dev(w), K)
    plain, biased = dev(np.zeros(9, np.float32)), dev(np.zeros(9, np.float32))
    for o, bias in ((plain, None), (biased, dev(b))):
        km().launch_planar_q8(dev(x), planar, o, bias=bias, norm_weight=dev(nw), eps=EPS, config=(1, 1, 2))
    np.testing.assert_array_equal(biased.copy_to_host(), (plain.copy_to_host() + b).astype(np.float32))
    with pytest.raises(ValueError, match="K=96 must be a multiple of 128"):
        km().launch_planar_q8(dev(x[:96]), km().PlanarQ8(dev(weight(rng, GGMLType.Q8_0, 2, 96)), 96), plain)
    with pytest.raises(ValueError, match="not the 4 Q8_0 blocks of K=128"):
        km().PlanarQ8(dev(weight(rng, GGMLType.Q8_0, 2, 256)), 128)
    assert not km().planar_q8_0_fits(GGMLType.Q6_K, 1 << 16, 896)
    assert km().planar_q8_0_fits(GGMLType.Q8_0, 151936, 896)
