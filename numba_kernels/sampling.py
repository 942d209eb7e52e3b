r"""Greedy and seeded random sampling on the GPU (reference: ``ref/sampling.py``).

Every kernel writes the chosen token id into a device int32 [1], so a captured decode step never
returns to Python to pick a token. The public functions pick the default version; the others stay
selectable (``version=``) for the comparisons in ``__main__``.

Kernel versions
    argmax v1 ``argmax_kernel``: one block. Strided loads (coalesced), each thread keeps
        (best value, lowest id), then warp shuffles and shared memory reduce the pairs. Ties go
        to the lowest id. One SM reads the whole row: 52-80 us per call on the H200 at
        V = 151936, launch included.
    argmax v2 ``argmax_blocks_kernel`` (default): the same reduction spread over many blocks in
        one launch. Each block reduces a grid-strided share of the row to (best value, lowest
        id) and writes the pair to a workspace; it then fences (``threadfence``) and counts
        itself in with an atomic add. The block that arrives last (its add returned
        ``n_blocks - 1``) resets the counter to 0, so the next launch or graph replay starts
        clean, and reduces the ``n_blocks`` pairs with the same tie rule.
    sample v1 ``sample_kernel``: one block, the reference's filter chain without sorting:
        1. ``m`` = block max of the logits.
        2. top-k: a 4-pass radix select on the logits' order-preserving 32-bit keys finds the
           key ``v_k`` of the k-th token and the count above it; each pass histograms one byte
           (256 bins per warp in shared memory, integer atomics: the order of adds does not
           matter; a thread adds a run of equal bytes with one atomic, since most logits share
           their top bytes).
           Tokens tied at ``v_k`` are ranked by id with a block prefix sum.
        3. top-p: the same radix select, but each bin sums the fixed-point masses
           ``floor(exp(l - m) * 2^32)`` (int64) of the top-k survivors, and the target is
           ``top_p * Z``. Integer sums make the cut independent of summation order.
        4. min-p: ``l >= m + log(min_p)``, element-wise.
        5. temperature and draw: fixed-point masses of ``exp(l/T - m/T)``, a block prefix sum
           in token-id order, and the thread whose range holds ``u * total`` walks its chunk.
        Each thread owns a contiguous chunk of ``ceil(V / threads)`` ids, so per-thread counts
        and masses scan into id order. Up to 14 walks over the row on one SM: 0.16-1.15 ms at
        V = 151936. Any ``top_k``; the only version for ``top_k == 0`` or ``top_k > 128``.
    sample v2 ``topk_sample`` (default when ``0 < top_k <= 128``): an exact top-k over many
        blocks with sorting networks, then the filters on at most 128 survivors.
        1. Every id becomes a unique 64-bit key, ``key(l_i) * 2^32 + (2^32 - 1 - i)``: larger
           logit first, lower id first among equal logits - the reference's order with no ties
           left, so "the k largest keys" is exactly the reference's top-k set.
        2. Each block takes a slice of ``S = 1024`` ids into shared memory, sorts runs of
           ``KP`` keys (``KP`` = the power of two >= k) descending with a bitonic sort, then
           halves the runs pairwise: for descending runs A and B, ``max(A_i, B_{KP-1-i})`` holds
           the top KP of both and is bitonic, so a bitonic merge (log2 KP steps) sorts it.
           After log2(S / KP) rounds the block holds its slice's top KP, sorted.
        3. A tree of last blocks: a block writes its list to the workspace, fences, and counts
           itself into its group of ``G = S / KP`` lists with an atomic add; the last of the
           group resets the group's counter, loads the G lists and merges them the same way,
           and goes on to the next level, until one list is left: the row's top KP keys.
           V = 151936 gives 149 blocks and 3 merge levels for k in 65..128 (2 for 5..64, 1 below).
        4. The block holding the root applies top-p (fixed-point masses, prefix sums in the
           sorted order, the first prefix reaching ``top_p * Z``), min-p, temperature and the
           draw in token-id order (each survivor adds the masses of the survivors with lower
           ids) to its <= 128 tokens, with the same integer arithmetic as v1.
        No pass over the vocabulary after the first load; about 50 barrier steps per block.

``u = uniform(seed, step)`` is computed on the device from ``step_dev[0]``, so a replayed CUDA
graph draws a new number each step. Every version returns the reference's token for the same
logits, (seed, step) and settings, except when a float32 ``expf`` that differs by an ulp from
NumPy's moves a boundary (a measure-zero event in practice). Rows with NaN are not supported
(argmax skips NaN; the reference's sampler is undefined there).

The v2 kernels keep state between launches in a workspace (``ArgmaxWorkspace``,
``TopKWorkspace``): preallocate one per decode loop and pass it in. Without one, the public
functions use one cached per (kind, V) for the life of the process, so a captured graph never
points at freed memory - but two streams running the same V at once must not share it.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import config, cuda, float32, float64, int32, int64, uint64

from numba_kernels import ptx
from numba_kernels.runtime import JIT_CACHE, install_simulator_shuffles, is_device as _is_device

WARP = 32
MAX_THREADS = 1024
SAMPLE_THREADS = 512                 # sample_kernel needs > 64 registers: 1024 threads do not fit
MAX_WARPS = SAMPLE_THREADS // WARP
FULL = 0xFFFFFFFF
MASS_SCALE = float32(2.0**32)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
SIGN = 0x80000000
NEG_INF = float32(-np.inf)
LOW32 = np.uint64(0xFFFFFFFF)        # the id field of a top-k key

ARGMAX_THREADS = 256                 # argmax v2: threads per block
ARGMAX_ITEMS = 4                     # ... and ids per thread: V = 151936 -> 149 blocks
MAX_ARGMAX_BLOCKS = 1024
MAX_TOPK = 128                       # sample v2 handles 0 < top_k <= MAX_TOPK
TOPK_SLICE = 1024                    # sample v2: ids per block (a power of two >= 2 * MAX_TOPK)
TOPK_THREADS = 256                   # ... and threads per block
MAX_TOPK_THREADS = 512               # topk_sample uses 120 registers a thread (ptxas, sm_90)


# ----------------------------------------------------------------------------------------------
# small device helpers

@cuda.jit(device=True, inline=True)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@cuda.jit(device=True, inline=True)
def _uniform(seed, step):
    """Same bits as ``ref.sampling.uniform``: seed, step are uint64."""
    key = _mix64(seed + GOLDEN)
    z = _mix64(key + (step + np.uint64(1)) * GOLDEN)
    return float64(z >> np.uint64(11)) * (2.0**-53)


@cuda.jit(device=True, inline=True)
def _key(bits):
    """Map float32 bits to an int64 in [0, 2^32) that orders like the floats (-0.0 == +0.0)."""
    b = int64(bits)
    if b == SIGN:
        b = 0
    if b >= SIGN:
        return 0xFFFFFFFF - b                           # negative: flip all bits
    return b + SIGN                                     # positive: set the sign bit


@cuda.jit(device=True, inline=True)
def _mass(logit, m, t):
    """floor(exp(l/t - m/t) * 2^32) as int64, all in float32 like the reference."""
    e = float32(math.exp(logit / t - m / t))           # float32() matters only in the simulator
    return int64(e * MASS_SCALE)


@cuda.jit(device=True)
def _scan(v, scratch):
    """Block-wide exclusive prefix sum of int64 ``v`` (Hillis-Steele); returns (exclusive, total)."""
    tid = cuda.threadIdx.x
    scratch[tid] = v
    cuda.syncthreads()
    offset = 1
    while offset < cuda.blockDim.x:
        other = scratch[tid - offset] if tid >= offset else int64(0)
        cuda.syncthreads()
        scratch[tid] = scratch[tid] + other
        cuda.syncthreads()
        offset *= 2
    incl = scratch[tid]
    total = scratch[cuda.blockDim.x - 1]
    cuda.syncthreads()
    return incl - v, total


@cuda.jit(device=True)
def _block_max(v, scratch):
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    offset = WARP // 2
    while offset > 0:
        v = max(v, cuda.shfl_xor_sync(FULL, v, offset))
        offset //= 2
    if lane == 0:
        scratch[warp] = v
    cuda.syncthreads()
    v = NEG_INF
    for w in range(cuda.blockDim.x // WARP):
        v = max(v, scratch[w])
    cuda.syncthreads()
    return v


@cuda.jit(device=True)
def _passes(key, logit, par, parf, st, k_on, k, p_on, mp_on, min_logit):
    """Does this token survive top-k (and top-p, min-p when on)? Visit tokens in id order:
    ``st[0]`` / ``st[1]`` count the ties seen so far at the top-k / top-p cut keys."""
    if k_on:
        vk = par[0]
        if key < vk:
            return False
        if key == vk:
            st[0] += 1
            if par[1] + st[0] - 1 >= k:                # rank among ties >= slots left
                return False
    if p_on:
        vp = par[2]
        if key < vp:
            return False
        if key == vp:
            st[1] += 1
            if float64(par[3] + (st[1] - 1) * par[4]) >= parf[0]:
                return False
    if mp_on:
        return logit >= min_logit
    return True


@cuda.jit(device=True, inline=True)
def _order_key(bits, i):
    """The top-k key of id ``i``: the logit's order key above, ``2^32 - 1 - i`` below (uint64).
    Larger keys come first in the reference's order; no two ids share a key."""
    return (uint64(_key(bits)) << uint64(32)) | (LOW32 - uint64(i))


