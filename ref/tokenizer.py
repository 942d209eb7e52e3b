r"""The tokenizer of a GGUF file: special tokens, then BPE (``ref/bpe.py``) or SPM (``ref/spm.py``).

What it does
    ``load(path)`` reads the ``tokenizer.*`` metadata of a GGUF file (a full model or a
    vocabulary-only file), checks it, and returns a :class:`Tokenizer`:

    * ``encode(text)`` first cuts out *special tokens* (``<|im_start|>``, ``<|end|>``...) that
      appear literally in the text, longest token text first, then tokenizes the plain-text
      pieces in between with the file's model (``gpt2`` -> byte-level BPE, ``llama`` -> SPM) and
      adds BOS/EOS as the file asks. A special token is any token whose attribute is
      CONTROL, USER_DEFINED or UNKNOWN; with ``parse_special=False`` only USER_DEFINED ones are
      still cut out (llama.cpp and HF tokenizers both do this).
    * ``decode(ids)`` concatenates each token's bytes and decodes them as UTF-8; the streaming
      decoder does the same one token at a time (``ref/utf8.py``).

    Everything follows llama.cpp (src/llama-vocab.cpp, ``llama_vocab::impl``): ``load`` for the
    defaults and the token attributes, ``tokenizer_st_partition`` for special tokens,
    ``tokenize`` for the space prefix and BOS/EOS, ``token_to_piece`` and ``detokenize`` for
    decoding. Details that matter and are easy to miss:

    * Token attributes come from ``tokenizer.ggml.token_type``, then llama.cpp adds CONTROL to
      tokens it recognises by text (end-of-generation and fill-in-the-middle tokens: e.g. Qwen2's
      ``</s>``, a normal token, becomes special) and, for models whose ``general.name`` contains
      "phi-3" or "phi3", sets RSTRIP on every special token except ``<unk>``, ``<s>`` and
      ``<|endoftext|>`` (and on ``</s>``): whitespace right after such a token in the text is
      dropped, so ``"<|user|>\nHi"`` encodes as ``<|user|>``, ``▁Hi``.
    * SPM adds one space before the first text piece and before every text piece that follows a
      special token (``add_space_prefix``, default on for SPM).
    * End-of-generation ids (``eot_ids``) are llama.cpp's ``special_eog_ids``: EOS, EOT, EOM,
      the FIM pad/repo/sep tokens and every token whose text is on llama.cpp's list
      (``<|im_end|>``, ``<|endoftext|>``, ``<|end|>``, ``</s>``, ``<|eot_id|>``...).

Leaves out
    WordPiece, Unigram, RWKV and other tokenizer models; BPE pre-tokenizers other than
    qwen2/llama-bpe/gpt2; the "unused" attribute and suppress lists (no effect on encoding).
    Where llama.cpp picks "the first" of several candidate FIM tokens in hash-map order, we give
    CONTROL to all candidates (only matters for a vocabulary holding two spellings of one FIM role).

References
    llama.cpp src/llama-vocab.cpp; HF tokenizers ``AddedVocabulary`` (special-token splitting);
    the GGUF specification's ``tokenizer.ggml.*`` keys.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from enum import IntFlag

import numpy as np

from ref.bpe import BPE, PRE_TOKENIZER_ALIASES, parse_merge
from ref.gguf import GGUFError, GGUFFile
from ref.spm import SPM
from ref.utf8 import StreamDecoder


class TokenType:
    """Values of ``tokenizer.ggml.token_type`` (llama.h ``llama_token_type``)."""

    UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)


class Attr(IntFlag):
    """Token attributes (llama.h ``llama_token_attr``)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


TYPE_TO_ATTR = {TokenType.UNKNOWN: Attr.UNKNOWN, TokenType.UNUSED: Attr.UNUSED, TokenType.NORMAL: Attr.NORMAL,
                TokenType.CONTROL: Attr.CONTROL, TokenType.USER_DEFINED: Attr.USER_DEFINED,
                TokenType.BYTE: Attr.BYTE}
SPECIAL = Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN   # cut out of the text before BPE/SPM
C_SPACE = " \t\n\v\f\r"                                   # C isspace(), what LSTRIP/RSTRIP strip

