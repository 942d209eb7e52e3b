"""Byte-level BPE merging of many words at once: Numba CUDA kernels.

Computes the same function as ``ref.bpe.merge_word`` (read ``ref/bpe.py`` for the
algorithm) on token ids instead of strings. A *word* (one pre-tokenizer match) starts as
the ids of its byte tokens; while some adjacent pair ``(a, b)`` has a merge rank, the pair
of lowest rank (leftmost on ties) is replaced by the id of the merged token:

$$ i^* = \\operatorname*{arg\\,min}_i \\big(\\mathrm{rank}(w_i, w_{i+1}),\\ i\\big),
   \\qquad w \\leftarrow w_{<i^*} \\,\\Vert\\, \\mathrm{merged}(w_{i^*}, w_{i^*+1}) \\,\\Vert\\, w_{>i^*+1} $$

BPE is sequential within a word (each merge changes the pairs next to it) but words are
independent, so the batch is spread over blocks, one word per block.

Merge table
    ``tokenizer.ggml.merges`` gives, for rank ``r``, a pair of token texts; with the
    vocabulary this becomes three arrays sorted by key: ``keys[r'] = left * V + right``
    (int64), ``ranks[r']`` and ``merged[r']`` (the id of ``left || right``). A lookup is a
    binary search, ``ceil(log2(151387)) = 18`` probes for Qwen2's table (2.4 MB in all).

Kernel versions (llm.c dev/cuda style; each is checked against ``ref`` in ``__main__``)
- v1 ``merge_serial``: one *thread* per word does the whole loop alone: scan all pairs,
  merge the best, shift the tail left. Simple; good when there are many short words.
- v2 ``merge_block``: one *block* per word. Each round, the threads look up the ranks of
  the pairs in parallel (thread ``t`` takes pairs ``t, t + blockDim, ...``), pack
  ``(rank << 32) | position`` into one int64 so that a plain minimum gives the lowest rank
  and, among equal ranks, the leftmost pair, and reduce it in shared memory (a tree of
  ``log2(blockDim)`` steps); thread 0 writes the merged id and the threads shift the tail
  left by one, ``blockDim`` slots at a time (read, barrier, write, barrier). A word of ``n`` symbols takes at most
  ``n - 1`` rounds of ``O(n / blockDim + log blockDim)`` work each.

Words are merged in place in a copy of the packed symbol array, so a word of any length
fits (no shared-memory limit); the kernel writes each word's final length.

Left out: the pre-tokenizer and byte encoding (done on the host by ``ref.bpe``); a device
hash table (a possible v3: one probe instead of 18); sorting words by length to balance
blocks.

When it could win: the host BPE is one Python loop per word, ~5-20 us per word with a cold
cache. A batch of thousands of words (long prompts, whole files, many prompts) amortises the
two launches and the copies; a short chat prompt does not (and the host keeps a per-word
cache). Timed on the H200 later (docs/benchmarks.md); measured numbers are to be filled in
there.

References: Sennrich et al. 2016 (BPE); llama.cpp ``llm_tokenizer_bpe_session::tokenize``
(the same (rank, position) order); llm.c ``dev/cuda`` (kernel-versions layout).
"""
from __future__ import annotations

import time

import numpy as np
from numba import cuda
from numba_kernels.runtime import JIT_CACHE

NO_RANK = np.int64(0x7FFFFFFF)          # "no merge" rank: larger than any real rank
BLOCK = 64                              # threads per word in v2 (a power of two)


# ---------------------------------------------------------------------------------------------
# device helpers


@cuda.jit(device=True, inline=True)
def find_merge(keys, left, right, vocab):
    """Index of the pair ``(left, right)`` in the sorted ``keys``, or -1 (binary search)."""
    key = np.int64(left) * vocab + right
    lo = 0
    hi = keys.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < keys.shape[0] and keys[lo] == key:
        return lo
    return -1


