r"""Streaming UTF-8 decoding: bytes arrive one token at a time, whole characters leave.

What it does
    A byte-level tokenizer splits text at byte boundaries, so one token may carry half of
    a character ("é" is ``C3 A9``; an emoji is four bytes, often two tokens). A generator
    that prints each token's bytes as soon as it is sampled must hold back an incomplete
    character until its last byte arrives. :class:`StreamDecoder` does exactly that:
    ``push(b)`` returns every character completed by ``b``; ``flush()`` ends the stream.

    Invalid input becomes U+FFFD with the same rule as Python's
    ``bytes.decode("utf-8", "replace")`` (the Unicode "maximal subpart" practice, Unicode
    §3.9, U+FFFD substitution): a lead byte and the continuation bytes that could still
    start a valid sequence are replaced by *one* U+FFFD as soon as a byte arrives that
    cannot continue it; that byte is then decoded afresh. So for any split of any byte
    string ``b`` into pieces, ``"".join(push(p) for p in pieces) + flush() ==
    b.decode("utf-8", "replace")``.

    A UTF-8 sequence is one of (Unicode Table 3-7, well-formed byte sequences)::

        lead      length  allowed second byte   reason
        00..7F    1       -
        C2..DF    2       80..BF
        E0        3       A0..BF                no overlong 3-byte forms
        E1..EC    3       80..BF
        ED        3       80..9F                no surrogates D800..DFFF
        EE..EF    3       80..BF
        F0        4       90..BF                no overlong 4-byte forms
        F1..F3    4       80..BF
        F4        4       80..8F                nothing above U+10FFFF
        (80..C1, F5..FF can never start a character)

    and every byte after the second is ``80..BF``.

Leaves out
    Other encodings; error modes other than "replace".

References
    The Unicode Standard, §3.9 and Table 3-7; CPython ``Objects/stringlib/codecs.h``
    (``utf8_decode``), whose replacement behaviour this reproduces; llama.cpp's generation
    loop, which does the same holding-back in ``common_token_to_piece`` callers.
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"


def sequence_length(lead: int) -> int:
    """Length of the sequence that ``lead`` starts (1..4), or 0 if it cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def second_byte_range(lead: int) -> tuple[int, int]:
    """Inclusive range of bytes allowed right after ``lead`` (Table 3-7)."""
    return {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(lead, (0x80, 0xBF))


class StreamDecoder:
    """Incremental UTF-8 decoder: ``push(bytes) -> str`` and ``flush() -> str``."""

    def __init__(self) -> None:
        self.pending = bytearray()  # the bytes of an unfinished, so far valid, sequence

    def _fits(self, byte: int) -> bool:
        """Can ``byte`` continue the pending sequence?"""
        lo, hi = second_byte_range(self.pending[0]) if len(self.pending) == 1 else (0x80, 0xBF)
        return lo <= byte <= hi

    def push(self, data: bytes) -> str:
        """Feed bytes; return the characters they complete (possibly "")."""
        out: list[str] = []
        for byte in data:
            if self.pending and not self._fits(byte):
                out.append(REPLACEMENT)           # maximal subpart ends here: one U+FFFD
                self.pending.clear()              # ... and `byte` starts afresh below
            if not self.pending:
                n = sequence_length(byte)
                if n == 0:
                    out.append(REPLACEMENT)       # a byte that can never start a character
                    continue
                if n == 1:
                    out.append(chr(byte))
                    continue
            self.pending.append(byte)
            if len(self.pending) == sequence_length(self.pending[0]):
                out.append(self.pending.decode("utf-8"))  # well formed by construction
                self.pending.clear()
        return "".join(out)

    def flush(self) -> str:
        """End of stream: an unfinished sequence becomes one U+FFFD."""
        out = REPLACEMENT if self.pending else ""
        self.pending.clear()
        return out


def decode_stream(pieces) -> str:
    """Decode an iterable of byte strings as one stream (convenience for tests and docs)."""
    decoder = StreamDecoder()
    return "".join(decoder.push(p) for p in pieces) + decoder.flush()
