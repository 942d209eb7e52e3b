"""matmul v20 (``LLAMA_BETA_DP4A``: "auto", the default, or "1"): Q4_K, Q5_K, Q5_0, Q6_K and Q8_0 decode products
multiplied with ``dp4a`` (a lane per pair of sub-blocks, lane groups of 8-32 lanes per row), against their
reference ``ref.matmul.matmul_x8``; and the reference's own
properties (the rounding of x is at most half a step; the product differs from the float32 one by at most
that rounding times |W|).

Tolerance of kernel against reference, in units of the term magnitude M = sum over sub-blocks of
|d_j (d_s c_s) sum_i u_i q_i| + |d_m m_s| sum_i |x_i|: the integer sums are exact and the codes q are the
same bits (the quantization is computed in the same float32 steps); what differs is the float32 sum of the
K/32 sub-block terms per row (lane sums, then a warp tree) and the block sums s_j (another order), so
gamma_{K/32 + 8} plus 10u for the scalings; with RMSNorm before, + gamma_K / 2 as tests/test_matvec_fused.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ON_GPU, assert_close, assert_qkv_rope_equal, requires_cuda
from ref.ggml import GGMLType
from ref.matmul import X8Choice, matmul, matmul_x8, quantize_x8, term_magnitude, x8_terms
from ref.rmsnorm import rmsnorm
from ref.swiglu import swiglu

U = 2.0 ** -24
Q4K = GGMLType.Q4_K
Q80 = GGMLType.Q8_0
Q50 = GGMLType.Q5_0
Q6K = GGMLType.Q6_K
Q5K = GGMLType.Q5_K
X8_TYPES = [Q4K, Q5K, Q80, Q50, Q6K]
EPS = 1e-5
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                    HealthCheck.function_scoped_fixture])   # dp4a: the same flag for all


def km():
    from numba_kernels import matmul as kernels
    return kernels


def dev(a):
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(a))


def gamma(n):
    return n * U / (1 - n * U)


@settings(max_examples=40, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), blocks=st.integers(1, 12), scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e4]),
       zero_block=st.booleans())
def test_quantize_x8_rounds_each_element_by_at_most_half_a_step(seed, blocks, scale, zero_block):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(32 * blocks) * scale).astype(np.float32)
    if zero_block:
        x[:32] = 0
    q, d, s = quantize_x8(x)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 127
    xb, qb = x.reshape(-1, 32).astype(np.float64), q.reshape(-1, 32).astype(np.float64)
    # half a step, plus the rounding of d and of 1/d (a few units of float32 in the step)
    step = d.astype(np.float64)[:, None]
    assert (np.abs(qb * step - xb) <= step * (0.5 + 1e-5)).all()
    assert (np.abs(qb).max(axis=1)[d > 0] == 127).all(), "the largest element of a block maps to +-127"
    assert (np.abs(s - xb.sum(axis=1)) <= gamma(32) * np.abs(xb).sum(axis=1)).all()   # a float32 sum of 32
    if zero_block:
        assert d[0] == 0 and not q[:32].any()


@settings(max_examples=15, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), nb=st.integers(1, 4), N=st.integers(1, 9),
       wtype=st.sampled_from(X8_TYPES))
def test_matmul_x8_differs_from_float32_by_the_rounding_of_x(seed, nb, N, wtype):
    rng = np.random.default_rng(seed)
    K = 256 * nb
    x = rng.standard_normal(K).astype(np.float32)
    w = km().random_weight(rng, wtype, N, K)
    q, d, _ = quantize_x8(x)
    step = np.repeat(d.astype(np.float64), 32) / 2               # |x - d q| per element
    # The x8 form rounds only the x of the integer dot: the error is sum_i |W_i + m_j| step_i, where m_j is what
    # the block subtracts (K-quants' d_m m_s, Q5_0's 16 d_b, else 0): x = ones gives s_j = 32, so m_j = mins / 32.
    m = np.abs(x8_terms(np.ones(K, np.float32), w, wtype, K)[1]) / 32                 # [N, K/32]
    rounding = term_magnitude(step[None].astype(np.float32), w, wtype, K)[0] + m @ step.reshape(-1, 32).sum(axis=1)
    bound = rounding * (1 + 1e-5) + 8 * gamma(K) * term_magnitude(x[None], w, wtype, K)[0]   # + float32 sums
    scaled, mins = x8_terms(x, w, wtype, K)
    got = (scaled - mins).sum(axis=1)
    assert (np.abs(got - matmul(x, w, wtype, K)) <= bound).all()


@pytest.mark.parametrize("K, lanes", [(256, 8), (768, 16), (3072, 16), (4864, 16), (8192, 32), (2048, 32)])
def test_x8_lanes_leaves_the_fewest_idle_lane_steps(K, lanes):
    """K / 64 pairs a row over groups of 8, 16 or 32 lanes: the fewest idle lane-steps, ties to more lanes."""
    assert km().x8_lanes(K) == lanes
    pairs = K // 64
    assert -(-pairs // lanes) * lanes == min(-(-pairs // g) * g for g in (8, 16, 32))


@requires_cuda
@settings(max_examples=10 if ON_GPU else 4, **SETTINGS)
@given(seed=st.integers(0, 2 ** 32 - 1), blocks=st.integers(1, 40), norm=st.booleans(),
       scale=st.sampled_from([1e-20, 1.0, 1e15]), warps=st.sampled_from([1, 8]))
def test_quantize_x8_kernel_gives_the_reference_codes(seed, blocks, norm, scale, warps):
    """x' as a v20 block rounds it (staging, then a thread per block of 32; with one warp, threads take several
    blocks): the same codes and d_j as ref.matmul.quantize_x8 (the same float32 steps), the block sums within a
    float32 sum of 32 terms (another order), in the padded 33-slot layout."""
    rng = np.random.default_rng(seed)
    K = 32 * blocks
    x = (rng.standard_normal(K) * scale).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    xq = dev(np.zeros(km().xs_floats(K), np.float32))
    km().launch_quantize_x8(dev(x), K, xq, norm_weight=None if nw is None else dev(nw), eps=EPS, n_warps=warps)
    got = xq.copy_to_host()[:K + K // 32].reshape(-1, 33)
    xn = x if nw is None else rmsnorm(x, nw, EPS)
    q, d, s = quantize_x8(xn)
    if norm:   # x' itself may differ in the last bit (the kernel's sum of squares runs in another order)
        codes = got[:, :8].copy().view(np.int8).reshape(-1).astype(int)
        assert np.abs(codes - q).max() <= 1
        np.testing.assert_allclose(got[:, 8], d, rtol=4 * U * K ** 0.5 + 1e-6)
    else:
        np.testing.assert_array_equal(got[:, :8].copy().view(np.int8).reshape(-1), q)
        np.testing.assert_array_equal(got[:, 8], d)
    xb = xn.reshape(-1, 32).astype(np.float64)
    assert (np.abs(got[:, 9] - xb.sum(axis=1)) <= gamma(32) * np.abs(xb).sum(axis=1) * 1.01 + 1e-45).all()


@pytest.mark.parametrize("N, K, want", [(8192, 3072, (8, 1, 16)), (3072, 8192, (8, 1, 32)), (3072, 3072, (4, 1, 16)),
                                         (896, 4864, (4, 1, 16)), (100000, 2048, (8, 4, 32))])
def test_x8_config_keeps_two_blocks_per_sm_with_the_most_rows(monkeypatch, N, K, want):
    """On a GPU of 132 SMs: the most rows per block (NW x 32 / LG x R of each matrix) that still leaves at least
    BLOCKS_PER_SM blocks per SM, else the smallest blocks; a given (warps, rows) is kept."""
    kernels = km()
    monkeypatch.setattr(kernels, "_sm_count", lambda: 132)
    monkeypatch.setattr(kernels, "X8_CONFIG", None)
    nw, r, lg = kernels.x8_config(N, K)
    assert (nw, r, lg) == want
    rows = nw * r * (32 // lg)
    assert -(-N // rows) >= kernels.BLOCKS_PER_SM * 132 or (nw, r) == kernels.FUSED_CONFIGS[-1]
    assert kernels.x8_config(N, K, (2, 4)) == (2, 4, lg)
    # SwiGLU: X8_SWIGLU_WIDEN times the warps (at most 16), the same rows per group
    assert kernels.x8_config(N, K, swiglu=True) == (min(16, nw * kernels.X8_SWIGLU_WIDEN), r, lg)
    assert kernels.x8_config(N, K, (2, 4), swiglu=True) == (2, 4, lg)


def test_x8_choice_follows_the_types_k_and_the_thresholds():
    """A launch takes v20 when the choice is on, the types are v20's (one type for gate/up, each its own for the
    Q/K/V launch), K holds whole pairs, K >= min_k, and a plain product has >= min_rows rows."""
    on = X8Choice(True)
    assert on.gate_up(Q4K, Q4K, 256) and on.product(Q80, 1, 64) and not on.product(Q80, 1, 32)
    assert not on.product(Q4K, 1, 64) and not on.gate_up(Q4K, Q5K, 256)
    assert on.qkv((Q50, Q50, Q80), 896) and not on.qkv((Q50, Q80), 896 + 32)
    assert not on.product(GGMLType.Q4_0, 8, 256) and not on.qkv((Q50, GGMLType.F16), 256)
    auto = X8Choice.from_env({"LLAMA_BETA_DP4A": "auto", "LLAMA_BETA_X8_CHAIN": "0"})
    assert auto == X8Choice(True, 2048, 4096)
    assert not auto.product(Q50, 151936, 896) and not auto.qkv((Q50, Q50, Q80), 896)
    assert auto.gate_up(Q4K, Q4K, 3072) and auto.qkv((Q5K, Q5K, Q5K), 3072) and auto.product(Q6K, 32064, 3072)
    assert not auto.product(Q4K, 3072, 3072) and not auto.product(Q6K, 3072, 8192)   # W_o, W_down: v7 splits
    assert X8Choice.from_env({"LLAMA_BETA_DP4A": "1", "LLAMA_BETA_X8_CHAIN": "0"}) == on
    assert X8Choice.from_env({"LLAMA_BETA_DP4A": "1"}) == X8Choice(True, chain=True)
    assert X8Choice.from_env({"LLAMA_BETA_DP4A": "auto", "LLAMA_BETA_X8_MIN_ROWS": "0"}) == X8Choice(True, 2048,
                                                                                                  chain=True)
    # v21: W_down chained to a v20 gate/up launch (LLAMA_BETA_X8_CHAIN=1, the default) takes v20 whatever its rows
    chained = X8Choice.from_env({"LLAMA_BETA_DP4A": "auto", "LLAMA_BETA_X8_CHAIN": "1"})
    assert chained == X8Choice(True, 2048, 4096, True) and not auto.chain
    assert X8Choice.from_env({}) == chained                                            # the default
    assert chained.down(Q4K, Q4K, Q6K, 8192, 3072, 3072) and not auto.down(Q4K, Q4K, Q6K, 8192, 3072, 3072)
    assert not chained.down(Q4K, Q4K, Q6K, 4864, 896, 896)          # gate/up (K = 896) is not on v20
    assert not chained.down(Q4K, Q4K, GGMLType.Q4_0, 8192, 3072, 3072) and not chained.down_chained(
        Q4K, Q5K, Q6K, 8192, 3072)                                    # W_down's type, gate/up's types
    assert chained.down(Q4K, Q4K, Q80, 128, 2048, 5) and not chained.down(Q4K, Q4K, Q80, 96, 2048, 5)  # F: pairs
    assert auto.down(Q4K, Q4K, Q6K, 8192, 3072, 4096)                 # a plain product of enough rows
    with pytest.raises(ValueError, match="LLAMA_BETA_X8_CHAIN: expected 0 or 1, got 'on'"):
        X8Choice.from_env({"LLAMA_BETA_X8_CHAIN": "on"})
    off = X8Choice.from_env({"LLAMA_BETA_DP4A": "0"})
    assert not off.product(Q4K, 32064, 3072) and not off.qkv((Q5K,), 3072) and not off.gate_up(Q4K, Q4K, 3072)
    with pytest.raises(ValueError, match="LLAMA_BETA_DP4A: expected 0, 1 or auto, got 'yes'"):
        X8Choice.from_env({"LLAMA_BETA_DP4A": "yes"})
    with pytest.raises(ValueError, match="LLAMA_BETA_X8_MIN_ROWS: expected a whole number, got '4k'"):
        X8Choice.from_env({"LLAMA_BETA_DP4A": "auto", "LLAMA_BETA_X8_MIN_ROWS": "4k"})


@pytest.fixture
def dp4a(monkeypatch):
    monkeypatch.setattr(km(), "X8", X8Choice(True))
    yield
    monkeypatch.undo()


def reference(x, nw, w, K, wtype=Q4K):
    """(y, M) of matmul_x8 on x' = x or RMSNorm(x) * nw (see the module docstring)."""
    xn = x if nw is None else rmsnorm(x, nw, EPS)
    scaled, mins = x8_terms(xn, w, wtype, K)
    _, d, _ = quantize_x8(xn)
    dm = np.abs(mins) / np.maximum(np.abs(xn.reshape(-1, 32).sum(axis=1, dtype=np.float64)), 1e-300)
    mag = np.abs(scaled).sum(axis=1) + (dm * np.abs(xn.astype(np.float64)).reshape(-1, 32).sum(axis=1)).sum(axis=1)
    return (scaled - mins).sum(axis=1), mag


