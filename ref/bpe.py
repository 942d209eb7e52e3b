r"""Byte-level BPE (GPT-2 style), the tokenizer of Qwen2 (``tokenizer.ggml.model = "gpt2"``).

What it does
    1. **Pre-tokenize.** A regular expression chosen by ``tokenizer.ggml.pre`` cuts the text
       into *words* (``"Hello world!"`` -> ``"Hello"``, ``" world"``, ``"!"``); merges never
       cross a word boundary.
    2. **Byte-encode.** Each word's UTF-8 bytes are mapped to printable characters with
       GPT-2's byte-to-unicode table (space ``0x20`` becomes ``"Ġ"``, newline ``"Ċ"``), so
       every byte string is a string of 256 possible symbols, each one a token.
    3. **Merge.** ``tokenizer.ggml.merges`` lists symbol pairs ``"left right"``; the list
       position is the pair's *rank*. Repeatedly merge the adjacent pair of lowest rank
       (the leftmost one on ties) until no adjacent pair has a rank:

       $$ (a, b) = \operatorname*{arg\,min}_{(s_i, s_{i+1})} \big(\mathrm{rank}(s_i, s_{i+1}),\ i\big),
          \qquad s_i \leftarrow s_i \Vert s_{i+1} $$

    4. **Look up** each final symbol in ``tokenizer.ggml.tokens``.

    Decoding maps each token's characters back to bytes with the inverse table.

    This follows llama.cpp exactly (``llm_tokenizer_bpe_session::tokenize`` in
    src/llama-vocab.cpp): the same priority queue of (rank, left position) bigrams with the
    same stale-entry check, and the same fallback when a final symbol is not a token (its
    one-byte characters are looked up one by one; others are dropped).

Pre-tokenizer and Unicode version
    llama.cpp does not run the regex: it runs hand-written scanners
    (``unicode_regex_split_custom_qwen2`` etc. in src/unicode.cpp) that implement it over its
    own table of Unicode 15.1 character classes. We run the regex itself with the ``regex``
    package, but with ``\p{L}``, ``\p{N}`` and ``\s`` replaced by explicit classes built the way
    llama.cpp builds them: letters and numbers of Unicode 15.1 (Python's ``unicodedata``, plus the
    ranges that Unicode 15.0/15.1 added when Python's table is older) and the 25 ``White_Space``
    code points. (The ``regex`` package's own ``\p{L}`` follows a newer Unicode and would split
    text in newly added scripts differently from llama.cpp.)

Leaves out
    Pre-tokenizers other than ``qwen2``, ``llama-bpe`` (``llama3``) and ``gpt2``; special tokens
    (split off before BPE by ``ref/tokenizer.py``); BPE dropout.

References
    Radford et al. 2019 (GPT-2, ``encoder.py`` byte-to-unicode map); Sennrich et al. 2016,
    "Neural Machine Translation of Rare Words with Subword Units"; llama.cpp src/llama-vocab.cpp
    (``llm_tokenizer_bpe``, ``llm_tokenizer_bpe_session``) and src/unicode.cpp
    (``unicode_regex_split``, ``unicode_byte_to_utf8_map``); HF tokenizers ``ByteLevel``.
"""
from __future__ import annotations

import functools
import heapq
import unicodedata

import regex

# ---------------------------------------------------------------------------------------------
# bytes <-> printable characters


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character.

    Printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the
    other 68 bytes (controls, space, DEL, NBSP, soft hyphen...) map to U+0100, U+0101, ... in
    byte order. So 0x20 (space) -> U+0120 "Ġ" and 0x0A (newline) -> U+010A "Ċ".
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    shifted = (b for b in range(256) if b not in table)
    for n, b in enumerate(shifted):
        table[b] = chr(0x100 + n)
    return dict(sorted(table.items()))


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    """The inverse map, character -> byte."""
    return {c: b for b, c in bytes_to_unicode().items()}


