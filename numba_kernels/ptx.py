"""PTX instructions that Numba does not expose, as Numba intrinsics: the tensor-core product and the
programmatic dependent launch.

Numba's ``@cuda.jit`` has no tensor-core API (no ``wmma``/``mma``), but it compiles through LLVM,
whose NVPTX backend accepts inline PTX. An ``@intrinsic`` (numba.cuda.extending) emits one inline
``asm`` statement at the call site, so a kernel written in Python can issue the instruction. The
prefill product (``matmul`` v11) uses:

- ``pack_f16x2(lo, hi) -> uint32``: ``cvt.rn.f16x2.f32``, two float32 rounded to nearest-even float16
  in one 32-bit register, ``lo`` in bits 0-15 and ``hi`` in bits 16-31 (sm_80+);
- ``mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3) -> (d0, d1, d2, d3)``:
  ``mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32``, one warp computes D = A B + C for a
  16 x 16 float16 A (row-major), a 16 x 8 float16 B (column-major) and float32 C, D (16 x 8):
  4096 multiply-adds, products exact in float32 and accumulated in float32 (sm_80+).

The operands are spread over the 32 lanes of the warp (PTX ISA, "Matrix Fragments for
mma.m16n8k16 with floating point type"). With ``g = lane // 4`` (the group) and ``t = lane % 4``:

- A: register a0 holds A[g, 2t:2t+2] (two float16, the lower column in the low half), a1 A[g+8, 2t:2t+2],
  a2 A[g, 2t+8:2t+10], a3 A[g+8, 2t+8:2t+10];
- B: b0 holds B[2t:2t+2, g] (k in the low half first), b1 B[2t+8:2t+10, g];
- C and D: c0 = C[g, 2t], c1 = C[g, 2t+1], c2 = C[g+8, 2t], c3 = C[g+8, 2t+1].

So a row of A (a token of x) and a column of B (a row of W, k contiguous) are both read as pairs of
consecutive k: the kernels store x and W in shared memory as float16 pairs, one uint32 per pair.

The decode step's kernels use two more (sm_90+, PTX ``griddepcontrol``), for programmatic dependent
launch (PDL): a kernel launched with the launch attribute ``programmatic_stream_serialization``
(``runtime.programmatic_launches``) may start while the launch before it in the stream is still running,
as soon as every block of that one has called ``allow_next_grid``. Its blocks then do what does not
depend on the previous kernel (touch their weight rows: weights never change) and stop at
``wait_previous_grid`` until the previous kernel has finished and its writes are visible. So the launch
latency and the first DRAM round trip of one kernel overlap the tail of the one before:

- ``allow_next_grid()``: ``griddepcontrol.launch_dependents``, the next grid may be scheduled;
- ``wait_previous_grid()``: ``griddepcontrol.wait``, block until the grids this one depends on have
  completed and their memory is visible. Returns at once for a kernel launched without the attribute.

and the decode products on the tensor cores (``matmul`` v12) two small ones:

- ``sub_f16x2(a, b)``: the two float16 differences of packed pairs (``sub.rn.f16x2``);
- ``prefetch_l2(arr, start, nbytes)``: ``cp.async.bulk.prefetch.L2``, ask the L2 cache to fetch bytes
  ``start .. start + nbytes`` of ``arr``'s memory (the 16-byte aligned part), without waiting (sm_90+).

The decode products' K-quant units (``matmul`` v15) read their quants with

- ``load_u32x4(a, i) -> (a[i], a[i+1], a[i+2], a[i+3])``: one 16-byte load (``ld.global.nc.v4.u32``)
  from a uint32 array whose element ``i`` starts on a 16-byte aligned address (the caller's promise; a
  misaligned address faults). Not inline PTX but an LLVM vector load in the global address space,
  marked invariant (weights never change during a kernel), so the compiler still schedules it;
  ``load_f32x4`` is the same load of four floats (v11's float32 x rows).

The prefill product over float16 weights (``matmul`` v23) moves whole 16-byte lines between memories:

- ``load_shared_u32x4(sm, i) -> (sm[i], .., sm[i+3])`` and ``store_shared_u32x4(sm, i, a, b, c, d)``:
  ``ld.shared.v4.u32`` / ``st.shared.v4.u32`` on a uint32 shared array, ``i`` a multiple of 4 (16-byte aligned);
- ``store_u32x4(a, i, a0, a1, a2, a3)``: ``st.global.v4.u32``, the 16-byte store to a global uint32 array;
- ``cp_async16(sm, i, src, j)``: ``cp.async.cg.shared.global``, an asynchronous copy of the 16 bytes at word j of a
  global uint32 array to word i of a shared one (both 16-byte aligned; sm_80+), with no register in between;
  ``cp_async_commit()`` closes the thread's group of copies issued since the last one (``cp.async.commit_group``),
  and ``cp_async_wait(n)`` (n a compile-time constant: one intrinsic per n, ``CP_ASYNC_WAIT[n]``) waits until at
  most n of the thread's groups are still in flight (``cp.async.wait_group n``). The copies of other threads are
  visible after that wait and a barrier.

The decode products with their rows staged in shared memory (``matmul`` v18) copy each weight row with the
Hopper bulk-copy engine (TMA, 1-D form), which writes shared memory and signals a transaction barrier
(``mbarrier``) in that shared memory when the bytes have landed:

- ``bulk_expect(bars, i, nbytes)``: one thread initializes barrier ``bars[i]`` (a uint64 word of shared memory)
  for one arrival, makes the init visible to the copy engine and arrives, announcing ``nbytes`` to come
  (``mbarrier.init`` + ``fence.mbarrier_init`` + ``mbarrier.arrive.expect_tx``);
- ``bulk_copy(dst, dst_byte, src, src_byte, nbytes, bars, i)``: ``cp.async.bulk.shared::cluster.global.mbarrier``,
  bytes ``src_byte ..`` of the global array ``src`` to bytes ``dst_byte ..`` of the shared array ``dst``, counted on
  ``bars[i]``. Both addresses and ``nbytes`` must be multiples of 16 (the caller's promise);
- ``bulk_ready(bars, i, parity) -> uint32``: 1 once the barrier's phase of that parity has completed, i.e. every
  announced byte has arrived (``mbarrier.try_wait.parity``; the caller loops). A fresh barrier is in phase 0.

The decode products over 8-bit activations (``matmul`` v19, then v20) use

- ``dp4a(a, b, c) -> int32``: ``dp4a.s32.s32``, c plus the sum of the four products of the signed bytes of
  a and b (byte i with byte i): four multiply-adds of 8-bit integers in one instruction (sm_61+);
- ``dp4a_us(a, b, c) -> int32``: ``dp4a.u32.s32``, the same with a's bytes unsigned (0..255): quant nibbles
  masked in place (``w & 0xF0F0F0F0`` = 16 q) against signed int8 activations (``matmul`` v20).

and the weight decoders (``matmul.DECODERS``) one that is not an asm statement but plain LLVM IR:

- ``shr_u32(a, n) -> uint32``: ``a >> n`` on 32 bits. Numba types arithmetic on 32-bit integers as 64-bit, and a
  64-bit shift by a variable amount stays a pair of 64-bit funnel shifts in the SASS.

In the simulator ``bulk_copy`` copies at once (after checking alignment and bounds) and the barrier calls do nothing.

The rule every kernel launched with the attribute follows: no read of anything another kernel writes
(activations, the cache, ``state``) and no write at all before ``wait_previous_grid``. On GPUs before
sm_90 and in the simulator both are no-ops (a plain launch is then fully ordered anyway).

In the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same names are plain Python functions that
compute exactly this, lane by lane: ``mma_f16`` collects the fragments of the warp through a
per-block table (every thread of the block must call it, as every lane of a warp must on the GPU),
rebuilds the two rows of A and two columns of B it needs and returns the lane's four entries of D. That
Python version is the reference of the fragment layout above; ``tests/test_matmul.py`` checks the real
instruction against NumPy on the GPU (sixth session: it passed on the H200).
"""
from __future__ import annotations