def tolerance(K, norm):
    return gamma(K // 32 + 8) + 10 * U + ((gamma(K) / 2 + 10 * U) if norm else 0.0)


@requires_cuda
@pytest.mark.parametrize("wtype", X8_TYPES, ids=lambda t: t.name)
@settings(max_examples=6 if ON_GPU else 2, **SETTINGS)   # (the simulator: up to 25 s an example)
@given(seed=st.integers(0, 2 ** 32 - 1), nb=st.sampled_from([1, 3, 8] if not ON_GPU else [1, 3, 8, 12, 32]),
       N=st.integers(1, 20), norm=st.booleans())
def test_dp4a_matvec_and_swiglu_match_matmul_x8(wtype, seed, nb, N, norm, dp4a):
    """The plain product and the SwiGLU pair (fused gate_up tensor) against the
    reference of the quantized-x product (Q8_0, Q5_0: rows of nb pairs of blocks, 64 nb weights; K-quants: nb
    super-blocks)."""
    rng = np.random.default_rng(seed)
    K = km().X8_K_MULTIPLE[wtype] * nb
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32) if norm else None
    w = km().random_weight(rng, wtype, 2 * N, K)
    out = dev(np.zeros(2 * N, np.float32))
    km().launch_decode_matvec(dev(x), dev(w), wtype, K, out, norm_weight=None if nw is None else dev(nw), eps=EPS,
                              config=(4, 2) if ON_GPU else (2, 1))
    want, mag = reference(x, nw, w, K, wtype)
    tol = tolerance(K, norm)
    assert_close(out.copy_to_host() / mag, want / mag, atol=tol, rtol=0.0, name="v20 matvec (units of M)")
    act = dev(np.zeros(N, np.float32))
    km().decode_matvec_swiglu(dev(x), dev(w), None, wtype, None, K, act, norm_weight=None if nw is None else dev(nw),
                              eps=EPS, mma=False)
    g, u, gm, um = want[:N], want[N:], mag[:N], mag[N:]
    expect = swiglu(g.astype(np.float32), u.astype(np.float32)).astype(np.float64)
    err = np.abs(act.copy_to_host() - expect)
    # silu'(g) <= 1.1 and |silu(g)| <= |g| carry the errors of g and u (as test_matvec_fused.assert_swiglu)
    bound = tol * (1.1 * gm * np.abs(u) + np.abs(g) * um + gm * um * tol) + 8 * U * np.abs(expect)
    assert (err <= bound + 1e-30).all(), f"v20 SwiGLU: max excess {np.max(err - bound):.3g}"
    if ON_GPU:   # blocks of 16 warps (X8_SWIGLU_WIDEN's choice for Phi-3's gate/up)
        w_d, wide = dev(w), dev(np.zeros(N, np.float32))
        km().launch_decode_swiglu(dev(x), w_d, wtype, w_d, wtype, N, K, wide, eps=EPS, config=(16, 1),
                                  norm_weight=None if nw is None else dev(nw))
        assert (np.abs(wide.copy_to_host() - expect) <= bound + 1e-30).all(), "v20 SwiGLU, 16 warps"
        if not norm:   # without the norm's block-wide sum of squares, each row's arithmetic is the same
            np.testing.assert_array_equal(wide.copy_to_host(), act.copy_to_host())


