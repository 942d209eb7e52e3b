"""RoPE: angle formula, pairing layouts, invariants, kernel agreement.

Tolerances
- angles vs float64 math: rtol (i + 2) * 2^-23 for pair i: the float32 ratio r = powf(base,
  -2/d) is off by <= 2^-24 relative, its i-th power by i times that, and each of the i running
  products rounds once more (2^-24 each); freq_scale and freq_factors add two roundings.
- rotation vs a float64 transformers-style rotate_half: atol 2e-5 * max|x| at positions < 64,
  where the angle error bound above is below 2e-5 rad (the test is about pairing and signs).
- norms: rtol 1e-5 (a rotation, float32 products).
- q.k relative-position invariance: atol 2e-3 * |q||k| at positions < 1024: angle errors up to
  about 6e-4 rad (the bound above at p ~ 2000) times two vectors.
- kernel vs ref: atol 1e-6 * max|x| * attn_factor: identical float32 angles; cosf/sinf within
  2 ulp and possible FMA contraction of x_a cos - x_b sin (1 ulp of the larger term).
- rope_qk_append vs rope + kv_append: the same tolerance: the same device functions compute the
  same angles; only the FMA contraction of the rotation may differ between the two kernels.
  The value row is copied, so it must be exact.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import ON_GPU, assert_close, requires_cuda
from ref import rope as ref

EXAMPLES = 40 if ON_GPU else 20


@st.composite
def rope_case(draw, max_pos=32768, max_t=3, max_heads=3):
    hs = draw(st.sampled_from([64, 96, 128]))
    rot = draw(st.sampled_from([hs, hs // 2, 32]))
    T = draw(st.integers(1, max_t))
    nh = draw(st.integers(1, max_heads))
    x = draw(hnp.arrays(np.float32, (T, nh, hs), elements=st.floats(-4, 4, width=32)))
    pos = draw(hnp.arrays(np.int32, (T,), elements=st.integers(0, max_pos)))
    base = draw(st.sampled_from([10000.0, 1000000.0, 500000.0]))
    neox = draw(st.booleans())
    ff = None
    if draw(st.booleans()):
        ff = draw(hnp.arrays(np.float32, (rot // 2,), elements=st.floats(1.0, 40.0, width=32)))
    freq_scale = draw(st.sampled_from([1.0, 0.25]))
    attn = draw(st.sampled_from([1.0, 1.19]))
    return x, pos, base, rot, neox, freq_scale, ff, attn


def angles_f64(pos, d, base, freq_scale=1.0, ff=None):
    inv = base ** (-2.0 * np.arange(d // 2) / d)               # [d/2]
    theta = np.outer(np.asarray(pos, np.float64), inv) * freq_scale
    return theta if ff is None else theta / np.asarray(ff, np.float64)


@settings(deadline=None, max_examples=60)
@given(rope_case())
def test_angles_match_float64(case):
    _, pos, base, rot, _, fs, ff, _ = case
    got = ref.rope_angles(pos, rot, base, fs, ff)
    expect = angles_f64(pos, rot, base, fs, ff)
    rtol = (np.arange(rot // 2) + 2) * 2.0**-23
    assert (np.abs(got - expect) <= rtol * np.abs(expect)).all()


def rope_f64(x, pos, base, d, neox):
    """transformers' apply_rotary_pos_emb (rotate_half) in float64; interleaved via a permutation."""
    x = x.astype(np.float64)
    theta = angles_f64(pos, d, base)[:, None, :]               # [T, 1, d/2]
    cos, sin = np.cos(theta), np.sin(theta)
    perm = np.arange(d) if neox else np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
    xr = x[..., perm]                                          # interleaved -> halves
    a, b = xr[..., : d // 2], xr[..., d // 2 : d]
    rot = np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    y = x.copy()
    y[..., perm] = rot
    return y


@settings(deadline=None, max_examples=60)
@given(rope_case(max_pos=63))
def test_rotation_matches_transformers_style_float64(case):
    x, pos, base, rot, neox, _, _, _ = case
    atol = 2e-5 * max(float(np.abs(x).max()), 1e-3)
    assert_close(ref.rope(x, pos, base, rot, neox), rope_f64(x, pos, base, rot, neox), atol=atol, rtol=0,
                 name="rope")


def test_layouts_and_pass_through():
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 8)
    pos = [1]
    y_neox = ref.rope(x, pos, 10000.0, rot_dims=4, neox=True)
    y_int = ref.rope(x, pos, 10000.0, rot_dims=4, neox=False)
    c, s = np.cos(1.0), np.sin(1.0)                            # pair 0 has theta = p = 1
    assert_close(y_neox[0, 0, [0, 2]], [0 * c - 2 * s, 0 * s + 2 * c], atol=1e-6, rtol=0, name="neox pair 0")
    assert_close(y_int[0, 0, [0, 1]], [0 * c - 1 * s, 0 * s + 1 * c], atol=1e-6, rtol=0, name="normal pair 0")
    assert np.array_equal(y_neox[0, 0, 4:], x[0, 0, 4:]) and np.array_equal(y_int[0, 0, 4:], x[0, 0, 4:])
    assert np.array_equal(ref.rope(x, [0], 10000.0), x)       # position 0 is the identity


