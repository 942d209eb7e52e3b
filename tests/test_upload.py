"""numba_kernels.upload: chunked uploads through one pinned buffer round-trip exactly.

Tolerance: none - an upload is a byte copy.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays, array_shapes

from conftest import ON_GPU, requires_cuda

upload = pytest.importorskip("numba_kernels.upload")

DTYPES = [np.uint8, np.float32, np.float16, np.int32, np.float64]


@requires_cuda
@settings(deadline=None, max_examples=60 if ON_GPU else 30)
@given(st.sampled_from(DTYPES).flatmap(lambda dt: arrays(dt, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=37))),
       st.integers(2, 300))
def test_round_trip_across_chunk_boundaries(host, chunk_bytes):
    dev = upload.to_device_chunked(host, chunk_bytes=chunk_bytes)
    assert dev.shape == host.shape and dev.dtype == host.dtype
    np.testing.assert_array_equal(dev.copy_to_host().reshape(-1).view(np.uint8), host.reshape(-1).view(np.uint8))  # bytes: NaN-safe


@requires_cuda
def test_one_uploader_many_tensors_odd_sizes():
    rng = np.random.default_rng(0)
    hosts = [rng.integers(0, 256, n, dtype=np.uint8) for n in (1, 63, 64, 65, 1000, 0)]
    hosts.append(rng.standard_normal((7, 13)).astype(np.float32))
    hosts.append(np.asfortranarray(rng.standard_normal((5, 3))))     # non-contiguous input
    total = sum(h.nbytes for h in hosts)
    with upload.Uploader(total, chunk_bytes=64, progress=True) as up:
        devs = [up.upload(h) for h in hosts]
        assert up.bar.n == total                                     # the bar counted every byte
    assert up.staging is None                                        # close() released the pinned buffer
    for h, d in zip(hosts, devs):
        np.testing.assert_array_equal(d.copy_to_host(), h)


@requires_cuda
def test_zero_size_and_out_argument():
    from numba import cuda

    empty = upload.to_device_chunked(np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 4)
    host = np.arange(100, dtype=np.int32)
    out = cuda.device_array(100, np.int32)
    with upload.Uploader(400, chunk_bytes=48, progress=False) as up:
        assert up.upload(host, out=out) is out
        with pytest.raises(ValueError, match="out is"):
            up.upload(host[:10], out=out)
    np.testing.assert_array_equal(out.copy_to_host(), host)
    with pytest.raises(ValueError, match="after close"):
        up.upload(host)
