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
- ``kv_append_kernel``: copies ``T`` rows of k and v into the caches at ``pos[0]``
  (a device int32, so a captured decode step can replay it).

Left out: fused RoPE, a float16 cache, tensor cores (the prefill scores are plain
FMA), and a split-K prefill; sequences are single (no batching).

References: Dao et al. 2022 "FlashAttention" (tiling + online softmax, after
Milakov & Gimelshein 2018 "Online normalizer calculation for softmax");
Dao et al. 2023 "Flash-Decoding for long-context inference" (split/combine);
llm.c ``dev/cuda/attention_forward.cu`` (kernel-versions layout).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float32, int32

from numba_kernels.runtime import is_device as _is_device

NT = 128          # threads per block of the tiled kernels (4 warps)
MAX_HS = 256      # largest head size the kernels support (v1's per-thread accumulator)
SPLIT_ALIGN = 32  # decode chunks are whole multiples of this many positions
SMEM_LIMIT = 48 * 1024  # static shared memory a block may declare
MAX_SPLITS = 1024  # most decode chunks per head (the combine kernel keeps one weight per chunk in shared memory)
COMBINE_THREADS = 256  # threads of the combine kernel (a power of two, >= MAX_HS)


# ---------------------------------------------------------------------------------------------
# v1: one thread per (query, head), everything in global memory
# ---------------------------------------------------------------------------------------------
@cuda.jit
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

    @cuda.jit
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

    @cuda.jit
    def decode_split(q, k_cache, v_cache, seq_len, ws_m, ws_l, ws_acc):
        # grid (n_splits, nkv * groups): block = (chunk of positions, up to R query heads of one kv head)
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


@cuda.jit
def decode_combine(seq_len, ws_m, ws_l, ws_acc, out):
    # grid (nh,), block COMBINE_THREADS: block = query head h. Merges the chunks that were not empty.
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