def byte_encode(text: str) -> str:
    """UTF-8 encode ``text`` and spell each byte as its printable character."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def byte_decode(symbols: str) -> bytes:
    """Inverse of :func:`byte_encode`; a character outside the table is written as llama.cpp's
    ``llama_decode_text`` writes it: ``[UNK_BYTE_0x<its UTF-8 in hex><whole token>]``."""
    table = unicode_to_bytes()
    out = bytearray()
    for c in symbols:
        if c in table:
            out.append(table[c])
        else:
            out += f"[UNK_BYTE_0x{c.encode('utf-8', 'surrogateescape').hex()}{symbols}]".encode("utf-8", "surrogateescape")
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# character classes as llama.cpp sees them (Unicode 15.1)

# Letters and numbers that Unicode 15.0 and 15.1 added (from UnicodeData.txt 15.1): Python
# 3.11's unicodedata is Unicode 14.0 and does not know them; llama.cpp's table does.
ADDED_LETTERS_15 = [
    (0x1123F, 0x11240), (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33),
    (0x1342F, 0x1342F), (0x13441, 0x13446), (0x1B132, 0x1B132), (0x1B155, 0x1B155),
    (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB), (0x2B739, 0x2B739),
    (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF),
]
ADDED_NUMBERS_15 = [(0x11F50, 0x11F59), (0x1D2C0, 0x1D2D3), (0x1E4F0, 0x1E4F9)]
# Unicode White_Space (PropList.txt), llama.cpp's unicode_set_whitespace. Note: no U+001C..U+001F,
# which Python's str.isspace() would include.
WHITESPACE = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
              0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
LAST_LETTER_OR_NUMBER = 0x323AF  # no letter or number above this in Unicode 15.1


def _ranges(codepoints) -> list[tuple[int, int]]:
    """Sorted code points -> list of inclusive (first, last) runs."""
    runs: list[list[int]] = []
    for cp in codepoints:
        if runs and cp == runs[-1][1] + 1:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp])
    return [(a, b) for a, b in runs]


def _class_body(runs) -> str:
    """Runs of code points as the inside of a regex character class: ``\\U00000041-\\U0000005A...``."""
    return "".join(f"\\U{a:08X}" if a == b else f"\\U{a:08X}-\\U{b:08X}" for a, b in runs)


@functools.cache
def unicode_classes() -> dict[str, str]:
    """Character-class bodies for ``L`` (letters), ``N`` (numbers) and ``S`` (whitespace)."""
    if tuple(map(int, unicodedata.unidata_version.split("."))) > (15, 1):  # newer: letters llama.cpp lacks
        raise RuntimeError(f"unicodedata {unicodedata.unidata_version} is newer than llama.cpp's Unicode 15.1")
    letters, numbers = set(), set()
    for cp in range(LAST_LETTER_OR_NUMBER + 1):
        major = unicodedata.category(chr(cp))[0]
        if major == "L":
            letters.add(cp)
        elif major == "N":
            numbers.add(cp)
    for runs, bucket in ((ADDED_LETTERS_15, letters), (ADDED_NUMBERS_15, numbers)):
        for a, b in runs:
            bucket.update(range(a, b + 1))
    return {"L": _class_body(_ranges(sorted(letters))), "N": _class_body(_ranges(sorted(numbers))),
            "S": _class_body(_ranges(WHITESPACE))}


# ---------------------------------------------------------------------------------------------
# pre-tokenizer patterns, as written in each model's tokenizer.json (the (?i:...) contractions
# spelled out the way llama.cpp spells them). {L}, {N}, {S} are filled by unicode_classes().

PRE_TOKENIZER_PATTERNS = {
    # qwen2: \p{N} one digit at a time; [\r\n]* glued to punctuation; \s*[\r\n]+ newline runs
    "qwen2": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    # llama-bpe (Llama 3): like qwen2 but digits in groups of up to three
    "llama-bpe": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    # gpt2: the original; llama.cpp's scanner adds the final \s+ that HF also has
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
}
# names llama.cpp accepts for the same pattern (llama_vocab::impl::load); True = ignore_merges
PRE_TOKENIZER_ALIASES = {"qwen2": ("qwen2", False), "deepseek-r1-qwen": ("qwen2", False),
                         "stablelm2": ("qwen2", False), "llama3": ("llama-bpe", True),
                         "llama-v3": ("llama-bpe", True), "llama-bpe": ("llama-bpe", True),
                         "gpt2": ("gpt2", False), "mpt": ("gpt2", False), "olmo": ("gpt2", False)}


@functools.cache
def compile_pre_tokenizer(name: str) -> regex.Pattern:
    """The pattern with llama.cpp's character classes substituted for ``\\p{L}``, ``\\p{N}``, ``\\s``."""
    cls = unicode_classes()
    pattern = PRE_TOKENIZER_PATTERNS[name]
    # inside [...] the class bodies go in bare; outside they get their own brackets.
    # \S is "not whitespace", so (?!\S) becomes (?![^S]).
    pattern = pattern.replace(r"[^\s\p{L}\p{N}]", "[^{S}{L}{N}]").replace(r"[^\r\n\p{L}\p{N}]", r"[^\r\n{L}{N}]")
    pattern = pattern.replace(r"(?!\S)", "(?![^{S}])").replace(r"\s", "[{S}]")
    pattern = pattern.replace(r"\p{L}", "[{L}]").replace(r"\p{N}", "[{N}]")
    for key in "LNS":
        pattern = pattern.replace("{" + key + "}", cls[key])
    return regex.compile(pattern)