@requires_cuda
@settings(max_examples=8 if ON_GPU else 3, **SETTINGS)   # (the simulator: ~10 s an example)
@given(seed=st.integers(0, 2 ** 32 - 1), types=st.lists(st.sampled_from(X8_TYPES), min_size=3, max_size=3),
       nb=st.sampled_from([1, 4] if not ON_GPU else [1, 3, 4, 12, 32]),
       heads=st.sampled_from([(2, 1), (3, 3)] if not ON_GPU else [(2, 1), (3, 3), (14, 2), (32, 32)]),
       hs=st.sampled_from([8, 10, 12] if not ON_GPU else [32, 64, 96, 128, 80]), partial=st.booleans(),
       neox=st.booleans(), norm=st.booleans(), with_bias=st.booleans(), pos=st.integers(0, 5))
def test_dp4a_qkv_rope_equals_x8_matvecs_then_rope_append(seed, types, nb, heads, hs, partial, neox, norm,
                                                          with_bias, pos, dp4a):
    """v20's Q/K/V + RoPE launch (a lane group per RoPE pair slot; K = 256 nb: 8, 16 or 32 lanes a group) = v20's
    matvec into q, k and v with blocks of the same size (x' the same bits), then rope.rope_qk_append: v's cache
    row and every row outside a rotated pair bit for bit (a row's sum is the same lanes in the same order); the
    rotated pairs up to the compiler's FMA contraction of the rotation (a few ulp of |a c| + |b s|)."""
    from numba_kernels import rope

    rng = np.random.default_rng(seed)
    nh, nkv = heads
    K = 256 * nb
    rot = hs // 2 if partial and hs % 4 == 0 else hs
    x = rng.standard_normal(K).astype(np.float32)
    nw = dev(rng.uniform(0.5, 1.5, K).astype(np.float32)) if norm else None
    mats = [(dev(km().random_weight(rng, t, n * hs, K)), t, K,
             dev(rng.standard_normal(n * hs).astype(np.float32)) if with_bias else None)
            for t, n in zip(types, (nh, nkv, nkv))]
    kw = dict(rot_dims=rot, neox=neox, freq_scale=0.5, attn_factor=1.25)
    start = rng.standard_normal((2, pos + 3, nkv, hs)).astype(np.float32)
    pos_d = dev(np.array([pos], np.int32))
    q1, k1, v1 = dev(np.zeros((1, nh, hs), np.float32)), dev(start[0]), dev(start[1])
    km().decode_qkv_rope(dev(x), mats, q1, k1, v1, pos_d, 10000.0, norm_weight=nw, eps=EPS, **kw)
    warps = km().QKV_ROPE_WARPS if km()._sm_count() else 2
    q2, k, v = (dev(np.zeros((1, n, hs), np.float32)) for n in (nh, nkv, nkv))
    for (w, t, _, b), out in zip(mats, (q2, k, v)):
        km().launch_decode_matvec(dev(x), w, t, K, out.reshape(-1), bias=b, norm_weight=nw, eps=EPS,
                                  config=(warps, 2))
    k2, v2 = dev(start[0]), dev(start[1])
    rope.rope_qk_append(q2, k, v, k2, v2, pos_d, 10000.0, **kw)
    assert_qkv_rope_equal((q1, k1, v1), (q2, k2, v2), rot, f"v20 {[t.name for t in types]}")


