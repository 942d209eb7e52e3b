"""Phi-3 through the shared forward pass, checked against transformers' ``Phi3ForCausalLM``.

The models are tiny and random (``llama_beta.synth``: 2 blocks, C=64, 4 query heads over 2 KV
heads) but carry the real Phi-3 vocabulary (32064 SentencePiece tokens), so they are files
llama.cpp and transformers load as Phi-3. Checked here:

- logits of our NumPy backend equal transformers' (loaded from the same GGUF, float32), and
  greedy decoding with our KV cache picks the same 10 tokens as ``transformers.generate``;
- the fused ``attn_qkv`` and ``ffn_up`` (gate first) give exactly what separate tensors give;
- LongRoPE (short and long factors, attention factor) with partial rotary dimensions and tied
  output (Phi-4-mini's shape) against transformers' ``longrope`` implementation. Transformers'
  GGUF loader ignores ``rope_factors_*`` and ``rope.dimension_count`` for phi3, so the oracle is
  its ``Phi3ForCausalLM`` built from the GGUF-loaded weights with ``rope_parameters`` set
  from the file's factors (the formulas stay transformers' own);
- tokenizer: BOS added, ``<|end|>``/``<|endoftext|>`` end generation; the sliding window is ignored.

Tolerance: per token row, ``max_v |ours - theirs| <= 1e-4 * max_v |theirs|``. Normalizing by the
row's largest logit measures error on the scale that decides the argmax (single logits near 0
make elementwise relative error meaningless), and per row rather than over the whole matrix so
that one bad position cannot hide behind another's large logits. Both sides dequantize the
same bytes to the same float32 weights; only float32 summation order differs (BLAS vs torch),
measured at about 5e-7. Any real mistake (a swapped gate/up, a wrong RoPE pair or factor, a
missing attention factor) moves logits by 1e-2 or more.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import ON_GPU, assert_close, hf_greedy
from llama_beta.generate import encode_prompt
from llama_beta.gguf_writer import write_gguf
from llama_beta.model import Model
from llama_beta.synth import synth_model, vocab_from
from ref.ggml import GGMLType
from ref.gguf import GGUFFile

TEXT = "The llama walked slowly up the mountain path, carrying"
ORIG, LONG_CTX = 32, 128          # LongRoPE file: original context and extended context


def assert_rows_close(ours, theirs, name, rel=1e-4):
    """Per-row relative error (see the module docstring for why this measure)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    for t in range(theirs.shape[0]):
        assert_close(ours[t], theirs[t], atol=rel * float(np.abs(theirs[t]).max()), rtol=0.0, name=f"{name} row {t}")


def hf_from_gguf(path):
    """transformers' model from our GGUF file (skips the test when the oracle extra is missing)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()


def hf_logits(hf, ids):
    import torch

    with torch.no_grad():
        return hf(torch.tensor([list(ids)])).logits[0].numpy()


def rewrite(src, dst, md_changes=None, tensor_fn=None):
    """Copy a GGUF file, changing metadata and (via ``tensor_fn(tensors)``) tensors."""
    with GGUFFile(src) as g:
        md = {**g.metadata, **(md_changes or {})}
        tensors = {n: (t.ggml_type, np.array(g.raw(n)), t.shape) for n, t in g.tensors.items()}
    if tensor_fn:
        tensors = tensor_fn(tensors)
    return write_gguf(dst, md, tensors)


@pytest.fixture(scope="module")
def phi3_vocab(phi3_vocab_path):
    return vocab_from(phi3_vocab_path)


@pytest.fixture(scope="module")
def phi3_file(tmp_path_factory, phi3_vocab):
    """Phi-3-mini's layout in miniature: fused qkv and gate/up, separate output, Q8_0 matrices."""
    path = tmp_path_factory.mktemp("phi3") / "tiny-phi3.gguf"
    return synth_model(path, "micro", arch="phi3", vocab=phi3_vocab, matrix_type=GGMLType.Q8_0, orig_context=2048)


@pytest.fixture(scope="module")
def ours(phi3_file):
    return Model(phi3_file, backend="numpy", context=64)


@pytest.fixture(scope="module")
def hf(phi3_file):
    return hf_from_gguf(phi3_file)


def test_config_is_phi3(ours):
    c = ours.config
    assert (c.arch, c.vocab_size, c.n_heads, c.n_kv_heads, c.head_size) == ("phi3", 32064, 4, 2, 16)
    assert c.fused_qkv and c.fused_gate_up and c.rope_neox and not c.tied_embeddings and not c.qkv_bias
    assert c.rope_dims == c.head_size and ours.rope.factors is None and ours.rope.attn_factor == 1.0


