"""ref/bpe.py: byte map, pre-tokenizer, merge order, and the real Qwen2 vocabulary.

All comparisons are exact (token ids and strings).
"""
import unicodedata

import pytest

from conftest import registry_file
import regex
from hypothesis import given, settings, strategies as st

from ref.bpe import (BPE, byte_decode, byte_encode, bytes_to_unicode, compile_pre_tokenizer, merge_word,
                     parse_merge, unicode_classes)


def _cached(name):
    return registry_file(name)


@pytest.fixture(scope="module")
def qwen_bpe():
    from ref.tokenizer import load
    return load(_cached("qwen2-vocab")).model


def test_byte_map_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[0x20] == "\u0120" and table[0x0A] == "\u010a" and table[ord("A")] == "A"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_byte_encode_round_trips(text):
    assert byte_decode(byte_encode(text)).decode("utf-8") == text


def test_parse_merge_splits_at_first_space_after_position_zero():
    assert parse_merge("Ġ t") == ("Ġ", "t")
    assert parse_merge("  x") == (" ", "x")          # llama.cpp's find(' ', 1)
    assert parse_merge("nospace") is None


def test_merge_order_lowest_rank_then_leftmost():
    ranks = {("a", "b"): 0, ("b", "c"): 1, ("ab", "c"): 2, ("a", "a"): 3}
    assert merge_word(list("abc"), ranks) == ["abc"]           # ab (rank 0) before bc (rank 1)
    assert merge_word(list("bcab"), ranks) == ["bc", "ab"]
    assert merge_word(list("aaa"), ranks) == ["aa", "a"]       # tie: the leftmost pair merges first
    assert merge_word(list("xyz"), ranks) == ["x", "y", "z"]


def test_toy_vocabulary_encode():
    toks = [bytes_to_unicode()[b] for b in range(256)] + ["Ġt", "he", "Ġthe"]
    bpe = BPE(toks, ["Ġ t", "h e", "Ġt he"], "gpt2")
    assert bpe.encode(" the") == [258]
    assert bpe.encode("the") == [ord("t"), 257]                # 't', 'he'


@pytest.mark.parametrize("text, words", [
    ("Hello world!", ["Hello", " world", "!"]),
    ("I'm 123", ["I", "'m", " ", "1", "2", "3"]),                  # qwen2: one digit per word
    ("a  b", ["a", " ", " b"]),                                     # \s+(?!\S) keeps the last space
    ("x \n\n y", ["x", " \n\n", " y"]),                             # \s*[\r\n]+
    ("foo!!\n\nbar", ["foo", "!!\n\n", "bar"]),                     # punctuation eats newlines
    ("'LL 's", ["'LL", " '", "s"]),
    ("日本語 テキスト", ["日本語", " テキスト"]),
])
def test_qwen2_pre_tokenizer(text, words):
    assert [m.group() for m in compile_pre_tokenizer("qwen2").finditer(text)] == words


def test_unicode_classes_match_python_for_assigned_characters():
    """Below U+10000, the classes agree with unicodedata (which is what they are built from)
    and with the regex module wherever both Unicode versions know the character."""
    cls = unicode_classes()
    letter, number = regex.compile(f"[{cls['L']}]"), regex.compile(f"[{cls['N']}]")
    for cp in range(0x20, 0x10000, 7):
        c = chr(cp)
        cat = unicodedata.category(c)
        if cat == "Cn" or 0xD800 <= cp < 0xE000:
            continue
        assert bool(letter.match(c)) == cat.startswith("L"), hex(cp)
        assert bool(number.match(c)) == cat.startswith("N"), hex(cp)
    assert letter.match("\U00031350") and number.match("\U00011F50")   # Unicode 15.0/15.1 additions


def test_qwen2_real_vocab_examples(qwen_bpe):
    """Ids checked against llama.cpp's llama_tokenize."""
    assert qwen_bpe.encode("Hello world") == [9707, 1879]                      # Hello, Ġworld
    assert qwen_bpe.encode("  \n") == [2303]                                  # ĠĠĊ, one word
    assert qwen_bpe.encode("def f(x):\n    return x**2") == [750, 282, 2075, 982, 262, 470, 856, 334, 17]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_qwen2_decode_inverts_encode(qwen_bpe, text):
    assert b"".join(qwen_bpe.token_bytes(i) for i in qwen_bpe.encode(text)) == text.encode()
