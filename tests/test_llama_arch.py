"""The llama adapter: interleaved RoPE on GGUF's permuted q/k rows equals transformers' rotate-half.

llama.cpp's converter permutes the rows of ``attn_q``/``attn_k`` of every head so that its
interleaved-pair RoPE reproduces the original rotate-half model; transformers' GGUF loader undoes
that permutation (``LlamaTensorProcessor``) and rotates halves. A random llama file must therefore
give the same logits through our adapter (pairs ``(2i, 2i+1)``, rows as stored) and through
transformers. The tiny byte-level vocabulary keeps this fast (transformers loads no tokenizer here).

Tolerance: per token row, ``max_v |ours - theirs| <= 1e-4 * max_v |theirs|`` (float32 summation
order only, about 1e-6 measured; rotating the wrong pairs moves logits by 1e-2 or more).

Llama 3.1 RoPE scaling: llama.cpp's converter stores per-pair divisors ``rope_freqs.weight``;
transformers computes the same scaling from ``rope_type="llama3"`` parameters (its GGUF loader
ignores the tensor, so the oracle gets those parameters set by hand, as ``test_phi3`` does for
LongRoPE). The divisors here follow the published Llama 3.1 formula.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from llama_beta.gguf_writer import write_gguf
from llama_beta.model import Model
from llama_beta.synth import synth_model
from ref.ggml import GGMLType
from ref.gguf import GGUFFile

pytestmark = pytest.mark.oracle
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama") / "tiny-llama.gguf"
    return synth_model(path, "micro", arch="llama", matrix_type=GGMLType.F32, seed=5)


def rows_close(mine, theirs):
    for t in range(theirs.shape[0]):
        assert_close(mine[t], theirs[t], atol=1e-4 * float(np.abs(theirs[t]).max()), rtol=0.0, name=f"row {t}")


def test_llama_logits_match_transformers(llama_file):
    ours = Model(llama_file, backend="numpy", context=32)
    assert ours.config.arch == "llama" and not ours.config.rope_neox and not ours.config.qkv_bias
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(llama_file.parent), gguf_file=llama_file.name,
                                                            dtype=torch.float32).eval()
    assert hf.config.model_type == "llama"
    ids = np.random.default_rng(0).integers(0, ours.config.vocab_size, 12).tolist()
    mine = ours.forward(ids)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    rows_close(mine, theirs)
    # The same file read with rotate-half pairs is a different model: the pairing is what is tested.
    ours.rope.neox = True
    assert np.abs(ours.forward(ids) - theirs).max() > 1e-2 * np.abs(theirs).max()


LLAMA3 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def llama3_divisors(hs: int, base: float) -> np.ndarray:
    """Llama 3.1's per-pair frequency divisors: 1 for short wavelengths, ``factor`` for long, smooth between."""
    freq = base ** (-np.arange(0, hs, 2) / hs)
    wavelen = 2 * np.pi / freq
    L, lo, hi, k = (LLAMA3[n] for n in ("original_max_position_embeddings", "low_freq_factor",
                                       "high_freq_factor", "factor"))
    smooth = np.clip((L / wavelen - lo) / (hi - lo), 0.0, 1.0)       # 0: long wavelength, 1: short
    return (1.0 / ((1 - smooth) / k + smooth)).astype(np.float32)


def test_llama3_rope_freqs_match_transformers(llama_file, tmp_path):
    with GGUFFile(llama_file) as g:
        tensors = {n: (t.ggml_type, np.array(g.raw(n)), t.shape) for n, t in g.tensors.items()}
        md = dict(g.metadata)
    freqs = llama3_divisors(16, 10000.0)
    tensors["rope_freqs.weight"] = (GGMLType.F32, freqs.view(np.uint8), freqs.shape)
    path = write_gguf(tmp_path / "llama31.gguf", md, tensors)
    ours = Model(path, backend="numpy", context=32)
    assert np.array_equal(ours.rope.factors, freqs) and 1.0 < freqs.max() <= 8.0

    base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name,
                                                              dtype=torch.float32)
    cfg = base.config
    del cfg.quantization_config
    cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, **LLAMA3}
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.load_state_dict(base.state_dict())
    ids = np.random.default_rng(1).integers(0, ours.config.vocab_size, 20).tolist()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
        plain = base(torch.tensor([ids])).logits[0].numpy()
    rows_close(ours.forward(ids), theirs)
    assert np.abs(plain - theirs).max() > 1e-3 * np.abs(theirs).max()   # the divisors matter at these positions