@pytest.mark.oracle
def test_logits_match_transformers(ours, hf):
    ids = ours.tokenizer.encode(TEXT)
    assert ids[0] == ours.tokenizer.bos_id == 1 and len(ids) > 8
    assert_rows_close(ours.forward(ids), hf_logits(hf, ids), "phi3 logits vs transformers")


@pytest.mark.oracle
def test_greedy_decode_matches_transformers(ours, hf):
    """Same 10 greedy tokens, and the KV-cached decode logits of every step agree."""
    import torch

    ids = ours.tokenizer.encode(TEXT)
    mine = ours.generate("", prompt_ids=ids, chat=False, max_tokens=10, temperature=0)
    theirs, out = hf_greedy(hf, ids, 10, ours.tokenizer.eot_ids)
    assert mine.ids == theirs
    assert len(mine.ids) >= 5  # random weights rarely pick one of the 3 end tokens out of 32064
    # Greedy ids alone are a weak check on a random model (the embedding dominates the residual
    # stream, so many mistakes keep the argmax); the step logits are not.
    cache = ours.new_cache(len(ids) + len(theirs))
    steps = [ours.step(np.array(ids, np.int32), 0, cache)[-1]]
    steps += [ours.step(np.array([t], np.int32), len(ids) + i, cache)[-1] for i, t in enumerate(theirs[:-1])]
    their_steps = torch.stack(out.logits[:len(theirs)])[:, 0].numpy()       # [n, V]
    assert_rows_close(np.stack(steps), their_steps, "decode-step logits vs transformers")


@pytest.mark.oracle
@pytest.mark.skipif(not ON_GPU, reason="GPU only: its 32064-row output product is too many simulated threads for CI")
def test_cuda_backend_matches_transformers(phi3_file, ours, hf):
    """The same tiny Phi-3 on the cuda backend: prompt logits within 1e-4 of transformers', the same
    10 greedy ids (device-chosen, graph-replayed decode step) as transformers and the NumPy backend."""
    gpu = Model(phi3_file, backend="cuda", context=64)
    ids = gpu.tokenizer.encode(TEXT)
    assert_rows_close(gpu.forward(ids), hf_logits(hf, ids), "phi3 cuda logits vs transformers")
    theirs, _ = hf_greedy(hf, ids, 10, gpu.tokenizer.eot_ids)
    mine = gpu.generate("", prompt_ids=ids, chat=False, max_tokens=10, temperature=0)
    assert mine.ids == theirs == ours.generate("", prompt_ids=ids, chat=False, max_tokens=10, temperature=0).ids


def _unfuse(cfg):
    """Split each block's attn_qkv into attn_q/k/v and ffn_up into ffn_gate (first rows) and ffn_up."""
    q, kv, F = cfg.n_heads * cfg.head_size, cfg.n_kv_heads * cfg.head_size, cfg.ffn_dim

    def fn(tensors):
        out = {}
        for name, (gtype, raw, shape) in tensors.items():
            p = name[:name.rfind(".", 0, name.rfind(".")) + 1]   # "blk.N."
            if name.endswith("attn_qkv.weight"):
                for part, (a, b) in (("attn_q", (0, q)), ("attn_k", (q, q + kv)), ("attn_v", (q + kv, q + 2 * kv))):
                    out[f"{p}{part}.weight"] = (gtype, raw[a:b], (b - a, shape[1]))
            elif name.endswith("ffn_up.weight"):
                out[p + "ffn_gate.weight"] = (gtype, raw[:F], (F, shape[1]))
                out[p + "ffn_up.weight"] = (gtype, raw[F:], (F, shape[1]))
            else:
                out[name] = (gtype, raw, shape)
        return out
    return fn


def test_fused_tensors_equal_separate_ones(ours, phi3_file, tmp_path):
    split = Model(rewrite(phi3_file, tmp_path / "split.gguf", tensor_fn=_unfuse(ours.config)), backend="numpy")
    assert not split.config.fused_qkv and not split.config.fused_gate_up
    ids = ours.tokenizer.encode(TEXT)
    # The same float32 weights in the same BLAS calls; 1e-6 only allows for alignment-dependent kernels.
    assert_rows_close(split.forward(ids), ours.forward(ids), "separate vs fused projections", rel=1e-6)


def test_sliding_window_is_ignored_like_llama_cpp(ours, phi3_file, tmp_path):
    windowed = Model(rewrite(phi3_file, tmp_path / "swa.gguf", {"phi3.attention.sliding_window": 4}),
                     backend="numpy", context=64)
    assert windowed.config.extra["sliding_window"] == 4 and ours.config.extra["sliding_window"] == 0
    ids = ours.tokenizer.encode(TEXT)                      # longer than the window
    assert len(ids) > 4
    assert_rows_close(windowed.forward(ids), ours.forward(ids), "window 4 vs none", rel=1e-6)


