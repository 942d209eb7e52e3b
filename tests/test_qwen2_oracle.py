"""A tiny random Qwen2 with the real Qwen2 vocabulary against transformers' ``Qwen2ForCausalLM``.

The file (``llama_beta.synth``: 2 blocks, C=64, 4 query heads over 2 KV heads, q/k/v biases,
output tied to the embedding as in Qwen2.5-0.5B, Q8_0 matrices, 151936 tokens) is loaded by
transformers' GGUF loader, which dequantizes it to the same float32 weights we use.

Tolerance: per token row, ``max_v |ours - theirs| <= 1e-4 * max_v |theirs|`` - the row's
largest logit is the scale that decides the argmax, and per row so that one bad position cannot
hide behind another. Only float32 summation order differs (BLAS vs torch; about 1e-6 measured);
a wrong bias, RoPE pairing or GQA mapping moves logits by 1e-2 or more.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close, hf_greedy
from llama_beta.model import Model
from llama_beta.synth import synth_model, vocab_from
from ref.ggml import GGMLType

pytestmark = pytest.mark.oracle
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = "def fibonacci(n):\n    # the llama counts its steps"


def assert_rows_close(ours, theirs, name, rel=1e-4):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    for t in range(theirs.shape[0]):
        assert_close(ours[t], theirs[t], atol=rel * float(np.abs(theirs[t]).max()), rtol=0.0, name=f"{name} row {t}")


@pytest.fixture(scope="module")
def qwen2_file(tmp_path_factory, qwen2_vocab_path):
    path = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2.gguf"
    return synth_model(path, "micro", arch="qwen2", vocab=vocab_from(qwen2_vocab_path), matrix_type=GGMLType.Q8_0,
                       tied=True, rope_base=1e6, seed=7)


@pytest.fixture(scope="module")
def ours(qwen2_file):
    return Model(qwen2_file, backend="numpy", context=64)


@pytest.fixture(scope="module")
def hf(qwen2_file):
    return transformers.AutoModelForCausalLM.from_pretrained(str(qwen2_file.parent), gguf_file=qwen2_file.name,
                                                              dtype=torch.float32).eval()


def test_config_is_qwen2(ours, hf):
    c = ours.config
    assert (c.arch, c.vocab_size, c.n_heads, c.n_kv_heads, c.head_size) == ("qwen2", 151936, 4, 2, 16)
    assert c.qkv_bias and c.tied_embeddings and c.rope_neox and not c.fused_qkv
    assert hf.config.tie_word_embeddings and hf.config.model_type == "qwen2"


def test_logits_match_transformers(ours, hf):
    ids = ours.tokenizer.encode(TEXT)
    assert len(ids) > 8 and ids[0] != ours.tokenizer.bos_id      # Qwen2 adds no BOS
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    assert_rows_close(ours.forward(ids), theirs, "qwen2 logits vs transformers")


def test_greedy_decode_matches_transformers(ours, hf):
    ids = ours.tokenizer.encode(TEXT)
    mine = ours.generate("", prompt_ids=ids, chat=False, max_tokens=10, temperature=0)
    theirs, out = hf_greedy(hf, ids, 10, ours.tokenizer.eot_ids)
    assert mine.ids == theirs and len(mine.ids) >= 5
    # The ids alone are a weak check on a random model; the KV-cached decode logits are not.
    cache = ours.new_cache(len(ids) + len(theirs))
    steps = [ours.step(np.array(ids, np.int32), 0, cache)[-1]]
    steps += [ours.step(np.array([t], np.int32), len(ids) + i, cache)[-1] for i, t in enumerate(theirs[:-1])]
    assert_rows_close(np.stack(steps), torch.stack(out.logits[:len(theirs)])[:, 0].numpy(), "qwen2 decode logits")
