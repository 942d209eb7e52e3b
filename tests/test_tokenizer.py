"""ref/tokenizer.py against llama.cpp (its own test fixtures and a fixture of hard cases whose ids
were produced by llama.cpp's llama_tokenize) and against the transformers oracle.

All comparisons are exact (token ids, strings).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import registry_file
from hypothesis import HealthCheck, given, settings, strategies as st

from ref.gguf import GGUFError
from ref.tokenizer import Tokenizer, load

DATA = Path(__file__).parent / "data"
VOCABS = {"qwen2": "qwen2-vocab", "phi3": "phi-3-vocab"}


def _cached(name):
    return registry_file(name)


@pytest.fixture(scope="module", params=list(VOCABS))
def vocab(request):
    path = _cached(VOCABS[request.param])
    return request.param, path, load(path)


@pytest.fixture(scope="module")
def qwen():
    return load(_cached("qwen2-vocab"))


@pytest.fixture(scope="module")
def phi3():
    return load(_cached("phi-3-vocab"))


# -- llama.cpp -------------------------------------------------------------------------------

def test_llama_cpp_fixtures(vocab):
    """models/ggml-vocab-*.gguf.inp/.out: llama.cpp's test-tokenizer-0 (add_special=false, parse_special=false)."""
    _, path, tok = vocab
    inputs = path.with_name(path.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = path.with_name(path.name + ".out").read_text().split("\n")
    assert len(inputs) >= 40
    for text, line in zip(inputs, outputs):
        assert tok.encode(text, add_bos=False, parse_special=False) == [int(x) for x in line.split()], repr(text)


def test_hard_cases_match_llama_cpp(vocab):
    key, _, tok = vocab
    cases = json.loads((DATA / "tokenizer_hard_cases.json").read_text())["cases"]
    for case in cases:
        got = tok.encode(case["text"], add_bos=False, parse_special=case["parse_special"])
        assert got == case[key], (case["text"], case["parse_special"])


def test_special_token_rules(qwen, phi3):
    """Behaviour where llama.cpp and HF differ (llama.cpp wins; see docs/bpe.md, docs/spm.md)."""
    # Qwen2: "</s>" is a normal token that llama.cpp promotes to CONTROL (an end-of-generation text)
    assert qwen.encode("a</s>b") == [64, 128247, 65]
    assert qwen.encode("a</s>b", parse_special=False) == [64, 522, 82, 51407]          # a, </, s, >b
    # Phi-3: RSTRIP after <|user|>/<|end|> eats the newline; a space prefix follows every special
    assert phi3.encode("<|user|>\nHi<|end|>\n<|assistant|>", add_bos=False) == [32010, 6324, 32007, 32001]
    assert phi3.encode("<|endoftext|> z", add_bos=False) == [32000, 29871, 503]      # no RSTRIP here
    # user-defined tokens are cut out even with parse_special=False, control tokens are not
    assert qwen.encode("[PAD151650]", parse_special=False) == [151650]
    assert qwen.encode("<|im_end|>", parse_special=False) == [27, 91, 318, 6213, 91, 29]


def test_properties(qwen, phi3):
    assert (qwen.kind, phi3.kind) == ("bpe", "spm")
    assert (qwen.vocab_size, phi3.vocab_size) == (151936, 32064)
    assert (qwen.bos_id, qwen.eos_id, phi3.bos_id, phi3.eos_id) == (151643, 151643, 1, 32000)
    assert qwen.eot_ids == [128247, 151643, 151645]          # llama.cpp's special_eog_ids
    assert phi3.eot_ids == [2, 32000, 32007]
    assert qwen.token_to_id("<|im_start|>") == 151644 and qwen.token_to_id("no such") is None
    assert "im_start" in qwen.chat_template and "<|end|>" in phi3.chat_template
    assert qwen.encode("x") == [87] and phi3.encode("x") == [1, 921]   # add_bos default from the file


def test_default_model_tokenizer():
    tok = load(_cached("qwen2.5-coder-0.5b-instruct"))
    assert tok.eos_id == 151645 and tok.eot_ids == [128247, 151643, 151645, 151662, 151663, 151664]
    assert tok.encode("<|im_start|>user\nhi<|im_end|>") == [151644, 872, 198, 6023, 151645]


def test_decode_and_stream(qwen, phi3):
    ids = qwen.encode("héllo 👨‍👩‍👧 <|im_end|>")
    assert qwen.decode(ids) == "héllo 👨‍👩‍👧 <|im_end|>"
    assert qwen.decode(ids, skip_special=True) == "héllo 👨‍👩‍👧 "
    stream = qwen.stream_decoder()
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == qwen.decode(ids)
    assert all("\ufffd" not in p for p in pieces)            # split emoji bytes are held back
    assert phi3.decode(phi3.encode("  two spaces", add_bos=False)) == "  two spaces"
    assert phi3.token_bytes(phi3.token_to_id("<0x0A>")) == b"\n"


# many scripts, digit runs, whitespace runs, newlines, ZWJ emoji, CJK, combining marks, contractions, code
PIECES = ["日本語", "中文", "한국어", "Привет", "مرحبا", "हिन्दी", "👨‍👩‍👧", "🏳️‍🌈", "e\u0301", "a\u0308",
          "    ", "\n\n", "\r\n", "\t", "\u00a0", "\u3000", "def f(x):", "12345", "3.14", "'s", "'LL", "'re", "'VE",
          "don't", "{\"a\": [1]}", "x**2", "!!!", "<|", "|>"]
text_strategy = st.lists(
    st.one_of(st.sampled_from(PIECES), st.characters(blacklist_categories=("Cs",))), max_size=20).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=text_strategy)
