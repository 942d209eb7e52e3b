"""The preallocated CUDA decode step equals the readable forward pass, in both layer bodies
(one launch per stage, and the fused one), and picks the same tokens as the host sampler."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ON_GPU, assert_close, requires_cuda
from llama_beta.model import Model
from llama_beta.synth import synth_model, tiny_vocab
from ref import sampling as ref_sampling
from ref.ggml import GGMLType

# Simulator budget: every simulated CUDA thread is a Python thread, so off the GPU the model is
# one small block and the decode steps few (about 5 s a step; tests/cudasim_support.py).
SIZE = {} if ON_GPU else dict(n_layers=1, dim=32, n_heads=2, n_kv_heads=1, ffn_dim=32,
                                vocab=tiny_vocab(ascii_only=True))
PROMPT = np.array([5, 77, 60, 3] if ON_GPU else [5, 60], np.int32)
IDS = [19, 41, 7] if ON_GPU else [19, 41]


# Grouped-query heads that attention v6 / v7 serve (4 query heads per kv head, head size 32); with v7
# the fused body's RoPE and KV append run inside the attention launch.
GQA_SIZE = dict(n_layers=1, dim=128, n_heads=4, n_kv_heads=1, ffn_dim=32, vocab=tiny_vocab(ascii_only=True))


def _model(tmp_path, arch, matrix_type=GGMLType.Q8_0, size=None, kv_type="f32"):
    path = synth_model(tmp_path / "m.gguf", "micro", arch=arch, matrix_type=matrix_type, **(size or SIZE))
    return Model(path, backend="cuda", context=32, kv_type=kv_type)


BODIES = [(arch, fused) for arch in ("qwen2", "phi3") for fused in (False, True)]


@requires_cuda
@pytest.mark.parametrize("arch, fused", BODIES + [("qwen2-gqa-v6", True), ("qwen2-gqa-v7", True),
                                                   ("qwen2-qkv-rope", True), ("qwen2-qkv-rope-f16", True),
                                                   ("phi3-qkv-rope", True), ("phi3-qkv-rope-f16", True)])
def test_decoder_matches_forward(tmp_path, monkeypatch, arch, fused):
    """(``-f16``: both with a float16 KV cache, which the Q/K/V launch writes and attention reads.)"""
    from llama_beta.backends import cuda_decode
    from llama_beta.backends.cuda_decode import CudaDecoder

    gqa = "-gqa-" in arch
    if gqa:
        monkeypatch.setenv("LLAMA_BETA_ATTENTION", arch[-2:])
    f16 = arch.endswith("-f16")
    arch = arch.removesuffix("-f16")
    monkeypatch.setattr(cuda_decode, "QKV_ROPE", arch.endswith("-qkv-rope"))  # RoPE inside the Q/K/V launch
    model = _model(tmp_path, arch.split("-")[0], size=GQA_SIZE if gqa else None, kv_type="f16" if f16 else "f32")
    cache = model.new_cache(16)
    assert cache[0].dtype == (np.float16 if f16 else np.float32)
    model.step(PROMPT, 0, cache)
    decoder = CudaDecoder(model, cache, fused=fused)
    assert decoder.rope_in_attention == arch.endswith("-v7")  # v7: RoPE and the append inside attention
    names = [name for name, _ in decoder.fused_launches(0, model.weights.layers[0])]
    assert ("norm+qkv+rope+append" in names) == arch.endswith("-qkv-rope")
    fast = [decoder.step_logits(t, len(PROMPT) + j) for j, t in enumerate(IDS)]
    full = model.forward(np.concatenate([PROMPT, IDS]))[len(PROMPT):]
    # The forward pass ran prompt+ids as one prefill (tiled kernels, other summation orders; the
    # fused body also sums the norm inside each product): float32 rounding only.
    assert_close(np.stack(fast), full, atol=2e-3, rtol=2e-3, name=f"decoder (fused={fused}) vs forward")


@requires_cuda
def test_planar_output_product_gives_the_same_step(tmp_path, monkeypatch):
    """With ``LLAMA_BETA_PLANAR_Q8`` (here: its switch, and no row minimum) the backend gives the Q8_0 output
    matrix v22's two-plane copy at load, and the decode step's logits match the default launch's."""
    from numba_kernels import matmul
    from llama_beta.backends.cuda_decode import CudaDecoder

    monkeypatch.setattr(matmul, "PLANAR_Q8", True)
    monkeypatch.setattr(matmul, "PLANAR_MIN_ROWS", 0)
    launches = []
    launch = matmul.launch_planar_q8
    monkeypatch.setattr(matmul, "launch_planar_q8", lambda *a, **k: launches.append(1) or launch(*a, **k))
    model = _model(tmp_path, "qwen2", size=GQA_SIZE)           # dim 128: one 128-weight step a row
    assert model.weights.output.planar is not None
    cache = model.new_cache(16)
    model.step(PROMPT, 0, cache)
    planar = CudaDecoder(model, cache).step_logits(IDS[0], len(PROMPT))
    assert launches, "the decode step did not launch v22"
    model.weights.output.planar = None                       # the same step with v4 on the raw blocks
    plain = CudaDecoder(model, cache).step_logits(IDS[0], len(PROMPT))
    # the same products summed in other orders (float32 over K = 128 terms)
    assert_close(planar, plain, atol=1e-4, rtol=1e-4, name="v22 output vs v4")


