"""Synthetic random-weight models: valid files with the requested shapes, types and spread."""
from __future__ import annotations

import numpy as np
import pytest

from llama_beta.synth import random_tensor, synth_model
from ref import quants
from ref.ggml import GGMLType
from ref.gguf import GGUFFile

TYPES = [GGMLType.F32, GGMLType.F16, GGMLType.Q4_0, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K,
         GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K]


@pytest.mark.parametrize("gtype", TYPES, ids=lambda t: t.name)
def test_random_tensor_has_the_requested_spread(gtype):
    sigma = 0.05
    raw = random_tensor(np.random.default_rng(1), gtype, (64, 512), sigma)
    w = quants.dequantize(raw, gtype, (64, 512))
    assert np.isfinite(w).all()
    # Recipes aim at sigma from rough block statistics; within a factor of 3 keeps activations in range.
    assert sigma / 3 < w.std() < sigma * 3, w.std()
    assert abs(w.mean()) < sigma  # centred enough that sums over K do not drift


def test_synth_file_matches_request(tmp_path):
    path = synth_model(tmp_path / "t.gguf", "tiny", types={"w_down": GGMLType.Q6_K})
    with GGUFFile(path) as g:
        assert g.metadata["general.architecture"] == "qwen2"
        assert g.tensors["blk.1.ffn_down.weight"].ggml_type == GGMLType.Q6_K
        assert g.tensors["blk.1.ffn_up.weight"].ggml_type == GGMLType.Q8_0
        assert g.tensors["blk.0.attn_q.bias"].shape == (256,)


def test_synth_refuses_to_overwrite(tmp_path):
    path = synth_model(tmp_path / "t.gguf", "micro")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        synth_model(path, "micro", seed=5)
    assert path.read_bytes() == before