import threading

import numpy as np
from numba import cuda, float32, uint32, uint64
from numba.cuda import config

WARP = 32
MMA_M, MMA_N, MMA_K = 16, 8, 16          # the shape of one mma.sync


def _simulator_pack_f16x2(lo, hi):
    """uint32 with float16(lo) in bits 0-15 and float16(hi) in bits 16-31 (round to nearest even; past float16's
    range +-inf, as cvt.rn gives)."""
    with np.errstate(over="ignore"):
        pair = np.array([lo, hi], np.float32).astype(np.float16).view(np.uint16)
    return np.uint32(int(pair[0]) | (int(pair[1]) << 16))


def _halves(word):
    """The two float16 of a packed uint32 as float32: (low, high)."""
    return np.array([int(word) & 0xFFFF, int(word) >> 16], np.uint16).view(np.float16).astype(np.float32)


def _a_row(frags, r):
    """Row r of A [16] from the lanes holding it: lanes 4 (r % 8) + tt carry columns 2tt, 2tt+1 in
    register a0 (r < 8) / a1 (r >= 8) and columns 2tt+8, 2tt+9 in a2 / a3."""
    row = np.zeros(MMA_K, np.float32)
    for tt in range(4):
        a = frags[4 * (r % 8) + tt]
        row[2 * tt:2 * tt + 2] = _halves(a[r // 8])
        row[2 * tt + 8:2 * tt + 10] = _halves(a[2 + r // 8])
    return row


def _b_col(frags, n):
    """Column n of B [16]: lanes 4 n + tt carry rows 2tt, 2tt+1 in b0 and rows 2tt+8, 2tt+9 in b1."""
    col = np.zeros(MMA_K, np.float32)
    for tt in range(4):
        b = frags[4 * n + tt]
        col[2 * tt:2 * tt + 2] = _halves(b[4])
        col[2 * tt + 8:2 * tt + 10] = _halves(b[5])
    return col


def _simulator_mma_f16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    """One lane's share of D = A B + C (the simulator's stand-in for the warp-wide instruction):
    lane (g, t) returns D[g, 2t], D[g, 2t+1], D[g+8, 2t], D[g+8, 2t+1]."""
    me = threading.current_thread()
    table = me._manager.__dict__.setdefault("_mma_table", {})
    tid = me.thread_id
    table[tid] = (a0, a1, a2, a3, b0, b1)
    me.syncthreads()                                   # every lane has published its fragments
    lane = tid % WARP
    frags = [table[tid - lane + j] for j in range(WARP)]
    me.syncthreads()                                   # the table may be reused after this
    g, t = lane // 4, lane % 4
    rows = (_a_row(frags, g), _a_row(frags, g + 8))
    cols = (_b_col(frags, 2 * t), _b_col(frags, 2 * t + 1))
    # products of float16 are exact in float64; the sum is rounded to float32 once (the hardware
    # accumulates in float32 in an order it does not document)
    with np.errstate(invalid="ignore", over="ignore"):     # NaN and inf propagate, as on the GPU
        dot = [float(np.dot(rows[i].astype(np.float64), cols[j].astype(np.float64))) for i in (0, 1) for j in (0, 1)]
    return tuple(np.float32(d + c) for d, c in zip(dot, (c0, c1, c2, c3)))


def _no_op():
    """The simulator's grid-dependency control: its launches are fully ordered."""


def _simulator_sub_f16x2(a, b):
    """Two float16 differences a - b, lane by lane of the packed pairs (rounded to float16)."""
    d = (_halves(a).astype(np.float16) - _halves(b).astype(np.float16)).astype(np.float16)
    return np.uint32(int(d.view(np.uint16)[0]) | (int(d.view(np.uint16)[1]) << 16))


def _simulator_prefetch_l2(arr, start, nbytes):
    """A cache hint: nothing to move in the simulator, but the bytes asked for must lie inside ``arr`` (on the
    GPU a bulk prefetch outside the allocation is an illegal address)."""
    size = arr.size * arr.itemsize
    assert 0 <= int(start) and int(start) + max(int(nbytes), 0) <= size, \
        f"prefetch_l2: bytes [{int(start)}, {int(start) + int(nbytes)}) outside the array's {size}"


def _simulator_load_x4(a, i):
    """The four elements a[i .. i + 3] (4-byte words or floats), i a multiple of 4 (the 16-byte alignment the GPU
    needs): ``load_u32x4`` and ``load_f32x4``."""
    assert int(i) % 4 == 0, f"16-byte load: element {int(i)} is not 16-byte aligned"
    i = int(i)
    return a[i], a[i + 1], a[i + 2], a[i + 3]


def _simulator_store_x4(a, i, w0, w1, w2, w3):
    """a[i .. i + 3] = w0 .. w3, i a multiple of 4 (``store_shared_u32x4``, ``store_u32x4``)."""
    assert int(i) % 4 == 0, f"16-byte store: element {int(i)} is not 16-byte aligned"
    i = int(i)
    a[i], a[i + 1], a[i + 2], a[i + 3] = w0, w1, w2, w3


def _simulator_cp_async16(sm, i, src, j):
    """The simulator's asynchronous copy is done when issued (alignment as the GPU needs it)."""
    _simulator_store_x4(sm, i, *_simulator_load_x4(src, j))


def _simulator_bulk_copy(dst, dst_byte, src, src_byte, nbytes, bars, i):
    """Copy at once, word by word through the uint32 views; alignment and bounds as the GPU needs them."""
    d, s, n = int(dst_byte), int(src_byte), int(nbytes)
    assert d % 16 == 0 and s % 16 == 0 and n % 16 == 0 and n > 0, \
        f"bulk_copy: offsets {d}, {s} and size {n} must be positive multiples of 16"
    isz = dst.dtype.itemsize
    assert src.dtype.itemsize == isz, "bulk_copy: give both arrays as views of one item size"
    assert s + n <= src.size * isz and d + n <= dst.size * isz, \
        f"bulk_copy: bytes [{s}, {s + n}) of {src.size * isz} -> [{d}, {d + n}) of {dst.size * isz}"
    dst[d // isz:(d + n) // isz] = src[s // isz:(s + n) // isz]


def _simulator_bulk_expect(bars, i, nbytes):
    """The simulator's copies are done when issued: nothing to count."""


def _simulator_bulk_ready(bars, i, parity):
    return uint32(1)


def _signed_bytes(word):
    return np.array([int(word) & 0xFFFFFFFF], np.uint32).view(np.int8).astype(np.int64)


def _wrap_int32(total):
    return np.int32(((total + 2 ** 31) % 2 ** 32) - 2 ** 31)


def _simulator_dp4a(a, b, c):
    """c + sum of the products of the four signed bytes of a and b, wrapped to int32 as the instruction does."""
    return _wrap_int32(int(c) + int((_signed_bytes(a) * _signed_bytes(b)).sum()))


def _simulator_dp4a_us(a, b, c):
    """c + sum of the products of a's four unsigned bytes with b's four signed bytes, wrapped to int32."""
    ua = np.array([int(a) & 0xFFFFFFFF], np.uint32).view(np.uint8).astype(np.int64)
    return _wrap_int32(int(c) + int((ua * _signed_bytes(b)).sum()))


def _simulator_shr_u32(a, n):
    return np.uint32((int(a) & 0xFFFFFFFF) >> int(n))


if config.ENABLE_CUDASIM:
    shr_u32 = _simulator_shr_u32
    dp4a = _simulator_dp4a
    dp4a_us = _simulator_dp4a_us
    bulk_copy = _simulator_bulk_copy
    bulk_expect = _simulator_bulk_expect
    bulk_ready = _simulator_bulk_ready
    pack_f16x2 = _simulator_pack_f16x2
    mma_f16 = _simulator_mma_f16
    sub_f16x2 = _simulator_sub_f16x2
    prefetch_l2 = _simulator_prefetch_l2
    load_u32x4 = load_f32x4 = load_shared_u32x4 = _simulator_load_x4
    store_shared_u32x4 = store_u32x4 = _simulator_store_x4
    cp_async16 = _simulator_cp_async16
    cp_async_commit = _no_op
    CP_ASYNC_WAIT = tuple(_no_op for _ in range(8))
    allow_next_grid = wait_previous_grid = _no_op
else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    def _cast_all(context, builder, values, from_types, to_type):
        return [context.cast(builder, v, t, to_type) for v, t in zip(values, from_types)]

    @intrinsic
    def pack_f16x2(typingctx, lo, hi):
        sig = types.uint32(lo, hi)

        def codegen(context, builder, signature, args):
            lo_v, hi_v = _cast_all(context, builder, args, signature.args, types.float32)
            fn = ir.FunctionType(ir.IntType(32), [ir.FloatType(), ir.FloatType()])
            # cvt.rn.f16x2.f32 d, a, b: a goes to the upper half, b to the lower half
            asm = ir.InlineAsm(fn, "cvt.rn.f16x2.f32 $0, $1, $2;", "=r,f,f")
            return builder.call(asm, [hi_v, lo_v])

        return sig, codegen

    @intrinsic
    def mma_f16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        sig = types.UniTuple(types.float32, 4)(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

        def codegen(context, builder, signature, args):
            words = _cast_all(context, builder, args[:6], signature.args[:6], types.uint32)
            accs = _cast_all(context, builder, args[6:], signature.args[6:], types.float32)
            f32, i32 = ir.FloatType(), ir.IntType(32)
            fn = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
            asm = ir.InlineAsm(
                fn,
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
                "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f")
            d = builder.call(asm, words + accs)
            parts = [builder.extract_value(d, i) for i in range(4)]
            return context.make_tuple(builder, signature.return_type, parts)

        return sig, codegen

    def _grid_dependency_control() -> bool:
        """griddepcontrol exists from sm_90 (Hopper) on; earlier GPUs get no instruction at all."""
        cc = config.FORCE_CUDA_CC or cuda.get_current_device().compute_capability
        return tuple(cc) >= (9, 0)

    def _statement(ptx_text, when=lambda: True):
        """An intrinsic with no operands that emits ``ptx_text`` (kept in place: side effect, memory clobber), on
        the GPUs where ``when()`` (evaluated as the kernel compiles) says it exists; nothing elsewhere."""
        @intrinsic
        def statement(typingctx):
            def codegen(context, builder, signature, args):
                if when():
                    asm = ir.InlineAsm(ir.FunctionType(ir.VoidType(), []), ptx_text, "~{memory}", side_effect=True)
                    builder.call(asm, [])
                return context.get_dummy_value()
            return types.void(), codegen
        return statement

    allow_next_grid = _statement("griddepcontrol.launch_dependents;", _grid_dependency_control)
    wait_previous_grid = _statement("griddepcontrol.wait;", _grid_dependency_control)

    @intrinsic
    def shr_u32(typingctx, a, n):
        """a >> n on 32 bits (a as unsigned, 0 <= n < 32). Numba widens integer arithmetic to 64 bits, and a
        64-bit shift by a variable amount stays 64-bit in the SASS (two funnel shifts); this is one ``shr``."""
        sig = types.uint32(a, n)

        def codegen(context, builder, signature, args):
            av, nv = _cast_all(context, builder, args, signature.args, types.uint32)
            return builder.lshr(av, nv)

        return sig, codegen

    @intrinsic
    def sub_f16x2(typingctx, a, b):
        sig = types.uint32(a, b)

        def codegen(context, builder, signature, args):
            av, bv = _cast_all(context, builder, args, signature.args, types.uint32)
            fn = ir.FunctionType(ir.IntType(32), [ir.IntType(32), ir.IntType(32)])
            return builder.call(ir.InlineAsm(fn, "sub.rn.f16x2 $0, $1, $2;", "=r,r,r"), [av, bv])

        return sig, codegen

    @intrinsic
    def prefetch_l2(typingctx, arr, start, nbytes):
        sig = types.void(arr, start, nbytes)

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            i64 = ir.IntType(64)
            first, count = _cast_all(context, builder, args[1:], signature.args[1:], types.int64)
            lo = builder.add(builder.ptrtoint(ary.data, i64), first)
            hi = builder.add(lo, count)
            lo = builder.and_(builder.add(lo, i64(15)), i64(~15))          # 16-byte aligned, inside the range
            hi = builder.and_(hi, i64(~15))
            size = builder.sub(hi, lo)
            if _grid_dependency_control():                                 # (cp.async.bulk: sm_90 too)
                with builder.if_then(builder.icmp_signed(">", size, i64(0))):
                    fn = ir.FunctionType(ir.VoidType(), [i64, ir.IntType(32)])
                    asm = ir.InlineAsm(fn, "{ .reg .u64 g; cvta.to.global.u64 g, $0; "
                                           "cp.async.bulk.prefetch.L2.global [g], $1; }", "l,r", side_effect=True)
                    builder.call(asm, [lo, builder.trunc(size, ir.IntType(32))])
            return context.get_dummy_value()

        return sig, codegen

    def _element_address(context, builder, arr_type, arr, index, scale):
        """Generic address of byte ``index * scale`` of the array (i64)."""
        ary = context.make_array(arr_type)(context, builder, arr)
        i64 = ir.IntType(64)
        return builder.add(builder.ptrtoint(ary.data, i64), builder.mul(index, i64(scale)))

    _SHARED32 = "cvta.to.shared.u64 %s, %s; cvt.u32.u64 %s, %s;"

    @intrinsic
    def bulk_expect(typingctx, bars, index, nbytes):
        sig = types.void(bars, index, nbytes)

        def codegen(context, builder, signature, args):
            i, n = _cast_all(context, builder, args[1:], signature.args[1:], types.int64)
            bar = _element_address(context, builder, signature.args[0], args[0], i, 8)
            fn = ir.FunctionType(ir.VoidType(), [ir.IntType(64), ir.IntType(32)])
            asm = ir.InlineAsm(fn, "{ .reg .u64 a; .reg .u32 b; .reg .b64 st; " + _SHARED32 % ("a", "$0", "b", "a")
                               + " mbarrier.init.shared::cta.b64 [b], 1; fence.mbarrier_init.release.cluster;"
                               " mbarrier.arrive.expect_tx.shared::cta.b64 st, [b], $1; }",
                               "l,r,~{memory}", side_effect=True)
            builder.call(asm, [bar, builder.trunc(n, ir.IntType(32))])
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def bulk_copy(typingctx, dst, dst_byte, src, src_byte, nbytes, bars, index):
        sig = types.void(dst, dst_byte, src, src_byte, nbytes, bars, index)

        def codegen(context, builder, signature, args):
            d, s, n, i = _cast_all(context, builder, [args[1], args[3], args[4], args[6]],
                                   [signature.args[k] for k in (1, 3, 4, 6)], types.int64)
            dst_a = _element_address(context, builder, signature.args[0], args[0], d, 1)
            src_a = _element_address(context, builder, signature.args[2], args[2], s, 1)
            bar = _element_address(context, builder, signature.args[5], args[5], i, 8)
            i64 = ir.IntType(64)
            fn = ir.FunctionType(ir.VoidType(), [i64, i64, i64, ir.IntType(32)])
            asm = ir.InlineAsm(fn, "{ .reg .u64 da, ga, ba; .reg .u32 d, b; " + _SHARED32 % ("da", "$0", "d", "da")
                               + " cvta.to.global.u64 ga, $1; " + _SHARED32 % ("ba", "$2", "b", "ba")
                               + " cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"
                               " [d], [ga], $3, [b]; }", "l,l,l,r,~{memory}", side_effect=True)
            builder.call(asm, [dst_a, src_a, bar, builder.trunc(n, ir.IntType(32))])
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def bulk_ready(typingctx, bars, index, parity):
        sig = types.uint32(bars, index, parity)

        def codegen(context, builder, signature, args):
            (i, ) = _cast_all(context, builder, [args[1]], [signature.args[1]], types.int64)
            (p, ) = _cast_all(context, builder, [args[2]], [signature.args[2]], types.uint32)
            bar = _element_address(context, builder, signature.args[0], args[0], i, 8)
            fn = ir.FunctionType(ir.IntType(32), [ir.IntType(64), ir.IntType(32)])
            asm = ir.InlineAsm(fn, "{ .reg .u64 a; .reg .u32 b; .reg .pred p; " + _SHARED32 % ("a", "$1", "b", "a")
                               + " mbarrier.try_wait.parity.shared::cta.b64 p, [b], $2; selp.u32 $0, 1, 0, p; }",
                               "=r,l,r,~{memory}", side_effect=True)
            return builder.call(asm, [bar, p])

        return sig, codegen

    def _dp4a(kinds):
        @intrinsic
        def dp4a(typingctx, a, b, c):
            sig = types.int32(a, b, c)

            def codegen(context, builder, signature, args):
                av, bv, cv = _cast_all(context, builder, args, signature.args, types.int32)
                fn = ir.FunctionType(ir.IntType(32), [ir.IntType(32)] * 3)
                return builder.call(ir.InlineAsm(fn, f"dp4a.{kinds} $0, $1, $2, $3;", "=r,r,r,r"), [av, bv, cv])

            return sig, codegen
        return dp4a

    dp4a = _dp4a("s32.s32")
    dp4a_us = _dp4a("u32.s32")

    def _load_x4(element, llvm_type):
        @intrinsic
        def load_x4(typingctx, arr, index):
            sig = types.UniTuple(element, 4)(arr, index)

            def codegen(context, builder, signature, args):
                ary = context.make_array(signature.args[0])(context, builder, args[0])
                (i,) = _cast_all(context, builder, args[1:], signature.args[1:], types.int64)
                i64 = ir.IntType(64)
                vec = ir.VectorType(llvm_type, 4)
                addr = builder.add(builder.ptrtoint(ary.data, i64), builder.mul(i, i64(4)))
                ptr = builder.addrspacecast(builder.inttoptr(addr, vec.as_pointer()), vec.as_pointer(1))  # -> global
                v = builder.load(ptr, align=16)
                v.set_metadata("invariant.load", builder.module.add_metadata([]))
                parts = [builder.extract_element(v, ir.IntType(32)(k)) for k in range(4)]
                return context.make_tuple(builder, signature.return_type, parts)

            return sig, codegen
        return load_x4

    load_u32x4 = _load_x4(types.uint32, ir.IntType(32))
    load_f32x4 = _load_x4(types.float32, ir.FloatType())

    def _word4_pointer(context, builder, arr_type, arr, index_type, index, space):
        """Pointer in address space ``space`` (1 global, 3 shared) to the 16 bytes at element ``index`` of a
        4-byte-element array, typed <4 x i32>*."""
        ary = context.make_array(arr_type)(context, builder, arr)
        (i,) = _cast_all(context, builder, [index], [index_type], types.int64)
        vec = ir.VectorType(ir.IntType(32), 4)
        p = builder.bitcast(builder.gep(ary.data, [i]), vec.as_pointer())
        return builder.addrspacecast(p, vec.as_pointer(space))

    @intrinsic
    def load_shared_u32x4(typingctx, sm, index):
        sig = types.UniTuple(types.uint32, 4)(sm, index)

        def codegen(context, builder, signature, args):
            ptr = _word4_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1], 3)
            v = builder.load(ptr, align=16)
            parts = [builder.extract_element(v, ir.IntType(32)(k)) for k in range(4)]
            return context.make_tuple(builder, signature.return_type, parts)

        return sig, codegen

    def _store_x4(space):
        @intrinsic
        def store_x4(typingctx, arr, index, w0, w1, w2, w3):
            sig = types.void(arr, index, w0, w1, w2, w3)

            def codegen(context, builder, signature, args):
                ptr = _word4_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1], space)
                words = _cast_all(context, builder, args[2:], signature.args[2:], types.uint32)
                v = ir.Constant(ir.VectorType(ir.IntType(32), 4), ir.Undefined)
                for k, w in enumerate(words):
                    v = builder.insert_element(v, w, ir.IntType(32)(k))
                builder.store(v, ptr, align=16)
                return context.get_dummy_value()

            return sig, codegen
        return store_x4

    store_shared_u32x4 = _store_x4(3)
    store_u32x4 = _store_x4(1)

    @intrinsic
    def cp_async16(typingctx, sm, sm_index, src, src_index):
        sig = types.void(sm, sm_index, src, src_index)

        def codegen(context, builder, signature, args):
            d = _word4_pointer(context, builder, signature.args[0], args[0], signature.args[1], args[1], 3)
            g = _word4_pointer(context, builder, signature.args[2], args[2], signature.args[3], args[3], 1)
            i32, i64 = ir.IntType(32), ir.IntType(64)
            asm = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [i32, i64]),
                               "cp.async.cg.shared.global [$0], [$1], 16;", "r,l,~{memory}", side_effect=True)
            builder.call(asm, [builder.ptrtoint(d, i32), builder.ptrtoint(g, i64)])
            return context.get_dummy_value()

        return sig, codegen

    cp_async_commit = _statement("cp.async.commit_group;")
    CP_ASYNC_WAIT = tuple(_statement(f"cp.async.wait_group {n};") for n in range(8))