# Texts llama.cpp recognises (llama_vocab::impl::load): end-of-generation tokens ...
EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
             "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
             "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
             "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[")
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
             "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>")
# ... and fill-in-the-middle tokens, by role (each found one also becomes CONTROL)
FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
                "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
                "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
                "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# special-id keys: role -> GGUF key (the deprecated prefix/suffix/middle keys fill the FIM roles)
SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "eom": "eom_token_id",
                "unk": "unknown_token_id", "sep": "seperator_token_id", "pad": "padding_token_id",
                "mask": "mask_token_id", "fim_pre": "fim_pre_token_id", "fim_suf": "fim_suf_token_id",
                "fim_mid": "fim_mid_token_id", "fim_pad": "fim_pad_token_id", "fim_rep": "fim_rep_token_id",
                "fim_sep": "fim_sep_token_id"}
DEPRECATED_KEYS = {"fim_pre": "prefix_token_id", "fim_suf": "suffix_token_id", "fim_mid": "middle_token_id"}
MODELS = {"gpt2": "bpe", "llama": "spm"}


class TokenizerError(GGUFError):
    """Malformed tokenizer metadata, in one line: the file, the key, what was expected, what was found."""

    def __init__(self, source: str, key: str, expected: str, got) -> None:
        self.path, self.field, self.offset, self.expected, self.got = str(source), key, None, expected, got
        ValueError.__init__(self, f"{source}: {key}: expected {expected}, got {got}")


# ---------------------------------------------------------------------------------------------
# reading and checking the metadata


class _Meta:
    """Typed access to ``tokenizer.*`` metadata that raises :class:`TokenizerError`."""

    def __init__(self, metadata: Mapping, source: str) -> None:
        self.md, self.source = metadata, source

    def fail(self, key: str, expected: str, got) -> TokenizerError:
        return TokenizerError(self.source, key, expected, got)

    def get(self, key: str, kind: str, default=None):
        """``kind``: "str", "bool", "id", "strings", "numbers"."""
        if key not in self.md:
            return default
        v = self.md[key]
        ok = {"str": isinstance(v, str), "bool": isinstance(v, (bool, np.bool_)),
              "id": isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)),
              "strings": isinstance(v, list) and all(isinstance(s, str) for s in v),
              "numbers": isinstance(v, np.ndarray) and v.ndim == 1}[kind]
        if not ok:
            raise self.fail(key, f"a {kind} value", _describe(v))
        return int(v) if kind == "id" else bool(v) if kind == "bool" else v

    def array(self, key: str, dtypes: tuple, n: int):
        v = self.get(key, "numbers")
        if v is None:
            return None
        if v.dtype not in [np.dtype(d) for d in dtypes]:
            raise self.fail(key, f"an array of {' or '.join(dtypes)}", f"an array of {v.dtype}")
        if len(v) != n:
            raise self.fail(key, f"{n} entries (one per token)", f"{len(v)}")
        return v


def _describe(v) -> str:
    if isinstance(v, np.ndarray):
        return f"an array of {v.dtype}"
    if isinstance(v, list):
        kinds = sorted({type(x).__name__ for x in v})
        return f"a list of {'/'.join(kinds) or 'nothing'}"
    return f"{type(v).__name__} {v!r}"[:80]


def _read_tokens(meta: _Meta) -> list[str]:
    tokens = meta.get("tokenizer.ggml.tokens", "strings")
    if not tokens:
        raise meta.fail("tokenizer.ggml.tokens", "a non-empty array of strings", _describe(tokens))
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]  # llama.cpp's renaming
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        dup = next(i for i, t in enumerate(tokens) if t in seen or seen.add(t))
        raise meta.fail("tokenizer.ggml.tokens", "distinct token texts", f"a repeat of {tokens[dup]!r} at {dup}")
    return tokens


def _read_merges(meta: _Meta, token_to_id: dict) -> list[str]:
    key = "tokenizer.ggml.merges"
    merges = meta.get(key, "strings")
    if merges is None:
        raise meta.fail(key, "a merge list for a gpt2 (BPE) tokenizer", "no such key")
    for i, m in enumerate(merges):
        pair = parse_merge(m)
        if pair is None:
            raise meta.fail(f"{key}[{i}]", "'left right' with a space", repr(m)[:60])
        for side in pair:
            if side not in token_to_id:
                raise meta.fail(f"{key}[{i}]", "a pair of known tokens", f"unknown token {side!r} in {m!r}"[:80])
    return merges