def test_numpy_backend_x8_rounds_x_in_one_token_products_only():
    """A matrix given int8 x (``round_x``) multiplies one token by matmul_x8 (+ bias); longer inputs stay
    float32, and so do the one-token products of the matrices not given it."""
    from llama_beta.backends.numpy_backend import NumpyBackend

    rng = np.random.default_rng(5)
    K, N = 256, 6
    bias = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((3, K)).astype(np.float32)
    be = NumpyBackend(X8Choice(True))
    for wtype in X8_TYPES:
        w = km().random_weight(rng, wtype, N, K)
        m, f = be.matrix(w, wtype, (N, K), bias), be.matrix(w, wtype, (N, K), bias)
        be.round_x(m)
        one = be.matmul(x[:1], m)
        np.testing.assert_array_equal(one[0], (matmul_x8(x[0], w, wtype, K).astype(np.float32) + bias))
        assert f.x8 is None and not np.array_equal(one, be.matmul(x[:1], f))
        np.testing.assert_array_equal(be.matmul(x, m), be.matmul(x, f))


def test_numpy_backend_prepare_follows_the_cuda_launches():
    """``prepare`` rounds x for the matrices of exactly the launches the choice takes: the three of Q/K/V or none
    (one F16 among them: none), gate and up both or neither (their types must agree), each plain product by its
    own type and rows."""
    from llama_beta.backends.numpy_backend import NumpyBackend
    from llama_beta.model import LayerWeights, Weights

    rng = np.random.default_rng(7)
    K, F16 = 256, GGMLType.F16
    be = NumpyBackend(X8Choice(True, min_k=256, min_rows=16))

    def mat(t, N):
        return be.matrix(km().random_weight(rng, t, N, K), t, (N, K))

    layers = [LayerWeights(None, mat(Q4K, 8), mat(Q5K, 4), mat(Q80, 4), mat(Q4K, 8), None,
                           mat(Q4K, 16), mat(Q4K, 16), mat(Q6K, 8)),
              LayerWeights(None, mat(Q4K, 8), mat(F16, 4), mat(Q80, 4), mat(Q50, 16), None,
                           mat(Q4K, 16), mat(Q5K, 16), mat(Q6K, 16))]
    weights = Weights(None, None, mat(Q80, 32), layers)
    be.prepare(weights)

    def chosen(L):
        return [m.x8 is not None for m in (L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down)]

    assert chosen(layers[0]) == [True, True, True, False, True, True, False]
    assert chosen(layers[1]) == [False, False, False, True, False, False, True]
    assert weights.output.x8 is not None
    # v21: W_down chained to its layer's v20 gate/up launch, whatever its rows (layer 0's 8); layer 1's gate/up
    # is not on v20 (two types), so its W_down is chosen as a plain product only (16 rows)
    for L in layers:
        for m in (L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down):
            m.x8 = None
    be.x8 = X8Choice(True, min_k=256, min_rows=16, chain=True)
    be.prepare(weights)
    assert chosen(layers[0]) == [True, True, True, False, True, True, True]
    assert chosen(layers[1]) == [False, False, False, True, False, False, True]


