"""The decode step's prefetch branch (numba_kernels/prefetch.py, ``cuda_decode.prefetch_plan``): the plan asks
for each launch's weights once, in time and within the window; the kernel asks for every byte of its buffers
and none outside them; the step with the branch gives the same logits as without it."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import requires_cuda
from llama_beta.backends.cuda_decode import prefetch_plan


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 100), max_size=40), window=st.integers(0, 250))
def test_plan_asks_once_ahead_and_within_the_window(sizes, window):
    plan = prefetch_plan(sizes, window)
    assert len(plan) == len(sizes)
    asked = [k for ahead in plan for k in ahead]
    assert len(asked) == len(set(asked))                          # once each
    for j, ahead in enumerate(plan):
        assert ahead == sorted(ahead)
        for k in ahead:
            assert k > j and sizes[k] > 0                         # a later launch that reads weights
            assert sum(sizes[j + 1:k + 1]) <= window              # within the window from the next launch
    # every launch that reads weights and fits in the window is asked for, by the launch before it at the latest
    want = {k for k in range(1, len(sizes)) if 0 < sizes[k] <= window}
    assert set(asked) == want
    for k in want:
        assert any(k in plan[j] for j in range(k))


def test_plan_example():
    # 10 MB window: the 8 and 4 go one launch ahead of their turn, the 30 (bigger than the window) never
    assert prefetch_plan([0, 8, 0, 4, 30, 2], 10) == [[1], [3], [], [], [5], []]


@requires_cuda
@pytest.mark.parametrize("sizes, blocks", [((1, 17, 3), 1), ((5000, 1, 77), 4), ((3 * 2 ** 20 + 5, 100), 3),
                                           ((64,), 16)])
def test_kernel_asks_for_every_byte_once(sizes, blocks, monkeypatch):
    """In the simulator the kernel calls Python, so a recorder stands in for ``ptx.prefetch_l2``: the pieces asked
    for tile each buffer exactly and start 16-byte aligned (sizes not multiples of the blocks or of 16, a buffer
    larger than a CHUNK, an empty slot)."""
    from numba import config, cuda
    from numba_kernels import prefetch, ptx
    bufs = [cuda.to_device(np.zeros(n, np.uint8)) for n in sizes]
    if not config.ENABLE_CUDASIM:                                  # the GPU: the hints run and fault nowhere
        prefetch.launch_prefetch(bufs, 0, blocks=blocks)
        cuda.synchronize()
        return
    seen = {}

    def record(arr, start, nbytes):
        ptx._simulator_prefetch_l2(arr, start, nbytes)           # inside the array, or it raises
        assert 0 < int(nbytes) <= prefetch.CHUNK
        seen.setdefault(arr.shape[0], []).append((int(start), int(start) + int(nbytes)))

    monkeypatch.setattr(ptx, "prefetch_l2", record)
    prefetch.launch_prefetch(bufs, 0, blocks=blocks)
    for n in sizes:
        pieces = sorted(seen[n])
        assert pieces[0][0] == 0 and pieces[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))   # no gap, no overlap
        assert all(start % 16 == 0 for start, _ in pieces)            # aligned: the hint drops no byte


@requires_cuda
def test_decode_step_with_the_prefetch_branch_gives_the_same_logits(tmp_path, monkeypatch):
    from llama_beta.backends import cuda_decode
    from llama_beta.backends.cuda_decode import CudaDecoder
    from llama_beta.model import Model
    from llama_beta.synth import synth_model, tiny_vocab
    from numba_kernels import prefetch

    path = synth_model(tmp_path / "m.gguf", "micro", arch="qwen2", n_layers=1, dim=32, n_heads=2, n_kv_heads=1,
                       ffn_dim=32, vocab=tiny_vocab(ascii_only=True))
    model = Model(path, backend="cuda", context=32)
    prompt = np.array([5, 60], np.int32)
    launches = []
    real = prefetch.launch_prefetch
    monkeypatch.setattr(prefetch, "launch_prefetch", lambda bufs, stream: launches.append(len(bufs)) or
                        real(bufs, stream, blocks=2))
    logits = {}
    cache = model.new_cache(16)
    model.step(prompt, 0, cache)
    for mb in (0.0, 1.0):                                          # (both steps write the same cache row)
        monkeypatch.setattr(cuda_decode, "PREFETCH_MB", mb)
        decoder = CudaDecoder(model, cache, fused=True)
        logits[mb] = decoder.step_logits(19, len(prompt))
        decoder.close()
    np.testing.assert_array_equal(logits[1.0], logits[0.0])           # a hint changes no value
    # the 1 MiB window holds the whole micro model: each of its 7 + 1 matrices is asked for once
    assert sum(launches) == 7 + 1