def _read_special_ids(meta: _Meta, model: str, n: int) -> dict[str, int | None]:
    """Special ids: llama.cpp's per-model defaults, overridden by the file's keys."""
    ids: dict[str, int | None] = dict.fromkeys(SPECIAL_KEYS)
    if model == "llama":
        ids.update(bos=1, eos=2, unk=0)
    else:
        ids.update(bos=11, eos=11)
    for role in ids:                             # a default outside the vocabulary is disabled
        if ids[role] is not None and ids[role] >= n:
            ids[role] = None
    for role, key in [*SPECIAL_KEYS.items(), *DEPRECATED_KEYS.items()]:
        value = meta.get(f"tokenizer.ggml.{key}", "id")
        if value is not None:
            if not 0 <= value < n:
                raise meta.fail(f"tokenizer.ggml.{key}", f"a token id in [0, {n})", value)
            ids[role] = value
    return ids


# ---------------------------------------------------------------------------------------------
# token attributes, as llama_vocab::impl::load sets them


def _base_attrs(types, n: int) -> list[Attr]:
    if types is None:
        return [Attr.NORMAL] * n
    return [TYPE_TO_ATTR.get(int(t), Attr.UNDEFINED) for t in types]


def _auto_detect(tokens: list[str], token_to_id: dict, attrs: list[Attr], ids: dict) -> set[int]:
    """Recognise EOT/EOG/FIM tokens by text: mark them CONTROL; return the end-of-generation ids."""
    if ids["eot"] is None:
        found = [token_to_id[t] for t in EOT_TEXTS if t in token_to_id]
        ids["eot"] = min(found) if found else None   # llama.cpp: first in hash order (any of them)
    for role, texts in FIM_TEXTS.items():
        found = [token_to_id[t] for t in texts if t in token_to_id]
        for tid in found:
            attrs[tid] |= Attr.CONTROL
        if ids[role] is None and found:
            ids[role] = found[0]
    eog = {ids[r] for r in ("fim_pad", "fim_rep", "fim_sep") if ids[r] is not None}
    for text in EOG_TEXTS:
        if text in token_to_id:
            eog.add(token_to_id[text])
            attrs[token_to_id[text]] |= Attr.CONTROL
    eog |= {ids[r] for r in ("eos", "eot", "eom") if ids[r] is not None}
    texts = {tokens[i] for i in eog}
    if "<|end|>" in texts and (({"<|return|>", "<|call|>"} <= texts) or ({"<|calls|>", "<|flush|>"} <= texts)):
        eog.discard(token_to_id["<|end|>"])              # harmony / solar-open: <|end|> is not EOG
        attrs[token_to_id["<|end|>"]] = Attr.USER_DEFINED
    if "</s>" in texts and texts & {"<|tool_response>", "<|plamo:eos|>"}:
        eog.discard(token_to_id["</s>"])                 # gemma4 / plamo: </s> is a normal token
        attrs[token_to_id["</s>"]] = Attr.NORMAL
    for t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):   # gpt-oss
        if t in token_to_id:
            attrs[token_to_id[t]] = Attr.USER_DEFINED
    return eog


def _name_attrs(name: str, tokens: list[str], token_to_id: dict, attrs: list[Attr], special: list[int]) -> None:
    """Per-model attributes llama.cpp sets by ``general.name`` (only the Phi-3 rule is needed here)."""
    lowered = name.lower()
    if "phi-3" in lowered or "phi3" in lowered:
        for tid in special:
            attrs[tid] |= Attr.RSTRIP
        for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            if text in token_to_id:                      # llama.cpp uses .at(): these must exist
                tid = token_to_id[text]
                attrs[tid] = attrs[tid] | Attr.RSTRIP if on else attrs[tid] & ~Attr.RSTRIP