@cuda.jit(device=True, inline=True)
def pair_key(syms, base, i, keys, ranks, vocab):
    """``(rank << 32) | i`` for the pair at position ``i`` of the word at ``base``; NO_RANK << 32 if none."""
    j = find_merge(keys, syms[base + i], syms[base + i + 1], vocab)
    rank = NO_RANK if j < 0 else np.int64(ranks[j])
    return (rank << 32) | np.int64(i)


# ---------------------------------------------------------------------------------------------
# v1: one thread per word


@cuda.jit(cache=JIT_CACHE)
def merge_serial(syms, offsets, keys, ranks, merged, vocab, lengths):
    w = cuda.grid(1)
    if w >= lengths.shape[0]:
        return
    base = offsets[w]
    n = offsets[w + 1] - base
    while n > 1:
        best = NO_RANK << 32
        for i in range(n - 1):
            k = pair_key(syms, base, i, keys, ranks, vocab)
            if k < best:
                best = k
        if (best >> 32) == NO_RANK:
            break
        i = best & 0xFFFFFFFF
        syms[base + i] = merged[find_merge(keys, syms[base + i], syms[base + i + 1], vocab)]
        for j in range(i + 1, n - 1):
            syms[base + j] = syms[base + j + 1]
        n -= 1
    lengths[w] = n


# ---------------------------------------------------------------------------------------------
# v2: one block per word


@cuda.jit(cache=JIT_CACHE)
def merge_block(syms, offsets, keys, ranks, merged, vocab, lengths):
    w = cuda.blockIdx.x
    t = cuda.threadIdx.x
    best = cuda.shared.array(BLOCK, np.int64)
    base = offsets[w]
    n = offsets[w + 1] - base
    while n > 1:                                   # n is the same in every thread
        mine = NO_RANK << 32
        for i in range(t, n - 1, BLOCK):           # ranks of this thread's pairs
            k = pair_key(syms, base, i, keys, ranks, vocab)
            if k < mine:
                mine = k
        best[t] = mine
        cuda.syncthreads()
        stride = BLOCK // 2
        while stride > 0:                          # tree minimum over the block
            if t < stride and best[t + stride] < best[t]:
                best[t] = best[t + stride]
            cuda.syncthreads()
            stride //= 2
        top = best[0]
        if (top >> 32) == NO_RANK:
            break
        i = top & 0xFFFFFFFF
        m = 0
        if t == 0:                                 # read the pair before anyone writes it
            m = merged[find_merge(keys, syms[base + i], syms[base + i + 1], vocab)]
        cuda.syncthreads()                         # (also: everyone has read best[0])
        if t == 0:
            syms[base + i] = m
        cuda.syncthreads()                         # the merged id is visible before the next round
        c = i + 1                                  # shift the tail left by one, BLOCK slots at a time:
        while c < n - 1:                           # read all, barrier, write all
            j = c + t
            carry = syms[base + j + 1] if j < n - 1 else 0
            cuda.syncthreads()
            if j < n - 1:
                syms[base + j] = carry
            cuda.syncthreads()
            c += BLOCK
        n -= 1
    if t == 0:
        lengths[w] = n


# ---------------------------------------------------------------------------------------------
# tables, launch helpers, public function


class MergeTables:
    """Device merge table: ``keys`` (left * V + right, sorted), ``ranks``, ``merged``; ``vocab`` = V."""

    def __init__(self, keys: np.ndarray, ranks: np.ndarray, merged: np.ndarray, vocab: int) -> None:
        order = np.argsort(keys, kind="stable")
        self.vocab = int(vocab)
        self.keys = cuda.to_device(np.ascontiguousarray(keys[order], dtype=np.int64))
        self.ranks = cuda.to_device(np.ascontiguousarray(ranks[order], dtype=np.int32))
        self.merged = cuda.to_device(np.ascontiguousarray(merged[order], dtype=np.int32))


