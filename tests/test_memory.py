"""The GPU memory plan and budget: refuse what does not fit, before any upload."""
from __future__ import annotations

import pytest

from conftest import requires_cuda
from llama_beta import memory
from llama_beta.config import load_config
from llama_beta.synth import synth_model
from ref.ggml import GGMLType
from ref.gguf import GGUFFile


@pytest.mark.parametrize("text, expected", [("512", 512), ("1KiB", 1024), ("1.5GiB", 3 << 29), ("2gb", 2 * 10**9),
                                            ("8G", 8 << 30), (4096, 4096)])
def test_parse_size(text, expected):
    assert memory.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "5 parsecs", "-1G"])
def test_parse_size_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="expected a number"):
        memory.parse_size(bad)


def test_plan_of_the_real_model(qwen_model_path):
    with GGUFFile(qwen_model_path) as g:
        cfg, adapter = load_config(g)
        p = memory.plan(g, cfg, adapter, context=4096)
        assert p.weights == sum(t.nbytes for t in g.tensors.values())  # every tensor is used
    assert p.kv_cache == 2 * 24 * 4096 * 2 * 64 * 4                     # K and V, float32
    with GGUFFile(qwen_model_path) as g:
        half = memory.plan(g, cfg, adapter, context=4096, kv_itemsize=2)  # kv_type="f16"
    assert half.kv_cache * 2 == p.kv_cache and half.weights == p.weights
    assert p.total == p.weights + p.kv_cache + p.activations + p.workspace
    assert 400 << 20 < p.weights < 500 << 20


def test_plan_counts_the_planar_output_copy(qwen_model_path, monkeypatch):
    """With ``LLAMA_BETA_PLANAR_Q8=1`` the cuda backend keeps a second copy of the Q8_0 output matrix (matmul v22;
    the default model's output.weight, 151936 x 896, not tied to its Q5_0 embedding table): the plan counts it."""
    from numba_kernels import matmul

    with GGUFFile(qwen_model_path) as g:
        cfg, adapter = load_config(g)
        plain = memory.plan(g, cfg, adapter, context=1024)
        monkeypatch.setattr(matmul, "PLANAR_Q8", True)
        planar = memory.plan(g, cfg, adapter, context=1024)
        table = g.tensors["output.weight"]
    assert not cfg.tied_embeddings and table.ggml_type == GGMLType.Q8_0 and table.shape == (151936, 896)
    assert planar.weights == plain.weights + table.nbytes


def test_budget_sources(monkeypatch):
    assert memory.budget("3GiB") == (3 << 30, "--vram-limit")
    monkeypatch.setenv("LLAMA_BETA_VRAM_LIMIT", "100MiB")
    assert memory.budget(None) == (100 << 20, "LLAMA_BETA_VRAM_LIMIT")


@requires_cuda
def test_model_over_budget_is_refused_before_upload(tmp_path, monkeypatch):
    from llama_beta.backends import cuda_backend
    from llama_beta.model import Model

    uploads = []
    real_matrix = cuda_backend.CudaBackend.matrix
    monkeypatch.setattr(cuda_backend.CudaBackend, "matrix", lambda self, *a, **k: uploads.append(1) or
                        real_matrix(self, *a, **k))
    path = synth_model(tmp_path / "m.gguf", "micro")
    with pytest.raises(memory.MemoryBudgetError) as info:
        Model(path, backend="cuda", context=64, vram_limit="64KiB")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "needs" in message and "64.0 KiB" not in message and "available (--vram-limit)" in message
    assert uploads == []
    ok = Model(path, backend="cuda", context=64, vram_limit="1GiB")  # the same model fits a real budget
    assert uploads and ok.memory_plan.total < 1 << 30
    ok.close()


@pytest.mark.skipif(not __import__("conftest").ON_GPU, reason="device memory accounting needs a real GPU")
def test_repeated_load_and_close_returns_device_memory(tmp_path):
    from numba import cuda

    from llama_beta.model import Model

    # about 16 MiB of Q8_0 weights, so that leaking one model per round could not hide in the slack below
    path = synth_model(tmp_path / "m.gguf", "tiny", n_layers=4, dim=512, n_heads=8, n_kv_heads=4, ffn_dim=2048,
                       matrix_type=GGMLType.Q8_0)
    first = Model(path, backend="cuda", context=256)   # the first load pays for contexts and modules
    model_bytes = first.memory_plan.weights
    first.close()
    free_before = cuda.current_context().get_memory_info()[0]
    for _ in range(3):
        Model(path, backend="cuda", context=256).close()
    free_after = cuda.current_context().get_memory_info()[0]
    # Slack: the H200 run kept exactly one 2 MiB driver granule after three rounds (the old bound of
    # 2 MiB failed by equality); two granules are allowed, far below one leaked model per round.
    assert model_bytes > 12 << 20
    assert free_before - free_after <= 4 << 20