@cuda.jit(device=True)
def _block_argmax(best, arg, vals, idxs):
    """Reduce every thread's (best, arg) to the block's, valid in thread 0: larger value first,
    lower id among equal values. ``vals``, ``idxs``: shared scratch of WARP entries."""
    tid = cuda.threadIdx.x
    offset = WARP // 2
    while offset > 0:
        ob = cuda.shfl_xor_sync(FULL, best, offset)
        oa = cuda.shfl_xor_sync(FULL, arg, offset)
        if ob > best or (ob == best and oa < arg):
            best, arg = ob, oa
        offset //= 2
    if tid % WARP == 0:
        vals[tid // WARP], idxs[tid // WARP] = best, arg
    cuda.syncthreads()
    if tid == 0:
        for w in range(1, cuda.blockDim.x // WARP):
            if vals[w] > best or (vals[w] == best and idxs[w] < arg):
                best, arg = vals[w], idxs[w]
    cuda.syncthreads()                                  # the scratch may be reused at once
    return best, arg


@cuda.jit(device=True)
def _arrive_last(counters, slot, members, flag):
    """Count this block in at ``counters[slot]``; True in every thread of the block that arrives
    last of ``members``, which resets the counter for the next launch. Call it after the block's
    results are stored: the fences order them before the count (and the other blocks' results
    before the last block's loads)."""
    cuda.threadfence()
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        arrived = cuda.atomic.add(counters, slot, 1)
        flag[0] = 1 if arrived == members - 1 else 0
        if flag[0] == 1:
            counters[slot] = 0
        cuda.threadfence()
    cuda.syncthreads()
    return flag[0] == 1


# ----------------------------------------------------------------------------------------------
# the radix select (top-k by count, top-p by mass)

@cuda.jit(device=True)
def _radix_select(x, bits, lo, hi, by_mass, target, m, par, parf, st, k_on, k, hist, slot):
    """Find the key v with  above(v) < target <= above(v) + weight(v)  in 4 byte-passes;
    weight = 1 per token (top-k) or its fixed-point mass among top-k survivors (top-p).
    Writes v to par[slot] and above(v) to par[slot + 1].

    Most logits share their top key bytes, so the first passes would pile every atomic onto
    a few bins: each warp has its own 256 bins, and a thread adds a run of equal bytes once."""
    tid, warp = cuda.threadIdx.x, cuda.threadIdx.x // WARP
    n_warps = cuda.blockDim.x // WARP
    if tid == 0:
        par[5] = 0                                      # key prefix chosen so far
        par[6] = 0                                      # weight above that prefix
    for p in range(4):
        shift = 24 - 8 * p
        for j in range(tid, n_warps * 256, cuda.blockDim.x):
            hist[j // 256, j % 256] = 0
        cuda.syncthreads()
        prefix = par[5]
        st[0] = st[2]                                   # restart the tie count of top-k
        run_digit, run_weight = int64(-1), int64(0)
        for i in range(lo, hi):
            key = _key(bits[i])
            w = int64(1)
            if by_mass:
                if not _passes(key, x[i], par, parf, st, k_on, k, False, False, NEG_INF):
                    continue
                w = _mass(x[i], m, float32(1.0))
            if w > 0 and (key >> (shift + 8)) == prefix:
                digit = (key >> shift) & 255
                if digit != run_digit:
                    if run_weight > 0:
                        cuda.atomic.add(hist, (warp, run_digit), run_weight)
                    run_digit, run_weight = digit, int64(0)
                run_weight += w
        if run_weight > 0:
            cuda.atomic.add(hist, (warp, run_digit), run_weight)
        cuda.syncthreads()
        for d in range(tid, 256, cuda.blockDim.x):     # bin d: add up the warps' copies
            for w2 in range(1, n_warps):
                hist[0, d] += hist[w2, d]
        cuda.syncthreads()
        if tid == 0:
            cum = par[6]
            d = 255
            while d > 0 and float64(cum + hist[0, d]) < target:
                cum += hist[0, d]
                d -= 1
            par[5] = prefix * 256 + d
            par[6] = cum
        cuda.syncthreads()
    if tid == 0:
        par[slot] = par[5]
        par[slot + 1] = par[6]
    cuda.syncthreads()


# ----------------------------------------------------------------------------------------------
# kernels

@cuda.jit(cache=JIT_CACHE)
def argmax_kernel(x, out):
    ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
    ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
    V = x.shape[0]
    tid = cuda.threadIdx.x
    vals = cuda.shared.array(WARP, float32)
    idxs = cuda.shared.array(WARP, int32)
    best, arg = NEG_INF, int32(V)
    for i in range(tid, V, cuda.blockDim.x):            # strided: coalesced loads
        if x[i] > best:                                 # ids rise, so ">" keeps the lowest id
            best, arg = x[i], int32(i)
    best, arg = _block_argmax(best, arg, vals, idxs)
    if tid == 0:
        out[0] = arg if arg < V else 0                  # all -inf / NaN row: token 0


@cuda.jit(cache=JIT_CACHE)
def sample_kernel(x, bits, out, step_dev, seed, temperature, k_on, k, p_on, top_p,
                  mp_on, log_min_p):
    ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
    ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
    V = x.shape[0]
    tid = cuda.threadIdx.x
    chunk = (V + cuda.blockDim.x - 1) // cuda.blockDim.x
    lo, hi = min(tid * chunk, V), min(tid * chunk + chunk, V)   # this thread's ids, in order
    hist = cuda.shared.array((MAX_WARPS, 256), int64)  # one histogram per warp
    scratch = cuda.shared.array(SAMPLE_THREADS, int64)
    fscratch = cuda.shared.array(WARP, float32)
    par = cuda.shared.array(8, int64)                   # vk, above_k, vp, above_p, w_p, tmp, tmp
    parf = cuda.shared.array(1, float64)                # top-p target
    st = cuda.local.array(4, int64)                     # ties seen (k, p) and their bases
    for j in range(4):
        st[j] = 0
    # 1. the largest logit
    m = NEG_INF
    for i in range(lo, hi):
        m = max(m, x[i])
    m = _block_max(m, fscratch)
    # 2. top-k: radix select by count, then rank the ties at the cut by id
    if k_on:
        _radix_select(x, bits, lo, hi, False, float64(k), m, par, parf, st, False, k, hist, 0)
        ties = int64(0)
        for i in range(lo, hi):
            if _key(bits[i]) == par[0]:
                ties += 1
        st[2], _ = _scan(ties, scratch)
    # 3. top-p: total mass Z of the survivors, radix select by mass, rank the ties at the cut
    if p_on:
        st[0] = st[2]
        z = int64(0)
        for i in range(lo, hi):
            if _passes(_key(bits[i]), x[i], par, parf, st, k_on, k, False, False, NEG_INF):
                z += _mass(x[i], m, float32(1.0))
        _, z_total = _scan(z, scratch)
        if tid == 0:
            parf[0] = top_p * float64(z_total)
        cuda.syncthreads()
        _radix_select(x, bits, lo, hi, True, parf[0], m, par, parf, st, k_on, k, hist, 2)
        st[0] = st[2]
        ties = int64(0)
        for i in range(lo, hi):
            key = _key(bits[i])
            if _passes(key, x[i], par, parf, st, k_on, k, False, False, NEG_INF) and key == par[2]:
                ties += 1
                par[4] = _mass(x[i], m, float32(1.0))  # every tied token has this same mass
        st[3], _ = _scan(ties, scratch)
    # 4-5. min-p, temperature, and the draw in token-id order
    min_logit = m + log_min_p
    st[0], st[1] = st[2], st[3]
    q = int64(0)
    for i in range(lo, hi):
        if _passes(_key(bits[i]), x[i], par, parf, st, k_on, k, p_on, mp_on, min_logit):
            q += _mass(x[i], m, temperature)
    excl, total = _scan(q, scratch)
    thr = _uniform(seed, uint64(step_dev[0])) * float64(total)
    if float64(excl) <= thr and thr < float64(excl + q):    # this thread's ids hold the draw
        st[0], st[1] = st[2], st[3]
        cum = excl
        for i in range(lo, hi):
            if _passes(_key(bits[i]), x[i], par, parf, st, k_on, k, p_on, mp_on, min_logit):
                cum += _mass(x[i], m, temperature)
                if float64(cum) > thr:
                    out[0] = int32(i)
                    break


@cuda.jit(cache=JIT_CACHE)
def argmax_blocks_kernel(x, vals, ids, counter, out):
    ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
    ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
    V = x.shape[0]
    tid = cuda.threadIdx.x
    svals = cuda.shared.array(WARP, float32)
    sids = cuda.shared.array(WARP, int32)
    flag = cuda.shared.array(1, int32)
    best, arg = NEG_INF, int32(V)
    for i in range(cuda.grid(1), V, cuda.gridsize(1)):  # grid-strided: coalesced, ids rising
        if x[i] > best:                                 # ">" keeps the lowest id, skips NaN
            best, arg = x[i], int32(i)
    best, arg = _block_argmax(best, arg, svals, sids)
    if tid == 0:
        vals[cuda.blockIdx.x], ids[cuda.blockIdx.x] = best, arg
    if not _arrive_last(counter, 0, cuda.gridDim.x, flag):
        return
    best, arg = NEG_INF, int32(V)                       # the last block: reduce the pairs
    for b in range(tid, cuda.gridDim.x, cuda.blockDim.x):
        if vals[b] > best or (vals[b] == best and ids[b] < arg):
            best, arg = vals[b], ids[b]
    best, arg = _block_argmax(best, arg, svals, sids)
    if tid == 0:
        out[0] = arg if arg < V else 0                  # all -inf / NaN row: token 0


@cuda.jit(device=True)
def _draw_top(x, s, k, out, step_dev, seed, temperature, p_on, top_p, mp_on, log_min_p):
    """The filters and the draw over the top-k keys ``s[0:k]`` (descending; 0 = no token,
    when V < k), exactly as ``sample_kernel`` does them over the whole row."""
    tid, nt = cuda.threadIdx.x, cuda.blockDim.x
    ids = cuda.shared.array(MAX_TOPK, int64)
    lg = cuda.shared.array(MAX_TOPK, float32)
    w = cuda.shared.array(MAX_TOPK, int64)              # masses: top-p's, then the draw's
    cut = cuda.shared.array(1, int64)
    for j in range(tid, k, nt):
        if s[j] == 0:
            ids[j], lg[j] = -1, NEG_INF
        else:
            i = int64(LOW32 - (s[j] & LOW32))
            ids[j], lg[j] = i, x[i]
    if tid == 0:
        cut[0] = k
    cuda.syncthreads()
    m = lg[0]                                           # the largest logit
    if p_on:                                            # top-p: the first prefix reaching p * Z
        for j in range(tid, k, nt):
            w[j] = _mass(lg[j], m, float32(1.0))
        cuda.syncthreads()
        for j in range(tid, k, nt):
            z, cum = int64(0), int64(0)
            for i in range(k):
                z += w[i]
                if i <= j:
                    cum += w[i]
            if float64(cum) >= top_p * float64(z):
                cuda.atomic.min(cut, 0, j)
        cuda.syncthreads()
    min_logit = m + log_min_p
    for j in range(tid, k, nt):                         # min-p, then the temperature's masses
        keep = ids[j] >= 0 and j <= cut[0] and (not mp_on or lg[j] >= min_logit)
        w[j] = _mass(lg[j], m, temperature) if keep else int64(0)
    cuda.syncthreads()
    u = _uniform(seed, uint64(step_dev[0]))
    for j in range(tid, k, nt):                         # the draw, in token-id order
        excl, total = int64(0), int64(0)
        for i in range(k):
            total += w[i]
            if ids[i] < ids[j]:
                excl += w[i]
        thr = u * float64(total)
        if w[j] > 0 and float64(excl) <= thr and thr < float64(excl + w[j]):
            out[0] = int32(ids[j])
        if j == 0 and total == 0:                       # nothing survived (min_p > 1): as ref
            out[0] = 0


@functools.cache
def _topk_kernels(S: int, TH: int):
    """sample v2 for slices of S ids (a power of two) and TH threads per block."""

    @cuda.jit(device=True)
    def sort_runs(s, LK):
        """Sort every run of KP = 2^LK keys of s[0:S] descending (bitonic sort: in each step,
        thread c compare-exchanges the pair (i, i + stride))."""
        tid = cuda.threadIdx.x
        KP = 1 << LK
        size = 2
        while size <= KP:
            stride = size // 2
            while stride > 0:
                for c in range(tid, S // 2, TH):
                    i = ((c & ~(stride - 1)) << 1) | (c & (stride - 1))
                    a, b = s[i], s[i + stride]
                    desc = (i & size) == 0 or size == KP  # sub-runs alternate; whole runs descend
                    if (a < b) == desc:
                        s[i], s[i + stride] = b, a
                cuda.syncthreads()
                stride //= 2
            size *= 2

    @cuda.jit(device=True)
    def merge_runs(s, LK, n_runs):
        """s[0:S] holds n_runs (a power of two) descending runs of KP = 2^LK keys; leave the
        top KP keys of them all in s[0:KP], descending."""
        tid = cuda.threadIdx.x
        KP = 1 << LK
        half = 1                                        # runs 0, 2h, 4h, ... absorb runs h, 3h, ...
        while half < n_runs:
            n_pairs = n_runs // (2 * half)
            for c in range(tid, n_pairs * KP, TH):      # A_i = max(A_i, B_{KP-1-i}): bitonic
                i = c & (KP - 1)
                a = (c >> LK) * (2 * half * KP) + i
                b = a - i + half * KP + (KP - 1 - i)
                if s[b] > s[a]:
                    s[a] = s[b]
            cuda.syncthreads()
            stride = KP // 2
            while stride > 0:                           # bitonic merge of each run A
                for c in range(tid, n_pairs * (KP // 2), TH):
                    q = c & (KP // 2 - 1)
                    i = (c >> (LK - 1)) * (2 * half * KP) + (((q & ~(stride - 1)) << 1) | (q & (stride - 1)))
                    a, b = s[i], s[i + stride]
                    if a < b:
                        s[i], s[i + stride] = b, a
                cuda.syncthreads()
                stride //= 2
            half *= 2

    @cuda.jit(cache=JIT_CACHE)
    def topk_sample(x, bits, cand, counters, out, step_dev, seed, temperature, k, LK,
                    p_on, top_p, mp_on, log_min_p):
        ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
        ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
        V = x.shape[0]
        tid = cuda.threadIdx.x
        KP = 1 << LK
        G = S >> LK                                     # runs per slice = lists per group
        s = cuda.shared.array(S, uint64)
        flag = cuda.shared.array(1, int32)
        lo = cuda.blockIdx.x * S
        for j in range(tid, S, TH):                     # this block's slice, coalesced
            s[j] = _order_key(bits[lo + j], lo + j) if lo + j < V else uint64(0)
        cuda.syncthreads()
        sort_runs(s, LK)
        merge_runs(s, LK, G)                            # the slice's top KP in s[0:KP]
        n, idx, lists, counts = int64(cuda.gridDim.x), int64(cuda.blockIdx.x), int64(0), int64(0)
        while n > 1:                                    # the tree of last blocks
            for j in range(tid, KP, TH):
                cand[(lists + idx) * KP + j] = s[j]
            g = idx // G
            members = min(G, n - g * G)
            if not _arrive_last(counters, counts + g, members, flag):
                return                                  # another block merges this group
            for j in range(tid, S, TH):                 # the group's lists, zeros past its end
                r = j >> LK
                s[j] = cand[(lists + g * G + r) * KP + (j & (KP - 1))] if r < members else uint64(0)
            cuda.syncthreads()
            merge_runs(s, LK, G)
            lists += n
            counts += (n + G - 1) // G
            n = (n + G - 1) // G
            idx = g
        _draw_top(x, s, k, out, step_dev, seed, temperature, p_on, top_p, mp_on, log_min_p)

    return topk_sample


# ----------------------------------------------------------------------------------------------
# workspaces, launch helpers and public functions

def threads_for(V, cap=MAX_THREADS):
    """A power of two from 32 to ``cap``, about 8 ids per thread for small V."""
    threads = WARP
    while threads * 8 < V and threads < cap:
        threads *= 2
    return threads


class ArgmaxWorkspace:
    """argmax v2's state, preallocated: one (best value, lowest id) pair per block, and the
    arrival counter, which is 0 between launches. ``n_blocks`` = V / (threads * items),
    rounded up; the kernel is correct for any V with any number of blocks."""

    def __init__(self, V: int, threads: int = ARGMAX_THREADS, items: int = ARGMAX_ITEMS):
        if threads % WARP or not WARP <= threads <= MAX_THREADS or items < 1:
            raise ValueError(f"ArgmaxWorkspace: threads={threads}, items={items}; want a multiple "
                             f"of {WARP} up to {MAX_THREADS} threads and items >= 1")
        self.threads = threads
        self.n_blocks = max(1, min(MAX_ARGMAX_BLOCKS, -(-int(V) // (threads * items))))
        self.vals = cuda.device_array(self.n_blocks, np.float32)
        self.ids = cuda.device_array(self.n_blocks, np.int32)
        self.counter = cuda.to_device(np.zeros(1, np.int32))


def _tree_size(n: int, group: int) -> tuple[int, int]:
    """(lists written, counters used) by sample v2's merge tree over n blocks, groups of ``group``."""
    lists = counts = 0
    while n > 1:
        lists += n
        n = -(-n // group)
        counts += n
    return lists, counts


class TopKWorkspace:
    """sample v2's state, preallocated for rows of up to V ids: the merge tree's candidate
    lists (uint64 keys, ``MAX_TOPK`` per list at most) and its counters, which are 0 between
    launches. ``slice_size`` ids per block (a power of two >= 2 * MAX_TOPK), ``threads`` per
    block; small values of both make simulator tests cheap."""

    def __init__(self, V: int, slice_size: int = TOPK_SLICE, threads: int = TOPK_THREADS):
        if slice_size & (slice_size - 1) or slice_size < 2 * MAX_TOPK or not 1 <= threads <= MAX_TOPK_THREADS:
            raise ValueError(f"TopKWorkspace: slice_size={slice_size}, threads={threads}; want a power "
                             f"of two >= {2 * MAX_TOPK} and 1..{MAX_TOPK_THREADS} threads")
        self.V, self.slice_size, self.threads = int(V), slice_size, threads
        self.n_blocks = max(1, -(-self.V // slice_size))
        lists, counts = _tree_size(self.n_blocks, slice_size // MAX_TOPK)   # the most, at k = MAX_TOPK
        self.cand = cuda.device_array(max(1, lists) * MAX_TOPK, np.uint64)
        self.counters = cuda.to_device(np.zeros(max(1, counts), np.int32))


_cached_workspaces = {}


def _default_workspace(kind, V):
    """The workspace used when none is passed: one per (kind, V), kept for the life of the process
    (a captured graph holds its addresses, so it must not be freed)."""
    if (kind, V) not in _cached_workspaces:
        _cached_workspaces[kind, V] = kind(V)
    return _cached_workspaces[kind, V]


def _prepare(logits, out, stream):
    host = not _is_device(logits)
    d = cuda.to_device(np.ascontiguousarray(logits, np.float32).reshape(-1), stream=stream) if host else logits
    dout = cuda.device_array(1, np.int32, stream=stream) if out is None else out
    return host, d.reshape(-1), dout


def launch_argmax_v1(d, out, stream=0):
    argmax_kernel[1, threads_for(d.shape[0]), stream](d, out)              # one block


def launch_argmax_v2(d, out, workspace, stream=0):
    ws = workspace                                                          # n_blocks blocks
    argmax_blocks_kernel[ws.n_blocks, ws.threads, stream](d, ws.vals, ws.ids, ws.counter, out)


def _chain(temperature, top_k, top_p, min_p, seed):
    """The settings as the kernels take them: (k, top_p, p_on, mp_on, log_min_p, seed64, T)."""
    if top_p <= 0.0:                                    # as the reference: keep one token
        top_k, top_p = 1, 1.0
    mp_on = min_p > 0.0
    log_min_p = np.float32(np.log(np.float32(min_p))) if mp_on else np.float32(0.0)
    return (max(int(top_k), 0), np.float64(top_p), top_p < 1.0, mp_on, log_min_p,
            np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF), np.float32(temperature))


def launch_sample_v1(d, out, step, seed, temperature, top_k, top_p, min_p, stream=0):
    V = d.shape[0]
    k, top_p, p_on, mp_on, log_min_p, seed64, t = _chain(temperature, top_k, top_p, min_p, seed)
    sample_kernel[1, threads_for(V, SAMPLE_THREADS), stream](      # one block over the whole row
        d, d.view(np.uint32), out, step, seed64, t, 0 < k < V, np.int64(k), p_on, top_p, mp_on, log_min_p)


def launch_sample_v2(d, out, step, seed, temperature, top_k, top_p, min_p, workspace, stream=0):
    V, ws = d.shape[0], workspace
    k, top_p, p_on, mp_on, log_min_p, seed64, t = _chain(temperature, top_k, top_p, min_p, seed)
    if not 0 < k <= MAX_TOPK:
        raise ValueError(f"sample v2: top_k={k}; it handles 1..{MAX_TOPK} (top_p <= 0 counts as 1)")
    n_blocks = -(-V // ws.slice_size)                   # one block per slice of ids
    if n_blocks > ws.n_blocks:
        raise ValueError(f"sample: a TopKWorkspace for V={ws.V} is too small for a row of V={V}")
    kernel = _topk_kernels(ws.slice_size, ws.threads)
    kernel[n_blocks, ws.threads, stream](
        d, d.view(np.uint32), ws.cand, ws.counters, out, step, seed64, t, np.int64(k),
        np.int64((k - 1).bit_length()), p_on, top_p, mp_on, log_min_p)   # KP = 2^LK >= k


def argmax(logits, out=None, stream=0, workspace=None, version=2):
    """Index of the largest logit (lowest id on ties) into device int32 [1]; NumPy in -> int.

    ``workspace``: an ``ArgmaxWorkspace`` (v2), preallocated for a captured decode step; None uses
    one cached per V. ``version=1`` launches the one-block kernel."""
    host, d, dout = _prepare(logits, out, stream)
    if version == 1:
        launch_argmax_v1(d, dout, stream)
    else:
        ws = workspace if workspace is not None else _default_workspace(ArgmaxWorkspace, d.shape[0])
        launch_argmax_v2(d, dout, ws, stream)
    return int(dout.copy_to_host(stream=stream)[0]) if host else dout


def sample(logits, temperature, top_k, top_p, min_p, seed, step_dev, out=None, stream=0,
           workspace=None, version=None):
    """Draw a token as ``ref.sampling.sample(logits, ..., u=uniform(seed, step_dev[0]))`` would.

    ``step_dev`` is a device (or NumPy) integer array whose element 0 is the step; the
    settings and the seed are fixed per generation. Returns the device int32 [1] with the id
    (an ``int`` when ``logits`` is a NumPy array).

    ``version``: None picks v2 when ``0 < top_k <= 128`` (or ``top_p <= 0``), else v1; 1 or 2
    force one. ``workspace``: a ``TopKWorkspace`` for v2 (an ``ArgmaxWorkspace`` when
    ``temperature <= 0``), preallocated for a captured decode step; None uses one cached per V.
    """
    if temperature <= 0.0:
        ws = workspace if isinstance(workspace, ArgmaxWorkspace) else None
        return argmax(logits, out, stream, workspace=ws)
    host, d, dout = _prepare(logits, out, stream)
    step = step_dev if _is_device(step_dev) else cuda.to_device(np.asarray(step_dev).reshape(-1), stream=stream)
    k = 1 if top_p <= 0.0 else top_k
    if version == 2 or (version is None and 0 < k <= MAX_TOPK):
        ws = workspace if workspace is not None else _default_workspace(TopKWorkspace, d.shape[0])
        launch_sample_v2(d, dout, step, seed, temperature, top_k, top_p, min_p, ws, stream)
    else:
        launch_sample_v1(d, dout, step, seed, temperature, top_k, top_p, min_p, stream)
    return int(dout.copy_to_host(stream=stream)[0]) if host else dout


# ----------------------------------------------------------------------------------------------
# __main__: every version against ref, then kernel times (GPU only)

SETTINGS = ((1.0, 0, 1.0, 0.0), (0.8, 40, 0.95, 0.05), (0.7, 0, 0.9, 0.0), (1.0, 256, 1.0, 0.0),
            (1.0, 128, 1.0, 0.0), (0.7, 20, 0.9, 0.0), (1.5, 100, 0.5, 0.1), (0.3, 1, 1.0, 0.0))


def _rows(rng, V):
    """Test rows: Gaussian logits (scale 3), and integer logits (thousands of exact ties at the top)."""
    return {"gauss": (rng.standard_normal(V) * 3).astype(np.float32),
            "ties": rng.integers(-8, 9, V).astype(np.float32)}


def _check_argmax(V, rows, launches, dout, sim):
    from numba_kernels.matmul import _time        # kernel time: a sleeping kernel holds the stream

    line = f"argmax V={V}:"
    cases = list(rows.values()) + [np.full(V, -np.inf, np.float32)]
    for name, launch in launches.items():
        same = 0
        for row in cases:
            d = cuda.to_device(row)
            launch(d, 0)
            same += int(dout.copy_to_host()[0]) == int(np.argmax(row))
        line += f"  {name} {same}/{len(cases)} equal to np.argmax"
        if not sim:
            d = cuda.to_device(rows["gauss"])
            line += f" {_time(lambda st: launch(d, st), reps=50) * 1e6:7.2f} us"
    print(line)


def _check_sample(V, cfg, rows, launches, dout, step, draws, sim):
    from ref import sampling as ref

    from numba_kernels.matmul import _time

    same = dict.fromkeys(launches, 0)
    for row in rows.values():
        d = cuda.to_device(row)
        for s in range(draws):
            seed, at = 7919 * s + 1, 1000 * s + 7
            want = ref.sample(row, *cfg, u=ref.uniform(seed, at))
            step.copy_to_device(np.array([at], np.int32))
            for name, launch in launches.items():
                launch(d, seed, 0)
                same[name] += int(dout.copy_to_host()[0]) == want
    line = f"sample V={V} (T, k, p, min_p)={cfg}:"
    for name, launch in launches.items():
        line += f"  {name} {same[name]}/{draws * len(rows)} equal to ref"
        if not sim:                                     # 20+1 launches back to back, then a check
            d = cuda.to_device(rows["gauss"])
            line += f" {_time(lambda st: launch(d, 1234, st), reps=20) * 1e6:8.2f} us"
            after = int(dout.copy_to_host()[0]) == ref.sample(rows["gauss"], *cfg, u=ref.uniform(1234, at))
            line += "" if after else " (WRONG after repeated launches)"
    print(line)


def _sweep(V, rows):
    """Kernel times of other block shapes (``--sweep``), each checked once against ref."""
    from ref import sampling as ref

    from numba_kernels.matmul import _time

    d, dout = cuda.to_device(rows["gauss"]), cuda.device_array(1, np.int32)
    step = cuda.to_device(np.array([7], np.int32))
    for threads, items in ((128, 4), (256, 2), (256, 8), (512, 4), (1024, 4)):
        ws = ArgmaxWorkspace(V, threads, items)
        launch_argmax_v2(d, dout, ws)
        ok = int(dout.copy_to_host()[0]) == int(np.argmax(rows["gauss"]))
        us = _time(lambda st: launch_argmax_v2(d, dout, ws, st), reps=50) * 1e6
        print(f"  argmax v2 V={V} {threads} threads x {items} ids ({ws.n_blocks} blocks): {us:7.2f} us{'' if ok else ' WRONG'}")
    for slice_size, threads in ((512, 256), (1024, 128), (1024, 512), (2048, 256), (2048, 512)):
        ws = TopKWorkspace(V, slice_size, threads)
        for cfg in ((0.8, 40, 0.95, 0.05), (1.0, 128, 1.0, 0.0)):
            launch_sample_v2(d, dout, step, 1234, *cfg, ws)
            ok = int(dout.copy_to_host()[0]) == ref.sample(rows["gauss"], *cfg, u=ref.uniform(1234, 7))
            us = _time(lambda st: launch_sample_v2(d, dout, step, 1234, *cfg, ws, st), reps=20) * 1e6
            print(f"  sample v2 V={V} slice {slice_size}, {threads} threads, {cfg}: {us:8.2f} us{'' if ok else ' WRONG'}")


def _main(sweep=False):
    sim = bool(config.ENABLE_CUDASIM)
    if sim:  # the simulator lacks the shuffles: the test suite's implementation supplies them
        install_simulator_shuffles()
    rng = np.random.default_rng(0)
    print("kernel times from CUDA events with the stream held by a sleeping kernel (no launch overhead)"
          if not sim else "simulator: checks only, on a small row")
    for V in ((300,) if sim else (151936, 32064)):
        ws_a = ArgmaxWorkspace(V, threads=32) if sim else ArgmaxWorkspace(V)     # several blocks
        ws_t = TopKWorkspace(V, slice_size=256, threads=64) if sim else TopKWorkspace(V)
        rows = _rows(rng, V)
        dout, step = cuda.device_array(1, np.int32), cuda.to_device(np.zeros(1, np.int32))
        _check_argmax(V, rows, {"v1": lambda d, st: launch_argmax_v1(d, dout, st),
                                "v2": lambda d, st: launch_argmax_v2(d, dout, ws_a, st)}, dout, sim)
        for cfg in SETTINGS:
            launches = {"v1": lambda d, seed, st, cfg=cfg: launch_sample_v1(d, dout, step, seed, *cfg, st)}
            if 0 < (1 if cfg[2] <= 0 else cfg[1]) <= MAX_TOPK:
                launches["v2"] = lambda d, seed, st, cfg=cfg: launch_sample_v2(d, dout, step, seed, *cfg, ws_t, st)
            _check_sample(V, cfg, rows, launches, dout, step, 1 if sim else 20, sim)
        if sweep and not sim:
            _sweep(V, rows)


if __name__ == "__main__":
    import sys

    _main(sweep="--sweep" in sys.argv[1:])