# ---------------------------------------------------------------------------------------------
# One warp, one instruction: D = A B + C from fragments loaded as the layout above says
# (``python -m numba_kernels.ptx`` checks it against NumPy; tests/test_ptx.py does the same)
# ---------------------------------------------------------------------------------------------
@cuda.jit
def _one_mma(a, b, c, d):
    # lane (g, t) packs its fragments of A [16, 16] and B [16, 8], issues the instruction, writes its D entries
    lane = cuda.threadIdx.x
    g, t = lane // 4, lane % 4
    regs_a = cuda.local.array(4, uint32)
    for i in range(4):                   # a0: (g, 2t), a1: (g+8, 2t), a2: (g, 2t+8), a3: (g+8, 2t+8)
        r, k = g + 8 * (i % 2), 2 * t + 8 * (i // 2)
        regs_a[i] = pack_f16x2(a[r, k], a[r, k + 1])
    b0 = pack_f16x2(b[2 * t, g], b[2 * t + 1, g])
    b1 = pack_f16x2(b[2 * t + 8, g], b[2 * t + 9, g])
    d0, d1, d2, d3 = mma_f16(regs_a[0], regs_a[1], regs_a[2], regs_a[3], b0, b1, float32(c[g, 2 * t]),
                             float32(c[g, 2 * t + 1]), float32(c[g + 8, 2 * t]), float32(c[g + 8, 2 * t + 1]))
    d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1] = d0, d1, d2, d3


