"""RMSNorm and the fused residual-add + RMSNorm: reference properties and kernel agreement.

Tolerances
- ref vs float64 math: rtol 1e-6, the reference rounds the mean, the scale and two products to
  float32 (about 4 roundings of 6e-8 each).
- kernel vs ref: rtol 1e-5, the kernel sums C float32 squares in float32 (error about
  log2(C) * 6e-8 relative for a tree of warps, plus the strided per-thread serial sums).
- scale invariance: rtol 1e-5 on rows with mean(x^2) > 1e5 eps (scaled or not): eps changes
  the scale by at most eps / (2 mean) = 5e-6, float32 rounding adds about 1e-6.

Value range: |x| <= 1e15. Squares are float32 products (|x| < 1.8e19 stays finite) and the
kernel sums C of them in float32, so C * 1e30 must stay below 3.4e38; 1e15 leaves room for
C up to 1e8. Values of 1e30 would overflow x*x in float32, in llama.cpp as here.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import ON_GPU, assert_close, requires_cuda
from ref import rmsnorm as ref

EXAMPLES = 40 if ON_GPU else 25
MAX_C = 3000 if ON_GPU else 200


@st.composite
def rows(draw, max_t=4, max_c=MAX_C):
    T = draw(st.integers(1, max_t))
    C = draw(st.integers(1, max_c))
    unit = draw(hnp.arrays(np.float32, (T, C), elements=st.floats(-1, 1, width=32)))
    exponent = draw(st.integers(-3, 15))                 # row magnitudes 1e-3 .. 1e15
    w = draw(hnp.arrays(np.float32, (C,), elements=st.floats(-2, 2, width=32)))
    return (unit * np.float32(10.0**exponent)).astype(np.float32), w


def rmsnorm_f64(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


@settings(deadline=None, max_examples=60)
@given(rows(max_c=500), st.sampled_from([1e-5, 1e-6]))
def test_ref_matches_float64_math(xw, eps):
    x, w = xw
    assert_close(ref.rmsnorm(x, w, eps), rmsnorm_f64(x, w, eps), atol=1e-30, rtol=1e-6, name="rmsnorm")


@settings(deadline=None, max_examples=60)
@given(rows(max_c=500), st.floats(1e-2, 1e4))
def test_scale_invariance(xw, a):
    x, w = xw
    eps = 1e-6
    ms = (x.astype(np.float64) ** 2).mean(axis=-1)
    x = x[ms * min(a, 1) ** 2 > 1e5 * eps]               # rows where eps is negligible, scaled or not
    y1 = ref.rmsnorm(x, w, eps)
    y2 = ref.rmsnorm((x * np.float32(a)).astype(np.float32), w, eps)
    assert_close(y2, y1, atol=1e-30, rtol=1e-5, name="rmsnorm(a x) vs rmsnorm(x)")


def test_unit_rms_and_zero_row():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    y = ref.rmsnorm(x, np.ones(2, np.float32), 0.0 + 1e-12)
    assert_close(np.sqrt((y[0] ** 2).mean()), 1.0, atol=0, rtol=1e-6, name="rms of output")
    assert np.array_equal(y[1], [0.0, 0.0])              # 0 * 1/sqrt(eps): no NaN


def test_add_rmsnorm_ref():
    rng = np.random.default_rng(0)
    x, r = rng.standard_normal((2, 3, 7)).astype(np.float32)
    w = rng.standard_normal(7).astype(np.float32)
    normed, new_r = ref.add_rmsnorm(x, r, w, 1e-6)
    assert np.array_equal(new_r, r + x)
    assert np.array_equal(normed, ref.rmsnorm(r + x, w, 1e-6))


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(rows(), st.sampled_from([1e-5, 1e-6]))
def test_kernel_matches_ref(xw, eps):
    from numba_kernels import rmsnorm as kern

    x, w = xw
    assert_close(kern.rmsnorm(x, w, eps), ref.rmsnorm(x, w, eps), atol=1e-30, rtol=1e-5, name="rmsnorm")


@requires_cuda
@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_kernel_versions(version):
    from numba import cuda

    from numba_kernels import rmsnorm as kern

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 97)).astype(np.float32)
    w = rng.standard_normal(97).astype(np.float32)
    dx, dw, dout = cuda.to_device(x), cuda.to_device(w), cuda.device_array((3, 97), np.float32)
    getattr(kern, f"launch_{version}")(dx, dw, dout, 1e-6)
    assert_close(dout.copy_to_host(), ref.rmsnorm(x, w, 1e-6), atol=1e-30, rtol=1e-5, name=version)


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(rows(), rows())
def test_add_rmsnorm_kernel_in_place(xw, rw):
    from numba import cuda

    from numba_kernels import rmsnorm as kern

    x, w = xw
    r = np.resize(rw[0], x.shape).astype(np.float32)
    dx, dr, dw = cuda.to_device(x), cuda.to_device(r), cuda.to_device(w)
    dout = cuda.device_array(x.shape, np.float32)
    out, res = kern.add_rmsnorm(dx, dr, dw, 1e-6, out=dout)
    assert out is dout and res is dr                     # engine path: no new buffers
    normed, new_r = ref.add_rmsnorm(x, r, w, 1e-6)
    assert np.array_equal(dr.copy_to_host(), new_r)      # residual += x happened on the device
    assert_close(dout.copy_to_host(), normed, atol=1e-30, rtol=1e-5, name="add_rmsnorm")


@requires_cuda
def test_kernel_in_place_alias_and_vector():
    from numba import cuda

    from numba_kernels import rmsnorm as kern

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 45)).astype(np.float32)
    w = rng.standard_normal(45).astype(np.float32)
    dx = cuda.to_device(x)
    kern.rmsnorm(dx, cuda.to_device(w), 1e-5, out=dx)    # out aliases x
    assert_close(dx.copy_to_host(), ref.rmsnorm(x, w, 1e-5), atol=1e-30, rtol=1e-5, name="in place")
    assert_close(kern.rmsnorm(x[0], w, 1e-5), ref.rmsnorm(x[0], w, 1e-5), atol=1e-30, rtol=1e-5, name="[C]")