def test_tokenizer_bos_and_end_tokens(ours):
    tok = ours.tokenizer
    assert tok.add_bos and tok.encode("Hello world") == [1, 15043, 3186]
    ends = {tok.token_to_id(t) for t in ("<|end|>", "<|endoftext|>")}
    assert ends == {32007, 32000} and ends <= set(tok.eot_ids)


def test_chat_prompt_has_one_bos(ours):
    # llama.cpp: render the template, drop the leading BOS text (the tokenizer adds BOS), tokenize with
    # parse_special; RSTRIP on Phi-3's special tokens eats the newline after <|user|> and <|end|>.
    assert encode_prompt(ours, "Hi there") == [1, 32010, 6324, 727, 32007, 32001]


# ------------------------------------------------------------------ LongRoPE

@pytest.fixture(scope="module")
def longrope_file(tmp_path_factory, phi3_vocab):
    """Phi-4-mini's features in miniature: LongRoPE factors, 12 of 16 dims rotated, tied output."""
    path = tmp_path_factory.mktemp("phi3") / "tiny-phi3-longrope.gguf"
    return synth_model(path, "micro", arch="phi3", vocab=phi3_vocab, matrix_type=GGMLType.F32, tied=True,
                       rope_dims=12, longrope=True, context_length=LONG_CTX, orig_context=ORIG, seed=3)


@pytest.fixture(scope="module")
def hf_longrope(longrope_file):
    """transformers' Phi3 with ``longrope`` parameters taken from the file, weights from its GGUF loader."""
    base = hf_from_gguf(longrope_file)
    import transformers

    with GGUFFile(longrope_file) as g:
        factors = {k: g.raw(f"rope_factors_{k}.weight").view(np.float32).reshape(-1).tolist() for k in ("long", "short")}
    cfg = copy.deepcopy(base.config)
    del cfg.quantization_config
    cfg.rope_parameters = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 12 / 16,
                           "long_factor": factors["long"], "short_factor": factors["short"],
                           "original_max_position_embeddings": ORIG}
    cfg.max_position_embeddings, cfg.original_max_position_embeddings = LONG_CTX, ORIG
    model = transformers.Phi3ForCausalLM(cfg).eval()
    model.load_state_dict(base.state_dict())
    assert cfg.tie_word_embeddings
    return model


@pytest.mark.oracle
@pytest.mark.parametrize("T, context, kind", [(12, ORIG, "short"), (40, 2 * ORIG, "long")])
def test_longrope_matches_transformers(longrope_file, hf_longrope, T, context, kind):
    ours = Model(longrope_file, backend="numpy", context=context)
    with GGUFFile(longrope_file) as g:
        expected = g.raw(f"rope_factors_{kind}.weight").view(np.float32).reshape(-1)
    assert np.array_equal(ours.rope.factors, expected) and ours.rope.dims == 12
    # sqrt(1 + ln(128/32) / ln 32): the attention factor transformers derives on its own.
    assert ours.rope.attn_factor == pytest.approx(np.sqrt(1 + np.log(4) / np.log(32)), rel=1e-6)
    # transformers takes the long factors when the sequence exceeds ORIG, we when the context does.
    ids = np.random.default_rng(T).integers(3, 32000, T).tolist()
    assert_rows_close(ours.forward(ids), hf_logits(hf_longrope, ids), f"LongRoPE ({kind}) vs transformers")


def test_longrope_rotation_by_hand(longrope_file):
    """Without transformers: the rotation the engine applies is the LongRoPE formula, in float64."""
    ours = Model(longrope_file, backend="numpy", context=2 * ORIG)               # long factors
    p = ours.rope
    x = np.random.default_rng(1).standard_normal((3, 2, 16)).astype(np.float32)  # [T, heads, hs]
    pos = np.array([0, 5, 63])
    with GGUFFile(longrope_file) as g:
        f = g.raw("rope_factors_long.weight").view(np.float32).reshape(-1).astype(np.float64)
        d = g.metadata["phi3.rope.dimension_count"]
    theta = pos[:, None] * 10000.0 ** (-np.arange(d // 2) * 2.0 / d) / f         # [T, d/2]
    m = np.sqrt(1 + np.log(LONG_CTX / ORIG) / np.log(ORIG))
    cos, sin = (m * np.cos(theta))[:, None], (m * np.sin(theta))[:, None]       # [T, 1, d/2]
    a, b = x[..., :d // 2].astype(np.float64), x[..., d // 2:d].astype(np.float64)
    expected = np.concatenate([a * cos - b * sin, a * sin + b * cos, x[..., d:]], axis=-1)
    # float32 angles (a running product, as ggml) differ from float64 by ~p * 1e-7 rad.
    assert_close(ours.backend.rope(x, pos.astype(np.int32), p), expected, atol=2e-5, rtol=0, name="LongRoPE")