@requires_cuda
@pytest.mark.parametrize("choice", [X8Choice(True), X8Choice(True, min_rows=96), X8Choice(True, min_rows=96, chain=True)],
                         ids=["all", "rows>=96", "chain"])
def test_dp4a_decode_step_matches_the_numpy_backend_with_x8(tmp_path, monkeypatch, choice):
    """The cuda decode step with v20 and the NumPy backend with X8 compute the same function: their logits
    agree within float32 rounding (the codes of x' are the same but where x' itself differs in its last bit at a
    rounding boundary), well inside the gap to the NumPy backend's float32 products. With every launch on v20,
    and with the 64-row W_o and W_down left on the float products (the output layer has 99 rows, the vocabulary),
    or W_down reading the SwiGLU outputs as the gate/up launch rounded them (v21, ``chain``)."""
    from llama_beta.backends import numpy_backend
    from llama_beta.backends.cuda_decode import CudaDecoder
    from llama_beta.model import Model
    from llama_beta.synth import synth_model, tiny_vocab

    monkeypatch.setattr(km(), "X8", choice)
    size = dict(n_layers=1, dim=64, n_heads=2, n_kv_heads=1, ffn_dim=128, vocab=tiny_vocab(ascii_only=True))
    path = synth_model(tmp_path / "m.gguf", "micro", arch="qwen2", matrix_type=Q80, **size)
    prompt, ids = np.array([5, 77, 60], np.int32), [19, 41]
    gpu = Model(path, backend="cuda", context=16)
    cache = gpu.new_cache(8)
    gpu.step(prompt, 0, cache)
    decoder = CudaDecoder(gpu, cache, fused=True)
    fast = np.stack([decoder.step_logits(t, len(prompt) + j) for j, t in enumerate(ids)])

    def numpy_logits(x8):
        monkeypatch.setattr(numpy_backend, "X8", choice if x8 else X8Choice())
        cpu = Model(path, backend="numpy", context=16)
        c = cpu.new_cache(8)
        cpu.step(prompt, 0, c)
        return np.concatenate([cpu.step(np.array([t], np.int32), len(prompt) + j, c) for j, t in enumerate(ids)])

    scale = np.abs(fast).max()
    same, float32 = np.abs(fast - numpy_logits(True)).max(), np.abs(fast - numpy_logits(False)).max()
    # measured 4e-8 of the scale (float32 sums of 64-128 terms); 1e-4 leaves room for a code flipped by a last-bit
    # difference of x' (one step d_j of one element), which the float32 gap (4e-3 measured) still exceeds tenfold
    assert same <= 1e-4 * scale, f"cuda v20 vs numpy x8: {same:.3g} of {scale:.3g}"
    assert float32 > 10 * same, (float32, same)           # the x8 rounding is visible: the comparison can fail