def test_decode_inverts_encode(qwen, phi3, text):
    assert qwen.decode(qwen.encode(text, parse_special=False)) == text
    if "\u2581" not in text and "</s>" not in text:
        assert phi3.decode(phi3.encode(text, add_bos=False, parse_special=False)) == text


# -- the transformers oracle -----------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_tokenizers():
    # before 5.24 transformers drops SentencePiece's space before CJK text (the oracle extra asks for >= 5.24)
    transformers = pytest.importorskip("transformers", minversion="5.24")
    pytest.importorskip("gguf")
    out = {}
    for key, name in VOCABS.items():
        path = _cached(name)
        out[key] = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return out


@pytest.mark.oracle
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=text_strategy)
def test_matches_transformers_on_plain_text(hf_tokenizers, qwen, phi3, text):
    """On text without special tokens llama.cpp and HF agree, so we must agree with both."""
    for key, tok in (("qwen2", qwen), ("phi3", phi3)):
        if any(tok.tokens[i] in text for i in tok.special_ids):
            continue
        assert tok.encode(text, add_bos=False) == hf_tokenizers[key](text, add_special_tokens=False)["input_ids"]


# -- malformed metadata ----------------------------------------------------------------------

def good_bpe() -> dict:
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": ["a", "b", "ab", "<|endoftext|>"],
            "tokenizer.ggml.token_type": np.array([1, 1, 1, 3], np.int32),
            "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.eos_token_id": 3}


def good_spm() -> dict:
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "\u2581a"],
            "tokenizer.ggml.scores": np.zeros(4, np.float32), "tokenizer.ggml.token_type": np.array([2, 3, 3, 1], np.int32)}


def test_small_metadata_loads():
    bpe, spm = Tokenizer(good_bpe()), Tokenizer(good_spm())
    assert bpe.encode("ab<|endoftext|>") == [2, 3]
    assert spm.encode("a") == [1, 3]


@pytest.mark.parametrize("base, key, value, words", [
    (good_bpe, "tokenizer.ggml.model", "wordpiece", "tokenizer.ggml.model"),
    (good_bpe, "tokenizer.ggml.pre", "nonesuch", "tokenizer.ggml.pre"),
    (good_bpe, "tokenizer.ggml.tokens", np.array([1, 2]), "tokenizer.ggml.tokens"),
    (good_bpe, "tokenizer.ggml.tokens", ["a", "a", "b", "ab"], "repeat"),
    (good_bpe, "tokenizer.ggml.token_type", np.array([1, 1, 1], np.int32), "4 entries"),
    (good_bpe, "tokenizer.ggml.token_type", np.array([1.0, 1, 1, 3], np.float32), "int32"),
    (good_bpe, "tokenizer.ggml.merges", ["ab"], "merges[0]"),
    (good_bpe, "tokenizer.ggml.merges", ["a zz"], "unknown token"),
    (good_bpe, "tokenizer.ggml.merges", None, "tokenizer.ggml.merges"),
    (good_bpe, "tokenizer.ggml.eos_token_id", 99, "eos_token_id"),
    (good_bpe, "tokenizer.ggml.bos_token_id", "0", "bos_token_id"),
    (good_spm, "tokenizer.ggml.scores", np.zeros(3, np.float32), "tokenizer.ggml.scores"),
    (good_spm, "tokenizer.ggml.scores", np.zeros(4, np.float64), "float32"),
    (good_spm, "tokenizer.ggml.add_bos_token", 1, "add_bos_token"),
])
def test_malformed_metadata_is_refused(base, key, value, words):
    md = base()
    if value is None:
        del md[key]
    else:
        md[key] = value
    with pytest.raises(GGUFError) as err:
        Tokenizer(md, source="bad.gguf")
    message = str(err.value)
    assert "bad.gguf" in message and words in message and "\n" not in message


def test_malformed_file_is_refused(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "bad-vocab.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(["a", "b", "ab"])
    w.add_token_types([1, 1])                                  # one short
    w.add_token_merges(["a b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GGUFError, match="bad-vocab.gguf.*tokenizer.ggml.token_type"):
        load(path)
