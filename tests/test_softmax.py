"""Softmax: rows sum to 1, shift invariance, masked entries, kernel agreement.

Tolerances
- row sums: atol 1e-5, V float32 terms <= 1 summed (error about log2(V) * 6e-8 for NumPy's
  pairwise sum) and one divide per entry.
- kernel vs ref: atol 1e-7, rtol 1e-5: float32 exp (2 ulp on CUDA) and a differently ordered
  float32 sum of the denominator.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from conftest import ON_GPU, assert_close, requires_cuda
from ref import softmax as ref

EXAMPLES = 30 if ON_GPU else 10


@st.composite
def logits(draw, max_v=3000 if ON_GPU else 300):
    R = draw(st.integers(1, 3))
    V = draw(st.integers(1, max_v))
    x = draw(hnp.arrays(np.float32, (R, V), elements=st.floats(-60, 60, width=32)))
    return x


@settings(deadline=None, max_examples=60)
@given(logits(max_v=2000))
def test_rows_sum_to_one_and_shift_invariance(x):
    p = ref.softmax(x)
    assert (p >= 0).all()
    assert_close(p.sum(axis=-1), np.ones(x.shape[0]), atol=1e-5, rtol=0, name="row sums")
    assert_close(ref.softmax(x + np.float32(1000.0)), p, atol=1e-6, rtol=1e-3, name="shifted")


def test_masked_and_huge_logits():
    x = np.array([[0.0, -np.inf, 0.0], [3e38, 0.0, -3e38]], np.float32)
    p = ref.softmax(x)
    assert np.array_equal(p, [[0.5, 0.0, 0.5], [1.0, 0.0, 0.0]])    # no overflow, no NaN


@requires_cuda
@settings(deadline=None, max_examples=EXAMPLES)
@given(logits())
def test_kernel_matches_ref(x):
    from numba_kernels import softmax as kern

    assert_close(kern.softmax(x), ref.softmax(x), atol=1e-7, rtol=1e-5, name="softmax")


@requires_cuda
@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_kernel_versions(version):
    from numba import cuda

    from numba_kernels import softmax as kern

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 77)) * 10).astype(np.float32)
    x[1, 5:9] = -np.inf
    dx, dout = cuda.to_device(x), cuda.device_array(x.shape, np.float32)
    getattr(kern, f"launch_{version}")(dx, dout)
    assert_close(dout.copy_to_host(), ref.softmax(x), atol=1e-7, rtol=1e-5, name=version)