@requires_cuda
@pytest.mark.parametrize("wtype", [Q80, Q4K], ids=lambda t: t.name)
@settings(max_examples=6 if ON_GPU else 2, **SETTINGS)   # (the simulator: ~20 s an example)
@given(seed=st.integers(0, 2 ** 32 - 1), nb=st.sampled_from([1, 3] if not ON_GPU else [1, 3, 12]),
       fb=st.sampled_from([1] if not ON_GPU else [1, 3, 32]), N=st.integers(1, 12),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_v21_rounded_chain_equals_rounding_in_the_next_block(wtype, seed, nb, fb, N, scale, dp4a):
    """v21: the SwiGLU launch writing its outputs rounded (``xq_out``), and W_down reading them (``xq``):
    the SwiGLU outputs are those of the launch without it, bit for bit (no norm: each row's arithmetic is the
    same whatever the block size); the codes and d_j are ref.matmul.quantize_x8's of those outputs (the same
    float32 steps), s_j within a float32 sum of 32 terms; and W_down over them matches matmul_x8 of the outputs
    (the module's tolerance)."""
    rng = np.random.default_rng(seed)
    K, F = 256 * nb, km().X8_K_MULTIPLE[wtype] * fb          # W_down's rows: F weights of its type
    x = (rng.standard_normal(K) * scale).astype(np.float32)
    w = km().random_weight(rng, Q4K, 2 * F, K)
    act, plain = dev(np.zeros(F, np.float32)), dev(np.zeros(F, np.float32))
    xq = dev(np.zeros(km().xq_words(F), np.uint32))
    km().decode_matvec_swiglu(dev(x), dev(w), None, Q4K, None, K, act, xq_out=xq)
    km().decode_matvec_swiglu(dev(x), dev(w), None, Q4K, None, K, plain)
    h = act.copy_to_host()
    np.testing.assert_array_equal(h, plain.copy_to_host())
    got = xq.copy_to_host().reshape(-1, km().XQ_WORDS)
    q, d, _ = quantize_x8(h)
    np.testing.assert_array_equal(got[:, :8].copy().view(np.int8).reshape(-1), q)
    np.testing.assert_array_equal(got[:, 8].view(np.float32), d)
    hb = h.reshape(-1, 32).astype(np.float64)
    assert (np.abs(got[:, 9].view(np.float32) - hb.sum(axis=1)) <= gamma(32) * np.abs(hb).sum(axis=1) + 1e-45).all()
    wd = km().random_weight(rng, wtype, N, F)
    start = rng.standard_normal(N).astype(np.float32)
    out = dev(start)
    km().decode_matvec(dev(h), dev(wd), wtype, F, out, accumulate=True, xq=xq)
    want, mag = reference(h, None, wd, F, wtype)
    added = out.copy_to_host().astype(np.float64) - start          # exact: no second rounding on the host
    accumulate_rounding = U * np.abs(start) / mag                   # fl(start + y) is off by up to u |start + y|
    assert_close(added / mag, want / mag, atol=tolerance(F, False) + 4 * U + accumulate_rounding, rtol=0.0,
                 name="v21 W_down (units of M)")


def xq_words_of(h):
    """The v21 buffer ``_round_rows_out`` writes for outputs h, built on the host from the reference: per block of
    32, its 8 code words, d and s (float32 bits), and two spare words."""
    q, d, s = quantize_x8(h)
    words = np.zeros((len(d), 12), np.uint32)
    words[:, :8] = q.reshape(-1, 32).view(np.uint32)
    words[:, 8], words[:, 9] = d.view(np.uint32), s.astype(np.float32).view(np.uint32)
    return words.reshape(-1)


@requires_cuda
@pytest.mark.parametrize("wtype", [Q4K, Q6K, Q50] if not ON_GPU else X8_TYPES, ids=lambda t: t.name)
def test_v21_compact_slots_give_the_same_bits(wtype, dp4a, monkeypatch):
    """LLAMA_BETA_X8_COMPACT=1 (11 shared slots per block of 32 in W_down instead of 33): the same words at
    other slots, the same arithmetic in the same order, so the same bits (Q6_K: blocks 4h + t and 4h + t + 2)."""
    rng = np.random.default_rng(5)
    F, N = 2 * km().X8_K_MULTIPLE[wtype], 5
    h = rng.standard_normal(F).astype(np.float32)
    wd = dev(km().random_weight(rng, wtype, N, F))
    xq = dev(xq_words_of(h))
    outs = []
    for compact in (False, True):
        monkeypatch.setattr(km(), "X8_COMPACT", compact)
        out = dev(np.zeros(N, np.float32))
        km().decode_matvec(dev(h), wd, wtype, F, out, xq=xq)
        outs.append(out.copy_to_host())
    np.testing.assert_array_equal(outs[1], outs[0])
    want, mag = reference(h, None, wd.copy_to_host(), F, wtype)      # and both are the product over the words
    assert_close(outs[0] / mag, want / mag, atol=tolerance(F, False), rtol=0.0, name="v21 over host-built words")


@requires_cuda
def test_v21_refuses_a_rounded_buffer_of_the_wrong_kind(dp4a):
    """xq must be a device uint32 [K / 32 * XQ_WORDS], and so must xq_out [F / 32 * XQ_WORDS]."""
    rng = np.random.default_rng(3)
    w = dev(km().random_weight(rng, Q4K, 128, 256))
    x, out = dev(np.zeros(256, np.float32)), dev(np.zeros(128, np.float32))
    with pytest.raises(ValueError, match=r"xq must be a device uint32 \[96\], got uint32 \(96,\)"):
        km().decode_matvec(x, w, Q4K, 256, out, xq=np.zeros(96, np.uint32))
    with pytest.raises(ValueError, match=r"xq_out must be a device uint32 \[24\], got float32 \(24,\)"):
        km().decode_matvec_swiglu(x, w, None, Q4K, None, 256, dev(np.zeros(64, np.float32)),
                                  xq_out=dev(np.zeros(24, np.float32)))
