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
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import ON_GPU, assert_close, requires_cuda
from ref import rope as ref

EXAMPLES = 40 if ON_GPU else 10


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
