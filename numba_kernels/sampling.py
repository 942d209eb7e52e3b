r"""Greedy and seeded random sampling on the GPU (reference: ``ref/sampling.py``).

Both kernels run as **one block** over the whole logits row [V] and write the token id into a
device int32 [1], so a captured decode step never returns to Python to pick a token.

Kernel versions
    argmax_kernel  strided loads (coalesced), each thread keeps (best value, lowest id), then
        warp shuffles and shared memory reduce the pairs. Ties go to the lowest id.
    sample_kernel  the reference's filter chain without sorting the vocabulary:
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
        ``u = uniform(seed, step)`` is computed on the device from ``step_dev[0]``, so a
        replayed CUDA graph draws a new number each step.

Each thread owns a contiguous chunk of ``ceil(V / threads)`` ids, so per-thread counts and
masses scan into id order. Limits: one block (one SM) per call, so this is a latency-bound
kernel of up to 14 walks over V (V = 151936: a 0.6 MB row, read from L2);
``top_k`` can be anything up to V, there is no candidate cap. The token equals the
reference's for the same logits, (seed, step) and settings, except when a float32 ``expf``
that differs by an ulp from NumPy's moves a boundary (a measure-zero event in practice).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int32, int64, uint64

from numba_kernels.runtime import is_device as _is_device

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

@cuda.jit
def argmax_kernel(x, out):
    V = x.shape[0]
    tid = cuda.threadIdx.x
    vals = cuda.shared.array(WARP, float32)
    idxs = cuda.shared.array(WARP, int32)
    best, arg = NEG_INF, int32(V)
    for i in range(tid, V, cuda.blockDim.x):            # strided: coalesced loads
        if x[i] > best:                                 # ids rise, so ">" keeps the lowest id
            best, arg = x[i], int32(i)
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
        out[0] = arg if arg < V else 0                  # all -inf / NaN row: token 0


@cuda.jit
def sample_kernel(x, bits, out, step_dev, seed, temperature, k_on, k, p_on, top_p,
                  mp_on, log_min_p):
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


# ----------------------------------------------------------------------------------------------
# launch helpers and public functions

def threads_for(V, cap=MAX_THREADS):
    """A power of two from 32 to ``cap``, about 8 ids per thread for small V."""
    threads = WARP
    while threads * 8 < V and threads < cap:
        threads *= 2
    return threads




def _prepare(logits, out, stream):
    host = not _is_device(logits)
    d = cuda.to_device(np.ascontiguousarray(logits, np.float32).reshape(-1), stream=stream) if host else logits
    dout = cuda.device_array(1, np.int32, stream=stream) if out is None else out
    return host, d.reshape(-1), dout


def argmax(logits, out=None, stream=0):
    """Index of the largest logit (lowest id on ties) into device int32 [1]; NumPy in -> int."""
    host, d, dout = _prepare(logits, out, stream)
    argmax_kernel[1, threads_for(d.shape[0]), stream](d, dout)     # one block
    return int(dout.copy_to_host(stream=stream)[0]) if host else dout


def sample(logits, temperature, top_k, top_p, min_p, seed, step_dev, out=None, stream=0):
    """Draw a token as ``ref.sampling.sample(logits, ..., u=uniform(seed, step_dev[0]))`` would.

    ``step_dev`` is a device (or NumPy) integer array whose element 0 is the step; the
    settings and the seed are fixed per generation. Returns the device int32 [1] with the id
    (an ``int`` when ``logits`` is a NumPy array).
    """
    if temperature <= 0.0:
        return argmax(logits, out, stream)
    host, d, dout = _prepare(logits, out, stream)
    V = d.shape[0]
    if top_p <= 0.0:                                    # as the reference: keep one token
        top_k, top_p = 1, 1.0
    k_on = 0 < top_k < V
    p_on = top_p < 1.0
    mp_on = min_p > 0.0
    log_min_p = np.float32(np.log(np.float32(min_p))) if mp_on else np.float32(0.0)
    step = step_dev if _is_device(step_dev) else cuda.to_device(np.asarray(step_dev).reshape(-1), stream=stream)
    seed64 = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    sample_kernel[1, threads_for(V, SAMPLE_THREADS), stream](      # one block over the whole row
        d, d.view(np.uint32), dout, step, seed64, np.float32(temperature), k_on,
        np.int64(max(top_k, 0)), p_on, np.float64(top_p), mp_on, log_min_p)
    return int(dout.copy_to_host(stream=stream)[0]) if host else dout


if __name__ == "__main__":
    from ref import sampling as ref

    from numba_kernels.runtime import time_us as timed

    rng = np.random.default_rng(0)
    V = 151936
    logits = (rng.standard_normal(V) * 3).astype(np.float32)
    d, dout = cuda.to_device(logits), cuda.device_array(1, np.int32)
    step = cuda.to_device(np.array([7], np.int32))
    assert argmax(d, dout).copy_to_host()[0] == np.argmax(logits)
    print(f"argmax V={V}: {timed(lambda: argmax(d, dout)):8.2f} us")
    for settings in ((1.0, 0, 1.0, 0.0), (0.8, 40, 0.95, 0.05), (0.7, 0, 0.9, 0.0), (1.0, 256, 1.0, 0.0)):
        same = 0
        for s in range(20):
            step.copy_to_device(np.array([s], np.int32))
            got = sample(d, *settings, 1234, step, dout).copy_to_host()[0]
            same += got == ref.sample(logits, *settings, u=ref.uniform(1234, s))
        us = timed(lambda: sample(d, *settings, 1234, step, dout))
        print(f"sample V={V} (T, k, p, min_p)={settings}: {same}/20 equal to ref  {us:8.2f} us")