def mma_once(A, B, C):
    """D [16, 8] float32 = A [16, 16] B [16, 8] + C [16, 8] by one ``mma_f16`` on the device (A and B are
    rounded to float16 first), through ``_one_mma``."""
    d = cuda.device_array((MMA_M, MMA_N), np.float32)
    _one_mma[1, WARP](cuda.to_device(np.asarray(A, np.float32)), cuda.to_device(np.asarray(B, np.float32)),
                      cuda.to_device(np.asarray(C, np.float32)), d)
    return d.copy_to_host()


@cuda.jit
def _chain_step(counts, i):
    # launch i of a chain: record the count it sees after waiting for launch i - 1, then count itself
    allow_next_grid()
    wait_previous_grid()
    if cuda.threadIdx.x == 0:
        counts[i + 1] = counts[0]
        counts[0] += 1


def dependent_chain(n):
    """Run n launches of ``_chain_step`` in a row (inside ``runtime.programmatic_launches`` they may overlap):
    int32 [n + 1], [0] the launches done and [i + 1] the count launch i saw, i when the order held."""
    counts = cuda.to_device(np.zeros(n + 1, np.int32))
    for i in range(n):
        _chain_step[1, WARP](counts, i)
    return counts.copy_to_host()


@cuda.jit
def _copy_by_fours(a, out):
    i = cuda.grid(1) * 4                            # thread t: words 4t .. 4t + 3, one 16-byte load
    if i + 3 < a.shape[0]:
        w0, w1, w2, w3 = load_u32x4(a, i)
        out[i], out[i + 1], out[i + 2], out[i + 3] = w0, w1, w2, w3