@requires_cuda
@pytest.mark.parametrize("sampler", [None, (0.8, 5, 0.9, 0.05, 1234)])
def test_next_token_on_device_matches_host_sampler(tmp_path, sampler):
    """The token chosen inside the step equals the host chain on the same logits, and the state advances."""
    from llama_beta.backends.cuda_decode import CudaDecoder, POS, STEP

    model = _model(tmp_path, "qwen2")
    cache = model.new_cache(16)
    model.step(PROMPT, 0, cache)
    decoder = CudaDecoder(model, cache)
    token, pos = int(IDS[0]), len(PROMPT)
    for step in range(1, 3):
        chosen = decoder.next_token(token, pos, step, sampler)
        logits = decoder.logits.copy_to_host()[0]
        if sampler is None:
            want = int(np.argmax(logits))
        else:
            T, k, p, min_p, seed = sampler
            want = int(ref_sampling.sample(logits, T, k, p, min_p, u=ref_sampling.uniform(seed, step)))
        assert chosen == want
        state = decoder.state.copy_to_host()
        assert state[POS] == pos + 1 and state[STEP] == step + 1      # advanced on the device
        assert decoder.history.copy_to_host()[step] == chosen           # and recorded
        token, pos = chosen, pos + 1


@requires_cuda
@pytest.mark.parametrize("sampler", [None, (0.8, 5, 0.9, 0.05, 1234)])
def test_run_ahead_picks_the_same_tokens(tmp_path, sampler):
    """Steps queued ahead (``ahead``) give the tokens of one-at-a-time steps; a call that breaks the
    queued sequence (another position) waits for the queue and starts over from its own state."""
    from llama_beta.backends.cuda_decode import CudaDecoder, RUN_AHEAD

    model = _model(tmp_path, "qwen2")
    n = RUN_AHEAD + 2                     # more steps than the queue holds: it refills while reading

    def run(ahead: bool, start: int):
        cache = model.new_cache(16)
        model.step(PROMPT, 0, cache)
        decoder = CudaDecoder(model, cache)
        token, out = int(IDS[0]), []
        for i in range(n):
            token = decoder.next_token(token, start + i, i + 1, sampler, ahead=n - 1 - i if ahead else 0)
            out.append(token)
            if ahead and i == 0:
                assert len(decoder._inflight) == min(n - 1, RUN_AHEAD)   # queued, not yet read
        restart = decoder.next_token(int(IDS[0]), start, 1, sampler)       # not the queued sequence
        decoder.close()
        return out, restart

    one_by_one, first = run(False, len(PROMPT))
    queued, restart = run(True, len(PROMPT))
    assert queued == one_by_one
    assert restart == first == one_by_one[0]
