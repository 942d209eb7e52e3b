"""Causal grouped-query attention over a KV cache: Numba CUDA kernels.

Computes the same function as ``ref/attention.py`` (read its docstring for the
math): for query ``t`` of head ``h`` at position ``p_t``,
$\\mathrm{out}_{t,h} = \\sum_{s \\le p_t} \\mathrm{softmax}_s(q_{t,h} \\cdot k_{s,g(h)} / \\sqrt{hs})\\, v_{s,g(h)}$
with ``g(h) = h // kv_mul``, ``kv_mul = nh // nkv``. The KV cache of a layer is two
float32 arrays ``[S_max, nkv, hs]`` (position-major).

The kernels never hold a whole row of scores. They use the *online softmax*: walk
the keys in tiles, keep per query row a running maximum $m$, a running sum
$\\ell = \\sum_s e^{a_s - m}$ and an unnormalized accumulator
$\\mathbf{o} = \\sum_s e^{a_s - m} v_s$; when a tile raises the maximum from $m$ to
$m'$, the old $\\ell$ and $\\mathbf{o}$ are multiplied by $e^{m - m'}$. At the end
$\\mathrm{out} = \\mathbf{o} / \\ell$.

Kernel versions (llm.c dev/cuda style; each is checked against ``ref`` in ``__main__``)
- v1 ``attention_naive``: one thread per (query, head) walks every visible key in
  global memory with the online softmax. Slow; the plainest kernel, kept as a check.
- v2 ``prefill_tiled``: one block per (tile of ``BQ`` queries, head). Q tile, K/V
  tiles of ``BK`` keys and the ``BQ x BK`` score tile live in shared memory; the 128
  threads share the scores (one dot product each), then one thread per query row
  updates (m, l), then the threads share the ``BQ x hs`` accumulators. Causal: a
  block stops at the last key its last query can see; keys past a row's position
  score $-\\infty$. Each thread fetches its share of the next K/V tile into
  registers while the current tile is computed (the loads are in flight together).
- v3 ``decode_split`` + ``decode_combine``: flash decoding for one new token. The
  same tile loop as v2, but a block's rows are the ``kv_mul`` query heads that share
  one kv head (so each K/V byte is read once per group, not once per query head),
  and the cache is cut into ``n_splits`` chunks of positions, one block per
  (chunk, kv head). Each block writes its partial (m, l, o) per head to a workspace;
  ``decode_combine`` (one block per query head, tree reductions in shared memory)
  merges the chunks:
  $M = \\max_c m_c$, $L = \\sum_c \\ell_c e^{m_c - M}$,
  $\\mathrm{out} = \\sum_c \\mathbf{o}_c e^{m_c - M} / L$.
  The grid depends only on ``n_splits`` (sized from ``S_max``); the chunk length is
  computed on the device from ``seq_len``, and blocks whose chunk starts past
  ``seq_len`` return at once, so one launch can be captured in a CUDA graph and
  replayed for every token.
- v4 ``decode_fused`` (the default of ``attention_decode`` unless v6 serves the shape): flash decoding in ONE
  launch. Same grid as v3 (chunk, kv head), same device-side chunking, but the last
  block of a kv head to finish merges the partials itself: every block writes its
  partial, ``threadfence``, then one ``atomic.add`` on the kv head's counter in the
  workspace; the block that sees ``n_used - 1`` combines and sets the counter back to
  0 for the next replay (blocks past ``seq_len`` neither write nor count; a context of
  one chunk writes ``out`` directly). Inside a block, lanes split the head dims: a key
  group of KG lanes holds one K row and one V row (coalesced float loads, KG
  consecutive floats per row per instruction), so each K/V byte is read once for all
  ``kv_mul`` query heads; each group runs the online softmax in registers (q, m, l and
  its dims of o), the KG partial dot products of a key are summed through a padded
  shared scratch (no per-key shuffles), the next step's K/V loads are issued before
  the current step is computed, and the groups are merged in shared memory at the
  end. Scores are kept in base 2 ($e^a = 2^{a \\log_2 e}$: one ``ex2`` per key and
  head). Measured on the H200: Phi-3-mini at 4k 41 us (56% of copy bandwidth), Qwen2.5-0.5B at a
  512-token context 16 us (its 0.5 MiB cache: latency-bound).
- v5 ``decode_short`` (selectable; with ``USE_SHORT`` the choice for caches of at most ``SHORT_MAX_S`` =
  2048 positions; ``decode_version`` picks from the cache SHAPE, never from seq_len, so one captured graph
  serves every step): one block per query head walks the whole context, no workspace, no merge, three
  block barriers in all. Lanes over keys for the scores (q in shared memory, each thread a full dot
  product, scores kept in a shared [SHORT_MAX_S] array), warp-shuffle max and sum, then lanes over head
  dims for V (coalesced rows, SHORT_UNROLL rows in flight per thread, the first ones issued before the
  reductions). Made for the latency-bound short contexts of Qwen2.5-0.5B (v4 ~17 us at seq_len 512).
  Measured slower on the H200 (27 us at seq_len 512: 14 blocks for 132 SMs).
- v6 ``decode_gqa`` (the default for grouped-query heads, kv_mul >= 4, head size a multiple of 32 up to
  128: Qwen2.5): v4's grid, chunking and last-block merge, a different block. Tiles of 32 keys are
  loaded by all 256 threads, coalesced, into shared memory (K rows padded to HS + 1 floats), the next
  tile's loads issued before the current one is used; warp r owns query head r of the kv head: lane j
  scores key j against q (a shared-memory broadcast), one warp max and one warp sum update (m, l), then
  the lanes switch to head dims and fold the 32 weighted V rows into o. The merge is one warp per head
  (lanes over chunks for m and l, lanes over dims for o). Measured on the H200 at Qwen2.5-0.5B's shape,
  512-token context: 12.2 us (v4 16.3); whole decode step 789 tok/s (v4 731).
  Revised (fourth session; same algorithm, same grid): the score is four independent partial sums and
  the V fold two (one long chain of dependent multiply-adds over shared-memory loads before), indices
  are 32-bit, the tile loads read flat views of the caches, and GQA_SPLITS is 64. Inside the decode
  graph: 12.5 -> 8.9 us per layer at a 512-token context, 36 -> 15 us at 4k.
- v7 (``attention_decode_rope``): v6 with the decode step's RoPE and KV-cache append inside the launch
  (``rope.rope_element``: every block rotates q while staging it; the block holding the new position
  rotates the new key into its tile and writes the cache row), replacing ``rope.rope_qk_append``: one
  launch less per layer, but measured slower on the H200 (757 tok/s against v6's 789): the rotation sits
  on every block's critical path. Selectable with ``LLAMA_BETA_ATTENTION=v7``.
- v8 ``prefill_flash`` (the default of ``attention_prefill`` for head sizes 32, 64, 96, 128; ``version="v2"``
  selects v2): flash prefill with the products in registers. v2 spent its time in shared memory: every score
  was one thread's dot product over shared Q and K rows (2 loads per FMA), one thread per row ran the softmax
  serially, and four barriers separated the phases (~0.5 TFLOP/s at Qwen2.5-0.5B's shape, ~900 us per layer).
  v8 tiles like a GEMM: a warp owns a strip of 16 queries and a slice of the keys of each staged tile; each lane
  holds a 4 x TN micro-tile of S = Q K^T (4 + TN shared loads per 4 TN FMAs), runs the online softmax on it
  (base 2, row max over the 8 lanes of a row with 3 xor shuffles, the row sum kept per lane until the end),
  hands P to the warp through a small shared tile and accumulates a 4 x hs/8 micro-tile of O += P V (4 + hs/8
  loads per hs/2 FMAs). Blocks are (tile of 32 queries, query head) with 2 strips x 2 key slices (4 warps), so
  the longest rows are split over two warps that merge their (m, l, o) at the end; a strip skips the key slices
  past its last position and only the slices crossing the diagonal are masked; the longest query tiles are
  launched first. The next tile's K (and this tile's V) loads are issued before the compute that hides them.
  Reasoning for registers, shared memory and occupancy: the comment above ``_flash_kernel``. Measured on the
  H200 at T = 512: Qwen2.5-0.5B 308 -> 49 us (tiles (1, 4, 1), the hs 64 default after the sweep), Phi-3-mini
  923 -> 97 us (16.7 TFLOP/s). The first query's position is read on the device (``pos[0]``, an int32 [1]
  array; sixth session, same math and tiles), so a prefill captured as a CUDA graph replays at any position
  (``llama_beta/backends/cuda_prefill.py``); ``attention_prefill`` uploads an int.
- ``kv_append_kernel``: copies ``T`` rows of k and v into the caches at ``pos[0]``
  (a device int32, so a captured decode step can replay it). For decode,
  ``rope.rope_qk_append`` does this together with RoPE of q and k, in one launch.

Bytes of decode: the K and V rows ``0 .. seq_len-1`` of the kv heads, read once:
``2 * seq_len * nkv * hs * 4`` (4 MiB for Qwen2.5-0.5B, 96 MiB for Phi-3-mini at 4k),
plus the partials (``n_splits * nh * hs * 4`` written and read again by v3/v4).

Left out: a float16 cache, tensor cores (the prefill scores are plain FMA), and a
split-K prefill across blocks (v8 splits the keys of a query tile over two warps of one block only);
sequences are single (no batching).

References: Dao et al. 2022 "FlashAttention" (tiling + online softmax, after
Milakov & Gimelshein 2018 "Online normalizer calculation for softmax");
Dao et al. 2023 "Flash-Decoding for long-context inference" (split/combine);
llm.c ``dev/cuda/attention_forward.cu`` (kernel-versions layout).
"""
from __future__ import annotations

import functools
import math
import os
import sys

import numpy as np
from numba import config, cuda, float32, int32, uint32, uint64

from numba_kernels import ptx
from numba_kernels.matmul import _x16_word
from numba_kernels.rope import _args as _rope_args, _rot_dims, rope_element
from numba_kernels.softmax import _warp_max, _warp_sum  # butterfly: every lane gets the result
from numba_kernels.runtime import JIT_CACHE, install_simulator_shuffles, is_device as _is_device, kernel_time_us

NT = 128          # threads per block of the tiled kernels (4 warps)
MAX_HS = 256      # largest head size the kernels support (v1's per-thread accumulator)
SPLIT_ALIGN = 32  # decode chunks are whole multiples of this many positions
SMEM_LIMIT = 48 * 1024  # static shared memory a block may declare
MAX_SPLITS = 1024  # most decode chunks per head (the combine kernel keeps one weight per chunk in shared memory)
COMBINE_THREADS = 256  # threads of the combine kernel (a power of two, >= MAX_HS)


# ---------------------------------------------------------------------------------------------
# v1: one thread per (query, head), everything in global memory
# ---------------------------------------------------------------------------------------------
@cuda.jit(cache=JIT_CACHE)
def attention_naive(q, k_cache, v_cache, seq_len, out):
    # q, out: [T, nh, hs]; caches: [S_max, nkv, hs]; query t sits at position seq_len[0] - T + t
    T, nh, hs = q.shape
    t = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    h = cuda.blockIdx.y
    if t >= T:
        return
    kv_head = h // (nh // k_cache.shape[1])
    pos = seq_len[0] - T + t
    scale = float32(1.0 / math.sqrt(hs))
    acc = cuda.local.array(MAX_HS, float32)
    for d in range(hs):
        acc[d] = 0.0
    m = float32(-math.inf)
    l = float32(0.0)
    for s in range(pos + 1):
        a = float32(0.0)
        for d in range(hs):
            a += q[t, h, d] * k_cache[s, kv_head, d]
        a *= scale
        m_new = max(m, a)
        alpha = math.exp(m - m_new)  # rescales what was summed under the old maximum
        p = math.exp(a - m_new)
        l = l * alpha + p
        for d in range(hs):
            acc[d] = acc[d] * alpha + p * v_cache[s, kv_head, d]
        m = m_new
    for d in range(hs):
        out[t, h, d] = acc[d] / l


# ---------------------------------------------------------------------------------------------
# v2 / v3: tiled online softmax. Tile sizes are compile-time constants, so the kernels are
# built per (HS, R, BK) by a factory: R rows (queries or heads) per block, BK keys per tile.
# ---------------------------------------------------------------------------------------------
def _smem_bytes(hs: int, rows: int, bk: int) -> int:
    """Shared memory of one tiled block: Q [R, hs], K [BK, hs+1], V [BK, hs], scores [R, BK], row state."""
    return 4 * (rows * hs + bk * (hs + 1) + bk * hs + rows * bk + 4 * rows)


