"""SwiGLU: reference math, Phi-3's fused split order, kernel agreement.

Tolerances
- ref vs float64: rtol 1e-6, atol 1e-30: float32 exp, add, divide and multiply (~4 roundings).
- kernel vs ref: rtol 2e-6, atol 1e-30: CUDA's expf is within 2 ulp, NumPy's within 1.
Kernel inputs stay in |g| <= 80: the CUDA simulator evaluates math.exp in float64 and raises
OverflowError past exp(709); the reference alone is tested at float32 extremes.
"""
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import ON_GPU, assert_close, requires_cuda
from ref import swiglu as ref

EXAMPLES = 40 if ON_GPU else 25


@st.composite
def gate_up(draw, bound=80.0, up_bound=1e3):
    bound = float(np.float32(bound))                     # hypothesis wants float32-exact bounds
    T = draw(st.integers(1, 4))
    F = draw(st.integers(1, 2000 if ON_GPU else 150))
    g = draw(hnp.arrays(np.float32, (T, F), elements=st.floats(-bound, bound, width=32)))
    u = draw(hnp.arrays(np.float32, (T, F), elements=st.floats(-up_bound, up_bound, width=32)))
    return g, u


@settings(deadline=None, max_examples=60)
@given(gate_up(bound=3e38, up_bound=1.0))                # |silu(g) * u| <= |g|: no overflow
def test_ref_matches_float64(gu):
    g, u = gu
    g64 = g.astype(np.float64)
    with np.errstate(over="ignore"):
        expect = g64 / (1 + np.exp(-g64)) * u
    assert_close(ref.swiglu(g, u), expect, atol=1e-30, rtol=1e-6, name="swiglu")


def test_zero_gate_gives_zero_and_limits():
    up = np.array([[1.0, -5.0, 3e38]], np.float32)
    assert np.array_equal(ref.swiglu(np.zeros_like(up), up), np.zeros_like(up))
    big = np.array([[100.0, -100.0, -3e38]], np.float32)
    out = ref.swiglu(big, np.ones_like(big))
    assert out[0, 0] == 100.0 and out[0, 1] == 0.0 and out[0, 2] == 0.0   # silu -> x and -> 0


def test_fused_takes_gate_first():
    gu = np.array([[1.0, 2.0, 10.0, 20.0]], np.float32)         # F = 2: gate [1, 2], up [10, 20]
    assert np.array_equal(ref.swiglu_fused(gu), ref.swiglu(gu[:, :2], gu[:, 2:]))
    assert not np.array_equal(ref.swiglu_fused(gu), ref.swiglu(gu[:, 2:], gu[:, :2]))


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(gate_up())
def test_kernels_match_ref(gu):
    from numba_kernels import swiglu as kern

    g, u = gu
    assert_close(kern.swiglu(g, u), ref.swiglu(g, u), atol=1e-30, rtol=2e-6, name="swiglu")
    fused = np.concatenate([g, u], axis=1)
    assert_close(kern.swiglu_fused(fused), ref.swiglu_fused(fused), atol=1e-30, rtol=2e-6, name="fused")