def build_merge_tables(tokenizer) -> MergeTables:
    """Merge tables from a ``ref.tokenizer.Tokenizer`` (or a ``ref.bpe.BPE``) of kind "bpe".

    A merge whose result is not a token cannot be expressed in ids and is left out (none
    is, in the Qwen2 vocabulary; llama.cpp would split such a symbol back into bytes).
    """
    bpe = getattr(tokenizer, "model", tokenizer)
    ids = bpe.token_to_id
    rows = [(ids[a], ids[b], rank, ids[a + b]) for (a, b), rank in bpe.ranks.items()
            if a in ids and b in ids and a + b in ids]
    left, right, rank, merged = (np.array(c, dtype=np.int64) for c in zip(*rows))
    vocab = len(bpe.tokens)
    return MergeTables(left * vocab + right, rank, merged, vocab)


def pack_words(words) -> tuple[np.ndarray, np.ndarray]:
    """``[[ids], ...]`` -> (concatenated int32 symbols, int32 offsets of length n_words + 1)."""
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    offsets = np.zeros(len(words) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    syms = np.fromiter((s for w in words for s in w), dtype=np.int32, count=int(lengths.sum()))
    return syms, offsets


def launch_serial(syms, offsets, tables: MergeTables, lengths, stream=0, threads=128):
    n_words = lengths.shape[0]
    blocks = (n_words + threads - 1) // threads               # one thread per word
    merge_serial[blocks, threads, stream](syms, offsets, tables.keys, tables.ranks, tables.merged,
                                          np.int64(tables.vocab), lengths)


def launch_block(syms, offsets, tables: MergeTables, lengths, stream=0):
    n_words = lengths.shape[0]
    merge_block[n_words, BLOCK, stream](syms, offsets, tables.keys, tables.ranks, tables.merged,
                                        np.int64(tables.vocab), lengths)  # one block of BLOCK threads per word


LAUNCHERS = {1: launch_serial, 2: launch_block}


def encode_words(words, tables: MergeTables, version: int = 2, stream=0) -> list[list[int]]:
    """Merge every word; ``words`` is a list of id lists or a packed ``(symbols, offsets)`` pair.

    Returns the merged ids of each word as a list of lists (host side).
    """
    syms, offsets = words if isinstance(words, tuple) else pack_words(words)
    syms = np.ascontiguousarray(syms, dtype=np.int32)
    offsets = np.ascontiguousarray(offsets, dtype=np.int32)
    n_words = len(offsets) - 1
    if n_words == 0:
        return []
    d_syms = cuda.to_device(syms if len(syms) else np.zeros(1, np.int32), stream=stream)
    d_offsets = cuda.to_device(offsets, stream=stream)
    d_lengths = cuda.device_array(n_words, dtype=np.int32, stream=stream)
    LAUNCHERS[version](d_syms, d_offsets, tables, d_lengths, stream)
    out, lengths = d_syms.copy_to_host(stream=stream), d_lengths.copy_to_host(stream=stream)
    cuda.synchronize()
    return [out[o:o + n].tolist() for o, n in zip(offsets[:-1], lengths)]


if __name__ == "__main__":  # check every version against ref on real text, and time it
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ref.bpe import byte_encode, merge_word
    from ref.tokenizer import load

    from llama_beta import registry

    path = sys.argv[1] if len(sys.argv) > 1 else registry.model_path("qwen2-vocab")
    tok = load(path)
    from numba import config

    on_gpu = not config.ENABLE_CUDASIM
    text = Path(__file__).read_text() * (4 if on_gpu else 1)
    words = [byte_encode(w) for w in tok.model.pre_tokenize(text)]
    if not on_gpu:
        words = words[:300]                               # the simulator is slow
    t0 = time.perf_counter()
    expected = [[tok.model.token_to_id[s] for s in merge_word(list(w), tok.model.ranks)] for w in words]
    t_ref = time.perf_counter() - t0
    tables = build_merge_tables(tok)
    ids = [[tok.model.token_to_id[c] for c in w] for w in words]
    packed = pack_words(ids)
    for version in LAUNCHERS:
        encode_words(packed, tables, version)             # compile
        t0 = time.perf_counter()
        got = encode_words(packed, tables, version)
        dt = time.perf_counter() - t0
        print(f"v{version}: {'OK' if got == expected else 'MISMATCH'}  {len(words)} words  "
              f"{dt * 1e3:.2f} ms (ref.bpe.merge_word without cache: {t_ref * 1e3:.2f} ms)")