@functools.cache
def _tiled_kernels(HS: int, R: int, BK: int):
    """Compile-time specialised device functions and kernels for head size HS, R rows, BK keys."""
    HSP = HS + 1  # padded K row: lanes reading K[j, d] for 32 consecutive j hit 32 different banks
    NACC = (R * HS + NT - 1) // NT  # the R x HS accumulators spread over NT threads
    NLD = (BK * HS + NT - 1) // NT  # elements of one K (and one V) tile that each thread loads

    @cuda.jit(device=True)
    def fetch_kv_tile(k_cache, v_cache, kv_head, j0, kv_end, kr, vr):
        # registers kr, vr[it] <- cache[j0 + j, kv_head, d] for element i = tid + it*NT of the [BK, HS] tile
        # (zeros past kv_end). All NLD loads are issued before any is used, so they are in flight together.
        for it in range(NLD):
            i = cuda.threadIdx.x + it * NT
            j = i // HS
            kr[it] = 0.0
            vr[it] = 0.0
            if i < BK * HS and j0 + j < kv_end:
                kr[it] = k_cache[j0 + j, kv_head, i - j * HS]
                vr[it] = v_cache[j0 + j, kv_head, i - j * HS]

    @cuda.jit(device=True)
    def store_kv_tile(kr, vr, Ks, Vs):
        # shared Ks, Vs[j, d] <- the registers fetched by fetch_kv_tile
        for it in range(NLD):
            i = cuda.threadIdx.x + it * NT
            j = i // HS
            if i < BK * HS:
                Ks[j, i - j * HS] = kr[it]
                Vs[j, i - j * HS] = vr[it]

    @cuda.jit(device=True)
    def tile_scores(Qs, Ks, S, last, j0, kv_end, scale):
        # S[r, j] = (q_r . k_{j0+j}) * scale, or -inf for keys row r may not see
        for e in range(cuda.threadIdx.x, R * BK, NT):
            r = e // BK
            j = e - r * BK
            a = float32(-math.inf)
            if j0 + j <= last[r] and j0 + j < kv_end:
                dot = float32(0.0)
                for d in range(HS):
                    dot += Qs[r, d] * Ks[j, d]
                a = dot * scale
            S[r, j] = a

    @cuda.jit(device=True)
    def online_softmax_step(S, m, l, alpha):
        # one thread per row: m' = max(m, max_j S), alpha = e^{m - m'}, S <- e^{S - m'}, l <- l*alpha + sum_j S
        r = cuda.threadIdx.x
        if r < R:
            m_new = m[r]
            for j in range(BK):
                m_new = max(m_new, S[r, j])
            total = float32(0.0)
            for j in range(BK):
                p = math.exp(S[r, j] - m_new)
                S[r, j] = p
                total += p
            alpha[r] = math.exp(m[r] - m_new)
            l[r] = l[r] * alpha[r] + total
            m[r] = m_new

    @cuda.jit(device=True)
    def accumulate(S, Vs, alpha, acc):
        # acc (this thread's share of o[r, d]) <- acc * alpha[r] + sum_j p[r, j] * V[j, d]
        for i in range(NACC):
            o = cuda.threadIdx.x + i * NT
            if o < R * HS:
                r = o // HS
                d = o - r * HS
                a = acc[i] * alpha[r]
                for j in range(BK):
                    a += S[r, j] * Vs[j, d]
                acc[i] = a

    @cuda.jit(device=True)
    def attend(k_cache, v_cache, kv_head, j_begin, j_end, Qs, last, m, l, acc):
        # fold keys j_begin .. j_end-1 into every row's (m, l, acc): the loop shared by prefill and decode
        Ks = cuda.shared.array((BK, HSP), float32)
        Vs = cuda.shared.array((BK, HS), float32)
        S = cuda.shared.array((R, BK), float32)
        alpha = cuda.shared.array(R, float32)
        kr = cuda.local.array(NLD, float32)
        vr = cuda.local.array(NLD, float32)
        scale = float32(1.0 / math.sqrt(HS))
        fetch_kv_tile(k_cache, v_cache, kv_head, j_begin, j_end, kr, vr)
        for j0 in range(j_begin, j_end, BK):
            store_kv_tile(kr, vr, Ks, Vs)
            cuda.syncthreads()
            if j0 + BK < j_end:  # prefetch the next tile: its loads fly while this tile is computed
                fetch_kv_tile(k_cache, v_cache, kv_head, j0 + BK, j_end, kr, vr)
            tile_scores(Qs, Ks, S, last, j0, j_end, scale)
            cuda.syncthreads()
            online_softmax_step(S, m, l, alpha)
            cuda.syncthreads()
            accumulate(S, Vs, alpha, acc)
            cuda.syncthreads()

    @cuda.jit(cache=JIT_CACHE)
    def prefill_tiled(q, k_cache, v_cache, start_pos, out):
        # grid (ceil(T / R), nh): block = (query tile, head). q, out: [T, nh, hs]
        T, nh = q.shape[0], q.shape[1]
        t0 = cuda.blockIdx.x * R
        h = cuda.blockIdx.y
        kv_head = h // (nh // k_cache.shape[1])
        tid = cuda.threadIdx.x
        Qs = cuda.shared.array((R, HS), float32)
        m = cuda.shared.array(R, float32)
        l = cuda.shared.array(R, float32)
        last = cuda.shared.array(R, int32)
        for i in range(tid, R * HS, NT):
            r = i // HS
            Qs[r, i - r * HS] = q[t0 + r, h, i - r * HS] if t0 + r < T else 0.0
        if tid < R:
            m[tid] = -math.inf
            l[tid] = 0.0
            last[tid] = start_pos + min(t0 + tid, T - 1)  # rows past T copy the last real query's mask
        acc = cuda.local.array(NACC, float32)
        for i in range(NACC):
            acc[i] = 0.0
        cuda.syncthreads()
        attend(k_cache, v_cache, kv_head, 0, start_pos + min(t0 + R, T), Qs, last, m, l, acc)
        for i in range(NACC):
            o = tid + i * NT
            r = o // HS
            if o < R * HS and t0 + r < T:
                out[t0 + r, h, o - r * HS] = acc[i] / l[r]

    @cuda.jit(cache=JIT_CACHE)
    def decode_split(q, k_cache, v_cache, seq_len, ws_m, ws_l, ws_acc):
        # grid (n_splits, nkv * groups): block = (chunk of positions, up to R query heads of one kv head)
        ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
        ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
        nh = q.shape[0]
        kv_mul = nh // k_cache.shape[1]
        groups = (kv_mul + R - 1) // R
        kv_head = cuda.blockIdx.y // groups
        g0 = (cuda.blockIdx.y % groups) * R  # first head of this block within its kv group
        h0 = kv_head * kv_mul + g0
        rows = min(R, kv_mul - g0)
        split = cuda.blockIdx.x
        n = seq_len[0]
        chunk = split_chunk(n, cuda.gridDim.x)
        j_begin = split * chunk
        if j_begin >= n:
            return  # whole block leaves together: past the end of the context
        tid = cuda.threadIdx.x
        Qs = cuda.shared.array((R, HS), float32)
        m = cuda.shared.array(R, float32)
        l = cuda.shared.array(R, float32)
        last = cuda.shared.array(R, int32)
        for i in range(tid, R * HS, NT):
            r = i // HS
            Qs[r, i - r * HS] = q[h0 + r, i - r * HS] if r < rows else 0.0
        if tid < R:
            m[tid] = -math.inf
            l[tid] = 0.0
            last[tid] = n - 1
        acc = cuda.local.array(NACC, float32)
        for i in range(NACC):
            acc[i] = 0.0
        cuda.syncthreads()
        attend(k_cache, v_cache, kv_head, j_begin, min(j_begin + chunk, n), Qs, last, m, l, acc)
        if tid < rows:
            ws_m[h0 + tid, split] = m[tid]
            ws_l[h0 + tid, split] = l[tid]
        for i in range(NACC):
            o = tid + i * NT
            r = o // HS
            if o < R * HS and r < rows:
                ws_acc[h0 + r, split, o - r * HS] = acc[i]

    return prefill_tiled, decode_split


@cuda.jit(device=True)
def split_chunk(n, n_splits):
    """Positions per decode chunk: ceil(n / n_splits) rounded up to a multiple of SPLIT_ALIGN."""
    c = (n + n_splits - 1) // n_splits
    return (c + SPLIT_ALIGN - 1) // SPLIT_ALIGN * SPLIT_ALIGN