# ---------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
    """Encode text to token ids and back, as llama.cpp does for this vocabulary."""

    def __init__(self, metadata: Mapping, source: str = "<metadata>") -> None:
        meta = _Meta(metadata, source)
        model = meta.get("tokenizer.ggml.model", "str")
        if model not in MODELS:
            raise meta.fail("tokenizer.ggml.model", f"one of {sorted(MODELS)}", repr(model))
        self.kind, self.source = MODELS[model], source
        self.tokens = _read_tokens(meta)
        n = len(self.tokens)
        self.token_ids = {t: i for i, t in enumerate(self.tokens)}
        scores = meta.array("tokenizer.ggml.scores", ("float32", "int32"), n)
        types = meta.array("tokenizer.ggml.token_type", ("int32",), n)
        self.ids = _read_special_ids(meta, model, n)
        self._read_flags(meta, model)
        self.attrs = _base_attrs(types, n)
        self.eog_ids = _auto_detect(self.tokens, self.token_ids, self.attrs, self.ids)
        special = [i for i in range(n) if self.attrs[i] & SPECIAL]
        _name_attrs(meta.get("general.name", "str", ""), self.tokens, self.token_ids, self.attrs, special)
        # longest byte length first (llama.cpp sorts by text.size()); ties by id
        self.special_ids = sorted(special, key=lambda i: (-len(self.tokens[i].encode("utf-8", "surrogateescape")), i))
        self.chat_template = meta.get("tokenizer.chat_template", "str")
        if self.kind == "bpe":
            self.model = BPE(self.tokens, _read_merges(meta, self.token_ids), self.pre)
        else:
            self.model = SPM(self.tokens, scores if scores is not None else np.zeros(n), self.ids["unk"])

    def _read_flags(self, meta: _Meta, model: str) -> None:
        if model == "gpt2":
            self.pre = meta.get("tokenizer.ggml.pre", "str", "default")
            if self.pre not in PRE_TOKENIZER_ALIASES:
                raise meta.fail("tokenizer.ggml.pre", f"one of {sorted(PRE_TOKENIZER_ALIASES)}", repr(self.pre))
            self.add_bos = PRE_TOKENIZER_ALIASES[self.pre][0] == "llama-bpe"
            self.add_space_prefix, self.clean_spaces = False, self.pre != "qwen2" and self.pre != "deepseek-r1-qwen"
        else:
            self.pre, self.add_bos, self.add_space_prefix, self.clean_spaces = "default", True, True, False
        self.add_eos = False
        self.add_space_prefix = meta.get("tokenizer.ggml.add_space_prefix", "bool", self.add_space_prefix)
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "bool", self.add_bos)
        self.add_eos = meta.get("tokenizer.ggml.add_eos_token", "bool", self.add_eos)
        for flag in ("add_bos", "add_eos"):
            role = flag[4:]
            if getattr(self, flag) and self.ids[role] is None:
                raise meta.fail(f"tokenizer.ggml.{role}_token_id", f"a {role} token (the file sets {flag}_token)", "none")

    # -- properties ------------------------------------------------------------------------
    vocab_size = property(lambda self: len(self.tokens))
    bos_id = property(lambda self: self.ids["bos"])
    eos_id = property(lambda self: self.ids["eos"])
    eot_ids = property(lambda self: sorted(self.eog_ids), doc="end-of-generation ids (llama.cpp special_eog_ids)")

    def token_to_id(self, text: str) -> int | None:
        return self.token_ids.get(text)

    # -- encoding --------------------------------------------------------------------------
    def partition(self, text: str, parse_special: bool = True) -> list[str | int]:
        """Cut special tokens out of ``text``: a list of plain-text pieces (str) and ids (int)."""
        fragments: list[str | int] = [text] if text else []
        for tid in self.special_ids:
            if not parse_special and self.attrs[tid] & (Attr.CONTROL | Attr.UNKNOWN):
                continue                                   # user-defined tokens are still cut out
            fragments = [piece for f in fragments
                         for piece in ([f] if isinstance(f, int) else self._split_on(f, tid))]
        return fragments

    def _split_on(self, fragment: str, tid: int) -> list[str | int]:
        """Split one text fragment at every occurrence of token ``tid``'s text."""
        text, attr, out, start = self.tokens[tid], self.attrs[tid], [], 0
        while (match := fragment.find(text, start)) >= 0:
            left = fragment[start:match]
            if attr & Attr.LSTRIP:
                left = left.rstrip(C_SPACE)
            if left:
                out.append(left)
            out.append(tid)
            start = match + len(text)
            if attr & Attr.RSTRIP:
                while start < len(fragment) and fragment[start] in C_SPACE:
                    start += 1
        if start < len(fragment):
            out.append(fragment[start:])
        return out

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``. ``add_bos=None`` does what llama.cpp's ``add_special=True`` does
        (BOS and EOS as the file says); ``True``/``False`` force BOS on/off and add no EOS."""
        bos = self.add_bos if add_bos is None else add_bos
        eos = self.add_eos if add_bos is None else False
        ids: list[int] = [self.ids["bos"]] if bos else []
        prev_special = True                               # SPM: a space before the first piece
        for fragment in self.partition(text, parse_special):
            if isinstance(fragment, int):
                ids.append(fragment)
                prev_special = True
                continue
            if self.kind == "spm" and self.add_space_prefix and prev_special:
                fragment = " " + fragment
            ids.extend(self.model.encode(fragment))
            prev_special = False
        if eos:
            ids.append(self.ids["eos"])
        return ids

    # -- decoding --------------------------------------------------------------------------
    def token_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes of one token (llama.cpp ``token_to_piece``); with ``special=False`` control
        and unknown tokens give ``b""``."""
        attr = self.attrs[token_id]
        if attr & (Attr.CONTROL | Attr.UNKNOWN) and not special:
            return b""
        text = self.tokens[token_id]
        if attr & SPECIAL:
            return text.encode("utf-8", "surrogateescape")
        if attr & Attr.NORMAL:
            return self.model.token_bytes(token_id)
        if attr & Attr.BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of ``ids`` (llama.cpp ``detokenize`` with remove_special = unparse_special's opposite).

        SPM: the space that ``encode`` put in front is removed from the first token, so
        ``decode(encode(x, add_bos=False)) == x`` for text without special tokens.
        """
        ids = [int(i) for i in ids]
        remove_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.ids["bos"]:
            remove_space, ids = False, ids[1:]
        if skip_special and self.add_eos and ids and ids[-1] == self.ids["eos"]:
            ids = ids[:-1]
        out = bytearray()
        for k, tid in enumerate(ids):
            piece = self.token_bytes(tid, special=not skip_special)
            if k == 0 and remove_space and piece.startswith(b" "):
                piece = piece[1:]
            out += piece
        if self.clean_spaces:
            out = clean_up_spaces(bytes(out))
        return bytes(out).decode("utf-8", "replace")

    def stream_decoder(self, skip_special: bool = False) -> "TokenStream":
        """A decoder for generation: ``push(id) -> str`` returns only complete characters."""
        return TokenStream(self, skip_special)

    def __repr__(self) -> str:
        return f"Tokenizer({self.kind}, pre={self.pre!r}, vocab_size={self.vocab_size}, source={self.source!r})"


class TokenStream:
    """Token ids in, text out, holding back incomplete UTF-8 characters."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False) -> None:
        self.tokenizer, self.skip_special, self.utf8 = tokenizer, skip_special, StreamDecoder()

    def push(self, token_id: int) -> str:
        return self.utf8.push(self.tokenizer.token_bytes(int(token_id), special=not self.skip_special))

    def flush(self) -> str:
        return self.utf8.flush()


def clean_up_spaces(text: bytes) -> bytes:
    """llama.cpp's ``clean_spaces`` passes (HF ``clean_up_tokenization_spaces``) for gpt2-style BPE:
    drop the space in " ?", " !", " .", " ,", " 's", " 'm", " 're", " 've" and around a lone " ' "."""
    for pat, rep in ((b" ?", b"?"), (b" !", b"!"), (b" .", b"."), (b" ,", b",")):
        text = text.replace(pat, rep)
    text = text.replace(b" ' ", b"'")
    for suffix in (b"s", b"m", b"re", b"ve"):
        text = text.replace(b" '" + suffix, b"'" + suffix)
    return text


def load(source) -> Tokenizer:
    """The tokenizer of a GGUF file: a path, an open :class:`ref.gguf.GGUFFile`, or a metadata dict."""
    if isinstance(source, GGUFFile):
        return Tokenizer(source.metadata, str(source.path))
    if isinstance(source, Mapping):
        return Tokenizer(source)
    path = os.fspath(source)
    return Tokenizer(GGUFFile(path).metadata, path)
