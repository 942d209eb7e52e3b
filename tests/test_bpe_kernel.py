"""numba_kernels/bpe.py against ref.bpe.merge_word: identical ids (exact, no tolerance).

In the simulator each block is BLOCK Python threads, so batches stay small there; on a GPU the
batch is a whole source file.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import registry_file, ON_GPU, requires_cuda
from ref.bpe import BPE, byte_encode, bytes_to_unicode, merge_word


def toy_bpe() -> BPE:
    """256 byte tokens plus merges that make ties, chains and competing pairs."""
    base = [bytes_to_unicode()[b] for b in range(256)]
    merges = ["a b", "b c", "a a", "ab c", "aa a", "c c", "abc abc", "Ġ a", "Ġa b"]
    extra = ["ab", "bc", "aa", "abc", "aaa", "cc", "abcabc", "Ġa", "Ġab"]
    return BPE(base + extra, merges, "gpt2")


def expected(bpe, words):
    return [[bpe.token_to_id[s] for s in merge_word(list(w), bpe.ranks)] if len(w) > 1 else
            [bpe.token_to_id[w]] for w in words]


def as_ids(bpe, words):
    return [[bpe.token_to_id[c] for c in w] for w in words]


@requires_cuda
@pytest.mark.parametrize("version", [1, 2])
def test_toy_vocabulary(version):
    from numba_kernels.bpe import build_merge_tables, encode_words
    bpe = toy_bpe()
    words = ["abc", "aaaa", "abcabc", "ccab", "a", "Ġabc", "xyz", "aaaaaaa"]
    assert encode_words(as_ids(bpe, words), build_merge_tables(bpe), version) == expected(bpe, words)


@requires_cuda
@settings(max_examples=6 if not ON_GPU else 100, deadline=None)
@given(st.lists(st.text(alphabet="abcĠ", min_size=1, max_size=12 if not ON_GPU else 200), min_size=1, max_size=4))
def test_random_words_match_ref(words):
    from numba_kernels.bpe import build_merge_tables, encode_words
    bpe = toy_bpe()
    ids = as_ids(bpe, words)
    tables = build_merge_tables(bpe)
    want = expected(bpe, words)
    assert encode_words(ids, tables, 1) == want
    assert encode_words(ids, tables, 2) == want


@requires_cuda
def test_long_word_crosses_block_width():
    """A word longer than BLOCK exercises the strided pair loop and the chunked shift."""
    from numba_kernels.bpe import BLOCK, build_merge_tables, encode_words
    bpe = toy_bpe()
    words = ["abc" * (BLOCK // 2) + "a"]
    assert encode_words(as_ids(bpe, words), build_merge_tables(bpe), 2) == expected(bpe, words)


@requires_cuda
def test_real_qwen2_words():
    path = registry_file("qwen2-vocab")
    from numba_kernels.bpe import build_merge_tables, encode_words, pack_words
    from ref.tokenizer import load
    tok = load(path)
    text = "def tokenize(text):\n    return [vocab[w] for w in words]  # 日本語 😀" * (20 if ON_GPU else 1)
    words = [byte_encode(w) for w in tok.model.pre_tokenize(text)][: None if ON_GPU else 6]
    want = [list(tok.model.encode_word(w)) for w in words]
    packed = pack_words(as_ids(tok.model, words))
    tables = build_merge_tables(tok)
    for version in (1, 2):
        assert encode_words(packed, tables, version) == want


def test_pack_words():
    from numba_kernels.bpe import pack_words
    syms, offsets = pack_words([[1, 2], [], [3]])
    assert syms.tolist() == [1, 2, 3] and offsets.tolist() == [0, 2, 2, 3]
    assert syms.dtype == np.int32 and offsets.dtype == np.int32