@cuda.jit(device=True, inline=True)
def _one_launch_block(nh, nkv, n, R):
    """Where a block of the one-launch decode kernels (v4, v6) works, grid (n_splits, nkv * groups):
    its row (kv head, group of R query heads), first head h0 and number of heads, and its chunk
    [j_begin, j_end) of the n positions; n_used chunks are not empty. j_begin >= n: nothing to do."""
    kv_mul = nh // nkv
    groups = (kv_mul + R - 1) // R
    row = cuda.blockIdx.y
    kv_head = row // groups
    g0 = (row - kv_head * groups) * R  # first head of this block within its kv group
    chunk = split_chunk(n, cuda.gridDim.x)
    j_begin = cuda.blockIdx.x * chunk
    return (row, kv_head, kv_head * kv_mul + g0, min(R, kv_mul - g0), j_begin, min(j_begin + chunk, n),
            (n + chunk - 1) // chunk)


@cuda.jit(device=True, inline=True)
def _last_to_finish(count, row, n_used, last):
    """Called by every thread once the block's partial is written: publish it (threadfence), count it on
    the row's counter; True in the block that completes the row (it merges all the partials)."""
    cuda.threadfence()
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        last[0] = 1 if cuda.atomic.add(count, row, 1) == n_used - 1 else 0
    cuda.syncthreads()
    if last[0] == 0:
        return False
    cuda.threadfence()
    return True


@cuda.jit(device=True)
def _tree_max(red):
    # red[0] <- max of red[0 .. COMBINE_THREADS-1], halving the active threads each step
    step = COMBINE_THREADS // 2
    while step > 0:
        if cuda.threadIdx.x < step:
            red[cuda.threadIdx.x] = max(red[cuda.threadIdx.x], red[cuda.threadIdx.x + step])
        cuda.syncthreads()
        step //= 2


@cuda.jit(device=True)
def _tree_sum(red):
    # red[0] <- sum of red[0 .. COMBINE_THREADS-1]
    step = COMBINE_THREADS // 2
    while step > 0:
        if cuda.threadIdx.x < step:
            red[cuda.threadIdx.x] += red[cuda.threadIdx.x + step]
        cuda.syncthreads()
        step //= 2


@cuda.jit(cache=JIT_CACHE)
def decode_combine(seq_len, ws_m, ws_l, ws_acc, out):
    # grid (nh,), block COMBINE_THREADS: block = query head h. Merges the chunks that were not empty.
    ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
    ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
    h = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    hs = out.shape[1]
    n = seq_len[0]
    chunk = split_chunk(n, ws_m.shape[1])
    n_used = (n + chunk - 1) // chunk
    w = cuda.shared.array(MAX_SPLITS, float32)  # chunk weights e^{m_c - M}
    red = cuda.shared.array(COMBINE_THREADS, float32)
    # M = max_c m_c
    mx = float32(-math.inf)
    for c in range(tid, n_used, COMBINE_THREADS):
        mx = max(mx, ws_m[h, c])
    red[tid] = mx
    cuda.syncthreads()
    _tree_max(red)
    M = red[0]
    cuda.syncthreads()
    # w_c = e^{m_c - M};  L = sum_c l_c w_c
    total = float32(0.0)
    for c in range(tid, n_used, COMBINE_THREADS):
        w[c] = math.exp(ws_m[h, c] - M)
        total += ws_l[h, c] * w[c]
    red[tid] = total
    cuda.syncthreads()
    _tree_sum(red)
    L = red[0]
    cuda.syncthreads()
    # out[d] = sum_c w_c acc[c, d] / L: thread (g, d) of G = COMBINE_THREADS // hs groups takes c = g, g+G, ...
    G = COMBINE_THREADS // hs
    g = tid // hs
    d = tid - g * hs
    part = float32(0.0)
    if g < G:
        for c in range(g, n_used, G):
            part += w[c] * ws_acc[h, c, d]
    red[tid] = part
    cuda.syncthreads()
    if tid < hs:
        o = float32(0.0)
        for gg in range(G):
            o += red[gg * hs + tid]
        out[h, tid] = o / L


# ---------------------------------------------------------------------------------------------
# v4: flash decoding in one launch. Built per (HS, R, KG, NW, U) by a factory (compile-time tiles).
#
# Block = (chunk of positions, kv head [, group of R of its query heads]). Lanes split the head
# dims: a "key group" of KG lanes holds one K row and one V row, lane li owning dims li, li+KG, ...,
# so a warp reads 32 / KG rows per load instruction, KG consecutive floats (>= 32 bytes) of each.
# Each group runs the online softmax over its own keys in registers: q (pre-scaled), m, l and the
# R x hs/KG accumulators. The KG partial dot products of a key are summed through a padded
# per-warp scratch in shared memory (three __syncwarp per step of U keys, no per-key shuffles).
# Then the groups are merged in shared memory, the block's partial (m, l, o) goes to the
# workspace, and the last block of the (kv head, group) to finish merges all partials.
# ---------------------------------------------------------------------------------------------
FUSED_MAX_SPLITS = 256  # most chunks the v4 combine holds weights for (shared memory)
FUSED_MAX_WARPS = 8     # 256 threads: a block always fits the register file, however many registers
RSTRIDE = 33            # padded row of the partial-dot scratch: the KG-lane sums read distinct banks
COMBINE_UNROLL = 8      # partials each combining thread loads before it adds (loads in flight together)
LOG2E = 1.4426950408889634


@functools.cache
def _fused_kernel(HS: int, R: int, KG: int, NW: int, U: int):
    """The one-launch decode kernel for head size HS, R query heads per block, KG lanes per key,
    NW warps, U keys per group per step. The hot loops index with unsigned 32-bit integers, and the
    cache loads go through a row view (``k_cache[j, kv_head]``): Numba then emits no negative-index
    wraparound and the DPL loads of a row take immediate offsets from one address."""
    DPL = (HS + KG - 1) // KG  # dims per lane
    EXACT = HS % KG == 0       # every lane's dims exist (else the last ones are clamped and masked)
    KPW = 32 // KG             # key groups per warp
    NG = NW * KPW              # key groups per block
    NT = 32 * NW
    E = R * HS                 # outputs of a block: R heads x HS dims
    ITEMS = U * R              # partial dots per lane per step
    UD, RDL = U * DPL, R * DPL  # K (and V) values per lane per step; q (and o) values per lane
    NSUM = (ITEMS * KPW + 31) // 32  # partial-dot sums per lane per step
    ALIGNED = HS % 8 == 0      # the acc rows of different heads share no 32-byte sector
    SL = max(1, NT // E)       # combine: slices of the splits, so that all threads have work
    MAXS = FUSED_MAX_SPLITS
    # one shared buffer, reused by the three phases (a barrier separates them)
    MAIN = NW * ITEMS * RSTRIDE                         # per-warp partial-dot scratch
    OG, MG = 0, NG * E                                  # merge: o [NG, E], m [NG, R]
    LG, WG, MS = MG + NG * R, MG + 2 * NG * R, MG + 3 * NG * R  # l [NG, R], weights [NG, R], max [R]
    MERGE = MS + R
    CM, CL = 0, R * MAXS                                # combine: m then weights [R, MAXS], l [R, MAXS]
    CMX, CLS, RD = 2 * R * MAXS, 2 * R * MAXS + R, 2 * R * MAXS + 2 * R  # max [R], sum [R], slices [SL, E]
    COMBINE = RD + SL * E
    SMEM = max(MAIN, MERGE, COMBINE)
    assert 4 * SMEM <= SMEM_LIMIT, f"v4 decode: {4 * SMEM} bytes of shared memory for {(HS, R, KG, NW, U)}"
    NEG_INF = float32(-math.inf)

    @cuda.jit(device=True, inline=True)
    def fetch(k_cache, v_cache, kv_head, j_first, j_end, li, kd, vd):
        # kd, vd[u*DPL + i] <- cache[j, kv_head, li + KG*i] for j = j_first + u*NG; j and d are
        # clamped into the valid rows and dims (those values are masked later), so every load is
        # unconditional and all U*DPL of them are in flight together
        lu = uint32(li)
        for u in range(U):
            j = uint32(min(j_first + u * NG, j_end - 1))
            krow = k_cache[j, kv_head]  # [HS] views of cache row j
            vrow = v_cache[j, kv_head]
            for i in range(DPL):
                d = lu + uint32(KG * i) if EXACT else uint32(min(li + KG * i, HS - 1))
                kd[u * DPL + i] = krow[d]
                vd[u * DPL + i] = vrow[d]

    @cuda.jit(device=True, inline=True)
    def scores(qr, kr, smem, red, lane):
        # q_r . k_u for every key group: each lane writes its U*R partial dots to the scratch (row
        # stride RSTRIDE), then lane t sums the KG partials of (item, group) = divmod(t, KPW) in place;
        # the score of item u*R + r of group grp is left at smem[red + item*RSTRIDE + grp*KG]
        at = uint32(red + lane)
        for u in range(U):
            for r in range(R):
                a = float32(0.0)
                for i in range(DPL):
                    a += qr[r * DPL + i] * kr[u * DPL + i]
                smem[at + uint32((u * R + r) * RSTRIDE)] = a
        cuda.syncwarp()
        for tt in range(NSUM):
            t = lane + 32 * tt
            if t < ITEMS * KPW:
                item = t // KPW
                at_t = uint32(red + item * RSTRIDE + (t - item * KPW) * KG)
                tot = float32(0.0)
                for x in range(KG):
                    tot += smem[at_t + uint32(x)]
                smem[at_t] = tot
        cuda.syncwarp()

    @cuda.jit(device=True, inline=True)
    def online_update(smem, at_g, vr, base, gi, j_end, m, l, o):
        # fold the keys base + u*NG + gi (those before j_end), scores at smem[at_g + (u*R + r)*RSTRIDE],
        # into every row's (m, l, o)
        for r in range(R):
            mx = m[r]
            for u in range(U):
                if base + u * NG + gi < j_end:
                    mx = max(mx, smem[at_g + uint32((u * R + r) * RSTRIDE)])
            if mx > m[r]:
                alpha = math.exp2(m[r] - mx)  # 2^{-inf} = 0 while the group has seen no key
                l[r] *= alpha
                for i in range(DPL):
                    o[r * DPL + i] *= alpha
                m[r] = mx
            for u in range(U):
                if base + u * NG + gi < j_end:
                    p = math.exp2(smem[at_g + uint32((u * R + r) * RSTRIDE)] - m[r])
                    l[r] += p
                    for i in range(DPL):
                        o[r * DPL + i] += p * vr[u * DPL + i]

    @cuda.jit(device=True, inline=True)
    def merge_groups(smem, gi, li, tid, ng, m, l, o):
        # the NG groups' states side by side: smem[OG + g*E + e] = o_g, smem[WG + g*R + r] = 2^{m_g - M_r},
        # smem[MS + r] = M_r; the caller sums over g
        cuda.syncthreads()  # the scratch region is reused
        for r in range(R):
            if li == 0:
                smem[MG + gi * R + r] = m[r]
                smem[LG + gi * R + r] = l[r]
            for i in range(DPL):
                d = li + KG * i
                if EXACT or d < HS:
                    smem[uint32(OG + gi * E + r * HS + d)] = o[r * DPL + i]
        cuda.syncthreads()
        for f in range(tid, NG * R, NT):
            r = f % R
            mx = NEG_INF
            for g in range(ng):
                mx = max(mx, smem[MG + g * R + r])
            mg = smem[MG + f]
            smem[WG + f] = float32(0.0) if mg == NEG_INF else math.exp2(mg - mx)
            if f < R:
                smem[MS + r] = mx
        cuda.syncthreads()

    @cuda.jit(device=True, inline=True)
    def combine(ws_m, ws_l, ws_acc, h0, rows, n_used, smem, tid, out):
        # out[h0 + r] = sum_c 2^{m_c - M} acc_c / sum_c 2^{m_c - M} l_c over the n_used chunks (m in base 2).
        # The partials were written by other blocks of this launch, and L1 caches are not coherent
        # across SMs: a 32-byte sector of m or l may hold another row's entries, which an earlier
        # combine on this SM could have cached before they were final. So m and l are read with an
        # atomic add of 0 (done in L2, never cached in L1); acc rows of different heads share no
        # sector when HS % 8 == 0 (plain loads; else atomics too). No block reads them before.
        for f in range(tid, R * n_used, NT):
            r = f // n_used
            c = f - r * n_used
            h = h0 + min(r, rows - 1)
            smem[CM + r * MAXS + c] = cuda.atomic.add(ws_m, (h, c), float32(0.0))
            smem[CL + r * MAXS + c] = cuda.atomic.add(ws_l, (h, c), float32(0.0))
        cuda.syncthreads()
        if tid < R:
            mx = NEG_INF
            for c in range(n_used):
                mx = max(mx, smem[CM + tid * MAXS + c])
            smem[CMX + tid] = mx
        cuda.syncthreads()
        for f in range(tid, R * n_used, NT):
            r = f // n_used
            c = f - r * n_used
            w = math.exp2(smem[CM + r * MAXS + c] - smem[CMX + r])  # every used chunk saw a key: m_c finite
            smem[CM + r * MAXS + c] = w
            smem[CL + r * MAXS + c] *= w
        cuda.syncthreads()
        for f in range(tid, SL * E, NT):  # thread (slice, output e): chunks c = slice, slice + SL, ...
            sl = f // E
            e = f - sl * E
            r = e // HS
            h = uint32(h0 + min(r, rows - 1))
            d = uint32(e - r * HS)
            wrow = uint32(CM + r * MAXS)
            acc = float32(0.0)
            for c0 in range(sl, n_used, SL * COMBINE_UNROLL):
                for u in range(COMBINE_UNROLL):  # unconditional loads, all in flight together
                    c = c0 + u * SL
                    cc = uint32(min(c, n_used - 1))
                    w = smem[wrow + cc] if c < n_used else float32(0.0)
                    a = ws_acc[h, cc, d] if ALIGNED else cuda.atomic.add(ws_acc, (h, cc, d), float32(0.0))
                    acc += w * a
            smem[RD + f] = acc
        if tid < R:
            tot = float32(0.0)
            for c in range(n_used):
                tot += smem[CL + tid * MAXS + c]
            smem[CLS + tid] = tot
        cuda.syncthreads()
        for e in range(tid, E, NT):
            r = e // HS
            if r < rows:
                tot = float32(0.0)
                for sl in range(SL):
                    tot += smem[RD + sl * E + e]
                out[h0 + r, e - r * HS] = tot / smem[CLS + r]

    @cuda.jit(cache=JIT_CACHE)
    def decode_fused(q, k_cache, v_cache, seq_len, ws_m, ws_l, ws_acc, count, out):
        # grid (n_splits, nkv * groups), NT threads. q, out: [nh, hs]; caches: [S_max, nkv, hs];
        # ws_m, ws_l: [nh, n_splits] (m in base 2); ws_acc: [nh, n_splits, hs]; count: int32 [>= grid y]
        ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
        ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
        n = seq_len[0]
        row, kv_head, h0, rows, j_begin, j_end, n_used = _one_launch_block(q.shape[0], k_cache.shape[1], n, R)
        if j_begin >= n:
            return  # past the end of the context: this chunk does not exist at this length
        split = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        warp = tid // 32
        lane = tid - warp * 32
        grp = lane // KG  # key group within the warp
        li = lane - grp * KG  # lane within the key group
        gi = warp * KPW + grp  # key group within the block
        smem = cuda.shared.array(SMEM, float32)
        last = cuda.shared.array(1, int32)
        kr = cuda.local.array(UD, float32)
        vr = cuda.local.array(UD, float32)
        kn = cuda.local.array(UD, float32)
        vn = cuda.local.array(UD, float32)
        kvh = uint32(kv_head)
        fetch(k_cache, v_cache, kvh, j_begin + gi, j_end, li, kn, vn)  # the first step's loads fly
        qr = cuda.local.array(RDL, float32)  # q rows times log2(e)/sqrt(hs); zeros for missing rows/dims
        scale = float32(LOG2E / math.sqrt(HS))  # scores in base 2: e^{a} = 2^{a log2 e}, one ex2 each
        for r in range(R):
            for i in range(DPL):
                d = li + KG * i
                x = q[h0 + min(r, rows - 1), min(d, HS - 1)] * scale
                qr[r * DPL + i] = x if r < rows and (EXACT or d < HS) else float32(0.0)
        m = cuda.local.array(R, float32)
        l = cuda.local.array(R, float32)
        o = cuda.local.array(RDL, float32)
        for r in range(R):
            m[r] = NEG_INF
            l[r] = 0.0
            for i in range(DPL):
                o[r * DPL + i] = 0.0
        red = warp * ITEMS * RSTRIDE  # this warp's scratch
        at_g = uint32(red + grp * KG)  # where this lane's group finds its scores
        for base in range(j_begin, j_end, NG * U):  # the same trip count for every thread
            for x in range(UD):
                kr[x] = kn[x]
                vr[x] = vn[x]
            if base + NG * U < j_end:  # prefetch the next step: its loads fly during this one
                fetch(k_cache, v_cache, kvh, base + NG * U + gi, j_end, li, kn, vn)
            scores(qr, kr, smem, red, lane)
            online_update(smem, at_g, vr, base, gi, j_end, m, l, o)
            cuda.syncwarp()  # all scores read before the next step overwrites the scratch
        ng = (cuda.blockDim.x // 32) * KPW  # = NG; a run-time bound keeps these loops rolled (registers)
        merge_groups(smem, gi, li, tid, ng, m, l, o)
        for e in range(tid, E, NT):  # this block's (m, l, o) per output (r, d)
            r = e // HS
            d = e - r * HS
            acc = float32(0.0)
            tot = float32(0.0)
            for g in range(ng):
                w = smem[WG + g * R + r]
                acc += w * smem[OG + g * E + e]
                tot += w * smem[LG + g * R + r]
            if r < rows:
                if n_used == 1:
                    out[h0 + r, d] = acc / tot  # the only chunk: no combine
                else:
                    ws_acc[h0 + r, split, d] = acc
                    if d == 0:
                        ws_m[h0 + r, split] = smem[MS + r]
                        ws_l[h0 + r, split] = tot
        if n_used == 1:
            return
        if not _last_to_finish(count, row, n_used, last):
            return  # the last of the n_used blocks of this row merges them all
        combine(ws_m, ws_l, ws_acc, h0, rows, n_used, smem, tid, out)
        if tid == 0:
            count[row] = 0  # the next launch (graph replay) starts from zero

    return decode_fused


# ---------------------------------------------------------------------------------------------
# v5: short caches, one block per query head over the whole context, no workspace and no merge.
# Built per (HS, NW) by a factory. Phase 1, lanes over keys: thread t scores keys t, t + NT, ...
# (a full dot product against q in shared memory, HS independent loads of its K row in flight) into a
# shared array of SHORT_MAX_S scores, keeping its running max; warp-shuffle max, one barrier, block max.
# Phase 2: p_j = 2^{s_j - M} in place, warp-shuffle sum, one barrier. Phase 3, lanes over head dims:
# thread (slice, d) of SL = NT // HS slices accumulates p_j V[j, d] for j = slice, slice + SL, ...
# (a warp reads 32 consecutive floats of a V row), SHORT_UNROLL keys per step with the next step's
# loads issued first (the very first step's before phase 2, so they fly during the reductions); the
# slices are summed through shared memory after a third barrier.
# ---------------------------------------------------------------------------------------------
SHORT_MAX_S = 2048  # v5 serves caches of at most this many positions (its scores live in shared memory)
SHORT_WARPS = 16    # warps per v5 block (512 threads: one key each at seq_len 512)
SHORT_UNROLL = 8    # V rows per thread per step of v5's phase 3 (loads in flight together)


@functools.cache
def _short_kernel(HS: int, NW: int):
    """The v5 decode kernel for head size HS and NW warps per block (grid: one block per query head)."""
    NT = 32 * NW
    SL = NT // HS  # phase-3 slices of the keys
    U = SHORT_UNROLL
    SMAX = SHORT_MAX_S
    assert SL >= 1, f"v5 decode: {NT} threads for head size {HS}"
    assert 4 * (SMAX + HS + SL * HS + 2 * NW) <= SMEM_LIMIT
    NEG_INF = float32(-math.inf)
    RED = SL * HS                       # a plain constant: shared.array rejects an expression on the GPU

    @cuda.jit(cache=JIT_CACHE)
    def decode_short(q, k_cache, v_cache, seq_len, out):
        # grid (nh,), NT threads. q, out: [nh, hs]; caches: [S_max, nkv, hs] with S_max <= SHORT_MAX_S
        ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
        ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
        h = cuda.blockIdx.x
        kv_head = h // (q.shape[0] // k_cache.shape[1])
        n = seq_len[0]
        tid = cuda.threadIdx.x
        warp = tid // 32
        lane = tid - warp * 32
        qs = cuda.shared.array(HS, float32)
        p = cuda.shared.array(SMAX, float32)
        red = cuda.shared.array(RED, float32)
        wmax = cuda.shared.array(NW, float32)
        wsum = cuda.shared.array(NW, float32)
        kvh = uint32(kv_head)
        scale = float32(LOG2E / math.sqrt(HS))  # scores in base 2
        for x in range(tid, HS, NT):
            qs[x] = q[h, x] * scale
        cuda.syncthreads()
        # phase 1: scores, lanes over keys
        mx = NEG_INF
        for j in range(tid, n, NT):
            krow = k_cache[uint32(j), kvh]
            a0 = float32(0.0)
            a1 = float32(0.0)
            for x in range(HS // 2):  # two chains: HS loads in flight, half the dependent FMAs
                a0 += qs[2 * x] * krow[2 * x]
                a1 += qs[2 * x + 1] * krow[2 * x + 1]
            if HS % 2 == 1:
                a0 += qs[HS - 1] * krow[HS - 1]
            a = a0 + a1
            p[j] = a
            mx = max(mx, a)
        # phase 3's first step: issue its V loads now, they fly during the reductions
        sl = tid // HS
        dv = uint32(tid - sl * HS)
        vv = cuda.local.array(U, float32)
        for u in range(U):
            vv[u] = v_cache[uint32(min(sl + u * SL, n - 1)), kvh, dv]
        mx = _warp_max(mx)
        if lane == 0:
            wmax[warp] = mx
        cuda.syncthreads()
        M = wmax[0]
        for w in range(1, NW):
            M = max(M, wmax[w])
        # phase 2: weights (each thread its own keys), their sum
        tot = float32(0.0)
        for j in range(tid, n, NT):
            e = math.exp2(p[j] - M)
            p[j] = e
            tot += e
        tot = _warp_sum(tot)
        if lane == 0:
            wsum[warp] = tot
        cuda.syncthreads()
        # phase 3: lanes over head dims
        if sl < SL:
            vn = cuda.local.array(U, float32)
            acc = float32(0.0)
            for j0 in range(sl, n, SL * U):
                nxt = j0 + SL * U
                if nxt < n:  # the next step's loads first
                    for u in range(U):
                        vn[u] = v_cache[uint32(min(nxt + u * SL, n - 1)), kvh, dv]
                for u in range(U):
                    j = j0 + u * SL
                    if j < n:
                        acc += p[j] * vv[u]
                for u in range(U):
                    vv[u] = vn[u]
            red[tid] = acc
        cuda.syncthreads()
        if tid < HS:
            L = wsum[0]
            for w in range(1, NW):
                L += wsum[w]
            o = red[tid]
            for s in range(1, SL):
                o += red[s * HS + tid]
            out[h, tid] = o / L

    return decode_short


# ---------------------------------------------------------------------------------------------
# v6: grouped-query decode for kv_mul >= 2 (Qwen2.5-0.5B: 7 query heads per kv head), one launch.
# Grid (n_splits, nkv * groups) as v4, GQA_WARPS warps per block. A tile of GQA_TILE = 32 keys of the
# chunk is loaded by all threads, coalesced, into shared memory (K rows padded to HS + 1 floats), the
# next tile's loads issued right after. Warp r owns query head h0 + r: lane j scores key j of the tile
# against q_r (shared memory, broadcast), one warp max and one warp sum update (m, l); then lanes go
# over head dims (DPL = HS / 32 each) and fold the 32 weighted V rows into o. The partials are merged
# by the last block of the row, as in v4, but one warp per head: lanes over chunks for (m, l), lanes
# over dims for o, GQA_COMBINE_UNROLL chunks' loads in flight together.
# ---------------------------------------------------------------------------------------------
GQA_TILE = 32           # keys per tile: one per lane while scoring (= SPLIT_ALIGN: chunks are whole tiles)
GQA_WARPS = 8           # warps per v6 block: one per query head of the block (R <= 8), all load tiles
GQA_MAX_SPLITS = 128    # most chunks v6's combine holds weights for (shared memory)
GQA_SPLITS = 64         # v6's default chunks per kv head, at most (fewer when the cache has fewer tiles)
GQA_MIN_TILES = 1       # v6's chunks hold at least this many tiles of a full cache
GQA_COMBINE_UNROLL = 8  # partial rows each combining lane loads before it adds
GQA_MIN_KV_MUL = 4      # decode_version picks v6 from this many query heads per kv head


@functools.cache
def _gqa_kernel(HS: int, R: int):
    """v6 for head size HS (a multiple of 32, at most 128) and R query heads per block (at most GQA_WARPS)."""
    NT, TK, KP = 32 * GQA_WARPS, GQA_TILE, HS + 1
    TILE = TK * HS                 # floats of one K (or V) tile
    PER = (TILE + NT - 1) // NT    # K (and V) floats each thread loads per tile
    DPL = HS // 32                 # head dims per lane
    MAXC, CU = GQA_MAX_SPLITS, GQA_COMBINE_UNROLL
    # shared memory: K tile [TK, KP], V tile [TK, HS], q [NW, HS], p [NW, TK], combine m/weights and l [NW, MAXC]
    KS, VS = 0, TK * KP
    QS = VS + TILE
    PS = QS + GQA_WARPS * HS
    WS = PS + GQA_WARPS * TK
    LS = WS + GQA_WARPS * MAXC
    SMEM = LS + GQA_WARPS * MAXC
    assert HS % 32 == 0 and 4 * SMEM <= SMEM_LIMIT, f"v6 decode: head size {HS}, {4 * SMEM} bytes of shared memory"
    NEG_INF = float32(-math.inf)

    @cuda.jit(device=True, inline=True)
    def fetch(flat, nkv, kvh, base, j_end, tid, regs):
        # regs[i] <- cache[base + key, kvh, d] for the tile's float f = tid + i*NT = key*HS + d, read
        # from the flat view of the cache with 32-bit index arithmetic; rows past j_end and floats
        # past the tile are clamped (loaded, never stored): no load is conditional
        last = uint32(j_end - 1)
        for i in range(PER):
            f = uint32(min(tid + i * NT, TILE - 1))
            key = f // uint32(HS)
            row = min(uint32(base) + key, last)
            regs[i] = flat[(row * nkv + kvh) * uint32(HS) + f - key * uint32(HS)]

    @cuda.jit(device=True, inline=True)
    def score(smem, qrow, krow):
        # q . k over the HS dims in shared memory, in four independent sums (their loads overlap)
        s0 = s1 = s2 = s3 = float32(0.0)
        for d in range(0, HS, 4):
            s0 += smem[qrow + uint32(d)] * smem[krow + uint32(d)]
            s1 += smem[qrow + uint32(d + 1)] * smem[krow + uint32(d + 1)]
            s2 += smem[qrow + uint32(d + 2)] * smem[krow + uint32(d + 2)]
            s3 += smem[qrow + uint32(d + 3)] * smem[krow + uint32(d + 3)]
        return (s0 + s1) + (s2 + s3)

    @cuda.jit(device=True, inline=True)
    def fold_v(smem, prow, vcol, alpha, o):
        # o[i] <- alpha o[i] + sum_k p_k V[k, lane + 32 i] over the tile's TK keys, even and odd keys in
        # two sums (two load chains in flight)
        for i in range(DPL):
            a = o[i] * alpha
            b = float32(0.0)
            for k in range(0, TK, 2):
                a += smem[prow + uint32(k)] * smem[vcol + uint32(k * HS + 32 * i)]
                b += smem[prow + uint32(k + 1)] * smem[vcol + uint32((k + 1) * HS + 32 * i)]
            o[i] = a + b

    @cuda.jit(device=True, inline=True)
    def store(regs, smem, at, pitch, tid):
        for i in range(PER):
            f = tid + i * NT
            if f < TILE:
                key = f // HS
                smem[at + key * pitch + f - key * HS] = regs[i]

    @cuda.jit(device=True, inline=True)
    def fresh_rows(kreg, vreg, tid, base, p, kvh, k_new, v_new, k_cache, v_cache, ts, fscale, ff, has_ff,
                   attn, half, neox):
        # v7: the tile's rows from p on (row p, and the rows past the context that fetch clamped to it)
        # take the new token's key, rotated here, and value; the threads holding row p also write it
        # into the caches (in place of rope_qk_append)
        for i in range(PER):
            f = tid + i * NT
            key = f // HS
            if f < TILE and base + key >= p:
                d = f - key * HS
                kv = rope_element(k_new[kvh], d, p, ts, fscale, ff, has_ff, attn, half, neox)
                vv = v_new[kvh, d]
                kreg[i] = kv
                vreg[i] = vv
                if base + key == p:
                    k_cache[p, kvh, d] = kv
                    v_cache[p, kvh, d] = vv

    @cuda.jit(cache=JIT_CACHE)
    def decode_gqa(q, k_cache, v_cache, k_flat, v_flat, seq_len, ws_m, ws_l, ws_acc, count, out,
                   fuse, k_new, v_new, pos, ts, fscale, ff, has_ff, attn, half, neox):
        # grid (n_splits, nkv * groups), NT threads. q, out: [nh, hs]; caches: [S_max, nkv, hs] (k_flat,
        # v_flat: the same bytes as flat [S_max nkv hs] views, which the tile loads read);
        # ws_m, ws_l: [nh, n_splits] (m in base 2); ws_acc: [nh, n_splits, hs]; count: int32 [>= grid y].
        # fuse (v7): q is rotated at position pos[0] while it is staged, and the new token's key and value
        # (k_new, v_new [nkv, hs]; the key rotated here) fill cache row pos[0] = seq_len[0] - 1; the
        # rotation's constants are rope._args'. Without fuse those arguments are stand-ins, never read.
        ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
        ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
        n = seq_len[0]
        row, kv_head, h0, rows, j_begin, j_end, n_used = _one_launch_block(q.shape[0], k_cache.shape[1], n, R)
        if j_begin >= n:
            return  # past the end of the context: this chunk does not exist at this length
        split = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        warp = tid // 32
        lane = tid - warp * 32
        h = h0 + min(warp, rows - 1)  # this warp's head; spare warps repeat the last one and write nothing
        smem = cuda.shared.array(SMEM, float32)
        last = cuda.shared.array(1, int32)
        kreg = cuda.local.array(PER, float32)
        vreg = cuda.local.array(PER, float32)
        kvh = uint32(kv_head)
        nkv = uint32(k_cache.shape[1])
        fetch(k_flat, nkv, kvh, j_begin, j_end, tid, kreg)  # the first tile's loads fly while q is staged
        fetch(v_flat, nkv, kvh, j_begin, j_end, tid, vreg)
        scale = float32(LOG2E / math.sqrt(HS))  # scores in base 2: e^a = 2^{a log2 e}
        qrow = QS + warp * HS
        p_new = pos[0]
        for i in range(DPL):
            d = lane + 32 * i
            qd = rope_element(q[h], d, p_new, ts, fscale, ff, has_ff, attn, half, neox) if fuse else q[h, d]
            smem[qrow + d] = qd * scale
        m = NEG_INF
        l = float32(0.0)
        o = cuda.local.array(DPL, float32)
        for i in range(DPL):
            o[i] = 0.0
        krow = uint32(KS + lane * KP)
        prow = uint32(PS + warp * TK)
        vcol = uint32(VS + lane)
        qrow = uint32(qrow)
        for base in range(j_begin, j_end, TK):
            if fuse and base + TK > p_new:  # the tile holding the new token's row
                fresh_rows(kreg, vreg, tid, base, p_new, kvh, k_new, v_new, k_cache, v_cache, ts, fscale, ff,
                           has_ff, attn, half, neox)
            store(kreg, smem, KS, KP, tid)
            store(vreg, smem, VS, HS, tid)
            cuda.syncthreads()
            if base + TK < j_end:  # the next tile's loads fly during this one
                fetch(k_flat, nkv, kvh, base + TK, j_end, tid, kreg)
                fetch(v_flat, nkv, kvh, base + TK, j_end, tid, vreg)
            s = score(smem, qrow, krow)  # q broadcast, K rows at pitch HS + 1: every lane its own bank
            if base + lane >= j_end:
                s = NEG_INF
            m_new = max(m, _warp_max(s))  # finite: key `base` is in the chunk
            alpha = math.exp2(m - m_new)     # 2^{-inf} = 0 before the first tile
            p = math.exp2(s - m_new)
            l = l * alpha + _warp_sum(p)
            m = m_new
            smem[prow + lane] = p
            cuda.syncwarp()
            fold_v(smem, prow, vcol, alpha, o)
            cuda.syncthreads()  # the tiles and p are read before the next tile overwrites them
        if warp < rows:
            if n_used == 1:
                for i in range(DPL):
                    out[h, lane + 32 * i] = o[i] / l  # the only chunk: no combine
            else:
                for i in range(DPL):
                    ws_acc[h, split, lane + 32 * i] = o[i]
                if lane == 0:
                    ws_m[h, split] = m
                    ws_l[h, split] = l
        if n_used == 1:
            return
        if not _last_to_finish(count, row, n_used, last):
            return  # the last of the n_used blocks of this row merges them all
        # (m, l) of other blocks' rows may share a sector with rows this SM read before they were final:
        # read them with an atomic add of 0 (in L2, never from L1); the acc rows are whole sectors (HS % 32 == 0)
        wrow, lrow = WS + warp * MAXC, LS + warp * MAXC
        mx = NEG_INF
        for c in range(lane, n_used, 32):
            mc = cuda.atomic.add(ws_m, (h, c), float32(0.0))
            smem[wrow + c] = mc
            smem[lrow + c] = cuda.atomic.add(ws_l, (h, c), float32(0.0))
            mx = max(mx, mc)
        mx = _warp_max(mx)
        tot = float32(0.0)
        for c in range(lane, n_used, 32):
            w = math.exp2(smem[wrow + c] - mx)  # every used chunk saw a key: m_c finite
            smem[wrow + c] = w
            tot += w * smem[lrow + c]
        tot = _warp_sum(tot)
        cuda.syncwarp()
        for i in range(DPL):
            o[i] = 0.0
        for c0 in range(0, n_used, CU):
            for u in range(CU):  # unconditional loads (clamped rows, zero weight): all in flight together
                c = c0 + u
                cc = uint32(min(c, n_used - 1))
                w = smem[wrow + cc] if c < n_used else float32(0.0)
                for i in range(DPL):
                    o[i] += w * ws_acc[h, cc, lane + 32 * i]
        if warp < rows:
            for i in range(DPL):
                out[h, lane + 32 * i] = o[i] / tot
        if tid == 0:
            count[row] = 0  # the next launch (graph replay) starts from zero

    return decode_gqa


def gqa_n_splits(s_max: int) -> int:
    """v6's chunks per kv head: one per GQA_TILE positions of a full cache, at most GQA_SPLITS (a long
    cache gets chunks of several tiles). Depends on S_max only: the launch can be captured and replayed."""
    return max(1, min(-(-s_max // (GQA_TILE * GQA_MIN_TILES)), GQA_SPLITS))


def gqa_supported(hs: int) -> bool:
    return hs % 32 == 0 and 4 * (GQA_TILE * (2 * hs + 1) + GQA_WARPS * (hs + GQA_TILE + 2 * GQA_MAX_SPLITS)) <= SMEM_LIMIT


def launch_decode_gqa(q, k_cache, v_cache, seq_len, workspace, out, stream=0, k_new=None, v_new=None,
                      rope_args=None):
    """v6: grouped-query flash decoding in one launch (head size a multiple of 32, at most 128).
    v7 with ``rope_args`` (``rope._args``: positions first): RoPE of q and of k_new, and the append of
    k_new / v_new [1, nkv, hs] to cache row pos[0] = seq_len[0] - 1, inside the same launch."""
    nh, hs = q.shape
    nkv = k_cache.shape[1]
    kv_mul = nh // nkv
    if not gqa_supported(hs) or workspace.n_splits > GQA_MAX_SPLITS:
        raise ValueError(f"attention v6: head size {hs}, n_splits={workspace.n_splits}: want a head size that is "
                         f"a multiple of 32 up to 128 and at most {GQA_MAX_SPLITS} splits")
    rows = min(kv_mul, GQA_WARPS)
    groups = (kv_mul + rows - 1) // rows  # blocks per kv head when kv_mul > GQA_WARPS
    grid = (workspace.n_splits, nkv * groups)  # x: chunks of positions, y: (kv head, head group)
    if rope_args is None:  # v6: the rotation's arguments are stand-ins of the right types, never read
        fuse, k_new, v_new = False, q, q
        rope_args = (seq_len, np.float32(1.0), np.float32(1.0), q.reshape(nh * hs), False, np.float32(1.0), 0, False)
    else:
        fuse, k_new, v_new = True, k_new.reshape(nkv, hs), v_new.reshape(nkv, hs)
    k_flat, v_flat = k_cache.reshape(k_cache.size), v_cache.reshape(v_cache.size)
    _gqa_kernel(hs, rows)[grid, 32 * GQA_WARPS, stream](q, k_cache, v_cache, k_flat, v_flat, seq_len,
                                                        workspace.m, workspace.l,
                                                        workspace.acc, workspace.count, out, fuse, k_new, v_new,
                                                        *rope_args)


@cuda.jit(cache=JIT_CACHE)
def kv_append_kernel(k, v, k_cache, v_cache, pos):
    # one thread per element of k: [T, nkv, hs] -> cache rows pos[0] .. pos[0] + T - 1
    ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
    ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
    T, nkv, hs = k.shape
    i = cuda.grid(1)
    if i < T * nkv * hs:
        t = i // (nkv * hs)
        g = (i // hs) % nkv
        d = i % hs
        k_cache[pos[0] + t, g, d] = k[t, g, d]
        v_cache[pos[0] + t, g, d] = v[t, g, d]


# ---------------------------------------------------------------------------------------------
# v8: flash prefill. Built per (HS, QW, KW, TN) by a factory (compile-time tiles and layouts).
#
# Block = (tile of BQ = 16 QW queries, query head); NW = QW KW warps. Warp (qs, ks) owns query strip qs
# (16 queries) and key slice ks (KS = 8 TN keys) of every staged tile of BK = KW KS keys; its lanes form
# 4 row groups x 8 key columns (lane = 8 ry + kx). Per tile, in registers:
#   S = Q K^T    lane micro-tile: rows 4 ry + i (i < 4) x keys kx + 8 j (j < TN)
#   online softmax per row: max over the lane's TN keys, then over the 8 lanes of the row (3 xor shuffles)
#   O += P V     lane micro-tile: rows 4 ry + i x dims kx + 8 c (c < HS / 8); P goes through a warp-private
#                shared tile (the lane holding a score is not the lane that needs it for V)
# At the end the KW warps of a strip merge their (m, l, O) through shared memory.
#
# Per staged tile (two barriers): store the prefetched K tile; barrier; issue this tile's V loads; scores,
# softmax, P; store V; issue the next tile's K loads; barrier; O += P V. K's registers are live during P V
# and V's during the scores, never together. Causal schedule: the block walks key tiles 0 .. its last query's
# position; a warp whose strip ends before its key slice skips both products (it still takes part in the
# staging, the barriers and the shuffles, with its scores at -inf); the mask is applied per score but only
# bites on the slices that cross the diagonal. Rows past T repeat the last query (never written).
#
# Costs (hs 64 with (QW, KW, TN) = (2, 2, 2): BQ 32 queries, BK 32 keys, 128 threads; hs 64's default became
# (1, 4, 1) after the H200 sweep, see FLASH_TILES):
# - Shared memory 29 KB (Q [32, 65], K [32, 65], V [32, 64], P 4 x [16, 17]); hs 96: 41.5 KB; hs 128 with one
#   strip (1, 2, 2): 43 KB. Bank conflicts: at one d a warp reads 4 Q rows (broadcast over 8 lanes each) and
#   8 K rows at pitch hs + 1 (distinct banks); V reads are 8 consecutive floats, P reads 4 consecutive floats
#   (pitch 17); staging writes 32 consecutive floats. P writes are at most 2-way (pitch 17).
# - Instructions (PTX of an offline sm_90 build): the scores' loop is 125 instructions per 8 dims
#   (48 LDS + 64 FMA, every load base + immediate), P V 53 per key (12 LDS + 32 FMA); the softmax ~300 per tile.
#   Shared loads per FMA: 3/4 (scores), 3/8 (P V), so ~1 LDS per 1.8 FMA: the MIO pipe (1 warp-LDS per clock
#   per SM) caps a fully busy SM at ~45% of its FMA peak, far above what Qwen2.5-0.5B's 0.5 GFLOP needs.
# - Registers: 160 unbounded, 128 with launch bounds (128 threads, 4 blocks per SM) and no spill: 16 warps
#   per SM (hs 96: 168 registers, 3 blocks; hs 128: 255 registers, 64 threads, 4 blocks).
# - Grid (nh, ceil(T / BQ)): Qwen2.5-0.5B at T 512: 14 x 16 = 224 blocks, all resident at once (132 SMs x 4),
#   the 14 longest (16 key tiles) started first on SMs of their own; Phi-3-mini: 32 x 16 = 512 blocks.
#   The critical path is the last query tile: 16 tiles x ~2300 instructions per warp, each key tile's work
#   split over 2 warps per strip.
# ---------------------------------------------------------------------------------------------
FLASH_STRIP = 16        # queries per warp: 4 row groups of 4 rows
FLASH_TILES = {32: (2, 2, 2), 64: (1, 4, 1), 96: (2, 2, 2), 128: (1, 2, 2)}  # hs -> (QW, KW, TN)
# hs 64: (1, 4, 1) measured 49 us against (2, 2, 2)'s 61 at Qwen2.5-0.5B's T = 512 on the H200 (hs 96: 97 vs 107-140)
# ptxas launch bounds (threads, blocks per SM): 65536 / (128 * 4) = 128 registers, no spill at hs 64 (160 unbounded)
FLASH_BLOCKS_PER_SM = {32: 4, 64: 4}


def flash_smem_floats(hs: int, qw: int, kw: int, tn: int) -> int:
    """v8's shared memory in floats: Q [BQ, hs+1], K [BK, hs+1], V [BK, hs], P [NW, KS, 17]."""
    bq, ks = FLASH_STRIP * qw, 8 * tn
    bk = kw * ks
    return bq * (hs + 1) + bk * (hs + 1) + bk * hs + qw * kw * ks * (FLASH_STRIP + 1)


def flash_supported(hs: int, tiles=None) -> bool:
    """v8 serves the head sizes of its tile table (multiples of 32: a tile row is staged in 32-float chunks)."""
    qw, kw, tn = tiles or FLASH_TILES.get(hs, (0, 0, 0))
    return (qw > 0 and hs % 32 == 0 and (8 * tn * kw) % (qw * kw) == 0
            and 4 * flash_smem_floats(hs, qw, kw, tn) <= SMEM_LIMIT)


@cuda.jit(device=True, inline=True)
def _row_max8(v):
    """max over the 8 lanes of a row group (lanes 8 ry .. 8 ry + 7); every lane gets it."""
    v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, 1))
    v = max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, 2))
    return max(v, cuda.shfl_xor_sync(0xFFFFFFFF, v, 4))


@cuda.jit(device=True, inline=True)
def _row_sum8(v):
    """sum over the 8 lanes of a row group; every lane gets it."""
    v += cuda.shfl_xor_sync(0xFFFFFFFF, v, 1)
    v += cuda.shfl_xor_sync(0xFFFFFFFF, v, 2)
    return v + cuda.shfl_xor_sync(0xFFFFFFFF, v, 4)


def _flash_jit_options(hs: int, nt: int) -> dict:
    """cuda.jit options of v8: launch bounds where FLASH_BLOCKS_PER_SM asks (the simulator's jit takes none)."""
    blocks = FLASH_BLOCKS_PER_SM.get(hs)
    bounds = None if config.ENABLE_CUDASIM or blocks is None else (nt, blocks)
    return {"cache": JIT_CACHE, **({"launch_bounds": bounds} if bounds else {})}


@functools.cache
def _flash_kernel(HS: int, QW: int, KW: int, TN: int, OUT16: int = 0):
    """v8 for head size HS: QW query strips x KW key slices of TN * 8 keys (the tile table: FLASH_TILES).
    ``OUT16``: out is uint32 and gets the W_o product's x16 instead of float32 (``matmul.OUT_PAIRS``: float16 pairs,
    ``matmul.OUT_TILES``: in v23's tile order), the same values rounded by cvt.rn as ``launch_pack_f16``'s: the
    finished rows go through shared memory, then a thread per pair packs and stores."""
    NW = QW * KW
    NT = 32 * NW
    BQ = FLASH_STRIP * QW          # queries per block
    KS = 8 * TN                    # keys per warp per tile
    BK = KW * KS                   # keys per staged tile
    DT = HS // 8                   # head dims per lane of O
    NS, NO = 4 * TN, 4 * DT        # scores, accumulators per lane
    QP = HS + 1                    # Q and K rows padded: the 4 (8) rows a warp reads at one d hit distinct banks
    PP = FLASH_STRIP + 1           # P stored key-major [KS, 16 rows], padded
    DU = 8                         # head dims per unrolled step of the scores
    TILE = BK * HS                 # floats of one K (or V) tile
    CH = HS // 32                  # 32-float chunks of a row
    RPW = BK // NW                 # tile rows each warp stages
    LD = RPW * CH                  # K (or V) floats each thread stages per tile
    QSM, KSM = 0, BQ * QP          # shared layout (floats): Q, K, V, P
    VSM = KSM + BK * QP
    PSM = VSM + TILE
    SMEM = PSM + NW * KS * PP
    MO = FLASH_STRIP * HS + 2 * FLASH_STRIP  # one merge slot: o [16, HS], m [16], l [16] (in the K/V area)
    assert flash_supported(HS, (QW, KW, TN)), f"v8 prefill: {(HS, QW, KW, TN)} ({4 * SMEM} bytes of shared memory)"
    assert QW * (KW - 1) * MO <= BK * QP + TILE, "v8 prefill: the merge slots do not fit the K/V area"
    NEG_INF = float32(-math.inf)

    @cuda.jit(device=True, inline=True)
    def fetch(flat, row_stride, col, j0, last, warp, lane, regs):
        # regs[it*CH + c] <- cache[min(j0 + warp + it*NW, last), kv head, 32 c + lane]: warp w stages tile rows
        # w, w + NW, ..., 32 consecutive floats (128 bytes) per load; flat view, 32-bit index arithmetic
        # (row_stride = nkv*HS, col = kv_head*HS + lane); rows past `last` are clamped, loaded and never used
        for it in range(RPW):
            row = uint32(min(uint32(j0 + warp + it * NW), uint32(last)))
            at = uint32(row * row_stride) + col
            for c in range(CH):
                regs[it * CH + c] = flat[at + uint32(32 * c)]

    @cuda.jit(device=True, inline=True)
    def store(regs, smem, at, pitch):
        # smem[at + it*NW*pitch + 32 c] <- the staged floats (at: this lane's float of tile row `warp`); a warp
        # writes 32 consecutive floats: no bank conflict
        for it in range(RPW):
            for c in range(CH):
                smem[at + uint64(it * NW * pitch + 32 * c)] = regs[it * CH + c]

    @cuda.jit(device=True, inline=True)
    def scores(smem, qb, kb, s):
        # s[i*TN + j] = sum_d Q[4 ry + i, d] K[kx + 8 j, d]: per d, 4 + TN shared loads for 4 TN FMAs. The
        # inner DU dims are unrolled: every load is base + a constant (an immediate offset in the SASS)
        qv = cuda.local.array(4, float32)
        kv = cuda.local.array(TN, float32)
        for x in range(NS):
            s[x] = 0.0
        for d0 in range(0, HS, DU):
            qd = qb + uint64(d0)
            kd = kb + uint64(d0)
            dd = 0
            while dd < DU:
                for i in range(4):
                    qv[i] = smem[qd + uint64(i * QP + dd)]
                for j in range(TN):
                    kv[j] = smem[kd + uint64(8 * j * QP + dd)]
                for i in range(4):
                    for j in range(TN):
                        s[i * TN + j] += qv[i] * kv[j]
                dd += 1

    @cuda.jit(device=True, inline=True)
    def softmax_step(s, pos, key0, active, m, l, o, smem, pb):
        # mask (key > pos: -inf), then per row m' = max(m, max_j s), alpha = 2^(m - m'), p = 2^(s - m'),
        # l <- alpha l + sum_j p (the lane's own keys; the 8 lanes are summed at the end), o <- alpha o,
        # P[key, row] -> the warp's shared tile. Every lane runs it (the shuffles), active or not.
        for i in range(4):
            mx = NEG_INF
            for j in range(TN):
                x = s[i * TN + j] if active and key0 + 8 * j <= pos[i] else NEG_INF
                s[i * TN + j] = x
                mx = max(mx, x)
            m_new = max(m[i], _row_max8(mx))
            base = m_new if m_new != NEG_INF else float32(0.0)  # a row with no key yet: p = 0, not NaN
            alpha = math.exp2(m[i] - base)  # 2^(-inf) = 0 before the row's first key
            tot = float32(0.0)
            for j in range(TN):
                p = math.exp2(s[i * TN + j] - base)
                smem[pb + uint64(8 * j * PP + i)] = p
                tot += p
            l[i] = l[i] * alpha + tot
            m[i] = m_new
            for c in range(DT):
                o[i * DT + c] *= alpha

    @cuda.jit(device=True, inline=True)
    def accumulate(smem, pb, vb, o):
        # o[i*DT + c] += sum_k P[k, 4 ry + i] V[k, kx + 8 c] over the warp's KS keys: per key 4 + DT loads
        # (base + constant offsets, the bases stepped once per key), 4 DT FMAs
        pv = cuda.local.array(4, float32)
        pk = pb
        vk = vb
        k = 0
        while k < KS:
            for i in range(4):
                pv[i] = smem[pk + uint64(i)]
            for c in range(DT):
                v = smem[vk + uint64(8 * c)]
                for i in range(4):
                    o[i * DT + c] += pv[i] * v
            pk += uint64(PP)
            vk += uint64(HS)
            k += 1

    @cuda.jit(device=True, inline=True)
    def merge_strip(smem, qs, ks, ry, kx, m, l, o):
        # the KW warps of strip qs: warps ks > 0 put (m, l, o) in slot (qs, ks - 1), warp ks = 0 folds them in:
        # M = max_k m_k, o = sum_k 2^(m_k - M) o_k, l = sum_k 2^(m_k - M) l_k (m_0 is finite: key 0 is in slice 0)
        cuda.syncthreads()  # every warp is done with the K/V area
        if ks > 0:
            at = uint32(KSM + (qs * (KW - 1) + ks - 1) * MO)
            for i in range(4):
                r = ry * 4 + i
                for c in range(DT):
                    smem[at + uint32(r * HS + kx + 8 * c)] = o[i * DT + c]
                if kx == 0:
                    smem[at + uint32(FLASH_STRIP * HS + r)] = m[i]
                    smem[at + uint32(FLASH_STRIP * HS + FLASH_STRIP + r)] = l[i]
        cuda.syncthreads()
        if ks == 0:
            for i in range(4):
                r = ry * 4 + i
                mx = m[i]
                for k in range(1, KW):
                    at = uint32(KSM + (qs * (KW - 1) + k - 1) * MO)
                    mx = max(mx, smem[at + uint32(FLASH_STRIP * HS + r)])
                w = math.exp2(m[i] - mx)
                l[i] *= w
                for c in range(DT):
                    o[i * DT + c] *= w
                for k in range(1, KW):
                    at = uint32(KSM + (qs * (KW - 1) + k - 1) * MO)
                    w = math.exp2(smem[at + uint32(FLASH_STRIP * HS + r)] - mx)  # 0 for a warp that saw no key
                    l[i] += w * smem[at + uint32(FLASH_STRIP * HS + FLASH_STRIP + r)]
                    for c in range(DT):
                        o[i * DT + c] += w * smem[at + uint32(r * HS + kx + 8 * c)]

    @cuda.jit(**_flash_jit_options(HS, NT))
    def prefill_flash(q, k_flat, v_flat, T, nh, nkv, pos0, out):
        # grid (nh, ceil(T / BQ)), NT threads; block (h, y) = query head h, query tile n_tiles - 1 - y (the
        # longest first). q, out: flat [T nh HS]; k_flat, v_flat: flat views of the caches [S_max, nkv, HS];
        # pos0: device int32 [1], the first query's position (read here, so a captured launch replays anywhere).
        h = cuda.blockIdx.x
        t0 = (cuda.gridDim.y - 1 - cuda.blockIdx.y) * BQ
        T32, nh32, start = int32(T), int32(nh), int32(pos0[0])
        tid = cuda.threadIdx.x
        warp = tid // 32
        lane = tid - warp * 32
        col = uint32(h // (nh32 // int32(nkv)) * HS + lane)  # this lane's float of the kv head in a cache row
        row_stride = uint32(nkv * HS)                  # floats per cache row (position)
        qs = warp // KW                # query strip of this warp
        ks = warp - qs * KW            # key slice of this warp
        ry = lane // 8                 # row group: rows 4 ry .. 4 ry + 3 of the strip
        kx = lane - ry * 8             # key column: keys kx + 8 j of the slice, dims kx + 8 c of O
        smem = cuda.shared.array(SMEM, float32)
        kreg = cuda.local.array(LD, float32)
        vreg = cuda.local.array(LD, float32)
        last = start + min(t0 + BQ, T32) - 1             # the block's last query position: its last key
        fetch(k_flat, row_stride, col, 0, last, warp, lane, kreg)     # the first K tile flies while Q is staged
        scale = float32(LOG2E / math.sqrt(HS))           # scores in base 2: e^a = 2^(a log2 e)
        for it in range((BQ * HS + NT - 1) // NT):  # Q tile, pre-scaled; rows past T repeat the last query
            e = uint32(tid) + uint32(it * NT)
            r = e // uint32(HS)
            d = e - r * uint32(HS)
            t = uint32(min(t0 + int32(r), T32 - 1))
            if e < uint32(BQ * HS):
                smem[uint32(QSM) + r * uint32(QP) + d] = q[(t * uint32(nh32) + uint32(h)) * uint32(HS) + d] * scale
        row0 = t0 + qs * FLASH_STRIP + ry * 4            # this lane's first query
        pos = cuda.local.array(4, int32)
        m = cuda.local.array(4, float32)
        l = cuda.local.array(4, float32)
        o = cuda.local.array(NO, float32)
        s = cuda.local.array(NS, float32)
        for i in range(4):
            pos[i] = start + min(row0 + i, T32 - 1)
            m[i] = NEG_INF
            l[i] = 0.0
        for x in range(NO):
            o[x] = 0.0
        warp_last = start + min(t0 + qs * FLASH_STRIP + FLASH_STRIP - 1, T32 - 1)  # the strip's last position
        # this lane's shared-memory bases, as uint64: no negative-index check, and base + constant folds
        qb = uint64(QSM + (qs * FLASH_STRIP + ry * 4) * QP)   # Q row 4 ry of the strip
        kb = uint64(KSM + (ks * KS + kx) * QP)                # K row kx of the slice
        pb = uint64(PSM + warp * KS * PP + ry * 4)            # P[0, 4 ry] of the warp's tile
        vb = uint64(VSM + ks * KS * HS + kx)                  # V[0, kx] of the slice
        pw = uint64(PSM + warp * KS * PP + kx * PP + ry * 4)  # where this lane writes its p (key kx, row 4 ry)
        ks_at = uint64(KSM + warp * QP + lane)                # where this lane stages K (tile row warp, dim lane)
        vs_at = uint64(VSM + warp * HS + lane)
        n_tiles = last // BK + 1
        for step in range(n_tiles):
            j0 = step * BK
            store(kreg, smem, ks_at, QP)
            cuda.syncthreads()                            # K tile ready; every warp is done with the last V tile
            fetch(v_flat, row_stride, col, j0, last, warp, lane, vreg)  # this tile's V flies during the scores
            key0 = j0 + ks * KS + kx
            active = j0 + ks * KS <= warp_last           # causal skip: the slice holds a key this strip sees
            if active:
                scores(smem, qb, kb, s)
            softmax_step(s, pos, key0, active, m, l, o, smem, pw)
            store(vreg, smem, vs_at, HS)
            if step + 1 < n_tiles:                        # the next K tile flies during P V
                fetch(k_flat, row_stride, col, j0 + BK, last, warp, lane, kreg)
            cuda.syncthreads()                            # V tile and P ready; every warp is done with K
            if active:
                accumulate(smem, pb, vb, o)
        for i in range(4):
            l[i] = _row_sum8(l[i])
        if KW > 1:
            merge_strip(smem, qs, ks, ry, kx, m, l, o)
        if OUT16:                                        # float16 pairs: the rows through shared memory (the
            cuda.syncthreads()                           # Q tile's place, free now), then a thread per pair
            if ks == 0:
                for i in range(4):
                    at = uint32(QSM + (qs * FLASH_STRIP + ry * 4 + i) * HS + kx)
                    for c in range(DT):
                        smem[at + uint32(8 * c)] = o[i * DT + c] / l[i]
            cuda.syncthreads()
            hk = uint32(nh32 * HS // 2)                  # pairs per token row
            for e in range(tid, BQ * HS // 2, NT):
                r = e // (HS // 2)
                t = t0 + r
                if t < T32:
                    f = uint32(((t * nh32 + h) * HS) // 2 + e - r * (HS // 2))
                    out[_x16_word(f, hk, 2 * hk if OUT16 == 2 else 0)] = ptx.pack_f16x2(
                        smem[uint32(QSM + 2 * e)], smem[uint32(QSM + 2 * e + 1)])
        elif ks == 0:
            for i in range(4):
                t = row0 + i
                if t < T32:
                    at = uint32((t * nh32 + h) * HS + kx)
                    for c in range(DT):
                        out[at + uint32(8 * c)] = o[i * DT + c] / l[i]

    return prefill_flash


# =============================================================================================
# v9: flash prefill on the tensor cores (twenty-third session; opt-in, LLAMA_BETA_PREFILL_ATTN_MMA=1, not yet
# timed). v8 runs both products on the CUDA cores in float32 (97 us a layer for Phi-3-mini at 512 tokens,
# about 17 TFLOP/s). v9 runs them as mma.sync.m16n8k16 (``ptx.mma_f16``) with float16 operands and float32
# sums, the online softmax in float32 between them, as llama.cpp's flash attention does (float16 K and V).
#
# A block of 4 warps owns 64 queries of one head (a warp 16: an m16 tile); per tile of 64 keys it stages
# K as float16 pairs [key, HS / 2] (the B operand of S = Q K^T: a key's dims, k contiguous) and V transposed,
# [HS, 32 key pairs] (the B operand of O += P V: for one dim, pairs of consecutive keys), rows padded by 4
# words so the fragment loads of a warp hit 32 banks. Q's fragments stay in registers for the whole walk
# (pre-scaled by log2(e) / sqrt(HS), so that the softmax is in base 2 as v8's). S's accumulators become P's A
# operands without moving: lane (g, t) holds S[g, 2t..2t+1] and S[g + 8, ..] of each n8 group of keys, which
# are exactly a0/a1 (keys of the even group) and a2/a3 (the odd group) of the next mma's k16 slice. Row max and
# sum over the 4 lanes of a row by two xor shuffles. The output: lane (g, t) holds dims 2t, 2t + 1 of each n8
# group: a float16 pair as it is (``OUT16``), or two floats.
#
# Numerics: q, k, v and p rounded to float16 (11 bits), products exact, sums in float32: against the float32
# reference about 1e-3 of max |v| (tests/test_attention.py bounds it); not bit for bit v8.
# =============================================================================================
PREFILL_ATTN_MMA = os.environ.get("LLAMA_BETA_PREFILL_ATTN_MMA", "0") == "1"
MMA_ATT_QUERIES = 64                 # queries per block (4 warps of 16)
MMA_ATT_KEYS = 64                    # keys per staged tile


def flash_mma_supported(hs: int) -> bool:
    """v9 needs whole k16 slices of the head (hs a multiple of 16, at most 128: registers) and mma.sync."""
    return hs % 16 == 0 and 16 <= hs <= 128 and (config.ENABLE_CUDASIM or cuda.is_available())


@functools.cache
def _flash_mma_kernel(HS: int, OUT16: int = 0):
    """v9 for head size HS (see the section comment); ``OUT16`` as v8's."""
    BQ, BK, NT = MMA_ATT_QUERIES, MMA_ATT_KEYS, 128
    SL, NG, KG = HS // 16, HS // 8, BK // 8    # k16 slices of a head, n8 groups of O's dims, n8 groups of keys
    KS = HS // 2 + 4                     # words per K row in shared memory (4 mod 32: conflict-free lanes)
    VS = BK // 2 + 4                     # words per V^T row (one dim, BK / 2 key pairs)
    KW, VW = BK * KS, HS * VS            # words of the K and V^T tiles
    SMW = KW + VW
    QF, SN, ON = 4 * SL, 4 * KG, 4 * NG  # registers: Q fragments, S (then P), O accumulators

    @cuda.jit(device=True, inline=True)
    def stage(k_flat, v_flat, row_stride, kv_col, j0, last, sm):
        # keys j0 .. j0 + BK - 1 (past ``last``: its row again, masked later) into K [BK, HS/2] and V^T [HS, BK/2]
        tid = cuda.threadIdx.x
        for e in range(tid, BK * HS // 2, NT):
            key, p = e // (HS // 2), e % (HS // 2)
            at = uint32(min(j0 + key, last)) * row_stride + kv_col + uint32(2 * p)
            sm[uint32(key * KS + p)] = ptx.pack_f16x2(k_flat[at], k_flat[at + uint32(1)])
        for e in range(tid, BK // 2 * HS, NT):
            kp, d = e // HS, e % HS
            at = uint32(min(j0 + 2 * kp, last)) * row_stride + kv_col + uint32(d)
            at2 = uint32(min(j0 + 2 * kp + 1, last)) * row_stride + kv_col + uint32(d)
            sm[uint32(KW + d * VS + kp)] = ptx.pack_f16x2(v_flat[at], v_flat[at2])

    @cuda.jit(**({} if config.ENABLE_CUDASIM else {"cache": JIT_CACHE, "launch_bounds": (NT, 2)}))
    def prefill_flash_mma(q, k_flat, v_flat, T, nh, nkv, pos0, out):
        # grid (nh, ceil(T / BQ)), 128 threads; block (h, y): head h, query tile n_tiles - 1 - y (longest first)
        h = cuda.blockIdx.x
        t0 = (cuda.gridDim.y - 1 - cuda.blockIdx.y) * BQ
        T32, start = int32(T), int32(pos0[0])
        warp, lane = cuda.threadIdx.x // 32, cuda.threadIdx.x % 32
        g, t = lane // 4, lane % 4
        row_stride = uint32(nkv * HS)
        kv_col = uint32(h // (nh // nkv) * HS)
        sm = cuda.shared.array(SMW, uint32)
        qf = cuda.local.array(QF, uint32)
        s = cuda.local.array(SN, float32)
        o = cuda.local.array(ON, float32)
        m = cuda.local.array(2, float32)
        l = cuda.local.array(2, float32)
        scale = float32(LOG2E / math.sqrt(HS))
        r0 = t0 + warp * 16 + g                              # this lane's query rows: r0, r0 + 8
        qpos = cuda.local.array(2, int32)
        for hh in range(2):
            tq = min(r0 + 8 * hh, T32 - 1)                   # rows past T repeat the last (never stored)
            qpos[hh] = start + tq
            m[hh], l[hh] = float32(-math.inf), float32(0.0)
            base = (uint32(tq) * uint32(nh) + uint32(h)) * uint32(HS)
            for sl in range(SL):                             # a0/a1 (hh): dims 16 sl + 2t; a2/a3: + 8
                d = uint32(16 * sl + 2 * t)
                qf[4 * sl + hh] = ptx.pack_f16x2(q[base + d] * scale, q[base + d + uint32(1)] * scale)
                qf[4 * sl + 2 + hh] = ptx.pack_f16x2(q[base + d + uint32(8)] * scale, q[base + d + uint32(9)] * scale)
        for x in range(ON):
            o[x] = float32(0.0)
        last = start + min(t0 + BQ, T32) - 1                 # the block's last query position: its last key
        for j0 in range(0, last + 1, BK):
            cuda.syncthreads()                               # every warp is done with the previous tile
            stage(k_flat, v_flat, row_stride, kv_col, j0, last, sm)
            cuda.syncthreads()
            for kg in range(KG):                             # S = Q K^T, key group kg: keys j0 + 8 kg + 2t (+1)
                s[4 * kg], s[4 * kg + 1], s[4 * kg + 2], s[4 * kg + 3] = float32(0.0), float32(0.0), \
                    float32(0.0), float32(0.0)
                kr = uint32((8 * kg + g) * KS + t)
                for sl in range(SL):
                    s[4 * kg], s[4 * kg + 1], s[4 * kg + 2], s[4 * kg + 3] = ptx.mma_f16(
                        qf[4 * sl], qf[4 * sl + 1], qf[4 * sl + 2], qf[4 * sl + 3], sm[kr + uint32(8 * sl)],
                        sm[kr + uint32(8 * sl + 4)], s[4 * kg], s[4 * kg + 1], s[4 * kg + 2], s[4 * kg + 3])
            for hh in range(2):                              # online softmax of rows g (hh 0) and g + 8 (hh 1)
                mx = m[hh]
                for kg in range(KG):
                    for c in range(2):
                        if j0 + 8 * kg + 2 * t + c > qpos[hh]:  # causal mask (and the keys past the last)
                            s[4 * kg + 2 * hh + c] = float32(-math.inf)
                        mx = max(mx, s[4 * kg + 2 * hh + c])
                mx = max(mx, cuda.shfl_xor_sync(0xFFFFFFFF, mx, 1))
                mx = max(mx, cuda.shfl_xor_sync(0xFFFFFFFF, mx, 2))
                alpha = math.exp2(m[hh] - mx)                # 0 on the first tile (m = -inf; mx is finite: key 0)
                m[hh] = mx
                l[hh] *= alpha
                for x in range(NG):
                    o[4 * x + 2 * hh] *= alpha
                    o[4 * x + 2 * hh + 1] *= alpha
                for kg in range(KG):
                    for c in range(2):
                        p = math.exp2(s[4 * kg + 2 * hh + c] - mx)
                        s[4 * kg + 2 * hh + c] = p
                        l[hh] += p
            for kk in range(KG // 2):                        # O += P V over k16 slices of keys (groups 2kk, 2kk+1)
                a0 = ptx.pack_f16x2(s[8 * kk], s[8 * kk + 1])
                a1 = ptx.pack_f16x2(s[8 * kk + 2], s[8 * kk + 3])
                a2 = ptx.pack_f16x2(s[8 * kk + 4], s[8 * kk + 5])
                a3 = ptx.pack_f16x2(s[8 * kk + 6], s[8 * kk + 7])
                for x in range(NG):
                    vr = uint32(KW + (8 * x + g) * VS + 8 * kk + t)
                    o[4 * x], o[4 * x + 1], o[4 * x + 2], o[4 * x + 3] = ptx.mma_f16(
                        a0, a1, a2, a3, sm[vr], sm[vr + uint32(4)], o[4 * x], o[4 * x + 1], o[4 * x + 2], o[4 * x + 3])
        if OUT16:                                            # pairs through shared memory (the tiles' place):
            cuda.syncthreads()                               # the block's rows [BQ, HS / 2] as float16 pairs,
        for hh in range(2):                                  # then a thread per pair to its place in x16
            tot = l[hh]
            tot += cuda.shfl_xor_sync(0xFFFFFFFF, tot, 1)
            tot += cuda.shfl_xor_sync(0xFFFFFFFF, tot, 2)
            tq = r0 + 8 * hh
            base = (uint32(tq) * uint32(nh) + uint32(h)) * uint32(HS)
            for x in range(NG):                              # lane (g, t): dims 8x + 2t, + 1 of its two rows
                y0, y1 = o[4 * x + 2 * hh] / tot, o[4 * x + 2 * hh + 1] / tot
                if OUT16:
                    sm[uint32((warp * 16 + g + 8 * hh) * (HS // 2) + 4 * x + t)] = ptx.pack_f16x2(y0, y1)
                elif tq < T32:
                    d = uint32(8 * x + 2 * t)
                    out[base + d], out[base + d + uint32(1)] = y0, y1
        if OUT16:
            cuda.syncthreads()
            hk = int32(nh * HS // 2)                         # pairs per token row
            for e in range(cuda.threadIdx.x, BQ * HS // 2, NT):
                r = e // (HS // 2)
                if t0 + r < T32:
                    f = int32(((t0 + r) * nh + h) * (HS // 2) + e - r * (HS // 2))
                    out[_x16_word(f, hk, 2 * hk if OUT16 == 2 else 0)] = sm[e]

    return prefill_flash_mma


def launch_prefill_flash_mma(q, k_cache, v_cache, pos, out, stream=0, out16=0):
    """v9: causal flash prefill on the tensor cores; arguments as ``launch_prefill_flash`` (v8)."""
    T, nh, hs = q.shape
    nkv = k_cache.shape[1]
    if not flash_mma_supported(hs):
        raise ValueError(f"attention v9: head size {hs} is not a multiple of 16 up to 128")
    if T == 0:
        return
    grid = (nh, -(-T // MMA_ATT_QUERIES))          # as v8's: the head, then the query tile longest first
    _flash_mma_kernel(hs, int(out16))[grid, 128, stream](
        q.reshape(q.size), k_cache.reshape(k_cache.size), v_cache.reshape(v_cache.size), T, nh, nkv,
        pos, out.reshape(out.size))


# ---------------------------------------------------------------------------------------------
# launch helpers: the grid arithmetic, spelled out
# ---------------------------------------------------------------------------------------------
def prefill_tiles(hs: int) -> tuple[int, int]:
    """(BQ, BK) for the prefill kernel: 16 queries x 32 keys up to hs=128, 8 x 16 beyond (shared memory)."""
    return (16, 32) if hs <= 128 else (8, 16)


def decode_tiles(hs: int, kv_mul: int) -> tuple[int, int]:
    """(R, BK) for the decode kernel: R = query heads per block (a power of two covering kv_mul, at most 8),
    BK = 16 keys per tile (on the H200, 16 beat 32 and 64 for both Qwen2.5 and Phi-3 shapes)."""
    rows = 1
    while rows < min(kv_mul, 8):
        rows *= 2
    return rows, 16


def default_n_splits_v3(s_max: int, nkv: int, kv_mul: int = 1) -> int:
    """v3's chunks per kv head: about 1024 blocks in all and at most 128 chunks (the best measured on the
    H200 for v3 at Qwen2.5 and Phi-3 shapes), no chunk of a full cache shorter than SPLIT_ALIGN positions."""
    rows, _ = decode_tiles(1, kv_mul)
    blocks_per_split = nkv * ((kv_mul + rows - 1) // rows)
    by_length = max(1, -(-s_max // SPLIT_ALIGN))
    return max(1, min(by_length, 128, 1024 // blocks_per_split))


FUSED_TARGET_BLOCKS = 256  # v4: about this many blocks in all (one wave at Phi-3's 2 blocks per SM) ...
FUSED_COMBINE_ROWS = 512   # ... but at most this many partial rows (chunks x heads) for the last block to merge


def default_n_splits(s_max: int, nkv: int, kv_mul: int = 1) -> int:
    """Chunks per kv head for the default decode (v4): a power of two, about FUSED_TARGET_BLOCKS blocks in
    all, at most FUSED_COMBINE_ROWS partials (chunks x query heads) for the combining block to read, and
    no more chunks than a full cache has runs of SPLIT_ALIGN positions (Qwen2.5-0.5B: 64, Phi-3-mini: 8
    at S_max >= 4096). Depends on S_max only, never on seq_len, so the launch can be captured once and
    replayed. Measured on the H200 (ninth session, Phi-3-mini twin, 108 registers: 2 blocks of 256
    threads per SM): about 256 blocks 17.8 -> 12.9 us at a 512-token context and 37.9 -> 32.0 us at 4000
    against 512 blocks (128 blocks: 14.0 us); Qwen2.5-0.5B's splits are capped by its combine rows."""
    rows = min(kv_mul, 8)
    blocks_per_split = nkv * -(-kv_mul // rows)
    by_length = -(-s_max // SPLIT_ALIGN)
    n = max(1, min(by_length, FUSED_TARGET_BLOCKS // blocks_per_split, FUSED_COMBINE_ROWS // rows, FUSED_MAX_SPLITS))
    return 1 << (n.bit_length() - 1)


def fused_tiles(hs: int, kv_mul: int) -> tuple[int, int, int]:
    """(R, KG, U) of v4. R: query heads per block, all kv_mul heads of a kv head (at most 8). KG: lanes per
    key, the fewest of 8/16/32 that keep R * ceil(hs/KG) <= 32 (the q and accumulator registers of a
    lane; if none does, KG = 32 and R shrinks). U: keys per group per step, for about 16 K and 16 V
    floats per lane in flight (32 with the prefetch) and at most 32 partial dots.
    One query head per kv head (R = 1) takes a whole warp per key instead, U for about 12 K floats per lane:
    measured on an H100 (eighteenth session, Phi-3-mini twin at a 512-token context, per launch in the decode
    graph) (1, 32, 4) 12.1 us against 13.8 for (1, 8, 1); (1, 32, 6) 12.2, (1, 16, 2) 12.4, (1, 8, 2) 18.3.
    Qwen2.5-0.5B (hs 64, kv_mul 7): (7, 16, 4); Phi-3-mini (hs 96, kv_mul 1): (1, 32, 4)."""
    if kv_mul == 1:
        return 1, 32, max(1, 12 // -(-hs // 32))
    rows = min(kv_mul, 8)
    for kg in (8, 16, 32):
        if rows * -(-hs // kg) <= 32:
            break
    else:
        rows = max(1, 32 // -(-hs // kg))
    dpl = -(-hs // kg)
    return rows, kg, max(1, min(16 // dpl, 32 // rows))


def fused_warps(s_max: int, n_splits: int, hs: int, kv_mul: int) -> int:
    """Warps per v4 block: the fewest (a power of two, at most FUSED_MAX_WARPS) that cover a full-cache
    chunk in one step of U keys per group."""
    _, kg, u = fused_tiles(hs, kv_mul)
    per_warp = (32 // kg) * u
    cap = -(-s_max // n_splits)
    nw = 1
    while nw < FUSED_MAX_WARPS and nw * per_warp < cap:
        nw *= 2
    return nw


def launch_naive(q, k_cache, v_cache, seq_len, out, stream=0):
    T, nh, hs = q.shape
    threads = 32
    grid = ((T + threads - 1) // threads, nh)  # x: query tiles of 32 threads, y: heads
    attention_naive[grid, threads, stream](q, k_cache, v_cache, seq_len, out)


def launch_prefill(q, k_cache, v_cache, start_pos, out, stream=0):
    T, nh, hs = q.shape
    bq, bk = prefill_tiles(hs)
    prefill_tiled, _ = _tiled_kernels(hs, bq, bk)
    grid = ((T + bq - 1) // bq, nh)  # x: tiles of BQ queries, y: query heads
    prefill_tiled[grid, NT, stream](q, k_cache, v_cache, start_pos, out)


def flash_tiles(hs: int) -> tuple[int, int, int]:
    """(QW, KW, TN) of v8 for head size hs: QW query strips of 16 and KW key slices of 8 TN keys per block.
    hs 32, 96: 2 x 2 warps, BQ = 32 queries, BK = 32 keys (41.5 KB of shared memory at hs 96); hs 64: 1 x 4
    warps, BQ = 16, BK = 32 (measured faster on the H200);
    hs 128: 1 x 2 warps, BQ = 16 (43.3 KB; two strips would need 53.5 KB)."""
    if hs not in FLASH_TILES:
        raise ValueError(f"attention v8: head size {hs}, want one of {sorted(FLASH_TILES)}")
    return FLASH_TILES[hs]


def launch_prefill_flash(q, k_cache, v_cache, pos, out, stream=0, tiles=None, out16=0):
    """v8: causal flash prefill. q, out: device [T, nh, hs]; caches: device [S_max, nkv, hs]; pos: device int32
    [1], the position of q's first row (start_pos), read by the kernel; no allocation. ``out16``
    (``matmul.OUT_PAIRS`` / ``OUT_TILES``): out is a flat uint32 buffer and gets the W_o product's x16, float16
    pairs plain or in v23's tile order (``matmul.tile_words(T, nh hs)`` words)."""
    T, nh, hs = q.shape
    nkv = k_cache.shape[1]
    qw, kw, tn = tiles or flash_tiles(hs)
    if T == 0:
        return
    bq = FLASH_STRIP * qw                  # queries per block
    n_tiles = (T + bq - 1) // bq
    # grid x: the query head (the kv_mul heads of one kv head are neighbours, so their K/V reads meet in L2);
    # grid y: the rank of the query tile, longest first: block (h, y) takes tile n_tiles - 1 - y, which walks
    # the keys 0 .. start_pos + min((n_tiles - y) bq, T) - 1. Blocks start in x-then-y order, so the longest
    # tiles of every head start first and the short ones fill the SMs at the end.
    grid = (nh, n_tiles)
    _flash_kernel(hs, qw, kw, tn, int(out16))[grid, 32 * qw * kw, stream](
        q.reshape(q.size), k_cache.reshape(k_cache.size), v_cache.reshape(v_cache.size), T, nh, nkv,
        pos, out.reshape(out.size))


def launch_decode(q, k_cache, v_cache, seq_len, workspace, out, stream=0):
    nh, hs = q.shape
    kv_mul = nh // k_cache.shape[1]
    rows, bk = decode_tiles(hs, kv_mul)
    _, decode_split = _tiled_kernels(hs, rows, bk)
    groups = (kv_mul + rows - 1) // rows  # blocks per kv head when kv_mul > R
    grid = (workspace.n_splits, k_cache.shape[1] * groups)  # x: chunks of positions, y: (kv head, head group)
    decode_split[grid, NT, stream](q, k_cache, v_cache, seq_len, workspace.m, workspace.l, workspace.acc)
    decode_combine[nh, COMBINE_THREADS, stream](seq_len, workspace.m, workspace.l, workspace.acc, out)


def launch_decode_fused(q, k_cache, v_cache, seq_len, workspace, out, stream=0, n_warps=None):
    nh, hs = q.shape
    nkv = k_cache.shape[1]
    kv_mul = nh // nkv
    rows, kg, u = fused_tiles(hs, kv_mul)
    if workspace.n_splits > FUSED_MAX_SPLITS:
        raise ValueError(f"attention v4: n_splits={workspace.n_splits}, want at most {FUSED_MAX_SPLITS}")
    nw = n_warps or fused_warps(k_cache.shape[0], workspace.n_splits, hs, kv_mul)
    decode_fused = _fused_kernel(hs, rows, kg, nw, u)
    groups = (kv_mul + rows - 1) // rows  # blocks per kv head when kv_mul > R
    grid = (workspace.n_splits, nkv * groups)  # x: chunks of positions, y: (kv head, head group)
    decode_fused[grid, 32 * nw, stream](q, k_cache, v_cache, seq_len, workspace.m, workspace.l, workspace.acc,
                                        workspace.count, out)


def short_warps(s_max: int, hs: int) -> int:
    """Warps per v5 block: a power of two giving a full cache one key per thread in phase 1, at least
    4 (and hs / 32), at most SHORT_WARPS. Depends on S_max only."""
    nw = 4
    while nw < SHORT_WARPS and 32 * nw < s_max:
        nw *= 2
    return max(nw, -(-hs // 32))


def launch_decode_short(q, k_cache, v_cache, seq_len, workspace, out, stream=0, n_warps=None):
    """v5: one block per query head over the whole context; needs S_max <= SHORT_MAX_S, ignores workspace."""
    nh, hs = q.shape
    if k_cache.shape[0] > SHORT_MAX_S:
        raise ValueError(f"attention v5: S_max={k_cache.shape[0]}, want at most {SHORT_MAX_S}")
    nw = n_warps or short_warps(k_cache.shape[0], hs)
    _short_kernel(hs, nw)[nh, 32 * nw, stream](q, k_cache, v_cache, seq_len, out)


DECODE_VERSIONS = {"v3": launch_decode, "v4": launch_decode_fused, "v5": launch_decode_short,
                   "v6": launch_decode_gqa, "v7": launch_decode_gqa}  # v7 alone (no new k, v) is v6


def decode_version(s_max: int, nkv: int, kv_mul: int, hs: int) -> str:
    """attention_decode's automatic choice, from shapes only (never seq_len: a captured graph replays it).

    v6 for grouped-query heads (kv_mul >= GQA_MIN_KV_MUL, head size a multiple of 32 up to 128), else v4.
    Measured on the H200, whole Qwen2.5-0.5B decode step at a 641-position cache: v6 789 tok/s, v4 731,
    v7 757. v7 is v6 with the decode step's RoPE and KV append inside (``attention_decode_rope``, which
    the decode step calls when it gets "v7"; one launch less per layer, but every block rotates q on its
    critical path); through ``attention_decode``, which has no new key and value, it is v6.
    v5 measured slower on the H200 (the whole Qwen2.5-0.5B decode step: 525 tok/s at a 641-position cache
    against 643 with v4: one block per query head is 14 blocks for 132 SMs); USE_SHORT = True brings back
    its short-cache rule. The environment variable LLAMA_BETA_ATTENTION (v3..v6) overrides the choice,
    for benchmarks."""
    forced = os.environ.get("LLAMA_BETA_ATTENTION")
    if forced:
        if forced not in DECODE_VERSIONS:
            raise ValueError(f"LLAMA_BETA_ATTENTION={forced!r}: want one of {sorted(DECODE_VERSIONS)}")
        return forced
    if USE_SHORT and s_max <= SHORT_MAX_S:
        return "v5"
    return "v6" if USE_GQA and kv_mul >= GQA_MIN_KV_MUL and gqa_supported(hs) else "v4"


def decode_splits(version: str, s_max: int, nkv: int, kv_mul: int) -> int:
    """Chunks per kv head of a DecodeWorkspace for ``version`` (v5 uses none: 1)."""
    if version in ("v6", "v7"):
        return gqa_n_splits(s_max)
    if version == "v3":
        return default_n_splits_v3(s_max, nkv, kv_mul)
    return default_n_splits(s_max, nkv, kv_mul)


USE_SHORT = False    # v5 for caches of at most SHORT_MAX_S positions (slower on the H200 for Qwen2.5-0.5B)
USE_GQA = True       # v6 for grouped-query heads


def launch_kv_append(k, v, k_cache, v_cache, pos, stream=0):
    n = k.shape[0] * k.shape[1] * k.shape[2]
    threads = 256
    kv_append_kernel[(n + threads - 1) // threads, threads, stream](k, v, k_cache, v_cache, pos)


# ---------------------------------------------------------------------------------------------
# public functions: NumPy in -> NumPy out; device arrays in -> device arrays out
# ---------------------------------------------------------------------------------------------
class DecodeWorkspace:
    """Partial results of flash decoding, preallocated once: per query head and chunk the running
    max ``m`` [nh, n_splits], sum ``l`` [nh, n_splits] and unnormalized output ``acc`` [nh, n_splits, hs];
    for v4 also ``count`` int32 [nh]: per block row (kv head, head group) the chunks finished in the
    current launch. It starts at zero and the combining block sets it back to zero, so one workspace
    serves every replay; after a launch that did not finish (an error), call ``reset``."""

    def __init__(self, nh: int, hs: int, n_splits: int, stream=0):
        if not 1 <= n_splits <= MAX_SPLITS:
            raise ValueError(f"DecodeWorkspace: n_splits={n_splits}, want 1..{MAX_SPLITS}")
        self.n_splits = n_splits
        self.m = cuda.device_array((nh, n_splits), dtype=np.float32)
        self.l = cuda.device_array((nh, n_splits), dtype=np.float32)
        self.acc = cuda.device_array((nh, n_splits, hs), dtype=np.float32)
        self.count = cuda.to_device(np.zeros(nh, np.int32), stream=stream)

    def reset(self, stream=0) -> None:
        """Zero the v4 chunk counters."""
        self.count.copy_to_device(np.zeros(self.count.shape[0], np.int32), stream=stream)


def _device(x, dtype=np.float32, stream=0):
    """(device array, came_from_host) for a NumPy or device array."""
    if _is_device(x):
        return x, False
    return cuda.to_device(np.ascontiguousarray(x, dtype=dtype), stream=stream), True


def _heads(q) -> tuple[int, int]:
    """(nh, hs) of q [nh, hs] or [T, nh, hs] (the simulator's shapes take no negative index)."""
    return tuple(q.shape)[-2:]


def _check(q, k_cache, v_cache):
    nh, hs = _heads(q)
    S, nkv, hs_k = k_cache.shape
    if tuple(v_cache.shape) != (S, nkv, hs_k) or hs_k != hs or nh % nkv != 0 or hs > MAX_HS:
        raise ValueError(f"attention: q heads/size ({nh}, {hs}) vs caches {tuple(k_cache.shape)}, "
                         f"{tuple(v_cache.shape)}: want caches [S, nkv, hs] with nh % nkv == 0 and hs <= {MAX_HS}")


def kv_append(k, v, k_cache, v_cache, pos, stream=0):
    """Write k, v [T, nkv, hs] into cache rows pos[0] .. pos[0]+T-1 (pos: device int32 [1]); caches on the device."""
    k_d, _ = _device(k, stream=stream)
    v_d, _ = _device(v, stream=stream)
    pos_d, _ = _device(pos, dtype=np.int32, stream=stream)
    launch_kv_append(k_d, v_d, k_cache, v_cache, pos_d, stream)


PREFILL_VERSIONS = {"v2": launch_prefill, "v8": launch_prefill_flash}


def prefill_version(hs: int) -> str:
    """attention_prefill's default: v8 for the head sizes of its tile table (32, 64, 96, 128), else v2."""
    return "v8" if flash_supported(hs) else "v2"


def attention_prefill(q, k_cache, v_cache, start_pos, out=None, stream=0, version=None):
    """Causal attention of q [T, nh, hs] (positions start_pos..start_pos+T-1) over caches [S, nkv, hs].

    start_pos: an int, or a device int32 [1] holding it. version: None (``prefill_version``: v8 where it
    serves the head size, else v2), "v8" or "v2". v8 reads the position on the device (an int is uploaded),
    v2 takes it as a scalar (a device position is read back). With device arrays, a device start_pos and
    ``out`` given, v8 allocates nothing."""
    _check(q, k_cache, v_cache)
    version = version or prefill_version(q.shape[2])
    if version not in PREFILL_VERSIONS or (version == "v8" and not flash_supported(q.shape[2])):
        raise ValueError(f"attention_prefill: version={version!r} for head size {q.shape[2]}, want one of "
                         f"{sorted(PREFILL_VERSIONS)} (v8: head sizes {sorted(FLASH_TILES)})")
    q_d, host = _device(q, stream=stream)
    k_d, _ = _device(k_cache, stream=stream)
    v_d, _ = _device(v_cache, stream=stream)
    out_d = out if out is not None else cuda.device_array(q.shape, dtype=np.float32, stream=stream)
    if version == "v8":
        start, _ = _device(start_pos if _is_device(start_pos) else np.atleast_1d(start_pos), np.int32, stream)
    else:
        start = int(start_pos.copy_to_host(stream=stream)[0]) if _is_device(start_pos) else int(start_pos)
    PREFILL_VERSIONS[version](q_d, k_d, v_d, start, out_d, stream)
    return out_d.copy_to_host(stream=stream) if host and out is None else out_d


def attention_decode(q, k_cache, v_cache, seq_len, out=None, stream=0, n_splits=None, workspace=None,
                     version=None):
    """One query per head, q [nh, hs] or [1, nh, hs], over cache rows 0..seq_len[0]-1 (flash decoding).

    seq_len: device int32 [1] (or an int / NumPy array, uploaded). workspace: a DecodeWorkspace (v3/v4;
    v5 needs none and ignores it); without one it is allocated here (fine for tests, not for a captured
    decode step). version: None (the default: ``decode_version`` of the cache shape - v5 for caches of at
    most SHORT_MAX_S positions, else v4), "v5" (one block per head, short caches), "v4" (one launch, split
    over the cache) or "v3" (split + combine, two launches)."""
    _check(q, k_cache, v_cache)
    if version is None:
        nh_, hs_ = _heads(q)
        version = decode_version(k_cache.shape[0], k_cache.shape[1], nh_ // k_cache.shape[1], hs_)
    if version not in DECODE_VERSIONS:
        raise ValueError(f"attention_decode: version={version!r}, want one of {sorted(DECODE_VERSIONS)}")
    q_d, host = _device(q, stream=stream)
    k_d, _ = _device(k_cache, stream=stream)
    v_d, _ = _device(v_cache, stream=stream)
    n_d, _ = _device(seq_len if _is_device(seq_len) else np.atleast_1d(seq_len), np.int32, stream)
    nh, hs = _heads(q)
    if workspace is None and version != "v5":
        splits = n_splits or decode_splits(version, k_cache.shape[0], k_cache.shape[1], nh // k_cache.shape[1])
        workspace = DecodeWorkspace(nh, hs, splits, stream)
    out_d = out if out is not None else cuda.device_array(q.shape, dtype=np.float32, stream=stream)
    DECODE_VERSIONS[version](q_d.reshape(nh, hs), k_d, v_d, n_d, workspace, out_d.reshape(nh, hs), stream)
    return out_d.copy_to_host(stream=stream) if host and out is None else out_d


def attention_decode_rope(q, k, v, k_cache, v_cache, pos, seq_len, base, *, rot_dims=None, neox=True,
                          freq_scale=1.0, freq_factors=None, attn_factor=1.0, workspace=None, out=None, stream=0):
    """v7, one launch for the decode step's ``rope.rope_qk_append`` + ``attention_decode``: RoPE of q [1, nh, hs]
    (q itself is left as it is) and of the new key k [1, nkv, hs] at position pos[0], the key and value v
    written into cache row pos[0] (= seq_len[0] - 1), and attention over rows 0 .. seq_len[0] - 1. For the
    shapes v6 serves (``gqa_supported``); pos, seq_len: device int32 [1] (or ints, uploaded)."""
    _check(q, k_cache, v_cache)
    nh, hs = _heads(q)
    nkv = k_cache.shape[1]
    if not gqa_supported(hs) or not _is_device(k_cache) or not _is_device(v_cache):
        raise ValueError(f"attention_decode_rope: head size {hs} (want a multiple of 32 up to 128) and device caches")
    q_d, host = _device(q, stream=stream)
    k_d, _ = _device(k, stream=stream)
    v_d, _ = _device(v, stream=stream)
    pos_d, _ = _device(pos if _is_device(pos) else np.atleast_1d(pos), np.int32, stream)
    n_d, _ = _device(seq_len if _is_device(seq_len) else np.atleast_1d(seq_len), np.int32, stream)
    ff_d, _ = (None, False) if freq_factors is None else _device(freq_factors, stream=stream)
    if workspace is None:
        workspace = DecodeWorkspace(nh, hs, gqa_n_splits(k_cache.shape[0]), stream)
    out_d = out if out is not None else cuda.device_array((nh, hs), dtype=np.float32, stream=stream)
    args = _rope_args(q_d, pos_d, base, _rot_dims(hs, rot_dims), neox, freq_scale, ff_d, attn_factor)
    launch_decode_gqa(q_d.reshape(nh, hs), k_cache, v_cache, n_d, workspace, out_d.reshape(nh, hs), stream,
                      k_new=k_d.reshape(nkv, hs), v_new=v_d.reshape(nkv, hs), rope_args=args)
    return out_d.copy_to_host(stream=stream).reshape(q.shape) if host and out is None else out_d


def attention(q, k_cache, v_cache, start_pos: int):
    """Convenience: NumPy q [T, nh, hs] and caches in, NumPy [T, nh, hs] out (same contract as ref.attention)."""
    q = np.asarray(q, dtype=np.float32)
    if q.shape[0] == 1:
        return attention_decode(q, k_cache, v_cache, start_pos + 1)
    return attention_prefill(q, k_cache, v_cache, start_pos)


# ---------------------------------------------------------------------------------------------
# __main__: check every version against ref, then time decode attention at real model shapes
# ---------------------------------------------------------------------------------------------
def _check_versions(rng, sim: bool) -> None:
    from ref import attention as ref

    cases = ([(1, 7, 1, 64, 40), (3, 4, 2, 96, 20), (1, 2, 1, 128, 70)] if sim else
             [(1, 14, 2, 64, 1000), (9, 14, 2, 64, 37), (33, 32, 32, 96, 5), (5, 7, 1, 128, 300), (1, 32, 32, 96, 4000),
              (512, 14, 2, 64, 0), (300, 32, 32, 96, 200), (77, 8, 2, 128, 50)])
    for T, nh, nkv, hs, start in cases:
        S = start + T + 3
        q = rng.standard_normal((T, nh, hs), dtype=np.float32)
        k = rng.standard_normal((T, nkv, hs), dtype=np.float32)
        v = rng.standard_normal((T, nkv, hs), dtype=np.float32)
        kc = rng.standard_normal((S, nkv, hs), dtype=np.float32)
        vc = rng.standard_normal((S, nkv, hs), dtype=np.float32)
        kc_d, vc_d = cuda.to_device(kc), cuda.to_device(vc)
        kv_append(k, v, kc_d, vc_d, np.array([start], np.int32))  # kv_append
        ref.kv_append(k, v, kc, vc, start)
        expected = ref.attention(q, kc, vc, start)
        got = {"kv_append": np.abs(kc_d.copy_to_host() - kc).max() + np.abs(vc_d.copy_to_host() - vc).max()}
        if T < 9 or not sim:
            out = cuda.device_array(q.shape, np.float32)
            launch_naive(cuda.to_device(q), kc_d, vc_d, cuda.to_device(np.array([start + T], np.int32)), out)
            got["v1 naive"] = np.abs(out.copy_to_host() - expected).max()
        got["v2 prefill"] = np.abs(attention_prefill(q, kc_d, vc_d, start, version="v2") - expected).max()  # NumPy out
        if flash_supported(hs):
            got["v8 prefill"] = np.abs(attention_prefill(q, kc_d, vc_d, start, version="v8") - expected).max()
        if flash_mma_supported(hs):                       # v9: float16 operands, its own bound below
            o9 = cuda.device_array(q.shape, np.float32)
            launch_prefill_flash_mma(cuda.to_device(q), kc_d, vc_d, cuda.to_device(np.array([start], np.int32)), o9)
            err9 = np.abs(o9.copy_to_host() - expected).max()
            print(f"  v9 prefill (float16 operands) max|diff| {err9:.2e}")
            assert err9 < 8 * 2.0 ** -11 * np.abs(vc).max(), "v9 disagrees with ref beyond float16 rounding"
        if T == 1:
            got["v3 decode"] = np.abs(attention_decode(q, kc_d, vc_d, start + 1, version="v3") - expected).max()
            # v4, replayed: one workspace, only the device seq_len changes (the counters must come back to 0)
            ws = DecodeWorkspace(nh, hs, 4 if sim else default_n_splits(S, nkv, nh // nkv))
            n_d = cuda.to_device(np.array([1], np.int32))
            for n in (start + 1, max(1, start // 3), start + 1):
                n_d.copy_to_device(np.array([n], np.int32))
                o = attention_decode(cuda.to_device(q), kc_d, vc_d, n_d, workspace=ws).copy_to_host()
                got["v4 decode"] = max(got.get("v4 decode", 0.0), np.abs(o - ref.attention(q, kc, vc, n - 1)).max())
            assert not ws.count.copy_to_host().any(), "v4 left a chunk counter set"
            if hs % 32 == 0:  # v6, replayed the same way
                ws = DecodeWorkspace(nh, hs, 4 if sim else decode_splits("v6", S, nkv, nh // nkv))
                for n in (start + 1, max(1, start // 3), start + 1):
                    n_d.copy_to_device(np.array([n], np.int32))
                    o = attention_decode(cuda.to_device(q), kc_d, vc_d, n_d, workspace=ws, version="v6").copy_to_host()
                    got["v6 decode"] = max(got.get("v6 decode", 0.0), np.abs(o - ref.attention(q, kc, vc, n - 1)).max())
                assert not ws.count.copy_to_host().any(), "v6 left a chunk counter set"
            if S <= SHORT_MAX_S:
                for n in (start + 1, max(1, start // 3)):
                    n_d.copy_to_device(np.array([n], np.int32))
                    o = attention_decode(cuda.to_device(q), kc_d, vc_d, n_d, version="v5").copy_to_host()
                    got["v5 decode"] = max(got.get("v5 decode", 0.0), np.abs(o - ref.attention(q, kc, vc, n - 1)).max())
        print(f"check T={T} nh={nh} nkv={nkv} hs={hs} start={start}: "
              + ", ".join(f"{name} max|diff| {d:.2e}" for name, d in got.items()))
        assert max(got.values()) < 1e-4, "kernel disagrees with ref"


COPY_BW = 4.3e12  # H200 device-to-device copy bandwidth, bytes/s: the roofline of a memory-bound kernel


def _time_us(launch, reps: int = 50) -> float:
    """Device microseconds per launch(stream, i) (runtime.kernel_time_us: no host launch cost)."""
    return kernel_time_us(launch, reps)


_ROTATE_BYTES = 256 * 2**20  # timed calls rotate over more caches than this: more than the H200's L2 (50 MB)


class _Caches:
    """Random K/V caches [S_max, nkv, hs], as many layers as it takes to exceed _ROTATE_BYTES, so that a
    timed call rotating over them reads its rows from memory, not from L2."""

    def __init__(self, rng, s_max, nkv, hs):
        host = rng.standard_normal((s_max, nkv, hs), dtype=np.float32)
        n_layers = max(2, -(-_ROTATE_BYTES // (2 * host.nbytes)))
        self.layers = [(cuda.to_device(host), cuda.to_device(host[::-1].copy() if i == 0 else host))
                       for i in range(n_layers)]

    def __getitem__(self, i):
        return self.layers[i % len(self.layers)]


def _decode_line(label, us, nkv, hs, seq_len) -> str:
    read = 2 * seq_len * nkv * hs * 4  # K and V rows 0 .. seq_len-1, each read once
    return f"{label} {us:8.1f} us  {read / 2**20:7.1f} MiB  {read / us / 1e3:6.0f} GB/s  {100 * read / us / 1e-6 / COPY_BW:4.0f}%"


def _time_decode(rng, name, nh, nkv, hs, contexts, versions=("v3", "v4", "v5")) -> None:
    kv_mul = nh // nkv
    q = cuda.to_device(rng.standard_normal((nh, hs), dtype=np.float32))
    out = cuda.device_array((nh, hs), np.float32)
    for seq_len, s_max in contexts:
        caches = _Caches(rng, s_max, nkv, hs)
        n_d = cuda.to_device(np.array([seq_len], np.int32))
        for version in [v for v in versions if v != "v5" or s_max <= SHORT_MAX_S]:
            n_splits = decode_splits(version, s_max, nkv, kv_mul)
            ws = DecodeWorkspace(nh, hs, n_splits)
            us = _time_us(lambda st, i: DECODE_VERSIONS[version](q, *caches[i], n_d, ws, out, st))
            extra = {"v3": "", "v4": f" warps={fused_warps(s_max, n_splits, hs, kv_mul)}",
                     "v5": f" warps={short_warps(s_max, hs)}", "v6": f" warps={GQA_WARPS}"}[version]
            auto = " (auto)" if version == decode_version(s_max, nkv, kv_mul, hs) else ""
            print(_decode_line(f"decode {version} {name:<12} seq_len={seq_len:<6} S_max={s_max:<6} "
                               f"splits={n_splits if version != 'v5' else '-':<3}{extra:<8}", us, nkv, hs, seq_len)
                  + auto)


def _sweep_decode(rng, name, nh, nkv, hs, seq_len, splits, warps) -> None:
    """v4 at one context over (n_splits, warps per block): the numbers to tune the defaults with."""
    kv_mul = nh // nkv
    q = cuda.to_device(rng.standard_normal((nh, hs), dtype=np.float32))
    out = cuda.device_array((nh, hs), np.float32)
    caches = _Caches(rng, seq_len, nkv, hs)
    n_d = cuda.to_device(np.array([seq_len], np.int32))
    default = (default_n_splits(seq_len, nkv, kv_mul), None)
    best = None
    for n_splits in splits:
        ws = DecodeWorkspace(nh, hs, n_splits)
        for nw in warps:
            us = _time_us(lambda st, i: launch_decode_fused(q, *caches[i], n_d, ws, out, st, n_warps=nw))
            best = min(best or (us, n_splits, nw), (us, n_splits, nw))
            mark = " (default)" if (n_splits, nw) == (default[0], fused_warps(seq_len, n_splits, hs, kv_mul)) else ""
            print(_decode_line(f"  sweep v4 {name:<12} seq_len={seq_len:<6} splits={n_splits:<3} warps={nw}", us,
                               nkv, hs, seq_len) + mark)
    print(f"  best {name}: splits={best[1]} warps={best[2]} {best[0]:.1f} us")


def _sweep_gqa(rng, name, nh, nkv, hs, contexts, splits) -> None:
    """v6 over n_splits at a few (seq_len, S_max): the numbers behind GQA_SPLITS."""
    q = cuda.to_device(rng.standard_normal((nh, hs), dtype=np.float32))
    out = cuda.device_array((nh, hs), np.float32)
    for seq_len, s_max in contexts:
        caches = _Caches(rng, s_max, nkv, hs)
        n_d = cuda.to_device(np.array([seq_len], np.int32))
        for n_splits in [c for c in splits if c <= -(-s_max // GQA_TILE)]:
            ws = DecodeWorkspace(nh, hs, n_splits)
            us = _time_us(lambda st, i: launch_decode_gqa(q, *caches[i], n_d, ws, out, st))
            mark = " (default)" if n_splits == gqa_n_splits(s_max) else ""
            print(_decode_line(f"  sweep v6 {name:<12} seq_len={seq_len:<6} S_max={s_max:<6} splits={n_splits:<3}", us,
                               nkv, hs, seq_len) + mark)


def _prefill_flops(nh, hs, T, start_pos=0) -> float:
    """4 hs FLOPs (q.k and p v, a multiply-add each per dim) per visible (query, key) pair per head."""
    pairs = T * start_pos + T * (T + 1) / 2  # query t sees start_pos + t + 1 keys
    return 4 * hs * nh * pairs


def _time_prefill(name, nh, nkv, hs, T, rng, start_pos=0, sweep=()) -> None:
    """v2, v8 (its default tiles, then the tile shapes in ``sweep``) and v9 at one shape: us and TFLOP/s."""
    S = start_pos + T
    q = cuda.to_device(rng.standard_normal((T, nh, hs), dtype=np.float32))
    kc = cuda.to_device(rng.standard_normal((S, nkv, hs), dtype=np.float32))
    vc = cuda.to_device(rng.standard_normal((S, nkv, hs), dtype=np.float32))
    out = cuda.device_array((T, nh, hs), np.float32)
    flops = _prefill_flops(nh, hs, T, start_pos)
    runs = [("v2", lambda st, i: launch_prefill(q, kc, vc, start_pos, out, st))]
    pos = cuda.to_device(np.array([start_pos], np.int32))           # v8 reads the first position on the device
    if flash_supported(hs):
        default = flash_tiles(hs)
        for tiles in [default] + [t for t in sweep if t != default and flash_supported(hs, t)]:
            label = f"v8 {tiles}" + (" (default)" if tiles == default else "")
            runs.append((label, lambda st, i, t=tiles: launch_prefill_flash(q, kc, vc, pos, out, st, tiles=t)))
    if flash_mma_supported(hs):                                        # v9: the tensor cores, float16 operands
        runs.append(("v9 (tensor cores)", lambda st, i: launch_prefill_flash_mma(q, kc, vc, pos, out, st)))
    for label, launch in runs:
        us = _time_us(launch, reps=20)
        print(f"prefill {name:<12} T={T:<4} start={start_pos:<4} {label:<24} {us:8.1f} us  "
              f"{flops / us / 1e6:6.2f} TFLOP/s (fp32 FMA)")


FLASH_SWEEP = [(2, 2, 2), (4, 1, 2), (4, 1, 4), (1, 4, 1), (1, 2, 2), (2, 1, 4), (2, 1, 2)]  # (QW, KW, TN)


def _time_prefill_all(rng) -> None:
    print("prefill: device time per call; FLOPs = 4 hs per visible (query, key) pair per head; (QW, KW, TN) = v8 tiles")
    _time_prefill("Qwen2.5-0.5B", 14, 2, 64, 512, rng, sweep=FLASH_SWEEP)
    _time_prefill("Phi-3-mini", 32, 32, 96, 512, rng, sweep=FLASH_SWEEP)
    _time_prefill("Qwen2.5-0.5B", 14, 2, 64, 128, rng, start_pos=512)  # a chunk continuing a prompt
    _time_prefill("Llama-3-8B", 32, 8, 128, 512, rng)


def _main() -> None:
    rng = np.random.default_rng(0)
    sim = bool(config.ENABLE_CUDASIM)
    if sim:  # the simulator lacks __syncwarp and the shuffles: the test suite's implementation supplies them
        install_simulator_shuffles()
    _check_versions(rng, sim)
    if sim:
        print("simulator: checks only, no timings")
        return
    if sys.argv[1:] == ["prefill"]:  # python -m numba_kernels.attention prefill: the prefill timings alone
        _time_prefill_all(rng)
        return
    print(f"decode: device time per call; bytes = K and V rows read; % of {COPY_BW / 1e12:.1f} TB/s copy bandwidth")
    # short caches (S_max = seq_len + 128, as in a decode step): v4 next to v5
    _time_decode(rng, "Qwen2.5-0.5B", 14, 2, 64, [(n, n + 128) for n in (128, 512, 1024)], ("v4", "v5", "v6"))
    _time_decode(rng, "Phi-3-mini", 32, 32, 96, [(512, 640)], ("v4", "v6"))
    contexts = [(4096, 4096), (16384, 16384)]
    _time_decode(rng, "Qwen2.5-0.5B", 14, 2, 64, contexts + [(4096, 32768)], ("v4", "v6"))
    _time_decode(rng, "Phi-3-mini", 32, 32, 96, contexts, ("v4",))
    _sweep_gqa(rng, "Qwen2.5-0.5B", 14, 2, 64, [(512, 641), (4096, 4096)], (4, 8, 16, 32, 64, 128))
    _time_prefill_all(rng)


if __name__ == "__main__":
    _main()
