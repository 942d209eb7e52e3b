r"""RoPE (rotary position embedding) as CUDA kernels (reference: ``ref/rope.py``).

Pair ``i`` of a head at position ``p`` is rotated by ``theta_i = s * (p * r^i) / f_i`` with
``r = powf(base, -2/rot_dims)``; NEOX pairs are ``(i, i + rot_dims/2)``, interleaved pairs
``(2i, 2i+1)``; the rotated pair is multiplied by ``attn_factor``; dims from ``rot_dims`` on
pass through.

Kernel versions
    v1  one thread per (token, head, pair slot). A head has hs/2 slots: slot i < rot_dims/2
        rotates pair i, the others copy two pass-through values. Every thread computes its own
        angle: the running float32 product ``p * r * r ...`` (i multiplications, the exact
        order of ggml-cpu) and its own cosf/sinf, so the trig work is repeated per head.
    v2  one block per token. The block first computes the rot_dims/2 (cos, sin) pairs of that
        token once into shared memory, then its threads sweep all heads x slots. Trig work
        drops by a factor of n_heads. Used by ``rope``.
    v3  ``rope_qk_append``: the decode step's RoPE of q, RoPE of k and ``attention.kv_append``
        fused into one launch (three launches before). Decode: one token at position pos[0];
        prefill (fifth session): T tokens at positions pos[0] .. pos[0]+T-1. Grid (nh + nkv, T):
        block (b, t) with b < nh rotates query head b of token t in place; block (nh + g, t)
        rotates key head g *into cache row pos[0] + t* and copies value head g into that row.
        ``k`` and ``v`` are only read: the rotated key exists only in the cache. Each thread
        computes the angle of its own pair (v1's way: at T = 1 a shared table would only add a
        barrier), with the same ``_cos_sin`` and ``_rotate_slot`` as v1/v2: the same angles and
        results as ``rope`` followed by ``kv_append``, up to the compiler's FMA contraction of the
        rotation (the tests allow for it).

Positions are read from a device int32 array [T] by the kernel, so a captured CUDA graph
replays with new positions; base, freq_scale and attn_factor are constants of the model.
``r`` is computed once on the host with NumPy (as ``ref.rope.theta_scale`` does), so the kernel's
angles equal the reference's bit for bit; only cosf/sinf may differ by an ulp.

Bytes: 8 per element (read, write); about 6 FLOPs per pair plus, in v2, one sin and one cos
per pair per token. In place (``out`` is ``x``) is allowed: each element is read and written
by the same thread. v3 moves 4 * hs * (2 nh + 4 nkv) bytes (q read and written; k and v read;
one cache row of each written): 9 KiB for Qwen2.5-0.5B, 72 KiB for Phi-3-mini - a launch-latency
bound kernel whose point is to replace three launches by one.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from numba_kernels import ptx
from numba_kernels.runtime import JIT_CACHE, is_device as _is_device, kernel_time_us

MAX_HALF = 256                       # rot_dims up to 512 (shared-memory table of v2)


# --8<-- [start:kernels]
@cuda.jit(device=True, inline=True)
def _cos_sin(pos, i, ts, freq_scale, ff, has_ff, attn_factor):
    theta = float32(pos)
    for _ in range(i):                                  # running product: ggml-cpu's rounding
        theta = theta * ts
    if has_ff:
        theta = theta / ff[i]
    theta = freq_scale * theta
    # float32(): a no-op on the GPU; the simulator's math.cos returns a Python (double) float
    return float32(math.cos(theta)) * attn_factor, float32(math.sin(theta)) * attn_factor


@cuda.jit(device=True, inline=True)
def _rotate_slot(x, out, t, h, k, half, hs, neox, c, s):
    """Slot k of head h of token t: rotate pair k (k < half) or copy two pass-through values."""
    if k < half:
        a = k if neox else 2 * k
        b = k + half if neox else 2 * k + 1
        xa, xb = x[t, h, a], x[t, h, b]
        out[t, h, a] = xa * c - xb * s
        out[t, h, b] = xa * s + xb * c
    else:
        j = 2 * k                                       # k >= half: dims 2k, 2k+1 >= rot_dims
        out[t, h, j] = x[t, h, j]
        out[t, h, j + 1] = x[t, h, j + 1]


@cuda.jit(device=True, inline=True)
def rope_element(xrow, d, p, ts, freq_scale, ff, has_ff, attn_factor, half, neox):
    """Element d of RoPE(xrow) at position p, for kernels that rotate a head on the fly (attention v7):
    the same angle (``_cos_sin``) and pair arithmetic as ``_rotate_slot``."""
    if d >= 2 * half:
        return xrow[d]                                  # past rot_dims: passes through
    k = (d if d < half else d - half) if neox else d // 2
    a = k if neox else 2 * k
    b = k + half if neox else 2 * k + 1
    c, s = _cos_sin(p, k, ts, freq_scale, ff, has_ff, attn_factor)
    xa, xb = xrow[a], xrow[b]
    return xa * c - xb * s if d == a else xa * s + xb * c


@cuda.jit(cache=JIT_CACHE)
def rope_kernel1(x, out, positions, ts, freq_scale, ff, has_ff, attn_factor, half, neox):
    T, nh, hs = x.shape
    slots = hs // 2
    g = cuda.grid(1)                                    # flat (t, h, k) over [T, nh, hs/2]
    if g >= T * nh * slots:
        return
    t = g // (nh * slots)
    h = (g // slots) % nh
    k = g % slots
    c, s = float32(0.0), float32(0.0)
    if k < half:
        c, s = _cos_sin(positions[t], k, ts, freq_scale, ff, has_ff, attn_factor)
    _rotate_slot(x, out, t, h, k, half, hs, neox, c, s)


@cuda.jit(cache=JIT_CACHE)
def rope_kernel2(x, out, positions, ts, freq_scale, ff, has_ff, attn_factor, half, neox):
    T, nh, hs = x.shape
    t = cuda.blockIdx.x                                 # one block per token
    cos_tab = cuda.shared.array(MAX_HALF, float32)
    sin_tab = cuda.shared.array(MAX_HALF, float32)
    pos = positions[t]
    for i in range(cuda.threadIdx.x, half, cuda.blockDim.x):
        cos_tab[i], sin_tab[i] = _cos_sin(pos, i, ts, freq_scale, ff, has_ff, attn_factor)
    cuda.syncthreads()
    slots = hs // 2
    for g in range(cuda.threadIdx.x, nh * slots, cuda.blockDim.x):   # all (head, slot) of token t
        h = g // slots
        k = g - h * slots
        c, s = float32(0.0), float32(0.0)
        if k < half:
            c, s = cos_tab[k], sin_tab[k]
        _rotate_slot(x, out, t, h, k, half, hs, neox, c, s)


@cuda.jit(cache=JIT_CACHE)
def rope_qk_append_kernel(q, k, v, k_cache, v_cache, heads_per_block, pos, ts, freq_scale, ff, has_ff,
                          attn_factor, half, neox):
    # q: [T, nh, hs] rotated in place; k, v: [T, nkv, hs] read only; caches: [S_max, nkv, hs];
    # token t sits at position pos[0] + t (decode: T = 1). Block (x, t): heads x HB .. x HB + HB - 1 of the
    # nh query heads then nkv key/value heads, HB = heads_per_block; the angles of token t are computed once
    # per block into a shared table (as v2), not once per head (``_cos_sin``'s running product is up to half
    # multiplies long, the same for every head)
    ptx.allow_next_grid()                               # PDL (see ptx.py): the next launch may start;
    ptx.wait_previous_grid()                            # nothing another kernel writes is read before this
    nh, hs = q.shape[1], q.shape[2]
    nkv = k.shape[1]
    t = cuda.blockIdx.y                                 # the token
    p = pos[0] + t
    cos_tab = cuda.shared.array(MAX_HALF, float32)
    sin_tab = cuda.shared.array(MAX_HALF, float32)
    for i in range(cuda.threadIdx.x, half, cuda.blockDim.x):
        cos_tab[i], sin_tab[i] = _cos_sin(p, i, ts, freq_scale, ff, has_ff, attn_factor)
    cuda.syncthreads()
    b0 = cuda.blockIdx.x * heads_per_block
    heads = min(heads_per_block, nh + nkv - b0)
    slots = hs // 2
    row = k_cache[p:p + 1]                              # [1, nkv, hs]: cache row p, a view
    for g in range(cuda.threadIdx.x, heads * slots, cuda.blockDim.x):   # (head, slot) of the block's heads
        b = b0 + g // slots
        kk = g % slots
        c, s = float32(0.0), float32(0.0)
        if kk < half:
            c, s = cos_tab[kk], sin_tab[kk]
        if b < nh:
            _rotate_slot(q, q, t, b, kk, half, hs, neox, c, s)
        else:
            _rotate_slot(k[t:t + 1], row, 0, b - nh, kk, half, hs, neox, c, s)
    first_kv = max(b0, nh)                              # and the value rows of the block's k/v heads, unrotated
    for g in range(cuda.threadIdx.x, max(b0 + heads - first_kv, 0) * hs, cuda.blockDim.x):
        kv = first_kv - nh + g // hs
        d = g % hs
        v_cache[p, kv, d] = v[t, kv, d]

# --8<-- [end:kernels]

# ----------------------------------------------------------------------------------------------
# launch helpers

def _args(x, positions, base, rot_dims, neox, freq_scale, freq_factors, attn_factor):
    # powf(base, -2/d) in float32: the same NumPy expression as ref.rope.theta_scale
    theta_scale = np.float32(np.power(np.float32(base), np.float32(-2.0) / np.float32(rot_dims)))
    has_ff = freq_factors is not None
    ff = freq_factors if has_ff else x.reshape(-1)      # a float32 [n] stand-in, never read
    return (positions, theta_scale, np.float32(freq_scale), ff, has_ff,
            np.float32(attn_factor), rot_dims // 2, bool(neox))


def launch_v1(x, out, args, stream=0):
    T, nh, hs = x.shape
    n = T * nh * (hs // 2)                              # one thread per (token, head, slot)
    block = 128
    rope_kernel1[(n + block - 1) // block, block, stream](x, out, *args)


def launch_v2(x, out, args, stream=0):
    T, nh, hs = x.shape
    work = nh * (hs // 2)                               # (head, slot) pairs of one token
    block = 32
    while block < work and block < 256:
        block *= 2
    rope_kernel2[T, block, stream](x, out, *args)       # one block per token


QK_APPEND_HEADS = 8           # heads per block of rope_qk_append for prompts (one angle table serves them)


def launch_qk_append(q, k, v, k_cache, v_cache, args, stream=0, heads_per_block=None):
    """``rope_qk_append_kernel``: a block per (group of heads, token). ``heads_per_block``: default
    QK_APPEND_HEADS for a prompt of 32 tokens or more (blocks enough to fill the GPU), 1 below (a decode step)."""
    T, nh, hs = q.shape
    nkv = k.shape[1]
    hb = heads_per_block or (QK_APPEND_HEADS if T >= 32 else 1)
    block = 32 if hs * hb <= 64 else 64 if hs * hb <= 128 else 128   # threads for the (head, slot) pairs
    grid = (-(-(nh + nkv) // hb), T)                      # x: groups of q heads then k/v heads, y: the token
    rope_qk_append_kernel[grid, block, stream](q, k, v, k_cache, v_cache, hb, *args)


def _rot_dims(hs, rot_dims):
    d = hs if rot_dims is None else int(rot_dims)
    if d % 2 or d > hs or d // 2 > MAX_HALF:
        raise ValueError(f"rope: rot_dims={d} must be even, <= head size {hs} and <= {2 * MAX_HALF}")
    return d


def kernel_args(x, positions, base, head_size, rot_dims=None, neox=True, freq_scale=1.0, freq_factors=None,
                attn_factor=1.0):
    """The RoPE kernels' trailing arguments, computed once for callers that launch many times
    (``launch_qk_append(q, k, v, k_cache, v_cache, args)``; the prefill fast path): positions (a device int32
    array), the frequency base as theta_scale = base^(-2/rot_dims) in float32, freq_scale, the frequency
    factors (or a stand-in ``x`` never read), attn_factor, rot_dims / 2 and the layout. ``x``: any device
    float32 array (the stand-in); rot_dims checked as ``rope`` checks it."""
    return _args(x, positions, base, _rot_dims(head_size, rot_dims), neox, freq_scale, freq_factors, attn_factor)


def _dev(x, dtype, stream):
    return x if x is None or _is_device(x) else cuda.to_device(np.ascontiguousarray(x, dtype), stream=stream)


def rope(x, positions, base, rot_dims=None, neox=True, freq_scale=1.0, freq_factors=None,
         attn_factor=1.0, out=None, stream=0):
    """Rotate x [T, n_heads, hs] at positions [T] (int32; NumPy or device); ``out`` may be ``x``."""
    host = not _is_device(x)
    T, nh, hs = x.shape
    d = _rot_dims(hs, rot_dims)
    dx = _dev(x, np.float32, stream)
    dpos = _dev(positions, np.int32, stream)
    dff = _dev(freq_factors, np.float32, stream)
    dout = cuda.device_array(x.shape, np.float32, stream=stream) if out is None else out
    launch_v2(dx, dout, _args(dx, dpos, base, d, neox, freq_scale, dff, attn_factor), stream)
    return dout.copy_to_host(stream=stream) if host else dout


def rope_qk_append(q, k, v, k_cache, v_cache, pos, base, *, rot_dims=None, neox=True, freq_scale=1.0,
                   freq_factors=None, attn_factor=1.0, stream=0):
    """T tokens at positions pos[0] .. pos[0]+T-1 (decode: one): rotate q [T, nh, hs] in place and write
    RoPE(k) and v ([T, nkv, hs]) into those rows of k_cache / v_cache ([S_max, nkv, hs], on the device).
    One launch.

    Same result as ``rope(q, pos, ...)``, ``rope(k, pos, ...)`` and ``attention.kv_append(k, v, ...)``,
    except that ``k`` itself is left unrotated (only its cache row is). ``pos``: int32 [1], read on the
    device (a captured graph replays with the next position). q, k, v, pos and freq_factors may be
    NumPy (uploaded); for a NumPy q the rotated copy is returned, else q itself."""
    host = not _is_device(q)
    T, nh, hs = q.shape
    nkv = k.shape[1]
    S = k_cache.shape[0]
    if (tuple(k.shape) != (T, nkv, hs) or tuple(v.shape) != (T, nkv, hs)
            or tuple(k_cache.shape) != (S, nkv, hs) or tuple(v_cache.shape) != (S, nkv, hs)):
        raise ValueError(f"rope_qk_append: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, caches "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}: want [T, nh, hs], [T, nkv, hs] x2, [S, nkv, hs] x2")
    if not (_is_device(k_cache) and _is_device(v_cache)):
        raise ValueError("rope_qk_append: k_cache and v_cache must be device arrays (they are written)")
    d = _rot_dims(hs, rot_dims)
    dq = _dev(q, np.float32, stream)
    dpos = _dev(np.atleast_1d(pos) if not _is_device(pos) else pos, np.int32, stream)
    dff = _dev(freq_factors, np.float32, stream)
    args = _args(dq, dpos, base, d, neox, freq_scale, dff, attn_factor)
    launch_qk_append(dq, _dev(k, np.float32, stream), _dev(v, np.float32, stream), k_cache, v_cache, args, stream)
    return dq.copy_to_host(stream=stream) if host else dq


# ----------------------------------------------------------------------------------------------
# __main__: check every version against ref, then time them (device time, launch cost left out)

COPY_BW = 4.3e12          # H200 device-to-device copy bandwidth, bytes/s
SHAPES = (("Qwen2.5-0.5B", 14, 2, 64, 1e6, None), ("Phi-3-mini", 32, 32, 96, 1e4, 1.0))  # name nh nkv hs base ff


def _time_us(launch, reps=50):
    """Device microseconds per launch(stream) (runtime.kernel_time_us: no host launch cost)."""
    return kernel_time_us(lambda stream, i: launch(stream), reps)


def _check_qk_append(rng, name, nh, nkv, hs, base, ff, pos=30000, S=32768):
    """rope_qk_append against ref.rope + a cache row written by hand; returns the device arrays for timing."""
    from ref import rope as ref

    q, k, v = (rng.standard_normal((1, n, hs)).astype(np.float32) for n in (nh, nkv, nkv))
    factors = None if ff is None else rng.uniform(1.0, 4.0, hs // 2).astype(np.float32)
    kc, vc = cuda.device_array((S, nkv, hs), np.float32), cuda.device_array((S, nkv, hs), np.float32)
    dq, dpos = cuda.to_device(q), cuda.to_device(np.array([pos], np.int32))
    rope_qk_append(dq, k, v, kc, vc, dpos, base, freq_factors=factors, attn_factor=1.19)
    want_q = ref.rope(q, [pos], base, freq_factors=factors, attn_factor=1.19)
    want_k = ref.rope(k, [pos], base, freq_factors=factors, attn_factor=1.19)
    err = max(np.abs(dq.copy_to_host() - want_q).max(), np.abs(kc[pos:pos + 1].copy_to_host() - want_k).max())
    v_ok = np.array_equal(vc[pos:pos + 1].copy_to_host(), v)
    print(f"rope_qk_append {name} nh={nh} nkv={nkv} hs={hs} pos={pos}: max|err| {err:.1e}, v row exact: {v_ok}")
    assert err < 1e-5 and v_ok
    return dq, cuda.to_device(k), cuda.to_device(v), kc, vc, dpos, factors


def _versions(rng, sim):
    """v1 and v2 against ref.rope at model-like shapes (timed on the GPU)."""
    from ref import rope as ref

    big = 4 if sim else 512
    for T, nh, hs, neox in ((1, 14, 64, True), (big, 14, 64, True), (big, 32, 96, True), (big, 32, 128, False)):
        x = rng.standard_normal((T, nh, hs)).astype(np.float32)
        pos = rng.integers(0, 32768, T).astype(np.int32)
        dx, dout, dpos = cuda.to_device(x), cuda.device_array(x.shape, np.float32), cuda.to_device(pos)
        args = _args(dx, dpos, 1e6, hs, neox, 1.0, None, 1.0)
        expect = ref.rope(x, pos, 1e6, neox=neox)
        line = f"rope T={T:4} nh={nh} hs={hs} neox={neox!s:5}:"
        for name, launch in (("v1", launch_v1), ("v2", launch_v2)):
            launch(dx, dout, args)
            err = np.abs(dout.copy_to_host() - expect).max()
            assert err < 1e-5, name
            line += f"  {name} max|err| {err:.1e}"
            if not sim:
                us = _time_us(lambda st: launch(dx, dout, args, st))
                line += f" {us:6.2f} us {8 * x.size / us / 1e3:6.0f} GB/s"
        print(line)


def _time_fused(fused):
    """One decode layer's RoPE + cache append: v3 (one launch) against v2 twice + kv_append (three)."""
    from numba_kernels import attention

    print(f"decode step, one layer: device time; bytes = q read+written, k and v read, two cache rows written; "
          f"% of {COPY_BW / 1e12:.1f} TB/s")
    for name, nh, nkv, hs, (dq, dk, dv, kc, vc, dpos, factors) in fused:
        nbytes = 4 * hs * (2 * nh + 4 * nkv)
        a_q = _args(dq, dpos, 1e6, hs, True, 1.0, _dev(factors, np.float32, 0), 1.0)
        a_k = _args(dk, dpos, 1e6, hs, True, 1.0, _dev(factors, np.float32, 0), 1.0)

        def three(st):  # what the decoder launched before: rope(q), rope(k), kv_append
            launch_v2(dq, dq, a_q, st)
            launch_v2(dk, dk, a_k, st)
            attention.launch_kv_append(dk, dv, kc, vc, dpos, st)

        for label, launch in (("v3 rope_qk_append (1 launch)", lambda st: launch_qk_append(dq, dk, dv, kc, vc, a_q, st)),
                              ("v2 rope q, k + kv_append (3)", three)):
            us = _time_us(launch)
            print(f"  {name:<12} {label:<30} {us:6.2f} us  {nbytes / 1024:5.1f} KiB  {nbytes / us / 1e3:6.1f} GB/s"
                  f"  {100 * nbytes / us / 1e-6 / COPY_BW:5.2f}%")


def _main():
    from numba import config

    sim = bool(config.ENABLE_CUDASIM)
    rng = np.random.default_rng(0)
    _versions(rng, sim)
    fused = [(name, nh, nkv, hs, _check_qk_append(rng, name, nh, nkv, hs, base, ff))
             for name, nh, nkv, hs, base, ff in (SHAPES if not sim else (("small", 7, 1, 64, 1e6, 1.0),))]
    if sim:
        print("simulator: checks only, no timings")
        return
    _time_fused(fused)


if __name__ == "__main__":
    _main()
