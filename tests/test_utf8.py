"""ref/utf8.py: the streaming decoder equals bytes.decode("utf-8", "replace") for any split.

No tolerances: text is compared exactly.
"""
import codecs

from hypothesis import given, settings, strategies as st

from ref.utf8 import StreamDecoder, decode_stream, sequence_length

# bytes that exercise every branch: ASCII, continuation bytes, every lead class and its edges
EDGE_BYTES = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1,
              0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]
byte_strings = st.one_of(
    st.binary(max_size=40),
    st.lists(st.sampled_from(EDGE_BYTES), max_size=40).map(bytes),
    st.text(max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@settings(max_examples=600, deadline=None)
@given(byte_strings, st.lists(st.integers(0, 40), max_size=12))
def test_any_split_decodes_like_python(data, cuts):
    assert decode_stream(split(data, cuts)) == data.decode("utf-8", "replace")


@settings(max_examples=300, deadline=None)
@given(byte_strings)
def test_byte_at_a_time_matches_incremental_codec(data):
    """Same total as CPython's incremental decoder, and never behind it: CPython may hold a
    U+FFFD back until the next byte; we emit everything that is already decided."""
    ours, theirs = StreamDecoder(), codecs.getincrementaldecoder("utf-8")("replace")
    got, want = "", ""
    for i in range(len(data)):
        got += ours.push(data[i:i + 1])
        want += theirs.decode(data[i:i + 1])
        assert got.startswith(want)
    assert got + ours.flush() == want + theirs.decode(b"", final=True)


def test_incomplete_character_is_held_back():
    d = StreamDecoder()
    euro = "€".encode()                                    # E2 82 AC
    assert d.push(euro[:1]) == ""
    assert d.push(euro[1:2]) == ""
    assert d.push(euro[2:] + b"!") == "€!"
    assert d.push(b"\xf0\x9f") == ""                       # half an emoji ...
    assert d.flush() == "\ufffd"                           # ... at the end is one U+FFFD
    assert d.flush() == ""


def test_maximal_subpart_rule():
    # E0 80: 80 cannot follow E0 (overlong) -> two U+FFFD; ED A0 80 is a surrogate -> three
    assert decode_stream([b"\xe0", b"\x80"]) == "\ufffd\ufffd"
    assert decode_stream([b"\xed\xa0", b"\x80"]) == "\ufffd" * 3
    assert decode_stream([b"\xf4\x90\x80\x80"]) == "\ufffd" * 4       # above U+10FFFF
    assert decode_stream([b"\xe2\x82", b"A"]) == "\ufffdA"             # truncated, then ASCII


def test_sequence_lengths():
    assert [sequence_length(b) for b in (0x41, 0x80, 0xC1, 0xC2, 0xE0, 0xF4, 0xF5)] == [1, 0, 0, 2, 3, 4, 0]
