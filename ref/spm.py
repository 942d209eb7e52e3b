r"""SentencePiece-style BPE over scored pieces, the tokenizer of Phi-3 (``tokenizer.ggml.model = "llama"``).

What it does
    The vocabulary is a list of *pieces* with a *score* each (``tokenizer.ggml.scores``, a log
    probability: higher is better). To encode one fragment of text:

    1. **Escape spaces.** Every ``" "`` becomes ``"▁"`` (U+2581). The caller has already
       prepended one space when ``add_space_prefix`` says so (at the start of the text and
       after every special token), which is why ``"Hello"`` encodes as ``"▁Hello"``.
    2. **Split** the text into characters.
    3. **Merge.** Among all adjacent pairs whose concatenation is a piece, merge the pair with
       the highest piece score (the leftmost one on ties), and repeat:

       $$ (a, b) = \operatorname*{arg\,max}_{(s_i, s_{i+1}):\ s_i \Vert s_{i+1} \in V}
          \big(\mathrm{score}(s_i \Vert s_{i+1}),\ -i\big) $$

    4. **Look up** each final symbol. A single character that is not a piece falls back to
       its UTF-8 bytes as the byte pieces ``<0x00>``..``<0xFF>`` (*byte fallback*).

    Decoding concatenates the pieces, turns ``"▁"`` back into spaces and byte pieces back into
    bytes; the one space added in front of the text is removed again.

    This follows llama.cpp's ``llm_tokenizer_spm_session`` (src/llama-vocab.cpp): a priority
    queue of bigrams ordered by (score, then smaller left index), an entry skipped when either
    side has changed, and ``byte_to_token`` for the fallback (``<0xXX>``, else the raw one-byte
    piece). Note that llama.cpp considers *every* piece for a merge, control and user-defined
    pieces included, exactly as here.

Leaves out
    Unigram (``t5``) models and normalization rules (SentencePiece's ``precompiled_charsmap``);
    special tokens (split off first by ``ref/tokenizer.py``); sampling/dropout.

References
    Kudo & Richardson 2018, "SentencePiece" (arXiv:1808.06226); llama.cpp src/llama-vocab.cpp
    (``llm_tokenizer_spm_session::tokenize``, ``resegment``, ``try_add_bigram``,
    ``llama_vocab::byte_to_token``); HF ``LlamaTokenizer`` (slow, sentencepiece) and
    ``LlamaTokenizerFast`` (the ``tokenizers`` BPE with ``byte_fallback``).
"""
from __future__ import annotations

import heapq

SPACE = "\u2581"  # "▁", SentencePiece's visible space


def byte_piece(b: int) -> str:
    """The byte-fallback piece of byte ``b``: ``<0x0A>`` for a newline."""
    return f"<0x{b:02X}>"


class SPM:
    """Score-ordered merging over ``pieces`` with ``scores`` (same length)."""

    def __init__(self, pieces: list[str], scores, unk_id: int | None = None) -> None:
        self.pieces = pieces
        self.scores = [float(s) for s in scores]
        self.piece_to_id = {p: i for i, p in enumerate(pieces)}
        self.unk_id = unk_id

    def byte_to_token(self, b: int) -> int:
        """llama.cpp's ``byte_to_token``: ``<0xXX>``, else the one-byte piece itself.

        llama.cpp throws when neither exists; we use the unknown token if there is one.
        """
        tid = self.piece_to_id.get(byte_piece(b))
        if tid is None and b < 0x80:
            tid = self.piece_to_id.get(chr(b))
        if tid is None:
            if self.unk_id is None:
                raise KeyError(f"no byte piece for byte {b:#04x} and no unknown token")
            tid = self.unk_id
        return tid

    def merge(self, symbols: list[str]) -> list[str]:
        """Best-score-first merging of adjacent symbols whose concatenation is a piece."""
        syms = list(symbols)                               # syms[i] == "" once merged away
        nxt = [i + 1 for i in range(len(syms))]
        prv = [i - 1 for i in range(len(syms))]
        if syms:
            nxt[-1] = -1
        heap: list[tuple[float, int, int, str]] = []

        def push(left: int, right: int) -> None:
            if left >= 0 and right >= 0:
                text = syms[left] + syms[right]
                tid = self.piece_to_id.get(text)
                if tid is not None:                        # highest score first, then leftmost
                    heapq.heappush(heap, (-self.scores[tid], left, right, text))

        for i in range(len(syms) - 1):
            push(i, i + 1)
        while heap:
            _, left, right, text = heapq.heappop(heap)
            if not syms[left] or not syms[right] or syms[left] + syms[right] != text:
                continue                                   # stale entry
            syms[left], syms[right] = text, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])
        return [s for s in syms if s]

    def encode(self, text: str) -> list[int]:
        """Token ids of one text fragment (space prefix already applied by the caller)."""
        ids: list[int] = []
        for sym in self.merge(list(text.replace(" ", SPACE))):
            tid = self.piece_to_id.get(sym)
            if tid is not None:
                ids.append(tid)
            else:                                          # byte fallback
                ids.extend(self.byte_to_token(b) for b in sym.encode("utf-8"))
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a normal piece stands for (``▁`` -> space); byte pieces are handled by the caller."""
        return self.pieces[token_id].replace(SPACE, " ").encode("utf-8", "surrogateescape")