@settings(deadline=None, max_examples=60)
@given(rope_case())
def test_preserves_norms(case):
    x, pos, base, rot, neox, fs, ff, _ = case
    y = ref.rope(x, pos, base, rot, neox, fs, ff)
    assert_close(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), atol=1e-5, rtol=1e-5, name="norms")


@settings(deadline=None, max_examples=60)
@given(rope_case(max_pos=511, max_t=1, max_heads=2), st.integers(0, 511))
def test_dot_product_depends_on_position_difference(case, shift):
    x, pos, base, rot, neox, _, _, _ = case
    q, k = x[:, :1], x[:, -1:]                                 # two head vectors [1, 1, hs]
    p, j = int(pos[0]), int(pos[0]) // 2
    def score(pq, pk):
        return float((ref.rope(q, [pq], base, rot, neox) * ref.rope(k, [pk], base, rot, neox)).sum())
    tol = 2e-3 * np.linalg.norm(q) * np.linalg.norm(k) + 1e-6
    assert abs(score(p + shift, j + shift) - score(p, j)) <= tol


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(rope_case())
def test_kernel_matches_ref(case):
    from numba_kernels import rope as kern

    x, pos, base, rot, neox, fs, ff, attn = case
    expect = ref.rope(x, pos, base, rot, neox, fs, ff, attn)
    got = kern.rope(x, pos, base, rot, neox, fs, ff, attn)
    assert_close(got, expect, atol=1e-6 * 4 * attn, rtol=1e-5, name="rope kernel")


@requires_cuda
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_versions_in_place_and_new_positions(version):
    from numba import cuda

    from numba_kernels import rope as kern

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 96)).astype(np.float32)
    dpos = cuda.to_device(np.array([5, 30000], np.int32))
    dx = cuda.to_device(x)
    args = kern._args(dx, dpos, 1e6, 64, True, 1.0, None, 1.0)
    getattr(kern, f"launch_{version}")(dx, dx, args)          # in place, rot_dims 64 < hs 96
    assert_close(dx.copy_to_host(), ref.rope(x, [5, 30000], 1e6, 64), atol=4e-6, rtol=1e-5, name=version)
    dpos.copy_to_device(np.array([7, 8], np.int32))            # same launch, new positions on device
    dx.copy_to_device(x)
    getattr(kern, f"launch_{version}")(dx, dx, args)
    assert_close(dx.copy_to_host(), ref.rope(x, [7, 8], 1e6, 64), atol=4e-6, rtol=1e-5, name=version)


