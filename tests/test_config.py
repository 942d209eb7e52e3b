"""Architecture detection and the checks made before any weight is read.

Each bad model is a small synthetic file (``llama_beta.synth``) with one thing wrong;
the check must name the file, the key or tensor, and what was expected.
"""
from __future__ import annotations

import numpy as np
import pytest

from llama_beta import architectures
from llama_beta.config import ModelError, load_config
from llama_beta.gguf_writer import write_gguf
from llama_beta.synth import PRESETS, _metadata, _tensor_plan, random_tensor, synth_model, tiny_vocab
from ref.ggml import GGMLType
from ref.gguf import GGUFFile


def _write(path, spec_name="micro", md_changes=None, drop=(), reshape=None, retype=None, **spec_overrides):
    """A synthetic micro model with targeted damage to metadata or tensors."""
    from dataclasses import replace

    spec = replace(PRESETS[spec_name], **spec_overrides)
    vocab = tiny_vocab()
    md = _metadata(spec, vocab)
    md.update(md_changes or {})
    md = {k: v for k, v in md.items() if v is not None}
    rng = np.random.default_rng(0)
    tensors = {}
    for name, (role, shape) in _tensor_plan(spec, len(vocab["tokenizer.ggml.tokens"])).items():
        if name in drop:
            continue
        shape = (reshape or {}).get(name, shape)
        gtype = (retype or {}).get(name, GGMLType.F32)
        tensors[name] = (gtype, random_tensor(rng, gtype, shape, 0.1), shape)
    return write_gguf(path, md, tensors)


def _config(path):
    with GGUFFile(path) as g:
        return load_config(g)[0]


def test_real_model_config(qwen_model_path):
    cfg = _config(qwen_model_path)
    assert (cfg.arch, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_size) == ("qwen2", 24, 896, 14, 2, 64)
    assert (cfg.ffn_dim, cfg.vocab_size, cfg.context_length, cfg.rope_base) == (4864, 151936, 32768, 1e6)
    assert cfg.rope_neox and cfg.qkv_bias and not cfg.tied_embeddings
    assert cfg.kv_mul == 7


@pytest.mark.parametrize("arch", ["qwen2", "phi3", "llama"])
def test_every_architecture_round_trips_through_synth(tmp_path, arch):
    path = synth_model(tmp_path / f"{arch}.gguf", "micro", arch=arch)
    cfg = _config(path)
    assert cfg.arch == arch and cfg.n_layers == 2 and cfg.dim == 64
    assert cfg.fused_qkv == (arch == "phi3") and cfg.fused_gate_up == (arch == "phi3")
    assert cfg.rope_neox == (arch != "llama")


def test_unsupported_architecture_lists_supported(tmp_path):
    path = _write(tmp_path / "m.gguf", md_changes={"general.architecture": "mamba"})
    with pytest.raises(ModelError, match=r"unsupported architecture 'mamba' \(supported: llama, phi3, qwen2\)"):
        _config(path)


@pytest.mark.parametrize("changes, pattern", [
    ({"qwen2.attention.head_count": 0}, r"'qwen2.attention.head_count': expected an integer in \[1,"),
    ({"qwen2.attention.head_count_kv": 3}, r"head_count_kv': expected a divisor of attention.head_count=4"),
    ({"qwen2.embedding_length": None}, r"'qwen2.embedding_length': expected this key to be present"),
    ({"qwen2.embedding_length": "wide"}, r"'qwen2.embedding_length': expected an integer"),
    ({"qwen2.rope.dimension_count": 15}, r"rope.dimension_count': expected an even number"),
    ({"qwen2.attention.layer_norm_rms_epsilon": float("nan")}, r"layer_norm_rms_epsilon': expected a number in"),
    ({"qwen2.block_count": 3}, r"expected 3 blocks blk.0..blk.2 in the tensors, but 1 of them missing \(2\)$"),
    ({"qwen2.block_count": 9}, r"blk.0..blk.8 in the tensors, but 7 of them missing \(2, 3, 4, ...\)$"),
    ({"qwen2.block_count": 1}, r"expected 1 blocks blk.0..blk.0 in the tensors, but unexpected blocks 1$"),
])
def test_bad_hyperparameters_are_named(tmp_path, changes, pattern):
    path = _write(tmp_path / "m.gguf", md_changes=changes)
    with pytest.raises(ModelError, match=pattern) as info:
        _config(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_tensor_is_named(tmp_path):
    path = _write(tmp_path / "m.gguf", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ModelError, match=r"tensor 'blk.1.ffn_up.weight': expected it to be present"):
        _config(path)


def test_wrong_shape_is_named(tmp_path):
    path = _write(tmp_path / "m.gguf", reshape={"blk.0.attn_k.weight": (64, 64)})
    with pytest.raises(ModelError, match=r"tensor 'blk.0.attn_k.weight': expected shape \(32, 64\), got \(64, 64\)"):
        _config(path)


def test_wrong_type_is_named(tmp_path):
    path = _write(tmp_path / "m.gguf", retype={"blk.0.attn_norm.weight": GGMLType.F16})
    with pytest.raises(ModelError, match=r"tensor 'blk.0.attn_norm.weight': expected type in \{F32\}, got F16"):
        _config(path)


def test_tied_embeddings_when_output_absent(tmp_path):
    path = synth_model(tmp_path / "tied.gguf", "micro", tied=True)
    assert _config(path).tied_embeddings
    assert "output.weight" not in architectures.expected_tensors(_config(path), architectures.get("qwen2"))