@cuda.jit
def _lines_through_shared(a, out):
    # one block of 32 threads: 16-byte line l of a -> shared line l -> (barrier) -> out's line 31 - l, the line
    # read back from shared memory by another thread than the one that wrote it
    sm = cuda.shared.array(128, uint32, alignment=SHARED_ALIGN)
    l = cuda.threadIdx.x
    w0, w1, w2, w3 = load_u32x4(a, 4 * l)
    store_shared_u32x4(sm, 4 * l, w0, w1, w2, w3)
    cuda.syncthreads()
    v0, v1, v2, v3 = load_shared_u32x4(sm, 4 * (WARP - 1 - l))
    store_u32x4(out, 4 * l, v0, v1, v2, v3)


@cuda.jit
def _dp4a_words(a, b, c, out):
    i = cuda.grid(1)
    if i < a.shape[0]:
        out[0, i] = dp4a(a[i], b[i], c[i])
        out[1, i] = dp4a_us(a[i], b[i], c[i])


@cuda.jit
def _shifted(a, n, out):
    i = cuda.grid(1)
    if i < a.shape[0]:
        out[i] = shr_u32(a[i], n[i])


def shr_u32_all(a, n):
    """uint32 [len(a)]: ``shr_u32(a[i], n[i])``, one per thread."""
    out = cuda.to_device(np.zeros(len(a), np.uint32))
    _shifted[-(-len(a) // 64), 64](cuda.to_device(np.ascontiguousarray(a, np.uint32)),
                                   cuda.to_device(np.ascontiguousarray(n, np.uint32)), out)
    return out.copy_to_host()


def dp4a_both(a, b, c):
    """int32 [2, n]: ``dp4a`` and ``dp4a_us`` of the words a[i], b[i] (uint32) with c[i] (int32), one per thread."""
    out = cuda.to_device(np.zeros((2, len(a)), np.int32))
    _dp4a_words[-(-len(a) // 64), 64](*(cuda.to_device(np.ascontiguousarray(v, t))
                                        for v, t in ((a, np.uint32), (b, np.uint32), (c, np.int32))), out)
    return out.copy_to_host()


SHARED_ALIGN = None if config.ENABLE_CUDASIM else 16    # dynamic shared memory declared 16-byte aligned


@cuda.jit
def _bulk_gather(src, starts, sizes, total, out):
    # bytes 0-7 of the dynamic shared memory: the barrier; from byte 16: the pieces, one after the other
    buf = cuda.shared.array(0, uint32, alignment=SHARED_ALIGN)
    bars = cuda.shared.array(0, uint64)
    if cuda.threadIdx.x == 0:
        bulk_expect(bars, 0, total)
        d = 16
        for j in range(starts.shape[0]):
            bulk_copy(buf, d, src, starts[j], sizes[j], bars, 0)
            d += sizes[j]
    cuda.syncthreads()                              # the barrier's init is seen before anyone polls it
    while bulk_ready(bars, 0, 0) == 0:
        pass
    i = cuda.threadIdx.x
    while i < total // 4:
        out[i] = buf[4 + i]
        i += cuda.blockDim.x


def bulk_gather(words, pieces):
    """uint32 [n] and byte ranges ``pieces`` [(start, size), ...] (multiples of 16) -> the pieces' bytes one
    after the other (as uint32), copied into shared memory by ``bulk_copy`` and read back by the block."""
    starts = np.array([p[0] for p in pieces], np.int32)
    sizes = np.array([p[1] for p in pieces], np.int32)
    total = int(sizes.sum())
    out = cuda.to_device(np.zeros(total // 4, np.uint32))
    _bulk_gather[1, 4 * WARP, 0, 16 + total](cuda.to_device(np.ascontiguousarray(words, np.uint32)),
                                             cuda.to_device(starts), cuda.to_device(sizes), total, out)
    return out.copy_to_host()


def copy_by_fours(a):
    """uint32 [n] -> the first 4 (n // 4) words of ``a`` as read by ``load_u32x4``, four per thread."""
    a_d = cuda.to_device(np.ascontiguousarray(a, np.uint32))
    out = cuda.to_device(np.zeros(len(a) // 4 * 4, np.uint32))
    _copy_by_fours[-(-len(a) // 128), WARP](a_d, out)
    return out.copy_to_host()


_wait_all = CP_ASYNC_WAIT[0]      # (a kernel calls the intrinsic for its n by a name bound outside it)


@cuda.jit
def _lines_by_cp_async(a, out):
    # one block of 32 threads: line l of a -> (cp.async, commit, wait, barrier) -> shared line 31 - l -> out line l
    sm = cuda.shared.array(128, uint32, alignment=SHARED_ALIGN)
    l = cuda.threadIdx.x
    cp_async16(sm, 4 * (WARP - 1 - l), a, 4 * l)
    cp_async_commit()
    _wait_all()
    cuda.syncthreads()
    v0, v1, v2, v3 = load_shared_u32x4(sm, 4 * l)
    store_u32x4(out, 4 * l, v0, v1, v2, v3)


def lines_by_cp_async(a):
    """uint32 [128] -> its 32 lines of four words in reverse order, copied global -> shared by ``cp_async16``."""
    out = cuda.to_device(np.zeros(4 * WARP, np.uint32))
    _lines_by_cp_async[1, WARP](cuda.to_device(np.asarray(a, np.uint32)), out)
    return out.copy_to_host()


def lines_through_shared(a):
    """uint32 [128] -> its 32 lines of four words in reverse order, each moved by 16-byte loads and stores:
    global -> shared (``store_shared_u32x4``), shared -> registers of another thread (``load_shared_u32x4``),
    -> global (``store_u32x4``)."""
    out = cuda.to_device(np.zeros(4 * WARP, np.uint32))
    _lines_through_shared[1, WARP](cuda.to_device(np.asarray(a, np.uint32)), out)
    return out.copy_to_host()

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    A, B, C = (rng.standard_normal(s).astype(np.float32) for s in ((16, 16), (16, 8), (16, 8)))
    want = A.astype(np.float16).astype(np.float64) @ B.astype(np.float16).astype(np.float64) + C
    err = np.abs(mma_once(A, B, C) - want).max()
    print(f"mma.sync m16n8k16 (f16 in, f32 out) against NumPy: max error {err:.1e}")
    assert err < 1e-5, "the fragment layout or the instruction disagrees with NumPy"
    from numba_kernels.runtime import programmatic_launch_supported, programmatic_launches

    pdl = programmatic_launch_supported()
    with programmatic_launches(pdl):
        counts = dependent_chain(64)
    ordered = bool((counts == np.r_[64, np.arange(64)]).all())
    print(f"64 dependent launches ({'programmatic' if pdl else 'plain'}): each saw its predecessor's write: {ordered}")
    assert ordered, "a launch read the counter before the previous launch had written it"