@cuda.jit
def kv_append_kernel(k, v, k_cache, v_cache, pos):
    # one thread per element of k: [T, nkv, hs] -> cache rows pos[0] .. pos[0] + T - 1
    T, nkv, hs = k.shape
    i = cuda.grid(1)
    if i < T * nkv * hs:
        t = i // (nkv * hs)
        g = (i // hs) % nkv
        d = i % hs
        k_cache[pos[0] + t, g, d] = k[t, g, d]
        v_cache[pos[0] + t, g, d] = v[t, g, d]


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


def default_n_splits(s_max: int, nkv: int, kv_mul: int = 1) -> int:
    """Chunks per kv head: about 1024 blocks in all and at most 128 chunks (the best measured on the H200
    for Qwen2.5 and Phi-3 shapes), but no chunk of a full cache shorter than SPLIT_ALIGN positions.
    Depends on S_max only, never on seq_len, so the launch can be captured once and replayed."""
    rows, _ = decode_tiles(1, kv_mul)
    blocks_per_split = nkv * ((kv_mul + rows - 1) // rows)
    by_length = max(1, -(-s_max // SPLIT_ALIGN))
    return max(1, min(by_length, 128, 1024 // blocks_per_split))


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


def launch_decode(q, k_cache, v_cache, seq_len, workspace, out, stream=0):
    nh, hs = q.shape
    kv_mul = nh // k_cache.shape[1]
    rows, bk = decode_tiles(hs, kv_mul)
    _, decode_split = _tiled_kernels(hs, rows, bk)
    groups = (kv_mul + rows - 1) // rows  # blocks per kv head when kv_mul > R
    grid = (workspace.n_splits, k_cache.shape[1] * groups)  # x: chunks of positions, y: (kv head, head group)
    decode_split[grid, NT, stream](q, k_cache, v_cache, seq_len, workspace.m, workspace.l, workspace.acc)
    decode_combine[nh, COMBINE_THREADS, stream](seq_len, workspace.m, workspace.l, workspace.acc, out)


def launch_kv_append(k, v, k_cache, v_cache, pos, stream=0):
    n = k.shape[0] * k.shape[1] * k.shape[2]
    threads = 256
    kv_append_kernel[(n + threads - 1) // threads, threads, stream](k, v, k_cache, v_cache, pos)


# ---------------------------------------------------------------------------------------------
# public functions: NumPy in -> NumPy out; device arrays in -> device arrays out
# ---------------------------------------------------------------------------------------------
class DecodeWorkspace:
    """Partial results of flash decoding, preallocated once: per query head and chunk the running
    max ``m`` [nh, n_splits], sum ``l`` [nh, n_splits] and unnormalized output ``acc`` [nh, n_splits, hs]."""

    def __init__(self, nh: int, hs: int, n_splits: int):
        if not 1 <= n_splits <= MAX_SPLITS:
            raise ValueError(f"DecodeWorkspace: n_splits={n_splits}, want 1..{MAX_SPLITS}")
        self.n_splits = n_splits
        self.m = cuda.device_array((nh, n_splits), dtype=np.float32)
        self.l = cuda.device_array((nh, n_splits), dtype=np.float32)
        self.acc = cuda.device_array((nh, n_splits, hs), dtype=np.float32)




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


def attention_prefill(q, k_cache, v_cache, start_pos: int, out=None, stream=0):
    """Causal attention of q [T, nh, hs] (positions start_pos..start_pos+T-1) over caches [S, nkv, hs]."""
    _check(q, k_cache, v_cache)
    q_d, host = _device(q, stream=stream)
    k_d, _ = _device(k_cache, stream=stream)
    v_d, _ = _device(v_cache, stream=stream)
    out_d = out if out is not None else cuda.device_array(q.shape, dtype=np.float32, stream=stream)
    launch_prefill(q_d, k_d, v_d, int(start_pos), out_d, stream)
    return out_d.copy_to_host(stream=stream) if host and out is None else out_d


def attention_decode(q, k_cache, v_cache, seq_len, out=None, stream=0, n_splits=None, workspace=None):
    """One query per head, q [nh, hs] or [1, nh, hs], over cache rows 0..seq_len[0]-1 (flash decoding).

    seq_len: device int32 [1] (or an int / NumPy array, uploaded). workspace: a DecodeWorkspace;
    without one it is allocated here (fine for tests, not for a captured decode step)."""
    _check(q, k_cache, v_cache)
    q_d, host = _device(q, stream=stream)
    k_d, _ = _device(k_cache, stream=stream)
    v_d, _ = _device(v_cache, stream=stream)
    n_d, _ = _device(seq_len if _is_device(seq_len) else np.atleast_1d(seq_len), np.int32, stream)
    nh, hs = _heads(q)
    if workspace is None:
        kv_mul = nh // k_cache.shape[1]
        workspace = DecodeWorkspace(nh, hs, n_splits or default_n_splits(k_cache.shape[0], k_cache.shape[1], kv_mul))
    out_d = out if out is not None else cuda.device_array(q.shape, dtype=np.float32, stream=stream)
    launch_decode(q_d.reshape(nh, hs), k_d, v_d, n_d, workspace, out_d.reshape(nh, hs), stream)
    return out_d.copy_to_host(stream=stream) if host and out is None else out_d


def attention(q, k_cache, v_cache, start_pos: int):
    """Convenience: NumPy q [T, nh, hs] and caches in, NumPy [T, nh, hs] out (same contract as ref.attention)."""
    q = np.asarray(q, dtype=np.float32)
    if q.shape[0] == 1:
        return attention_decode(q, k_cache, v_cache, start_pos + 1)
    return attention_prefill(q, k_cache, v_cache, start_pos)


# ---------------------------------------------------------------------------------------------
# __main__: check every version against ref, then time decode attention at real model shapes
# ---------------------------------------------------------------------------------------------
def _check_versions(rng) -> None:
    from ref import attention as ref

    for T, nh, nkv, hs, start in [(1, 14, 2, 64, 1000), (9, 14, 2, 64, 37), (33, 32, 32, 96, 5), (5, 7, 1, 128, 300)]:
        S = start + T + 3
        q = rng.standard_normal((T, nh, hs), dtype=np.float32)
        k = rng.standard_normal((T, nkv, hs), dtype=np.float32)
        v = rng.standard_normal((T, nkv, hs), dtype=np.float32)
        kc = rng.standard_normal((S, nkv, hs), dtype=np.float32)
        vc = rng.standard_normal((S, nkv, hs), dtype=np.float32)
        kc_d, vc_d = cuda.to_device(kc), cuda.to_device(vc)
        kv_append(k, v, kc_d, vc_d, np.array([start], np.int32))  # v0: kv_append
        ref.kv_append(k, v, kc, vc, start)
        expected = ref.attention(q, kc, vc, start)
        got = {"kv_append": np.abs(kc_d.copy_to_host() - kc).max() + np.abs(vc_d.copy_to_host() - vc).max()}
        out = cuda.device_array(q.shape, np.float32)
        launch_naive(cuda.to_device(q), kc_d, vc_d, cuda.to_device(np.array([start + T], np.int32)), out)
        got["v1 naive"] = np.abs(out.copy_to_host() - expected).max()
        got["v2 prefill"] = np.abs(attention_prefill(q, kc_d, vc_d, start) - expected).max()  # NumPy q -> NumPy out
        if T == 1:
            got["v3 decode"] = np.abs(attention_decode(q, kc_d, vc_d, start + 1) - expected).max()
        print(f"check T={T} nh={nh} nkv={nkv} hs={hs} start={start}: "
              + ", ".join(f"{name} max|diff| {d:.2e}" for name, d in got.items()))
        assert max(got.values()) < 1e-4, "kernel disagrees with ref"


@cuda.jit
def _busy(n, buf):
    # one thread, n dependent multiply-adds on values read at run time (nothing to fold away): keeps the
    # GPU busy while the host queues the launches to be timed, so their launch cost stays out
    x, a, b = buf[0], buf[1], buf[2]
    for _ in range(n):
        x = x * a + b
    buf[0] = x


def _time_ms(launch, n_iter: int = 50) -> float:
    """Device time per call of launch(i), i = 0..n_iter-1, queued behind a busy kernel (no launch gaps)."""
    launch(0)
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    _busy[1, 1](5_000_000, cuda.to_device(np.array([1.0, 0.5, 0.25], np.float32)))  # ~ 50 ms of FMA chain
    start.record()
    for i in range(n_iter):
        launch(i)
    end.record()
    end.synchronize()
    return cuda.event_elapsed_time(start, end) / n_iter


def _time_decode(name, nh, nkv, hs, seq_len, s_max, rng, n_splits=None) -> None:
    cache_bytes = 2 * s_max * nkv * hs * 4
    n_layers = max(2, -(-256 * 2**20 // cache_bytes))  # rotate over > 256 MiB of caches: more than L2 holds
    caches = [(cuda.to_device(rng.standard_normal((s_max, nkv, hs), dtype=np.float32)),
               cuda.to_device(rng.standard_normal((s_max, nkv, hs), dtype=np.float32))) for _ in range(n_layers)]
    q = cuda.to_device(rng.standard_normal((nh, hs), dtype=np.float32))
    out = cuda.device_array((nh, hs), np.float32)
    n_d = cuda.to_device(np.array([seq_len], np.int32))
    ws = DecodeWorkspace(nh, hs, n_splits or default_n_splits(s_max, nkv, nh // nkv))
    ms = _time_ms(lambda i: launch_decode(q, *caches[i % n_layers], n_d, ws, out))
    read = 2 * seq_len * nkv * hs * 4  # K and V rows 0 .. seq_len-1, each read once
    print(f"decode {name:<12} nh={nh:<2} nkv={nkv:<2} hs={hs:<3} seq_len={seq_len:<6} S_max={s_max:<6} "
          f"splits={ws.n_splits:<4} {ms * 1e3:8.1f} us  {read / ms / 1e6:7.0f} GB/s of KV read")


def _time_prefill(name, nh, nkv, hs, T, rng) -> None:
    q = cuda.to_device(rng.standard_normal((T, nh, hs), dtype=np.float32))
    kc = cuda.to_device(rng.standard_normal((T, nkv, hs), dtype=np.float32))
    vc = cuda.to_device(rng.standard_normal((T, nkv, hs), dtype=np.float32))
    out = cuda.device_array((T, nh, hs), np.float32)
    ms = _time_ms(lambda i: launch_prefill(q, kc, vc, 0, out), n_iter=10)
    flops = 4 * nh * hs * T * (T + 1) / 2  # QK^T and PV over the causal half
    print(f"prefill {name:<11} T={T:<5} {ms * 1e3:8.1f} us  {flops / ms / 1e9:6.1f} TFLOP/s (fp32 FMA)")


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    _check_versions(rng)
    for seq_len, s_max in [(4096, 4096), (4096, 32768), (32768, 32768)]:
        _time_decode("Qwen2.5-0.5B", 14, 2, 64, seq_len, s_max, rng)
    for seq_len, s_max in [(4096, 4096), (32768, 32768)]:
        _time_decode("Phi-3-mini", 32, 32, 96, seq_len, s_max, rng)
    _time_prefill("Qwen2.5-0.5B", 14, 2, 64, 512, rng)
    _time_prefill("Phi-3-mini", 32, 32, 96, 512, rng)