# ---------------------------------------------------------------------------------------------
# the merge loop


def parse_merge(merge: str) -> tuple[str, str] | None:
    """``"Ġ t"`` -> ``("Ġ", "t")``: split at the first space after position 0 (llama.cpp's
    ``word.find(' ', 1)``, so a pair whose left symbol is a space itself still parses)."""
    pos = merge.find(" ", 1)
    return None if pos < 0 else (merge[:pos], merge[pos + 1 :])


def merge_word(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge adjacent symbols, lowest rank first, leftmost on ties, until no pair has a rank.

    A heap of candidate bigrams ``(rank, left, right, text)`` over a doubly linked list of
    symbols; an entry is stale (skipped) when either side has changed since it was pushed.
    """
    syms = list(symbols)                                   # syms[i] == "" once merged away
    nxt = [i + 1 for i in range(len(syms))]
    nxt[-1] = -1
    prv = [i - 1 for i in range(len(syms))]
    heap: list[tuple[int, int, int, str]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            rank = ranks.get((syms[left], syms[right]))
            if rank is not None:
                heapq.heappush(heap, (rank, left, right, syms[left] + syms[right]))

    for i in range(len(syms) - 1):
        push(i, i + 1)
    while heap:
        _, left, right, text = heapq.heappop(heap)
        if not syms[left] or not syms[right] or syms[left] + syms[right] != text:
            continue                                       # stale entry
        syms[left], syms[right] = text, ""                 # merge right into left
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        push(prv[left], left)
        push(left, nxt[left])
    return [s for s in syms if s]


class BPE:
    """Byte-level BPE over a token list and a merge list.

    ``tokens[i]`` is token i's byte-encoded text; ``merges[r]`` is ``"left right"`` with rank r.
    """

    CACHE_LIMIT = 1 << 16

    def __init__(self, tokens: list[str], merges: list[str], pre: str = "qwen2") -> None:
        if pre not in PRE_TOKENIZER_ALIASES:
            raise ValueError(f"unsupported BPE pre-tokenizer {pre!r}; known: {sorted(PRE_TOKENIZER_ALIASES)}")
        self.pre, self.ignore_merges = PRE_TOKENIZER_ALIASES[pre]
        self.pattern = compile_pre_tokenizer(self.pre)
        self.tokens = tokens
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        self.ranks = {pair: r for r, m in enumerate(merges) if (pair := parse_merge(m)) is not None}
        self._cache: dict[str, tuple[int, ...]] = {}

    def pre_tokenize(self, text: str) -> list[str]:
        """Split ``text`` into words (plain text, not yet byte-encoded)."""
        return [m.group() for m in self.pattern.finditer(text)]

    def encode_word(self, word: str) -> tuple[int, ...]:
        """Token ids of one byte-encoded word (cached: words repeat a lot)."""
        ids = self._cache.get(word)
        if ids is None:
            if self.ignore_merges and word in self.token_to_id:
                symbols = [word]
            else:
                symbols = merge_word(list(word), self.ranks) if len(word) > 1 else [word]
            ids = tuple(self._symbol_ids(symbols))
            if len(self._cache) >= self.CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _symbol_ids(self, symbols: list[str]):
        for s in symbols:
            tid = self.token_to_id.get(s)
            if tid is not None:
                yield tid
            else:  # llama.cpp: look each byte up as a one-byte string; only ASCII can match
                yield from (self.token_to_id[c] for c in s if ord(c) < 0x80 and c in self.token_to_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special-token handling: see ref/tokenizer.py)."""
        ids: list[int] = []
        for word in self.pre_tokenize(text):
            ids.extend(self.encode_word(byte_encode(word)))
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a normal token stands for."""
        return byte_decode(self.tokens[token_id])
