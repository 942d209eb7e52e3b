"""The preallocated CUDA decode step equals the readable forward pass (same kernels, fixed buffers)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ON_GPU, assert_close, requires_cuda
from llama_beta.model import Model
from llama_beta.synth import synth_model, tiny_vocab
from ref.ggml import GGMLType

# Simulator budget: every simulated CUDA thread is a Python thread, so off the GPU the model is
# one small block and the decode steps few.
SIZE = {} if ON_GPU else dict(n_layers=1, dim=32, n_heads=2, n_kv_heads=1, ffn_dim=32,
                                vocab=tiny_vocab(ascii_only=True))


@requires_cuda
@pytest.mark.parametrize("arch", ["qwen2", "phi3"] if ON_GPU else ["phi3"])
def test_decoder_matches_forward(tmp_path, arch):
    from llama_beta.backends.cuda_decode import CudaDecoder

    path = synth_model(tmp_path / "m.gguf", "micro", arch=arch, matrix_type=GGMLType.Q8_0, **SIZE)
    model = Model(path, backend="cuda", context=32)
    prompt = np.array([5, 77, 60, 3] if ON_GPU else [5, 60], np.int32)
    cache = model.new_cache(16)
    model.step(prompt, 0, cache)
    decoder = CudaDecoder(model, cache)
    ids = [19, 41, 7] if ON_GPU else [19]
    fast = [decoder.step_logits(t, len(prompt) + j) for j, t in enumerate(ids)]
    full = model.forward(np.concatenate([prompt, ids]))[len(prompt):]
    # The same kernels in the same order on the same buffers' values, except that the
    # forward pass ran the prompt+ids as one prefill (tiled kernels): float32 rounding only.
    assert_close(np.stack(fast), full, atol=2e-3, rtol=2e-3, name="decoder vs forward")
    pos = int(decoder.pos.copy_to_host()[0])
    assert pos == len(prompt) + len(ids)          # advanced on the device, once per step
    decoder.choose_greedy()                       # the next token, chosen on the device
    assert int(decoder.token.copy_to_host()[0]) == int(np.argmax(fast[-1]))