# ------------------------------------------------------------------------------------------------
# v3: rope_qk_append, the decode step's RoPE(q), RoPE(k) and KV-cache append in one launch
# ------------------------------------------------------------------------------------------------
@st.composite
def qk_append_case(draw):
    hs = draw(st.sampled_from([64, 96, 128]))
    rot = draw(st.sampled_from([hs, hs // 2, 32]))
    nkv = draw(st.integers(1, 2))
    kv_mul = draw(st.sampled_from([1, 2, 7]))
    T = draw(st.sampled_from([1, 1, 3]))                 # decode's single token, or a prefill's few
    q = draw(hnp.arrays(np.float32, (T, nkv * kv_mul, hs), elements=st.floats(-4, 4, width=32)))
    k = draw(hnp.arrays(np.float32, (T, nkv, hs), elements=st.floats(-4, 4, width=32)))
    v = draw(hnp.arrays(np.float32, (T, nkv, hs), elements=st.floats(-4, 4, width=32)))
    pos = draw(st.integers(0, 32768))
    ff = None
    if draw(st.booleans()):
        ff = draw(hnp.arrays(np.float32, (rot // 2,), elements=st.floats(1.0, 40.0, width=32)))
    params = dict(rot_dims=rot, neox=draw(st.booleans()), freq_scale=draw(st.sampled_from([1.0, 0.25])),
                  freq_factors=ff, attn_factor=draw(st.sampled_from([1.0, 1.19])))
    return q, k, v, pos, draw(st.sampled_from([10000.0, 1000000.0])), params


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(qk_append_case())
def test_rope_qk_append_equals_rope_then_kv_append(case):
    """One launch gives what rope(q), rope(k) and kv_append give: q rotated in place, RoPE(k) and v in
    cache rows pos .. pos+T-1, every other row untouched, k itself left unrotated."""
    from numba import cuda

    from numba_kernels import attention as katt
    from numba_kernels import rope as kern

    q, k, v, pos, base, p = case
    T, S, nkv, hs = q.shape[0], pos + q.shape[0] + 1, k.shape[1], k.shape[2]
    positions = np.arange(pos, pos + T, dtype=np.int32)
    kc = cuda.to_device(np.full((S, nkv, hs), -7.0, np.float32))
    vc = cuda.to_device(np.full((S, nkv, hs), -7.0, np.float32))
    dq, dk, dpos = cuda.to_device(q), cuda.to_device(k), cuda.to_device(np.array([pos], np.int32))
    assert kern.rope_qk_append(dq, dk, v, kc, vc, dpos, base, **p) is dq

    ref_args = (base, p["rot_dims"], p["neox"], p["freq_scale"], p["freq_factors"], p["attn_factor"])
    want_q, want_k = kern.rope(q, positions, *ref_args), kern.rope(k, positions, *ref_args)  # three launches
    kc2 = cuda.to_device(np.full((S, nkv, hs), -7.0, np.float32))
    vc2 = cuda.to_device(np.full((S, nkv, hs), -7.0, np.float32))
    katt.kv_append(want_k, v, kc2, vc2, dpos)
    tol = dict(atol=1e-6 * 4 * p["attn_factor"], rtol=1e-5)  # same angles; FMA contraction may differ
    assert_close(dq.copy_to_host(), want_q, **tol, name="q")
    assert_close(kc.copy_to_host(), kc2.copy_to_host(), **tol, name="k cache")
    assert np.array_equal(vc.copy_to_host(), vc2.copy_to_host()), "v cache"
    assert np.array_equal(dk.copy_to_host(), k), "k was modified"
    assert_close(dq.copy_to_host(), ref.rope(q, positions, *ref_args), **tol, name="q vs ref")


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(qk_append_case(), st.sampled_from([2, 3, 8]))
def test_rope_qk_append_head_groups_change_no_bit(case, heads_per_block):
    """A block per group of heads (one angle table for the group; the prompt's launch) writes what a block per
    head writes, bit for bit: q, the key and value cache rows, the rows around them untouched; the last group
    may be partial and may hold both query and key/value heads."""
    from numba import cuda

    from numba_kernels import rope as kern

    q, k, v, pos, base, p = case
    T, nkv, hs = q.shape[0], k.shape[1], k.shape[2]
    dpos = cuda.to_device(np.array([pos], np.int32))
    got = []
    for hb in (1, heads_per_block):
        dq = cuda.to_device(q)
        caches = [cuda.to_device(np.full((pos + T + 1, nkv, hs), -7.0, np.float32)) for _ in range(2)]
        ff = None if p["freq_factors"] is None else cuda.to_device(p["freq_factors"])
        args = kern.kernel_args(dq, dpos, base, hs, **{**p, "freq_factors": ff})
        kern.launch_qk_append(dq, cuda.to_device(k), cuda.to_device(v), *caches, args, heads_per_block=hb)
        got.append([dq.copy_to_host()] + [c.copy_to_host() for c in caches])
    for a, b in zip(*got):
        np.testing.assert_array_equal(b, a)


@requires_cuda
def test_rope_qk_append_replays_with_new_position():
    """Same launch arguments, new position written to the device array: the next row is written at the
    new angle (a captured decode step replayed), the previous row stays."""
    from numba import cuda

    from numba_kernels import rope as kern

    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, n, 96)).astype(np.float32) for n in (6, 3, 3))
    kc = cuda.to_device(np.zeros((40, 3, 96), np.float32))
    vc = cuda.to_device(np.zeros((40, 3, 96), np.float32))
    dpos, dk, dv = cuda.to_device(np.array([7], np.int32)), cuda.to_device(k), cuda.to_device(v)
    for p in (7, 8, 39):
        dpos.copy_to_device(np.array([p], np.int32))
        dq = cuda.to_device(q)
        kern.rope_qk_append(dq, dk, dv, kc, vc, dpos, 10000.0, rot_dims=64, neox=False)
        assert_close(dq.copy_to_host(), ref.rope(q, [p], 10000.0, 64, False), atol=4e-6, rtol=1e-5, name=f"q {p}")
    got_k, got_v = kc.copy_to_host(), vc.copy_to_host()
    for p in (7, 8, 39):
        assert_close(got_k[p:p + 1], ref.rope(k, [p], 10000.0, 64, False), atol=4e-6, rtol=1e-5, name=f"k row {p}")
        assert np.array_equal(got_v[p], v[0])
    assert not got_k[:7].any() and not got_k[9:39].any() and not got_v[9:39].any()


@requires_cuda
def test_rope_qk_append_rejects_bad_shapes():
    from numba import cuda

    from numba_kernels import rope as kern

    kc = cuda.device_array((8, 2, 64), np.float32)
    q, k = np.zeros((1, 4, 64), np.float32), np.zeros((1, 2, 64), np.float32)
    with pytest.raises(ValueError):
        kern.rope_qk_append(q, k, k, kc, kc, [0], 1e4, rot_dims=66)       # rot_dims > hs
    with pytest.raises(ValueError):
        kern.rope_qk_append(q, k[:, :1], k, kc, kc, [0], 1e4)            # k heads != cache heads
    with pytest.raises(ValueError):
        kern.rope_qk_append(q, k, k, np.zeros((8, 2, 64), np.float32), kc, [0], 1e4)  # host cache


@requires_cuda
def test_kernel_args_launch_like_rope_qk_append():
    """rope.kernel_args computed once and passed to launch_qk_append (the prefill fast path) writes what
    rope_qk_append writes for the same tokens: same kernel, same arguments, bit for bit; bad rot_dims refused."""
    from numba import cuda

    from numba_kernels import rope as kern

    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((3, n, 64)).astype(np.float32) for n in (4, 2, 2))
    dpos = cuda.to_device(np.array([5], np.int32))
    caches = [[cuda.to_device(np.zeros((16, 2, 64), np.float32)) for _ in range(2)] for _ in range(2)]
    dq1, dq2 = cuda.to_device(q), cuda.to_device(q)
    kern.rope_qk_append(dq1, cuda.to_device(k), cuda.to_device(v), *caches[0], dpos, 1e6, rot_dims=32)
    args = kern.kernel_args(dq2, dpos, 1e6, 64, rot_dims=32)
    kern.launch_qk_append(dq2, cuda.to_device(k), cuda.to_device(v), *caches[1], args)
    np.testing.assert_array_equal(dq1.copy_to_host(), dq2.copy_to_host())
    for a, b in zip(*caches):
        np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host())
    with pytest.raises(ValueError, match="rot_dims"):
        kern.kernel_args(dq2, dpos, 1e6, 64, rot_dims=33)
