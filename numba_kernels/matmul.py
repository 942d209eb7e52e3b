r"""Matrix products over quantized weights: Numba CUDA kernels.

Computes the same function as ``ref/matmul.py`` (read its docstring for the math):
$y_{t,n} = \sum_k x_{t,k} W_{n,k} + b_n$ where row ``n`` of ``W`` is stored as raw GGUF
quantization blocks, uint8 ``[N, row_bytes]`` on the device, and is dequantized *in
registers* inside the product - the float32 matrix is never written to memory.

Decoding unit. Every kernel asks one per-type device function, ``decode8``, for 8
consecutive weights ``W[n, k:k+8]`` (``k`` a multiple of 8). Eight consecutive weights
always share their scale(s) and sit in 8 consecutive bytes (or nibbles of 8 consecutive
bytes) at an even byte offset, for every supported type, so ``decode8`` reads four 16-bit
words of quants plus the block's float16 scale(s). The kernels see the weight through two
*views* of the same bytes (``_views``): uint16 words for the quants and float16 for the
scales (the block sizes 18, 22, 34, 144, 176, 210 are even, so every scale is 2-aligned;
a 4-byte view would not fit Q8_0/Q6_K rows with an odd number of blocks). Every view access
indexes with unsigned 32-bit integers (twenty-first session): with signed indices Numba emits a
negative-index wraparound per access. In sm_90 SASS (``benchmarks/offline_sass.py``, v11's SwiGLU
K-loop over x16) that cut the loop from 718 to 561 instructions for Q4_K, 685 -> 613 Q6_K,
474 -> 432 Q8_0, 409 -> 355 F16, and the registers from 124-128 to 119 (not yet timed on a GPU).

Kernel versions (llm.c dev/cuda style; ``__main__`` checks each against ``ref``)
- v1 ``matvec_v1``: decode (one token). One warp per output row, 4 rows per block of 128
  threads. Lane ``l`` decodes weights ``k = 256 s + 8 l .. +8`` for steps ``s`` (a warp
  step reads 256 consecutive weights, i.e. one contiguous stretch of the row), multiplies
  them with ``x`` read straight from global memory (it stays in L1/L2: every block reads
  it), and the 32 partial sums meet in a warp-shuffle tree. Simple; the ``x`` loads are
  strided (8 floats per lane), costing L1 bandwidth.
- v2 ``matvec_v2``: x copied once per block into shared memory, padded with one float
  every 32 (index ``p + p // 32``) so that the 32 lanes reading ``x[256 s + 8 l + i]``
  hit 32 different banks; and each warp computes ``R_ROWS = 4`` rows at once (rows past
  ``N`` re-read row ``N - 1`` and are not stored), so every lane has 4x the independent
  loads in flight and each read of x serves 4 rows. v1 measured 0.67 TB/s (15 %) at
  151936 x 896 Q8_0: far too few bytes in flight per SM (~9 KB, ~30 KB needed at 4.3
  TB/s and ~0.8 us latency), which is what v2 addresses. ``matvec`` uses v2 when ``K``
  fits in shared memory (``K <= 11 912``, the 48 KiB default of dynamic shared memory) and
  ``N >= 4096``; below that v1 measured faster (v2 has 4x fewer warps).
- v3 ``matmul_tiled``: prefill (``T`` tokens). One block of 256 threads per tile of
  ``TT = 64`` tokens x ``TN = 64`` rows. Per step of ``KC = 32`` weights, every thread
  decodes 8 weights of the W tile into shared memory (once per tile, reused by the 64
  tokens) and copies 8 values of the x tile; then each thread accumulates a 4 x 4
  micro-tile of outputs in registers (float32 FMA). Rows of the W tile are padded to 33
  floats so the 16 threads of a row of the block read 16 different banks.
- v4 ``decode_matvec`` etc. with ``DECODE_WIDTH = 32`` (the default): the fused decode path.
  A block of NW warps first stages x' in shared memory (padded one float per 32): x itself, or
  ``RMSNorm(x) * norm_weight``, every block summing the squares of x itself (K floats from L2)
  so that the rmsnorm launch disappears. Each warp then computes R rows (R = 1, 2, 4, written
  out so the R accumulators stay in registers and all R rows' loads are in flight together);
  lane ``l`` dots one 32-weight *unit* per step (one Q4_0/Q5_0/Q8_0 block, one 32-weight
  sub-block of a K-quant: weights ``32 (l + 32 s) ..``), so a block's scales are decoded once
  per 32 weights, and each unit's loads are issued before use. The epilogue fuses the bias,
  the residual add (``accumulate``), SwiGLU (``decode_matvec_swiglu``: R gate and R up rows per
  warp) or 1-3 matrices sharing x in one launch (``decode_matvec_multi``: the Q, K, V
  projections; blocks cover the concatenated rows, each block one matrix, every type a
  compile-time constant). Instruction diet, all checked in the SASS of an offline sm_90 build:
  int->float without I2F (``_qf``: ``prmt`` puts a byte into the mantissa of 2^23, one FADD
  removes it, exact), uint32 indices and ``while`` loops (Numba's int64 index arithmetic with
  negative-index wrapping and its 64-bit ``range`` counters were most of v2's instructions),
  block offsets computed once per unit, Q4_K/Q5_K as ``d sc (sum x q) - dmin m (sum x)``
  (llama.cpp's split: one FMA per weight; ``sum x`` is shared by the warp's rows).
- v5: the same kernels with ``DECODE_WIDTH = 8``: warp-contiguous, lane ``l`` dots weights
  ``8 l + 256 s ..`` (v1/v2's layout: a warp's loads of one step are adjacent bytes, fewer L1
  wavefronts per load than v4's 32 lanes x one block each, but scales decoded per 8 weights).
- v6: ``DECODE_WIDTH = 16``, in between (tested, not timed by ``__main__``).
- v7 split-K (``decode_matvec`` / ``launch_decode_matvec`` with config (NW, R, S), ``_split_kernel``):
  for few rows and long K (896 x 4864: v4 has 896 warps walking 152 units each, 4.75 serial
  steps a lane, one latency-bound wave) S warps of a block share R rows: warp j of the S dots the
  j-th of every S consecutive 32-unit stretches (a step of the S warps covers 32 S units), its
  warp-reduced partial sums go to shared memory (the 32-float ``red`` of the norm, free after
  staging: no extra shared memory, NW R <= 32), and after one barrier one thread per row adds
  the S parts in a fixed order and applies the bias / residual add. x' staging (and the norm
  inside) is v4's. With ``SPLIT_K = True`` (the default; ``LLAMA_BETA_SPLIT_K=0`` turns it off),
  ``decode_config``'s ``split_config`` doubles S
  (<= 8) while N S < 32 warps per SM and every lane keeps a step (2 S 32 width <= K), blocks of
  16 warps, R = 1: 896 x 4864 -> S = 4 (224 blocks, as v4's (4, 1)), 3072 x 8192 and 3072 x 3072
  -> S = 2; 896 x 896, 128-row, and >= 4224-row matrices stay on v4. ``SPLIT_K = False`` or an
  explicit (NW, R) config selects v4. Plain, bias, accumulate and norm modes; the multi and
  SwiGLU kernels have no split (their shapes do not qualify). Its tests passed on the H200 (the
  hang seen once before was not reproduced); whole Qwen2.5-0.5B decode step 654 -> 804 tok/s.
- v8 row warm-up (every fused kernel, runtime flag ``warm`` = ``WARM``; ``LLAMA_BETA_MATVEC_WARM=0``
  turns it off): before staging x', each warp loads one 2-byte word of every 32-byte sector of its
  rows (``_warm_rows``: up to 4 KiB a row), so the weight bytes are on their way from DRAM while
  the block reads and normalizes x; the xor of the words is consumed after staging (``_keep``)
  so the compiler keeps the loads. Measured on the H200: +1% on the whole decode step (757 vs
  750 tok/s), within run-to-run spread.
  Launch configuration (``fused_config``): the most rows per block, (NW, R) from
  ``FUSED_CONFIGS`` = (8, 4), (8, 2), (8, 1), (4, 1), that still gives ``BLOCKS_PER_SM`` = 2
  blocks per SM (x' costs K floats per block; small N needs blocks to fill 132 SMs).
  Bytes per launch: the weight bytes, plus K (2K with the norm) floats per block from L2.
  SASS instructions per weight of the main loop (sm_90, R = 2; budget at 70 % of 4.3 TB/s in
  brackets, from 4 schedulers x 32 lanes x 132 SMs x 1.98 GHz): v4 Q8_0 5.3 [11.8], Q4_0 5.0
  [6.2], Q5_0 6.2 [7.6], Q4_K 6.7 [6.2], Q5_K 8.1 [7.6], Q6_K 8.7 [9.1]; v5 7-13 (ptxas for
  sm_90: no spills, 32-80 registers). Measured on the H200 (2026-11-29): v4 55 us = 61 % at
  151936x896 Q8_0, 22-34 % at the Phi-3-mini shapes, 3-16 % at the Qwen2.5-0.5B layer shapes
  (latency-bound); v5 slower everywhere (docs/benchmarks.md has the table).
- v9 ``decode_qkv_rope`` (``_qkv_rope_kernel``): the decode step's RMSNorm + Q/K/V products + RoPE
  of q and k + KV-cache append in one launch (the fused body's ``multi`` launch and
  ``rope.rope_qk_append``). A warp computes the two rows of one RoPE pair slot (``_pair_rows``, as
  ``rope._rotate_slot``: NEOX rows (i, i + rot_dims/2), interleaved (2i, 2i+1), pass-through dims two
  at a time) through ``_rows_dot`` with a row step, adds the bias, and lane 0 rotates them with
  ``rope._cos_sin`` at position pos[0]: q's rows go to q, k's straight into row pos[0] of the key
  cache, v's (two consecutive rows, unrotated) into the value cache. Same arithmetic as the
  two launches it replaces (products, then bias, then the rotation). ``QKV_ROPE_PAIRS = 2`` (opt-in, eighth
  session): a warp computes two consecutive pair slots (four rows, their loads in one loop),
  for shapes with more slots than resident warps (Phi-3-mini: 4608 slots; 4224 warps fit at 64 registers);
  measured slower (ninth session). ``KV_PREFETCH`` (``LLAMA_BETA_KV_PREFETCH=1``, opt-in, not yet measured):
  before its wait each block asks L2 for a share of the layer's K/V cache rows before pos (``_prefetch_cache``),
  which the attention launch reads next.
- v10 ``matmul_prefill`` / ``matmul_prefill_swiglu`` (``_prefill_kernel``): the prefill product, replacing v3
  as ``matmul``'s default. v3 measured 7.8 TFLOP/s at 4864 x 896 and 2-3 at the 896- and 128-row shapes: per
  4 FMAs it issues 2 scalar shared loads (plus int64 index arithmetic), it waits for every step's global
  loads, and its 64 x 64 tiles give the small matrices 16-112 blocks. v10: register micro-tiles of 8 x 8 or
  8 x 4 (tokens x rows) read from shared memory as float4 along k (``ld.shared.v4``: tiles declared 16-byte
  aligned, rows padded to KC + 4 floats: conflict-free), so 12-16 vector loads feed 128-256 FMAs; two tile
  buffers, the next K-step's x values and decoded weights loaded into registers before the current step is
  computed, one barrier per step; a family of tiles (``PREFILL_CONFIGS``: 128 x 128, 128 x 64, 64 x 64 with 2
  groups, 64 x 32 with 4 groups) of which ``prefill_config`` takes the largest that still gives 2 blocks per
  SM, leaving out 128 x 128 (one block per SM: measured slower than 128 x 64 at every shape); "groups" split each K-step inside the block and add their partial tiles in a fixed order at the end
  (split-K without atomics or a workspace: deterministic). Epilogues: bias, ``accumulate`` (out += result:
  the residual add of W_o / W_down), and the SwiGLU pair (gate and up rows in one tile, two accumulators per
  output, ``silu(g) u`` stored). Offline ptxas (sm_90): 126-128 registers for the 8 x 4 tiles (launch bounds
  256 x 2 blocks), 161 (168 SwiGLU) for 8 x 8, no spills. Measured on the H200 (T = 512): 15.5-24.0 TFLOP/s
  on the large shapes (v3: 8.8-12.7), 3.6 at 128 x 896 (v3: 1.3); docs/matmul.md has the table.
- v11 ``PrefillProduct(..., mma=True)`` / ``matmul_prefill(..., mma=True)`` / ``PrefillQKV`` (``_mma_tile``,
  ``_mma_kernel``, ``_mma_qkv_kernel``): the prefill product on the tensor cores, the default of the prefill fast
  path. ``mma.sync.m16n8k16`` with float16 operands and float32 sums, issued through the two inline-PTX
  intrinsics of ``numba_kernels/ptx.py`` (Numba has no tensor-core API). x and the decoded W tiles are staged in
  shared memory as float16 pairs; v10's staging and double buffering; SwiGLU gate/up tiles paired in registers;
  a deterministic split along K for W_down (grid z, the last block of a tile adds the parts in order); the Q, K
  and V products of one x in one launch. Measured on the H200 (T = 512): gate/up + SwiGLU 137 us (65 TFLOP/s,
  v10 368 us), W_down 112-123 us (v10 288), whole 512-token prefill 22.2 -> 10.1 ms of GPU time. Numerics: the
  float32 product of the float16-rounded operands (section "v11" below).
  ``x16=True`` (eighteenth session; the prefill's default for models at least 2048 wide since the nineteenth,
  ``LLAMA_BETA_PREFILL_X16``): x arrives as float16 pairs (``launch_pack_f16``, the same cvt.rn as the staging:
  the same bits), half the bytes a tile reads. H100, Phi-3 twin, 512-token prefill: 93.9 -> 90.3 ms.
  Twenty-second session: x16's tile rows are read with 16-byte loads (4 pairs, ``ptx.
  load_u32x4``; K % 8 == 0 and an aligned x, ``_check_x_layout``) instead of one word per pair: sm_90 SASS of
  the K-loop (``benchmarks/offline_sass.py --x16``) 553 -> 487 instructions (Q4_K SwiGLU, WIDE), 605 -> 537
  (Q6_K), 480 -> 381 (Q5_K plain), 347 -> 280 (F16), MID 368 -> 309, LONG 346 -> 315, NARROW 1083 -> 955;
  registers 119 -> 95 (WIDE), 128 -> 96 (NARROW). Same values staged in the same places: the same bits.
  And the decoders (``DECODERS``) turn quants into floats without ``I2F.S64``: Numba computed their shifts in
  64 bits (the shift amount is a variable), and float32 of a 64-bit integer is a slow conversion; now
  ``ptx.shr_u32`` shifts in 32 bits and ``_small`` makes the float from the bits 2^23 + q (exact, a LOP3 and an
  FADD). Per K-step of the WIDE tile: 16-20 I2F.S64 -> 0 for Q4_K, Q4_0, Q5_0, Q8_0 (Q8_0 357 -> 317
  instructions, Q6_K 537 -> 521, Q4_K 487 -> 490: the count is about even, the slow pipe is gone). Every value
  is the same float (``test_decode8_gives_the_reference_weights``). Both measured together on an H100 (Phi-3
  twin, 512-token prefill, ``profile_prefill.py``): 90.3 -> 81.2 ms (5,671 -> 6,307 tok/s); per layer q/k/v 723 ->
  674 us, W_o 291 -> 233, gate/up 873 -> 818, W_down 790 -> 645. Their GPU tests passed.
  Then (offline, not yet timed) each decoder takes its k as unsigned 32-bit (``k = uint32(k)``): the block
  offsets and shifts derived from k were 64-bit. K-loop SASS: Q4_K WIDE 490 -> 435, Q6_K 521 -> 446, Q5_K
  plain 376 -> 329 (104 -> 96 registers), Q8_0 317 -> 277, Q5_0 406 -> 370, MID 310 -> 284, LONG 309 -> 268.
  And float32 x (the models under 2048 wide: Qwen2.5-0.5B) is read the same way, two pairs per 16-byte load
  (``ptx.load_f32x4``), rounded to pairs as before: Q4_K WIDE 499 -> 463, Q5_0 WIDE 432 -> 396, Q5_0 MID (the
  Q/K/V tile) 304 -> 265, Q6_K LONG 294 -> 281 (offline, not timed; the same bits).
- v12 ``decode_matvec(..., mma=True)`` (``_decode_mma_kernel``): Q5_0/Q8_0 decode products on the tensor cores,
  opt-in (``LLAMA_BETA_DECODE_MMA=1``): measured slower than v4-v9 at every Qwen shape (section "v12" below).
- v13 x' staging (``_stage_x`` -> ``_stage_x4``, ``STAGE_LOADS = 4``; ``LLAMA_BETA_STAGE_LOADS=1`` restores the
  loop before it): every fused kernel stages x' with four loads of x in flight per thread (unconditional loads
  at clamped indices; elements past K are stored to a spare slot after x', ``xs_floats``), reads x once, stores
  it raw and scales it in place after the block sum (the norm weights again four at a time). The one-load loop
  waited for an L2 round trip per element and read x twice under the norm: 24 serial trips per block at Phi-3's
  K = 3072 with 256 threads. x' is bit-identical (same per-thread order of the sum of squares, same
  (x * scale) * nw). Measured on the H200, per launch inside the decode graph, Phi-3-mini-shaped twin: Q/K/V +
  RoPE 29.1 -> 21.0 us, gate/up + SwiGLU 31.2 -> 24.4, output 73.3 -> 67.2, whole step 3270 -> 2836 us; Qwen2.5
  twin: Q/K/V 5.38 -> 4.48, W_o 3.19 -> 2.35, gate/up 7.95 -> 6.82, whole step 973 -> 930 us. The split-K kernel
  (v7) keeps the one-load loop (``SPLIT_STAGE_LOADS``): with v13 staging its launches got slower (Qwen W_down
  6.99 -> 8.57 us, Phi-3 W_o 7.05 -> 8.59; not understood), which also explains the seventh session's
  whole-step loss with four-load staging everywhere. Tried with it and dropped: two 32-weight units per lane
  per loop round (their loads together): slower at every shape (Phi-3 Q/K/V 21.0 -> 24.2 us, Qwen gate/up 6.8
  -> 10.1). Tenth session: the four-load loop summed the squares as ``ss + (v * v or 0)``, which rounds the
  square before the add, while the one-load loop's ``ss += v * v`` is one FMA: x' differed in the last bit on
  the GPU (the simulator has no FMA). ``_put_raw`` now squares ``v or 0``, so both contract to the same FMA.
- v15 (the default since the eleventh session; ``LLAMA_BETA_VECTOR_LOADS=0`` turns it off): the Q4_K/Q5_K
  units of 16 or 32 weights read their quants with ``ptx.load_u32x4`` (``ld.global.nc.v4.u32``, 16-byte aligned:
  144- and 176-byte blocks, quants at 16 + 32 i and 48 + 32 i, rows of whole blocks) instead of one 4-byte load
  per word. A warp's 4-byte load touched the same 16 sectors as the seven after it (lanes pair on one 32-byte
  stretch), 8 requests to the L1 where 2 now do. Measured on the H200 (Phi-3-mini twin, per launch in the
  graph): Q/K/V 20.9 -> 20.4 us, W_o 7.04 -> 6.82, gate/up 24.3 -> 24.0, W_down 16.5 -> 16.2, whole step 2711 ->
  2645 us (+2.4%); so the L1 requests were not what the loop waits on (the ladder, ``benchmarks/ladder.py``: the
  loads alone take as long as the full products). Its tests passed on the H200 with it on (eleventh session).
  The Q/K/V kernel goes from 64 to 72 registers (offline ptxas).
- v16 (tenth session; measured slower in the eleventh and removed): the v4 matvec and SwiGLU launches as one
  persistent wave whose warps looped over rounds of rows, warming the next round's rows during the current one.
  Phi-3 twin gate/up 24.4 -> 27.3 us, whole step 2715 -> 2968 us; Qwen twin gate/up 6.8 -> 9.9 us. One wave
  of warps that each take 1-2 rounds keeps fewer bytes in flight than 1.3 waves of warps that take one.
- v17 (the default since the eleventh session; ``LLAMA_BETA_WARM_L2=0``: v8's loads): the row warm-up as one
  ``cp.async.bulk.prefetch.L2`` per row (``_warm_row_l2``, lane 0; ``ptx.prefetch_l2``) instead of a 2-byte
  load per 32-byte sector into L1. Nothing is held in registers (gate/up Q4_K: 96 -> 79 registers, offline
  ptxas), nothing waits on it before the loop, and rows longer than 4 KiB (W_down) are now warmed whole.
  Measured on the H200 (per launch in the graph, v15 on): Phi-3 twin Q/K/V 20.4 -> 19.4 us, W_o 6.83 -> 6.55,
  gate/up 24.0 -> 22.2, W_down 16.3 -> 15.4, whole step 2650 -> 2560 us (+3.5%); Qwen twin 913 -> 869 us (+5%).
  The factories bind the warm-up into their kernels' closures, so the disk cache's key sees which one.
- v18 ``_staged_swiglu`` (opt-in, ``LLAMA_BETA_STAGE_ROWS=1``; sm_90; measured no faster): the gate/up launch with
  each warp's 2R rows copied into shared memory by the bulk-copy engine (``ptx.bulk_copy``, one per row, counted
  on one ``mbarrier`` per warp) while the block stages x', the loop then reading them from shared memory. Only
  for rows of whole multiples of 16 bytes (Phi-3's Q4_K gate_up: 1728 bytes) and one type for gate and up; the
  block opts in to > 48 KiB of dynamic shared memory (``runtime.launch_with_shared``). Bit-identical to
  ``swiglu_fused``; passed on the H200. Phi-3 twin, in the graph: gate/up 22.25 -> 21.53 us, but the whole step
  2557 -> 2575 us (69 KB of shared memory per block leaves no room for the next launch's early blocks). Nsight
  Compute says why the bytes were not the problem: the products are bound by their instruction issue
  (gate/up 8.7 SASS instructions per weight, Q/K/V 13.8, W_o and W_down 12, the output 11.2; issue slots
  busy 43-60 %, DRAM 10-23 %), so the next lever is fewer instructions per weight (docs/matmul.md, "v18").
- v19 (twelfth session, measured slower, replaced by v20): the Q4_K 32-weight units of ``matvec_fused`` /
  ``swiglu_fused`` over x' rounded to int8 blocks of 32 and multiplied with ``ptx.dp4a`` (eight per unit). On the
  H200 the Phi-3 gate/up launch took 29.7 us against 22.3 and executed only 10 % fewer instructions (12.3 M
  against 13.6 M): per unit and row it still decoded the scales (``_k_scales``, with a branch on the
  sub-block), computed 64-bit addresses, and every block quantized all of x' again.
- v20 ``_x8_kernels`` (where ``LLAMA_BETA_DP4A=auto``, the default, chooses it; "1" everywhere, "0" never): Q4_K,
  Q5_K, Q5_0, Q6_K and Q8_0 decode products (matvec, SwiGLU, and the Q/K/V + RoPE launch ``_qkv_rope_x8_kernel``: a
  lane group per RoPE pair slot) over x' rounded to int8 blocks of 32 (each block stages x' as v4 does, then
  ``_quantize_staged`` rounds it in place, a thread per block of 32: codes, scale d_j, float sum s_j), with the work
  cut so that the per-weight instructions are the dp4a: a lane takes a *pair* of 32-weight blocks (Q4_K: the 32 quant
  bytes whose low nibbles are sub-block 2c and high nibbles 2c + 1, read in two 16-byte loads plus one 16-byte load of
  the super-block's header; all eight 6-bit scales and mins built four at a time and its two picked by one ``prmt``,
  ``_k_pair_scales``: no branch; the nibbles masked in place, the high ones unshifted, ``& 0xF0F0F0F0`` = 16 q, the
  1/16 applied to the exact integer sum; ``ptx.dp4a_us``: unsigned quant bytes, signed codes), 16 dp4a per 64 weights.
  Q8_0 / Q5_0 pairs (``_q8_0_at``, ``_q5_0_at``): 17 / 11 aligned words, the first block's words realigned by
  ``prmt``; Q5_0's fifth bits put into bit 4 of each byte by one multiply (``_fifth_bits``). Q6_K pairs (``_q6k_at``):
  the two blocks of a 128-weight half that share ql/qh bytes, nine words read for eight and realigned (210-byte
  super-blocks are 2-aligned), q - 32 as signed bytes (``_signed6``). Q5_K pairs (``_q5k_at``): Q4_K's with bits 2c,
  2c + 1 of the qh bytes as the quants' bit 4, the high nibbles shifted down. Rows are spread over lane groups of LG =
  8, 16 or 32 lanes (``x8_lanes``: K = 3072 has 48 pairs a row, three full steps of 16 lanes where 32 lanes would idle
  half of the second step), each group summing its R rows by shuffles inside the group. Reference
  ``ref.matmul.matmul_x8``; offline ptxas (sm_90), no spills: 32 / 54 registers (Q4_K matvec / SwiGLU, R = 1), 48 / 56
  (Q8_0, R = 4 / 1), 32 / 40 (Q5_0), 32 / 56 (Q6_K), 64 / 68 (Q5_K, R = 2). Measured on an H100 (thirteenth and
  fourteenth sessions) in two earlier forms: rounding in every block a warp per block of 32 (gate/up 25.0 -> 22.5 us,
  but W_o 6.5 -> 22.9, W_down 16.8 -> 29.5), and rounding once per product in a launch of its own (Phi-3 gate/up 25.0
  -> 17.6 us, Qwen output 69.5 -> 63.6, but the whole step slower: +1 launch per product); docs/matmul.md has the
  history. Which launches take v20: ``X8`` (``ref.matmul.X8Choice``; ``LLAMA_BETA_DP4A=auto``, the default since the
  eighteenth session: K >= 2048, plain products of >= 4096 rows), which the NumPy backend follows.
- v21 (the default since the nineteenth session; ``LLAMA_BETA_X8_CHAIN=0`` turns it off): W_down over x' that
  the gate/up launch before it rounded. v20's SwiGLU launch writes its outputs a second time, rounded to int8
  blocks of 32 (``_round_rows_out``: a block's ROWS outputs, a multiple of 32, gathered in shared memory, a warp
  per block of 32: butterfly max and sum, the codes packed by two shuffles) into a uint32 buffer of
  ``XQ_WORDS`` = 12 words per block (8 code words, d, s, two spare: whole 16-byte lines); W_down's v20 launch
  then copies them into its shared slots (``_xq_loader``: three 16-byte loads a thread and block of 32) instead
  of staging K floats and rounding them in every block, which is what made v20 lose to v7's split-K there
  (item 23 of docs/benchmarks.md). Blocks of 4 warps (``X8_PRE_CONFIG``). Which W_down takes it:
  ``X8Choice.down_chained`` (gate/up on v20, F whole blocks of 32, W_down's type a v20 type), which the NumPy
  backend follows. Measured on an H100 (Phi-3 twin, in the decode graph): W_down 16.8 (v7) -> 11.6 us, the
  SwiGLU launch unchanged (15.9 us), whole step 2304 -> 2222 us; ``llama-beta bench`` 439.0 -> 452.6 tok/s.
  The rounded outputs' codes and d_j are the reference's bits; s_j is summed in another order (last bits).
  Offline ptxas (sm_90), no spills: the W_down kernel 32 registers (Q4_K, Q6_K; its xs keeps v20's 33-slot
  layout, 33 KB at K = 8192: 6 blocks per SM), the SwiGLU kernel with the epilogue 54 (as without it).
  Opt-in (``LLAMA_BETA_X8_COMPACT=1``, twentieth session, not yet timed): W_down's copy keeps ``COMPACT_SLOTS`` = 11
  slots per block of 32 (the pair functions take the slot stride ``bs``): 11 KB, 16 blocks per SM; same bits.
- v22 ``launch_planar_q8`` / ``PlanarQ8`` (``_planar_q8_kernel``; opt-in, ``LLAMA_BETA_PLANAR_Q8=1``, twenty-second
  session): the output product over a Q8_0 matrix kept on the device a second time as two planes,
  the quants int8 [N, K] and the scales float16 [N, K / 32] (``ref.quants.planar_q8_0``; made at load by a
  repack kernel, ``CudaBackend.prepare``; 145 MB more for Qwen2.5-0.5B's 151936 x 896 output.weight, which the
  memory plan counts). Why: a Q8_0 block is 34 bytes, so its quants are only 2-byte aligned and v4 reads each
  lane's block as 16 uint16 loads 34 bytes apart; the tenth session's ladder measured the output launch at
  60.7 us with its loads ALONE (70.0 us whole): the load pattern, not the arithmetic, is the limit. v22: 8 lanes per row, each lane one 16-byte load
  per 16 quants (the group reads 128 contiguous bytes), every load of a pass issued before the first sum (a
  branch on the xor of all the words keeps ptxas from sinking them: without it only two were in flight), x'
  staged as v4 (norm inside), the float products of v4 (``_qf``), a warp repeating over ``passes`` row sets.
  Offline ptxas (sm_90, K = 896): 94 registers at R = 1, 166 at R = 2, no spills (R = 4: a stack frame).
  Measured on an H100 (``benchmarks/output_product.py``, norm inside): v4 68.7 us, v22 (4, 1, 1) 64.3, (8, 1, 2)
  60.7, (8, 1, 4) 58.9 (two rows per group: 74-85, slower); a plain 16-byte read of the same bytes 50.4 us (the
  H100's ceiling here). In the Qwen twin's decode graph (``profile_decode.py``): 69.3 -> 57.9 us at (4, 1, 4)
  (``PLANAR_DEFAULT``), the step 906.9 -> 897.2 us; ``llama-beta bench`` 1117 -> 1136 tok/s. Its GPU tests passed.
  Still opt-in: the real model's greedy tokens have not been checked with it (another summation order).
- v23 ``PrefillProduct(..., f16w=True)`` / ``PrefillQKV(..., f16w=True)`` (``_f16w_kernel``, ``_gemm_tile``; opt-in,
  ``LLAMA_BETA_PREFILL_F16W=1``, twenty-third session, not yet timed): the prefill product in two launches, W decoded
  ONCE into a float16 scratch matrix (v11 decodes it in every token tile, and its decode8 is most of its K-loop: 435
  SASS instructions per 16 mma), then a float16 GEMM whose K-loop only moves 16-byte lines (
  ``ptx.cp_async16``, ``ptx.load_shared_u32x4``: one load per mma operand; W16 in ``ref.matmul.fragment_order``, x16
  in ``ref.matmul.a_tile_index`` order) and issues mma, with a ring of F16W_STAGES K-step buffers in flight.
  v11's epilogues (``_mma_epilogue``); v11's bits (the same operands and mma chain per output).

Expected speed on an H200 (memory-bound decode: time = weight bytes / bandwidth; 4.3
TB/s device-to-device copy). Target >= 70 % (3 TB/s) at 151936x896 Q8_0 and the FFN
shapes. v1 reaches ~15 % (measured); v2 should be bound by the weight loads and the
int->float conversions (one ``I2F`` per weight, a quarter-rate instruction: a ceiling near
2.5 TB/s for 4-bit types, 4.5 TB/s for Q8_0). Small-N shapes (896 x 4864) have only N/4
warps of work, too few loads in flight; a split-K version would help.
Measured (H200, first run, docs/matmul.md): v2 1.12 TB/s (26 %) at 151936x896 Q8_0,
0.46 TB/s (11 %) at 16384x3072 Q4_K; v1 0.23-0.35 TB/s on the 896-row FFN shapes; v3
12-14 TFLOP/s at T=512. So both matvec kernels are well short of the target: next, fewer
instructions per weight (64-bit index arithmetic and per-8-weight scale decoding show up in
the PTX: ~300 u64 ops in v2's Q8_0 kernel), wider loads, split-K for small N.

Left out (later optimizations, noted here so nobody repeats the analysis):
- quantizing x to int8 and ``dp4a`` dot products (llama.cpp ``mul_mat_vec_q``): fewer
  bytes of x, 4 MACs per instruction, but no longer the reference's float32 numerics.
- split-K for the multi (QKV) and SwiGLU kernels (v7 covers decode_matvec only).
- 32-bit loads with a funnel shift for the 2-byte aligned blocks (Q6_K reads 34 uint16 per
  32 weights in v4), vector (``ld.shared.v4``) reads of x' (needs 16-byte aligned padding),
  nibbles masked in place (``w & 0xF0F0F0F0`` = 16 q, the 1/16 folded into the scale).
- v10: a split of K across blocks (grid z; needs atomics, nondeterministic, or a workspace), warming the next
  cache lines of W one step ahead (the decode8 calls of step s + 1 wait for an L2 trip whenever a row crosses
  into a new 128-byte line: every 2-14 steps by type), KC = 32 for the 8 x 8 tile (two buffers would need
  more than the 48 KiB of static shared memory).

References: llama.cpp ``ggml-cuda/mmvq.cu``, ``dmmv.cu`` (per-type fused decode in
matrix-vector products), ``ggml-cuda/vecdotq.cuh``; llm.c ``dev/cuda/matmul_forward.cu``
(tiling, kernel-versions layout); NVIDIA, *CUDA C++ Best Practices Guide*, "Shared
memory bank conflicts".
"""
from __future__ import annotations

import collections
import functools
import math
import os

import numpy as np
from numba import config, cuda, float32, int32, uint16, uint32, uint64
from numba.types import float16

from ref.ggml import BLOCK_SIZES, GGMLType, row_bytes
from ref.matmul import X8_K_MULTIPLE, X8Choice, x8_fits

from numba_kernels import ptx
from numba_kernels.rmsnorm import _block_sum, row_scale
from numba_kernels.rope import _args as _rope_args, _cos_sin, _rot_dims
from numba_kernels.runtime import JIT_CACHE, is_device as _is_device, kernel_time_us, launch_with_shared
from numba_kernels.runtime import to_device as _device

WARP = 32
MV_WARPS = 4              # warps (= rows in flight) per block of the matvec kernels
MV_THREADS = MV_WARPS * WARP
R_ROWS = 4                # rows per warp in matvec_v2
V2_MIN_ROWS = 4096        # matvec uses v2 from this many rows up (measured: v1 is faster below)
R_WEIGHTS = 8 * R_ROWS    # decoded weights a lane of matvec_v2 holds per step
STEP = 8 * WARP           # weights a warp decodes per step (8 per lane)
SMEM_LIMIT = 48 * 1024    # shared memory a block may use without opting in
OUT_F32, OUT_PAIRS, OUT_TILES = 0, 1, 2   # a prefill SwiGLU launch's output: float32, or the next product's x16
#                                          (plain pairs, or v23's tile order): silu(g) u rounded by cvt.rn, as
#                                          the packing would
MAX_K_SHARED = (SMEM_LIMIT // 4) * 32 // 33 // 8 * 8   # largest K whose padded x fits (11 912)
TT, TN, KC = 64, 64, 32   # matmul tile: tokens x rows x weights per step
KC_PAD = KC + 1           # padded row of the decoded W tile (bank-conflict free)
MM_THREADS = 256          # 16 x 16 threads, each a 4 x 4 micro-tile


# ---------------------------------------------------------------------------------------------
# decode8: 8 consecutive weights W[row, k:k+8] -> dst[d0:d0+8], per type.
# q16 is the row as uint16 words, h16 the same bytes as float16 (for the scales); indices unsigned 32-bit.
# ---------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _byte(q16, row, at):
    """Byte ``at`` of the row (little-endian words)."""
    r = uint32(row)                                   # unsigned indices: no wraparound code
    return int32(_field(q16[r, uint32(at >> 1)], (at & 1) * 8, 0xFF))


@cuda.jit(device=True, inline=True)
def _small(q):
    """float32(q) for an integer 0 <= q < 2^23, exactly, without an I2F: the bits MAGIC | q are 2^23 + q."""
    return _as_float(int32(q) | int32(MAGIC)) - F23


@cuda.jit(device=True, inline=True)
def _field(w, shift, mask):
    """(w >> shift) & mask of a 32-bit word, in 32-bit arithmetic (``ptx.shr_u32``)."""
    return ptx.shr_u32(w, shift) & uint32(mask)


@cuda.jit(device=True)
def _decode8_q8_0(q16, h16, row, k, dst, d0):
    # block of 34 bytes: d f16 @0, 32 int8 @2;  x_j = d * q_j
    r = uint32(row)                                   # unsigned indices: no wraparound code
    k = uint32(k)
    base = (k >> 5) * 34
    d = float32(h16[r, uint32(base >> 1)])
    word0 = (base + 2 + (k & 31)) >> 1
    for i in range(4):
        w = q16[r, uint32(word0 + i)] ^ uint16(0x8080)   # int8 q -> q + 128 in [0, 256)
        dst[d0 + 2 * i] = d * (_small(w & uint16(0xFF)) - float32(128.0))
        dst[d0 + 2 * i + 1] = d * (_small(w >> uint16(8)) - float32(128.0))


@cuda.jit(device=True)
def _decode8_q4_0(q16, h16, row, k, dst, d0):
    # block of 18 bytes: d f16 @0, qs @2; weight j<16 = low nibble of qs[j], j+16 = high
    r = uint32(row)                                   # unsigned indices: no wraparound code
    k = uint32(k)
    base = (k >> 5) * 18
    j = k & 31
    d = float32(h16[r, uint32(base >> 1)])
    shift = (j >> 4) * 4
    word0 = (base + 2 + (j & 15)) >> 1
    for i in range(4):
        w = q16[r, uint32(word0 + i)]
        dst[d0 + 2 * i] = d * (_small(_field(w, shift, 0xF)) - float32(8.0))
        dst[d0 + 2 * i + 1] = d * (_small(_field(w, 8 + shift, 0xF)) - float32(8.0))


@cuda.jit(device=True)
def _decode8_q5_0(q16, h16, row, k, dst, d0):
    # block of 22 bytes: d f16 @0, qh u32 @2 (bit j = 5th bit of weight j), qs @6
    r = uint32(row)                                   # unsigned indices: no wraparound code
    k = uint32(k)
    base = (k >> 5) * 22
    j = k & 31
    d = float32(h16[r, uint32(base >> 1)])
    high = _byte(q16, row, base + 2 + (j >> 3))       # 5th bits of weights j .. j+7
    shift = (j >> 4) * 4
    word0 = (base + 6 + (j & 15)) >> 1
    for i in range(4):
        w = q16[r, uint32(word0 + i)]
        q0 = _field(w, shift, 0xF) | ((high >> (2 * i)) & 1) << 4
        q1 = _field(w, 8 + shift, 0xF) | ((high >> (2 * i + 1)) & 1) << 4
        dst[d0 + 2 * i] = d * (_small(q0) - float32(16.0))
        dst[d0 + 2 * i + 1] = d * (_small(q1) - float32(16.0))


@cuda.jit(device=True)
def _k_scale_min(q16, row, base, s):
    """Q4_K/Q5_K: 6-bit (scale, min) of sub-block s from the 12 bytes at base+4."""
    if s < 4:
        sc = _byte(q16, row, base + 4 + s) & 63
        m = _byte(q16, row, base + 8 + s) & 63
    else:
        lo = _byte(q16, row, base + 8 + s)               # byte 8 + (s - 4) of scales
        sc = (lo & 0xF) | ((_byte(q16, row, base + s) >> 6) << 4)
        m = (lo >> 4) | ((_byte(q16, row, base + 4 + s) >> 6) << 4)
    return sc, m


@cuda.jit(device=True)
def _decode8_q4_k(q16, h16, row, k, dst, d0):
    # 144 bytes: d @0, dmin @2, scales @4, qs @16; j = 64c + 32h + l -> nibble h of qs[32c + l]
    r = uint32(row)                                   # unsigned indices: no wraparound code
    k = uint32(k)
    base = (k >> 8) * 144
    j = k & 255
    s = j >> 5                                        # sub-block of 32 = 2c + h
    sc, m = _k_scale_min(q16, row, base, s)
    ds = float32(h16[r, uint32(base >> 1)]) * _small(sc)
    dm = float32(h16[r, uint32((base >> 1) + 1)]) * _small(m)
    shift = (s & 1) * 4
    word0 = (base + 16 + (j >> 6) * 32 + (j & 31)) >> 1
    for i in range(4):
        w = q16[r, uint32(word0 + i)]
        dst[d0 + 2 * i] = ds * _small(_field(w, shift, 0xF)) - dm
        dst[d0 + 2 * i + 1] = ds * _small(_field(w, 8 + shift, 0xF)) - dm


@cuda.jit(device=True)
def _decode8_q5_k(q16, h16, row, k, dst, d0):
    # 176 bytes: d @0, dmin @2, scales @4, qh @16, qs @48; 5th bit of j = bit j//32 of qh[j%32]
    r = uint32(row)                                   # unsigned indices: no wraparound code
    k = uint32(k)
    base = (k >> 8) * 176
    j = k & 255
    s = j >> 5
    sc, m = _k_scale_min(q16, row, base, s)
    ds = float32(h16[r, uint32(base >> 1)]) * _small(sc)
    dm = float32(h16[r, uint32((base >> 1) + 1)]) * _small(m)
    shift = (s & 1) * 4
    word0 = (base + 48 + (j >> 6) * 32 + (j & 31)) >> 1
    hword0 = (base + 16 + (j & 31)) >> 1
    for i in range(4):
        w = q16[r, uint32(word0 + i)]
        h = ptx.shr_u32(q16[r, uint32(hword0 + i)], s)    # bit s of both bytes
        q0 = _field(w, shift, 0xF) | (h & 1) << 4
        q1 = _field(w, 8 + shift, 0xF) | ((h >> 8) & 1) << 4
        dst[d0 + 2 * i] = ds * _small(q0) - dm
        dst[d0 + 2 * i + 1] = ds * _small(q1) - dm


@cuda.jit(device=True)
def _decode8_q6_k(q16, h16, row, k, dst, d0):
    # 210 bytes: ql @0, qh @128, int8 scales @192, d @208; j = 128n + 32i + l
    r = uint32(row)                                   # unsigned indices: no wraparound code
    k = uint32(k)
    base = (k >> 8) * 210
    j = k & 255
    n = j >> 7
    quarter = (j >> 5) & 3
    l0 = j & 31
    sc = _byte(q16, row, base + 192 + 8 * n + (l0 >> 4) + 2 * quarter)
    ds = float32(h16[r, uint32((base + 208) >> 1)]) * (_small(sc ^ 0x80) - float32(128.0))   # int8 scale
    shift = (quarter >> 1) * 4                          # quarters 2, 3: high nibbles
    word0 = (base + 64 * n + 32 * (quarter & 1) + l0) >> 1
    hword0 = (base + 128 + 32 * n + l0) >> 1
    for i in range(4):
        w = q16[r, uint32(word0 + i)]
        h = ptx.shr_u32(q16[r, uint32(hword0 + i)], 2 * quarter)
        q0 = _field(w, shift, 0xF) | (h & 3) << 4
        q1 = _field(w, 8 + shift, 0xF) | ((h >> 8) & 3) << 4
        dst[d0 + 2 * i] = ds * (_small(q0) - float32(32.0))
        dst[d0 + 2 * i + 1] = ds * (_small(q1) - float32(32.0))


@cuda.jit(device=True)
def _decode8_float(wa, wb, row, k, dst, d0):
    # F16 / F32: the view already has the element type; widen to float32
    r = uint32(row)                                   # unsigned indices: no wraparound code
    k = uint32(k)
    for i in range(8):
        dst[d0 + i] = float32(wa[r, uint32(k + i)])


DECODERS = {
    GGMLType.Q4_0: _decode8_q4_0, GGMLType.Q5_0: _decode8_q5_0, GGMLType.Q8_0: _decode8_q8_0,
    GGMLType.Q4_K: _decode8_q4_k, GGMLType.Q5_K: _decode8_q5_k, GGMLType.Q6_K: _decode8_q6_k,
    GGMLType.F16: _decode8_float, GGMLType.F32: _decode8_float,
}
# dtype of the two views each decoder reads (quants, scales)
_VIEWS = {t: (np.uint16, np.float16) for t in DECODERS}
_VIEWS[GGMLType.F16] = (np.float16, np.float16)
_VIEWS[GGMLType.F32] = (np.float32, np.float32)


# ---------------------------------------------------------------------------------------------
# kernels (one compiled set per type, built lazily)
# ---------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _warp_sum(v):
    for offset in (16, 8, 4, 2, 1):
        v += cuda.shfl_down_sync(0xFFFFFFFF, v, offset)
    return v


@functools.lru_cache(maxsize=None)
def _kernels(ggml_type: GGMLType):
    """(matvec_v1, matvec_v2, matmul_tiled) for one type: decode8 is a compile-time constant."""
    decode8 = DECODERS[ggml_type]

    @cuda.jit(cache=JIT_CACHE)
    def matvec_v1(x, wa, wb, bias, has_bias, K, out):
        # x [K], wa/wb views of W [N, ...], out [N]; one warp per row
        lane = cuda.threadIdx.x % WARP
        row = cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.x // WARP
        if row >= out.shape[0]:
            return                                  # whole warp leaves together
        w = cuda.local.array(8, float32)
        acc = float32(0.0)
        for k0 in range(0, K, STEP):
            k = k0 + 8 * lane
            if k < K:
                decode8(wa, wb, row, k, w, 0)
                for i in range(8):
                    acc += w[i] * x[k + i]
        acc = _warp_sum(acc)
        if lane == 0:
            out[row] = acc + bias[row] if has_bias else acc

    @cuda.jit(cache=JIT_CACHE)
    def matvec_v2(x, wa, wb, bias, has_bias, K, out):
        # x staged in padded shared memory; each warp R_ROWS rows at once, so every lane has
        # 4 * R_ROWS independent loads in flight and each x value read serves R_ROWS rows
        xs = cuda.shared.array(0, float32)          # dynamic: K + K // 32 floats
        for p in range(cuda.threadIdx.x, K, MV_THREADS):
            xs[p + (p >> 5)] = x[p]
        cuda.syncthreads()
        N = out.shape[0]
        lane = cuda.threadIdx.x % WARP
        row0 = (cuda.blockIdx.x * MV_WARPS + cuda.threadIdx.x // WARP) * R_ROWS
        if row0 >= N:
            return
        w = cuda.local.array(R_WEIGHTS, float32)
        acc = cuda.local.array(R_ROWS, float32)
        for r in range(R_ROWS):
            acc[r] = 0.0
        for k0 in range(0, K, STEP):
            k = k0 + 8 * lane
            if k < K:
                for r in range(R_ROWS):             # rows past N re-read row N-1, never stored
                    decode8(wa, wb, min(row0 + r, N - 1), k, w, 8 * r)
                pad = k + (k >> 5)                  # (k + i) >> 5 == k >> 5 for i < 8
                for i in range(8):
                    xv = xs[pad + i]
                    for r in range(R_ROWS):
                        acc[r] += w[8 * r + i] * xv
        for r in range(R_ROWS):
            total = _warp_sum(acc[r])
            if lane == 0 and row0 + r < N:
                out[row0 + r] = total + bias[row0 + r] if has_bias else total

    @cuda.jit(cache=JIT_CACHE)
    def matmul_tiled(x, wa, wb, bias, has_bias, K, out):
        # x [T, K], out [T, N]; block (bx, by) -> rows bx*TN.., tokens by*TT..
        Ws = cuda.shared.array((TN, KC_PAD), float32)   # decoded W tile, padded rows
        Xs = cuda.shared.array((TT, KC), float32)
        tid = cuda.threadIdx.x
        tx = tid % 16                                   # rows tx + 16 j
        ty = tid // 16                                  # tokens ty + 16 i
        n0 = cuda.blockIdx.x * TN
        t0 = cuda.blockIdx.y * TT
        N, T = out.shape[1], out.shape[0]
        acc = cuda.local.array((4, 4), float32)
        for i in range(4):
            for j in range(4):
                acc[i, j] = 0.0
        wtile = cuda.local.array(8, float32)
        r = tid // 4                                    # this thread decodes row r ...
        c = 8 * (tid % 4)                               # ... weights c .. c+8 of the step
        for k0 in range(0, K, KC):
            inside = k0 + c < K                         # F16/F32 rows may end mid-step
            if n0 + r < N and inside:
                decode8(wa, wb, n0 + r, k0 + c, wtile, 0)
            for i in range(8):
                Ws[r, c + i] = wtile[i] if n0 + r < N and inside else 0.0
                Xs[r, c + i] = x[t0 + r, k0 + c + i] if t0 + r < T and inside else 0.0
            cuda.syncthreads()
            for kk in range(KC):
                for i in range(4):
                    a = Xs[ty + 16 * i, kk]
                    for j in range(4):
                        acc[i, j] += a * Ws[tx + 16 * j, kk]
            cuda.syncthreads()
        for i in range(4):
            for j in range(4):
                t, n = t0 + ty + 16 * i, n0 + tx + 16 * j
                if t < T and n < N:
                    out[t, n] = acc[i, j] + bias[n] if has_bias else acc[i, j]

    return matvec_v1, matvec_v2, matmul_tiled


# ---------------------------------------------------------------------------------------------
# launch helpers: the grid arithmetic
# ---------------------------------------------------------------------------------------------
def _views(w_raw, ggml_type):
    """The two views of the raw bytes [N, row_bytes] that decode8 reads."""
    a, b = _VIEWS[ggml_type]
    return w_raw.view(a), w_raw.view(b)


def _bias(bias, out):
    """(bias array, has_bias): without a bias the kernel gets a 1-D stand-in it never reads."""
    return (bias, True) if bias is not None else (out.reshape(out.size), False)


def launch_matvec_v1(x, w_raw, ggml_type, K, bias, out, stream=0):
    N = w_raw.shape[0]
    grid = (N + MV_WARPS - 1) // MV_WARPS             # one warp per row, MV_WARPS rows a block
    wa, wb = _views(w_raw, ggml_type)
    b, has = _bias(bias, out)
    _kernels(ggml_type)[0][grid, MV_THREADS, stream](x, wa, wb, b, has, K, out)


def launch_matvec_v2(x, w_raw, ggml_type, K, bias, out, stream=0):
    N = w_raw.shape[0]
    rows_per_block = MV_WARPS * R_ROWS
    grid = (N + rows_per_block - 1) // rows_per_block   # R_ROWS rows per warp
    wa, wb = _views(w_raw, ggml_type)
    b, has = _bias(bias, out)
    smem = 4 * (K + K // 32)                          # padded copy of x
    _kernels(ggml_type)[1][grid, MV_THREADS, stream, smem](x, wa, wb, b, has, K, out)


def launch_matmul_tiled(x, w_raw, ggml_type, K, bias, out, stream=0):
    T, N = out.shape
    grid = ((N + TN - 1) // TN, (T + TT - 1) // TT)   # x: tiles of TN rows, y: tiles of TT tokens
    wa, wb = _views(w_raw, ggml_type)
    b, has = _bias(bias, out)
    _kernels(ggml_type)[2][grid, MM_THREADS, stream](x, wa, wb, b, has, K, out)


# ---------------------------------------------------------------------------------------------
# v4-v6: fused decode kernels. x' (optionally RMS-normalized) is staged once per block in
# shared memory; each warp computes R rows; a lane dots WIDTH consecutive weights per step.
#
# Integer code generation. Numba types integer arithmetic as int64 and wraps every signed
# array index for negative values (a compare and a select per load, in 64 bits), and lowers
# ``range`` loops with a 64-bit trip counter. The hot paths therefore index with ``uint32(...)``
# (one IMAD.WIDE.U32 per load), loop with ``while`` over int32 counters, and truncate index
# arithmetic to int32 so that LLVM narrows it (checked in the SASS: see docs/matmul.md).
# ---------------------------------------------------------------------------------------------
MAGIC = 0x4B000000                       # float bits of 2^23: the bits MAGIC | b are the float 2^23 + b
F23 = np.float32(2.0 ** 23)              # (2^23 + b) - (2^23 + off) = b - off exactly (Sterbenz)
F23_8, F23_16, F23_32, F23_128 = (np.float32(2.0 ** 23 + o) for o in (8, 16, 32, 128))
FUSED_CONFIGS = ((8, 4), (8, 2), (8, 1), (4, 1))   # (warps per block, rows per warp), most rows first
BLOCKS_PER_SM = 2                        # the launch heuristic wants at least this many blocks per SM
MULTI_BLOCKS_PER_SM = 1                  # ... for the Q/K/V launch: Qwen2.5-0.5B's 1152 rows as (8, 1), x'
#                                          staged by 8 warps instead of 4: 5.6 -> 4.5 us on the H200
DECODE_WIDTH = 32                        # weights a lane dots per step: 32 = v4, 8 = v5, 16 = v6
EXP_LIMIT = np.float32(-88.72283935546875)    # expf(-g) overflows to inf below this g
F_INF = np.float32(np.inf)
MAX_K_FUSED = ((SMEM_LIMIT - 4 * WARP) // 4) * 32 // 33 // 32 * 32   # padded x' + 32 floats (11 872)

if config.ENABLE_CUDASIM:
    # The simulator runs device functions as Python, and libdevice has no simulator: the two bit
    # operations are written out here (the same results as PTX prmt.b32 and mov.b32).
    @cuda.jit(device=True)
    def _prmt(a, b, sel):
        """byte_perm(a, b, sel): output byte i is byte (sel >> 4i) & 7 of the 8 bytes b:a."""
        src = (int(a) & 0xFFFFFFFF) | ((int(b) & 0xFFFFFFFF) << 32)
        out = 0
        for i in range(4):
            out |= ((src >> (8 * ((int(sel) >> (4 * i)) & 7))) & 0xFF) << (8 * i)
        return np.int64(out)                        # (wide enough for the numpy scalars it meets)

    @cuda.jit(device=True)
    def _as_float(bits):
        return np.uint32(int(bits) & 0xFFFFFFFF).view(np.float32)

    @cuda.jit(device=True)
    def _rint(v):
        return np.float32(np.rint(np.float32(v)))

    @cuda.jit(device=True)
    def _as_bits(v):
        return np.float32(v).view(np.uint32)
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True, inline=True)
    def _prmt(a, b, sel):
        return libdevice.byte_perm(int32(a), int32(b), int32(sel))

    @cuda.jit(device=True, inline=True)
    def _as_float(bits):
        return libdevice.int_as_float(int32(bits))

    @cuda.jit(device=True, inline=True)
    def _as_bits(v):
        return uint32(libdevice.float_as_int(v))

    @cuda.jit(device=True, inline=True)
    def _rint(v):
        """Round to the nearest integer, ties to even (cvt.rni), as numpy.rint."""
        return libdevice.rintf(v)


@cuda.jit(device=True, inline=True)
def _qf(word, p, off, mg):
    """Byte ``p`` of ``word`` minus ``off - 2^23`` as a float32, exactly and without an I2F
    (a quarter-rate instruction): the bits 0x4B0000bb are the float 2^23 + bb. ``mg`` is MAGIC,
    computed at run time (``_magic``) so that ptxas keeps it in one register and encodes the
    selector as the immediate (with both constants known it rematerializes selectors instead)."""
    return _as_float(_prmt(word, mg, 0x7540 | p)) - off      # bytes: word.p, 0, 0, 0x4B


@cuda.jit(device=True, inline=True)
def _magic(K):
    return int32(MAGIC + min(K, 0))                  # == MAGIC (K >= 0), opaque to the compiler


@cuda.jit(device=True, inline=True)
def _u32(w16, h):
    """The 32-bit word of the two uint16 at h, h+1 (h uint32: any 2-aligned byte offset 2h)."""
    return _prmt(w16[h], w16[h + uint32(1)], 0x5410)


@cuda.jit(device=True, inline=True)
def _spread4(bits):
    """Bits 0..3 of ``bits`` to bit 4 of bytes 0..3 (four shifted copies, no carries)."""
    return ((bits & 0xF) * 0x02040810) & 0x10101010


# Per-type pieces of the dot product of x' with one "unit" of WIDTH consecutive weights
# W[row, k:k+WIDTH] (k a multiple of WIDTH, so a unit never crosses a block):
#   prep(views, g, j0) -> (a, b, c, e, h, h2): once per unit, from g = byte offset of the
#       block and j0 = index of the unit's first weight in it: the scales (floats a, b), two
#       small integers c, e (shifts, 5th bits) and h, h2 = uint32 indices of the unit's first
#       quant words in the view the type reads;
#   octet(views, o, xs, xo, a, b, c, e, h, h2) -> sum of 8 weights times x' for the o-th octet
#       of the unit (o a literal: its offsets from h and xo fold into the load instructions);
#   fin(a, s): apply the unit's scale once (types whose octets scale themselves return s).
# Views: w16 uint16, w32 uint32, wh float16, wf float32, all of the same bytes.
@cuda.jit(device=True, inline=True)
def _fin_scale(a, s):
    return a * s


@cuda.jit(device=True, inline=True)
def _fin_plain(a, s):
    return s


@cuda.jit(device=True, inline=True)
def _prep_q8_0(w16, w32, wh, wf, g, j0):
    # 34 bytes: d f16 @0, 32 int8 @2
    return float32(wh[g >> 1]), float32(0.0), 0, 0, uint32((g + 2 + j0) >> 1), uint32(0)


@cuda.jit(device=True, inline=True)
def _oct_q8_0(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    s = float32(0.0)
    for t in range(4):
        w = int32(w16[h + uint32(4 * o + t)]) ^ 0x8080      # int8 q -> q + 128 in [0, 256)
        s += xs[xo + uint32(8 * o + 2 * t)] * _qf(w, 0, F23_128, mg)
        s += xs[xo + uint32(8 * o + 2 * t + 1)] * _qf(w, 1, F23_128, mg)
    return s


@cuda.jit(device=True, inline=True)
def _prep_q4_0(w16, w32, wh, wf, g, j0):
    # 18 bytes: d @0, qs @2; weight j < 16: low nibble of qs[j], j >= 16: high nibble of qs[j-16]
    return float32(wh[g >> 1]), float32(0.0), (j0 >> 4) * 4, 0, uint32((g + 2 + (j0 & 15)) >> 1), uint32(0)


@cuda.jit(device=True, inline=True)
def _oct_q4_0(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    # octet o of a unit starting at j0: bytes (j0 & 15) + 8 (o & 1), nibble (j0 >> 4) + (o >> 1)
    s = float32(0.0)
    for t in range(2):
        q = (_u32(w16, h + uint32(4 * (o & 1) + 2 * t)) >> (c + 4 * (o >> 1))) & 0x0F0F0F0F
        for p in range(4):
            s += xs[xo + uint32(8 * o + 4 * t + p)] * _qf(q, p, F23_8, mg)
    return s


@cuda.jit(device=True, inline=True)
def _prep_q5_0(w16, w32, wh, wf, g, j0):
    # 22 bytes: d @0, qh u32 @2 (bit j = 5th bit of weight j), qs @6 as Q4_0
    qh = _u32(w16, uint32((g + 2) >> 1))
    return (float32(wh[g >> 1]), float32(0.0), (j0 >> 4) * 4, qh >> j0,
            uint32((g + 6 + (j0 & 15)) >> 1), uint32(0))


@cuda.jit(device=True, inline=True)
def _oct_q5_0(w16, w32, wh, wf, o, xs, xo, a, b, c, qh, h, h2, mg):
    s = float32(0.0)
    for t in range(2):
        q = (_u32(w16, h + uint32(4 * (o & 1) + 2 * t)) >> (c + 4 * (o >> 1))) & 0x0F0F0F0F
        q |= _spread4(qh >> (8 * o + 4 * t))
        for p in range(4):
            s += xs[xo + uint32(8 * o + 4 * t + p)] * _qf(q, p, F23_16, mg)
    return s


@cuda.jit(device=True, inline=True)
def _k_scales(w32, wh, g, s):
    """Q4_K/Q5_K: (d * sc, dmin * m) of sub-block s (ref.quants.k_scale_min); d @0, dmin @2,
    12 bytes of 6-bit scales and mins @4."""
    sh = (s & 3) * 8
    w = uint32(g >> 2)
    b0 = (w32[w + uint32(1)] >> sh) & 0xFF             # byte s & 3 of scales[0:4]
    b1 = (w32[w + uint32(2)] >> sh) & 0xFF             # ... of scales[4:8]
    b2 = (w32[w + uint32(3)] >> sh) & 0xFF             # ... of scales[8:12]
    if s < 4:
        sc, m = b0 & 63, b1 & 63
    else:
        sc, m = (b2 & 0xF) | ((b0 >> 6) << 4), (b2 >> 4) | ((b1 >> 6) << 4)
    return float32(wh[g >> 1]) * float32(int32(sc)), float32(wh[(g >> 1) + uint32(1)]) * float32(int32(m))


# v15 (the default since the eleventh session; LLAMA_BETA_VECTOR_LOADS=0 turns it off): the Q4_K/Q5_K units
# of 16 or 32 weights read their quants in 16-byte loads. +2.4% on the Phi-3 twin's decode step. A kernel's
# disk-cache key covers it (Numba pickles the closures down to the octets, which differ).
VECTOR_LOADS = os.environ.get("LLAMA_BETA_VECTOR_LOADS", "1") == "1"


@cuda.jit(device=True, inline=True)
def _word_u32(w32, h, j):
    """Word h + j of the uint32 view: one 4-byte load per word (before v15)."""
    return w32[h + uint32(j)]


@cuda.jit(device=True, inline=True)
def _word_v4(w32, h, j):
    """Word h + j (h 16-byte aligned, j a literal) as a lane of the 16-byte load of words h + 4 (j // 4) ..:
    the unit's calls for j = 0..3 (and 4..7) load the same address, which the compiler merges into one
    ``ld.global.nc.v4.u32``. v15: a warp's 4-byte loads each touch the same 16 sectors as their neighbours
    (lane pairs read one 32-byte stretch), so the L1 served 8 requests where 2 now do."""
    w0, w1, w2, w3 = ptx.load_u32x4(w32, h + uint32(j & ~3))
    c = j & 3
    return w0 if c == 0 else (w1 if c == 1 else (w2 if c == 2 else w3))


@cuda.jit(device=True, inline=True)
def _prep_q4_k(w16, w32, wh, wf, g, j0):
    # 144 bytes: qs @16; weight j = 64c + 32h + l is nibble h of qs[32c + l]
    s = j0 >> 5                                        # sub-block of 32
    ds, dm = _k_scales(w32, wh, g, s)
    return ds, dm, (s & 1) * 4, 0, uint32((g + 16 + (s >> 1) * 32 + (j0 & 31)) >> 2), uint32(0)


@cuda.jit(device=True, inline=True)
def _prep_q5_k(w16, w32, wh, wf, g, j0):
    # 176 bytes: qh @16 (5th bit of weight j: bit j // 32 of qh[j % 32]), qs @48 as Q4_K
    s = j0 >> 5
    ds, dm = _k_scales(w32, wh, g, s)
    return (ds, dm, (s & 1) * 4, s, uint32((g + 48 + (s >> 1) * 32 + (j0 & 31)) >> 2),
            uint32((g + 16 + (j0 & 31)) >> 2))


def _k_octets(word):
    """The Q4_K and Q5_K octets, reading their quant words with ``word`` (``_word_u32``, or ``_word_v4``
    where the unit starts 16-byte aligned: units of 16 or 32 weights, v15). Q5_K is Q4_K plus a 5th bit per
    weight, bit s of qh (h2) shifted into bit 4 of each byte."""
    def make(fifth):
        @cuda.jit(device=True, inline=True)
        def octet(w16, w32, wh, wf, o, xs, xo, ds, dm, shift, s, h, h2, mg):
            # sum x (ds q - dm) = ds sum x q - dm sum x: one FMA per weight; sum x is the same for every
            # row of the warp (the compiler computes it once)
            acc = float32(0.0)
            sx = float32(0.0)
            for t in range(2):
                q = (word(w32, h, 2 * o + t) >> shift) & 0x0F0F0F0F
                if fifth:
                    q |= ((word(w32, h2, 2 * o + t) >> s) & 0x01010101) << 4
                for p in range(4):
                    xv = xs[xo + uint32(8 * o + 4 * t + p)]
                    acc += xv * _qf(q, p, F23, mg)
                    sx += xv
            return ds * acc - dm * sx
        return octet

    return make(False), make(True)


_oct_q4_k, _oct_q5_k = _k_octets(_word_u32)
_VECTOR_OCTET = dict(zip((_oct_q4_k, _oct_q5_k), _k_octets(_word_v4)))   # v15's version of each


@cuda.jit(device=True, inline=True)
def _prep_q6_k(w16, w32, wh, wf, g, j0):
    # 210 bytes: ql @0, qh @128, int8 scales @192 (one per 16 weights), d @208; j = 128n + 32i + l:
    # low 4 bits: nibble i // 2 of ql[64n + 32 (i % 2) + l]; top 2: bits 2i of qh[32n + l]
    n = j0 >> 7
    i = (j0 >> 5) & 3
    l0 = j0 & 31
    d = float32(wh[(g + 208) >> 1])
    scw = int32(w16[(g + 192 + 8 * n + 2 * i) >> 1]) >> ((l0 >> 4) * 8)   # this unit's scales
    s0, s1 = scw & 0xFF, (scw >> 8) & 0xFF
    return (d * float32(int32(s0 - ((s0 & 0x80) << 1))), d * float32(int32(s1 - ((s1 & 0x80) << 1))),
            (i >> 1) * 4, 2 * i, uint32((g + 64 * n + 32 * (i & 1) + l0) >> 1), uint32((g + 128 + 32 * n + l0) >> 1))


@cuda.jit(device=True, inline=True)
def _oct_q6_k(w16, w32, wh, wf, o, xs, xo, ds0, ds1, shl, shh, h, h2, mg):
    acc = float32(0.0)
    for t in range(2):
        q = (_u32(w16, h + uint32(4 * o + 2 * t)) >> shl) & 0x0F0F0F0F
        q |= ((_u32(w16, h2 + uint32(4 * o + 2 * t)) >> shh) & 0x03030303) << 4
        for p in range(4):
            acc += xs[xo + uint32(8 * o + 4 * t + p)] * _qf(q, p, F23_32, mg)
    return (ds0 if o < 2 else ds1) * acc                # (d * sc) as ref.quants; 16 weights per sc


@cuda.jit(device=True, inline=True)
def _prep_f16(w16, w32, wh, wf, g, j0):                 # the row is one "block": g row, j0 index
    return float32(1.0), float32(0.0), 0, 0, uint32((g >> 1) + j0), uint32(0)


@cuda.jit(device=True, inline=True)
def _oct_f16(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    acc = float32(0.0)
    for t in range(8):
        acc += xs[xo + uint32(8 * o + t)] * float32(wh[h + uint32(8 * o + t)])
    return acc


@cuda.jit(device=True, inline=True)
def _prep_f32(w16, w32, wh, wf, g, j0):
    return float32(1.0), float32(0.0), 0, 0, uint32((g >> 2) + j0), uint32(0)


@cuda.jit(device=True, inline=True)
def _oct_f32(w16, w32, wh, wf, o, xs, xo, a, b, c, e, h, h2, mg):
    acc = float32(0.0)
    for t in range(8):
        acc += xs[xo + uint32(8 * o + t)] * wf[h + uint32(8 * o + t)]
    return acc


# type -> (log2 weights per block, bytes per block, prep, octet, fin). F16/F32: the row is one
# block (k >> 31 == 0), so g is the row's offset and j0 the index in the row.
DOT_PARTS = {
    GGMLType.Q8_0: (5, 34, _prep_q8_0, _oct_q8_0, _fin_scale),
    GGMLType.Q4_0: (5, 18, _prep_q4_0, _oct_q4_0, _fin_scale),
    GGMLType.Q5_0: (5, 22, _prep_q5_0, _oct_q5_0, _fin_scale),
    GGMLType.Q4_K: (8, 144, _prep_q4_k, _oct_q4_k, _fin_plain),
    GGMLType.Q5_K: (8, 176, _prep_q5_k, _oct_q5_k, _fin_plain),
    GGMLType.Q6_K: (8, 210, _prep_q6_k, _oct_q6_k, _fin_plain),
    GGMLType.F16: (31, 0, _prep_f16, _oct_f16, _fin_plain),
    GGMLType.F32: (31, 0, _prep_f32, _oct_f32, _fin_plain),
}
ALIGN4_TYPES = (GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.F32)   # read through the uint32 view
VECTOR_TYPES = (GGMLType.Q4_K, GGMLType.Q5_K)   # ... in 16-byte loads (v15): rows of 144 / 176-byte blocks


@cuda.jit(device=True, inline=True)
def _code(v, inv):
    """The int8 code rint(v / d) of one element (inv = 1 / d, or 0 where d = 0) as the low byte of a word."""
    return uint32(int32(_rint(v * inv))) & uint32(0xFF)


@cuda.jit(device=True, inline=True)
def _x8_step(a):
    """(d, 1 / d) of an int8 block of 32 whose largest |x| is a, as ``ref.matmul.quantize_x8``: d = a / 127,
    and 0 for 1 / d where d = 0 (the block's codes are then all 0)."""
    d = a / float32(127.0)
    return d, float32(1.0) / d if d > float32(0.0) else float32(0.0)


@cuda.jit(device=True, inline=True)
def _quantize_staged(xs, K):
    """v20: x' staged in shared memory (``_stage_x``: block j of 32 in slots 33 j .. 33 j + 31) rounded in place
    to int8 blocks of 32 as ``ref.matmul.quantize_x8`` (d = max|x| / 127, code = rint(x / d), 0 where d = 0):
    slots 33 j .. 33 j + 7 then hold the 32 codes (4 a word, element 4 w + i in byte i of slot w), slot
    33 j + 8 d_j and 33 j + 9 the block's float sum s_j. A thread per block of 32 (the padding puts the 32
    threads' slots in 32 different banks), reading its 32 elements twice: max and sum, then the codes. Code word
    w overwrites slot w only after elements 0 .. 4 w + 3 were read. Ends with a block barrier."""
    xw = cuda.shared.array(0, uint32)               # the same bytes as xs
    j = int32(cuda.threadIdx.x)
    while j < (K >> 5):
        b = uint32(33 * j)
        a = float32(0.0)
        t = float32(0.0)
        for i in range(32):
            v = xs[b + uint32(i)]
            a = max(a, abs(v))
            t += v
        d, inv = _x8_step(a)
        for w in range(8):
            o = b + uint32(4 * w)
            xw[b + uint32(w)] = (_code(xs[o], inv) | (_code(xs[o + uint32(1)], inv) << uint32(8))
                                 | (_code(xs[o + uint32(2)], inv) << uint32(16))
                                 | (_code(xs[o + uint32(3)], inv) << uint32(24)))
        xs[b + uint32(8)] = d
        xs[b + uint32(9)] = t
        j += int32(cuda.blockDim.x)
    cuda.syncthreads()


@cuda.jit(cache=JIT_CACHE)
def quantize_x8_kernel(x, nw, has_norm, eps, K, out):
    """v20's x', as a launch of its own (for tests): a v20 block's staging and rounding (``_stage_x``, then
    ``_quantize_staged``), copied out to ``out`` (float32 [xs_floats(K)], the same layout). One block."""
    xs = cuda.shared.array(0, float32)
    red = cuda.shared.array(WARP, float32)
    _stage_x(x, nw, has_norm, eps, K, xs, red)
    _quantize_staged(xs, K)
    p = cuda.threadIdx.x
    while p < K + (K >> 5):
        out[p] = xs[p]
        p += cuda.blockDim.x


XQ_WORDS = 12    # v21: 32-bit words per block of 32 of x' rounded in global memory (8 code words, d, s, 2 spare:
#                  whole 16-byte lines)


def xq_words(K: int) -> int:
    """Words of a v21 buffer holding x' [K] rounded to int8 blocks of 32 (``_round_rows_out``)."""
    return K // 32 * XQ_WORDS


COMPACT_SLOTS = 11   # v21 compact (opt-in): shared slots per block of 32 in W_down (10 words used; odd: banks spread)
X8_COMPACT = os.environ.get("LLAMA_BETA_X8_COMPACT", "0") == "1"


def xq_shared_floats(K: int, compact: bool) -> int:
    """Shared floats of a v21 block holding the rounded x' [K]: v20's padded layout (``xs_floats``), or
    ``COMPACT_SLOTS`` per block of 32 (11 KB instead of 33 KB at K = 8192)."""
    return K // 32 * COMPACT_SLOTS if compact else xs_floats(K)


@functools.cache
def _xq_loader(BS: int):
    """v21 staging: x' arrives already rounded by the launch before (``_round_rows_out``: uint32
    [K / 32, XQ_WORDS]), so a block copies each block of 32's ten words (codes, d, s) into slots BS j ..
    BS j + 9 of xs, three 16-byte loads a thread and block of 32, instead of staging K floats and rounding
    them. BS = 33 is where ``_quantize_staged`` would have left them (v20's layout); the compact layout
    (``COMPACT_SLOTS`` = 11, opt-in) keeps only the slots the products read. (Same arguments as
    ``_stage_x``; the norm ones unused.)"""

    @cuda.jit(device=True, inline=True)
    def load_xq(xq, nw, has_norm, eps, K, xs, red):
        ptx.allow_next_grid()
        ptx.wait_previous_grid()
        xw = cuda.shared.array(0, uint32)               # the same bytes as xs
        j = int32(cuda.threadIdx.x)
        while j < (K >> 5):
            a0, a1, a2, a3 = ptx.load_u32x4(xq, uint32(XQ_WORDS * j))
            b0, b1, b2, b3 = ptx.load_u32x4(xq, uint32(XQ_WORDS * j + 4))
            c0, c1, _, _ = ptx.load_u32x4(xq, uint32(XQ_WORDS * j + 8))
            b = uint32(BS * j)
            xw[b] = a0
            xw[b + uint32(1)] = a1
            xw[b + uint32(2)] = a2
            xw[b + uint32(3)] = a3
            xw[b + uint32(4)] = b0
            xw[b + uint32(5)] = b1
            xw[b + uint32(6)] = b2
            xw[b + uint32(7)] = b3
            xw[b + uint32(8)] = c0
            xw[b + uint32(9)] = c1
            j += int32(cuda.blockDim.x)
        cuda.syncthreads()
    return load_xq


@cuda.jit(device=True, inline=True)
def _warp_max_sum(v):
    """(max |v|, sum of v) over the 32 lanes of a warp, in every lane (butterfly shuffles)."""
    a = abs(v)
    t = v
    off = WARP >> 1
    while off > 0:
        a = max(a, cuda.shfl_xor_sync(0xFFFFFFFF, a, off))
        t += cuda.shfl_xor_sync(0xFFFFFFFF, t, off)
        off >>= 1
    return a, t


@cuda.jit(device=True, inline=True)
def _round_rows_out(hv, ROWS, row0, N, xq):
    """v21, a producer's epilogue: the block's ROWS outputs ``hv`` (shared, rows row0 .. row0 + ROWS - 1; ROWS
    and row0 multiples of 32) rounded to int8 blocks of 32 as ``ref.matmul.quantize_x8`` into ``xq`` (uint32
    [N / 32, XQ_WORDS]: 8 words of codes, element 4 w + i in byte i of word w, then d and s as bits), warp w
    taking block w. The max is exact in any order; the sum s is a butterfly here (``_quantize_staged`` adds in
    order: s may differ in its last bits). Call after a block barrier that follows the writes of hv."""
    lane = cuda.threadIdx.x & (WARP - 1)
    w = int32(cuda.threadIdx.x // WARP)
    if w < (ROWS >> 5) and row0 + 32 * w < N:
        v = hv[32 * w + lane]
        a, t = _warp_max_sum(v)
        d, inv = _x8_step(a)
        c = _code(v, inv)
        c |= uint32(cuda.shfl_down_sync(0xFFFFFFFF, int32(c), 1)) << uint32(8)    # lane 4 i: the word of
        c |= uint32(cuda.shfl_down_sync(0xFFFFFFFF, int32(c), 2)) << uint32(16)   # elements 4 i .. 4 i + 3
        o = uint32(((row0 >> 5) + w) * XQ_WORDS)
        if (lane & 3) == 0:
            xq[o + uint32(lane >> 2)] = c
        if lane == 0:
            xq[o + uint32(8)] = _as_bits(d)
            xq[o + uint32(9)] = _as_bits(t)


NIBBLES = np.uint32(0x0F0F0F0F)     # the low nibble of each byte
HIGH_NIBBLES = np.uint32(0xF0F0F0F0)   # the high nibble, in place: 16 q per byte
SIXTEENTH = np.float32(1.0 / 16.0)
FIFTHS = np.uint32(0x10101010)      # bit 4 of each byte: a 5-bit quant's fifth bit


@cuda.jit(device=True, inline=True)
def _k_pair_scales(h1, h2, h3, sel):
    """v20: the 6-bit scales and mins of sub-blocks 2c and 2c + 1 of a Q4_K/Q5_K super-block, from its scale
    words h1, h2, h3 (bytes 4..15), as bytes 0 and 1 of two words (sc, m). All eight of each are built four
    at a time (ref.quants.k_scale_min: sub-block j < 4 has sc = q[j] & 63, m = q[j + 4] & 63; j >= 4 has
    sc = (q[j + 4] & 15) | (q[j - 4] >> 6) << 4, m = (q[j + 4] >> 4) | (q[j] >> 6) << 4), then ``prmt`` picks
    bytes 2c, 2c + 1 of the eight (sel = 2c | (2c + 1) << 4, the same every step of a lane): no branch on c."""
    sc_lo = h1 & 0x3F3F3F3F
    m_lo = h2 & 0x3F3F3F3F
    sc_hi = (h3 & NIBBLES) | ((h1 >> 2) & 0x30303030)
    m_hi = ((h3 >> 4) & NIBBLES) | ((h2 >> 2) & 0x30303030)
    return _prmt(sc_lo, sc_hi, sel), _prmt(m_lo, m_hi, sel)


@cuda.jit(device=True, inline=True)
def _dp4a_nibbles(a, xs, x0, x1, j, lo, hi):
    """Quant word a (8 nibbles): its low nibbles against code word j of slots x0.., its high ones against
    code word j of slots x1..: (lo, hi) plus the two byte dot products."""
    lo = ptx.dp4a_us(a & NIBBLES, _as_bits(xs[x0 + uint32(j)]), lo)
    hi = ptx.dp4a_us(a & HIGH_NIBBLES, _as_bits(xs[x1 + uint32(j)]), hi)
    return lo, hi


@cuda.jit(device=True, inline=True)
def _k_pair_sum(wh, gw, sc, m, lo, hi, xs, x0, bs, mg):
    """v20, Q4_K/Q5_K: a pair's share of the row from its two exact integer dots (lo: sub-block 2c against x'
    block x0, hi: 2c + 1 against the next, as floats), the super-block's d, dmin (f16 halves 2 gw, 2 gw + 1) and
    the pair's scales and mins (bytes 0, 1 of sc and m): d_x0 (d sc_0) lo + d_x1 (d sc_1) hi - dmin (m_0 s_x0 +
    m_1 s_x1); bs: the slots per block of 32 (x1 = x0 + bs)."""
    x1 = x0 + uint32(bs)
    d = float32(wh[gw << uint32(1)])
    dmin = float32(wh[(gw << uint32(1)) + uint32(1)])
    s = xs[x0 + uint32(8)] * ((d * _qf(sc, 0, F23, mg)) * lo)
    s += xs[x1 + uint32(8)] * ((d * _qf(sc, 1, F23, mg)) * hi)
    return s - dmin * (_qf(m, 0, F23, mg) * xs[x0 + uint32(9)] + _qf(m, 1, F23, mg) * xs[x1 + uint32(9)])


@cuda.jit(device=True, inline=True)
def _q4k_pair(w32, wh, gw, qw, sel, xs, x0, bs, mg):
    """v20: sum over the 64 weights of sub-blocks 2c, 2c + 1 of one Q4_K super-block times the int8 x' of
    ``_quantize_staged``. gw: uint32 word index of the super-block (144 bytes: d, dmin f16 @0, 12 scale bytes @4,
    quants @16); qw = gw + 4 + 8c: its quant words 32c .. 32c + 31 (the low nibbles are sub-block 2c, the high
    ones 2c + 1); x0: the slot of sub-block 2c's codes (2c + 1's are bs slots on: 33, or 11 compact).
    = d_x0 (d sc_0) sum_i u_i q_i + d_x1 (d sc_1) (sum_i 16 u'_i q'_i) / 16 - dmin (m_0 s_x0 + m_1 s_x1):
    sixteen ``dp4a`` (unsigned nibbles masked in place, signed codes), the high nibbles unshifted (16 u', the
    1/16 applied to the exact integer sum: |sum| < 2^24)."""
    h0, h1, h2, h3 = ptx.load_u32x4(w32, gw)
    sc, m = _k_pair_scales(h1, h2, h3, sel)
    a0, a1, a2, a3 = ptx.load_u32x4(w32, qw)
    a4, a5, a6, a7 = ptx.load_u32x4(w32, qw + uint32(4))
    x1 = x0 + uint32(bs)
    lo, hi = _dp4a_nibbles(a0, xs, x0, x1, 0, int32(0), int32(0))     # written out: literal slot offsets
    lo, hi = _dp4a_nibbles(a1, xs, x0, x1, 1, lo, hi)
    lo, hi = _dp4a_nibbles(a2, xs, x0, x1, 2, lo, hi)
    lo, hi = _dp4a_nibbles(a3, xs, x0, x1, 3, lo, hi)
    lo, hi = _dp4a_nibbles(a4, xs, x0, x1, 4, lo, hi)
    lo, hi = _dp4a_nibbles(a5, xs, x0, x1, 5, lo, hi)
    lo, hi = _dp4a_nibbles(a6, xs, x0, x1, 6, lo, hi)
    lo, hi = _dp4a_nibbles(a7, xs, x0, x1, 7, lo, hi)
    return _k_pair_sum(wh, gw, sc, m, float32(lo), float32(hi) * SIXTEENTH, xs, x0, bs, mg)


@cuda.jit(device=True, inline=True)
def _q4k_at(w16, w32, wh, rbyte, p, q, sel, xs, x0, bs, mg):
    """v20, Q4_K: pair p of the row that starts at byte rbyte (super-block p // 4: 36 words of 144 bytes)."""
    sb = (rbyte >> uint32(2)) + uint32(36 * (p >> 2))
    return _q4k_pair(w32, wh, sb, sb + q, sel, xs, x0, bs, mg)


@cuda.jit(device=True, inline=True)
def _dp4a_fifths(a, e, xs, x0, x1, j, lo, hi):
    """Q5_K: quant word a (8 nibbles) and qh word e shifted right by 2c (bit 0 of each byte: the low nibble's fifth
    bit, bit 1: the high one's) as two words of 5-bit quants, against code word j of slots x0.. and x1..."""
    lo = ptx.dp4a_us((a & NIBBLES) | ((e << uint32(4)) & FIFTHS), _as_bits(xs[x0 + uint32(j)]), lo)
    hi = ptx.dp4a_us(((a >> uint32(4)) & NIBBLES) | ((e << uint32(3)) & FIFTHS), _as_bits(xs[x1 + uint32(j)]), hi)
    return lo, hi


@cuda.jit(device=True, inline=True)
def _q5k_at(w16, w32, wh, rbyte, p, q, sel, xs, x0, bs, mg):
    """v20, Q5_K: pair p of the row that starts at byte rbyte: super-block p // 4 (44 words of 176 bytes: d, dmin
    f16 @0, 12 scale bytes @4, qh @16, quants @48), pair c = p % 4 (q = 4 + 8c). As ``_q4k_pair``, with the
    quant words 12 + 8c .. and bits 2c, 2c + 1 of every qh byte (weight l of sub-blocks 2c, 2c + 1 is qh byte l)
    as bit 4 of the 5-bit quants; the high nibbles are shifted down (no room for a fifth bit above them), so the
    high dot needs no 1/16."""
    gw = (rbyte >> uint32(2)) + uint32(44 * (p >> 2))
    h0, h1, h2, h3 = ptx.load_u32x4(w32, gw)
    sc, m = _k_pair_scales(h1, h2, h3, sel)
    qw = gw + q + uint32(8)
    a0, a1, a2, a3 = ptx.load_u32x4(w32, qw)
    a4, a5, a6, a7 = ptx.load_u32x4(w32, qw + uint32(4))
    e0, e1, e2, e3 = ptx.load_u32x4(w32, gw + uint32(4))
    e4, e5, e6, e7 = ptx.load_u32x4(w32, gw + uint32(8))
    sh = (q - uint32(4)) >> uint32(2)             # 2c
    x1 = x0 + uint32(bs)
    lo, hi = _dp4a_fifths(a0, e0 >> sh, xs, x0, x1, 0, int32(0), int32(0))
    lo, hi = _dp4a_fifths(a1, e1 >> sh, xs, x0, x1, 1, lo, hi)
    lo, hi = _dp4a_fifths(a2, e2 >> sh, xs, x0, x1, 2, lo, hi)
    lo, hi = _dp4a_fifths(a3, e3 >> sh, xs, x0, x1, 3, lo, hi)
    lo, hi = _dp4a_fifths(a4, e4 >> sh, xs, x0, x1, 4, lo, hi)
    lo, hi = _dp4a_fifths(a5, e5 >> sh, xs, x0, x1, 5, lo, hi)
    lo, hi = _dp4a_fifths(a6, e6 >> sh, xs, x0, x1, 6, lo, hi)
    lo, hi = _dp4a_fifths(a7, e7 >> sh, xs, x0, x1, 7, lo, hi)
    return _k_pair_sum(wh, gw, sc, m, float32(lo), float32(hi), xs, x0, bs, mg)


@cuda.jit(device=True, inline=True)
def _q8_0_at(w16, w32, wh, rbyte, p, q, sel, xs, x0, bs, mg):
    """v20, Q8_0: blocks 2p and 2p + 1 of the row that starts at byte rbyte, against the int8 x' of
    ``_quantize_staged``: d_x0 d_0 sum_i q_i c_i + d_x1 d_1 sum_i q'_i c'_i, eight ``dp4a`` per block.
    The pair's 68 bytes are 17 words from word rbyte / 4 + 17 p (rows of whole pairs start 4-byte aligned):
    word 0 = d_0 | q_0[0:2], words 1-7 = q_0[2:30], word 8 = q_0[30:32] | d_1, words 9-16 = q_1; block 0's
    quant words straddle two loaded words, realigned by ``prmt`` (bytes 2, 3 of one and 0, 1 of the next).
    (w16, q, sel, mg: other types', unused.)"""
    b = (rbyte >> uint32(2)) + uint32(17 * p)
    w0, w1, w2, w3, w4 = w32[b], w32[b + uint32(1)], w32[b + uint32(2)], w32[b + uint32(3)], w32[b + uint32(4)]
    w5, w6, w7, w8 = w32[b + uint32(5)], w32[b + uint32(6)], w32[b + uint32(7)], w32[b + uint32(8)]
    v0, v1, v2, v3 = w32[b + uint32(9)], w32[b + uint32(10)], w32[b + uint32(11)], w32[b + uint32(12)]
    v4, v5, v6, v7 = w32[b + uint32(13)], w32[b + uint32(14)], w32[b + uint32(15)], w32[b + uint32(16)]
    x1 = x0 + uint32(bs)
    s0 = ptx.dp4a(_prmt(w0, w1, 0x5432), _as_bits(xs[x0]), int32(0))
    s0 = ptx.dp4a(_prmt(w1, w2, 0x5432), _as_bits(xs[x0 + uint32(1)]), s0)
    s0 = ptx.dp4a(_prmt(w2, w3, 0x5432), _as_bits(xs[x0 + uint32(2)]), s0)
    s0 = ptx.dp4a(_prmt(w3, w4, 0x5432), _as_bits(xs[x0 + uint32(3)]), s0)
    s0 = ptx.dp4a(_prmt(w4, w5, 0x5432), _as_bits(xs[x0 + uint32(4)]), s0)
    s0 = ptx.dp4a(_prmt(w5, w6, 0x5432), _as_bits(xs[x0 + uint32(5)]), s0)
    s0 = ptx.dp4a(_prmt(w6, w7, 0x5432), _as_bits(xs[x0 + uint32(6)]), s0)
    s0 = ptx.dp4a(_prmt(w7, w8, 0x5432), _as_bits(xs[x0 + uint32(7)]), s0)
    s1 = ptx.dp4a(v0, _as_bits(xs[x1]), int32(0))
    s1 = ptx.dp4a(v1, _as_bits(xs[x1 + uint32(1)]), s1)
    s1 = ptx.dp4a(v2, _as_bits(xs[x1 + uint32(2)]), s1)
    s1 = ptx.dp4a(v3, _as_bits(xs[x1 + uint32(3)]), s1)
    s1 = ptx.dp4a(v4, _as_bits(xs[x1 + uint32(4)]), s1)
    s1 = ptx.dp4a(v5, _as_bits(xs[x1 + uint32(5)]), s1)
    s1 = ptx.dp4a(v6, _as_bits(xs[x1 + uint32(6)]), s1)
    s1 = ptx.dp4a(v7, _as_bits(xs[x1 + uint32(7)]), s1)
    h = b << uint32(1)                            # the f16 index of d_0; d_1 is 17 halves on
    s = xs[x0 + uint32(8)] * (float32(wh[h]) * float32(s0))
    return s + xs[x1 + uint32(8)] * (float32(wh[h + uint32(17)]) * float32(s1))


@cuda.jit(device=True, inline=True)
def _fifth_bits(qh, shift):
    """Bits shift .. shift + 3 of a Q5_0 block's qh as bit 4 of bytes 0..3 (0x10 or 0): the 4 bits times
    0x02040810 put bit b at 4 + 7 b, i.e. bits 4, 12, 20, 28 (no two terms overlap: no carries)."""
    return (((qh >> uint32(shift)) & uint32(15)) * uint32(0x02040810)) & uint32(0x10101010)


@cuda.jit(device=True, inline=True)
def _q5_0_block(qh, a0, a1, a2, a3, xs, x0, d):
    """v20, one Q5_0 block (qh, quant words a0..a3) against the int8 x' block at slot x0:
    d (d_x sum_i q5_i c_i - 16 s_x), with q5_i = q_i + 16 h_i (quant byte j: weight j in the low nibble,
    j + 16 in the high one) and s_x the block's float sum of x' (the -16 of every weight applied to it)."""
    t = ptx.dp4a_us((a0 & NIBBLES) | _fifth_bits(qh, 0), _as_bits(xs[x0]), int32(0))
    t = ptx.dp4a_us((a1 & NIBBLES) | _fifth_bits(qh, 4), _as_bits(xs[x0 + uint32(1)]), t)
    t = ptx.dp4a_us((a2 & NIBBLES) | _fifth_bits(qh, 8), _as_bits(xs[x0 + uint32(2)]), t)
    t = ptx.dp4a_us((a3 & NIBBLES) | _fifth_bits(qh, 12), _as_bits(xs[x0 + uint32(3)]), t)
    t = ptx.dp4a_us(((a0 >> uint32(4)) & NIBBLES) | _fifth_bits(qh, 16), _as_bits(xs[x0 + uint32(4)]), t)
    t = ptx.dp4a_us(((a1 >> uint32(4)) & NIBBLES) | _fifth_bits(qh, 20), _as_bits(xs[x0 + uint32(5)]), t)
    t = ptx.dp4a_us(((a2 >> uint32(4)) & NIBBLES) | _fifth_bits(qh, 24), _as_bits(xs[x0 + uint32(6)]), t)
    t = ptx.dp4a_us(((a3 >> uint32(4)) & NIBBLES) | _fifth_bits(qh, 28), _as_bits(xs[x0 + uint32(7)]), t)
    return d * (xs[x0 + uint32(8)] * float32(t) - float32(16.0) * xs[x0 + uint32(9)])


@cuda.jit(device=True, inline=True)
def _q5_0_at(w16, w32, wh, rbyte, p, q, sel, xs, x0, bs, mg):
    """v20, Q5_0: blocks 2p and 2p + 1 of the row that starts at byte rbyte (``_q5_0_block`` each). The pair's
    44 bytes are 11 words from word rbyte / 4 + 11 p: word 0 = d_0 | qh_0[0:2], word 1 = qh_0[2:4] | q_0[0:2],
    words 2-4 = q_0[2:14], word 5 = q_0[14:16] | d_1, word 6 = qh_1, words 7-10 = q_1; block 0's words
    straddle two loaded words, realigned by ``prmt``. (w16, q, sel, mg: other types', unused.)"""
    b = (rbyte >> uint32(2)) + uint32(11 * p)
    w0, w1, w2, w3, w4, w5 = w32[b], w32[b + uint32(1)], w32[b + uint32(2)], w32[b + uint32(3)], \
        w32[b + uint32(4)], w32[b + uint32(5)]
    qh1, v0, v1, v2, v3 = w32[b + uint32(6)], w32[b + uint32(7)], w32[b + uint32(8)], w32[b + uint32(9)], \
        w32[b + uint32(10)]
    h = b << uint32(1)                            # the f16 index of d_0; d_1 is 11 halves on
    s = _q5_0_block(uint32(_prmt(w0, w1, 0x5432)), uint32(_prmt(w1, w2, 0x5432)), uint32(_prmt(w2, w3, 0x5432)),
                    uint32(_prmt(w3, w4, 0x5432)), uint32(_prmt(w4, w5, 0x5432)), xs, x0, float32(wh[h]))
    return s + _q5_0_block(qh1, v0, v1, v2, v3, xs, x0 + uint32(bs), float32(wh[h + uint32(11)]))


@cuda.jit(device=True, inline=True)
def _signed6(w):
    """Four 6-bit quants u (bytes 0..63) as the signed bytes u - 32: p = u ^ 0x20 is u - 32 as a 6-bit two's
    complement, and its bit 5 times 6 sets bits 6 and 7 (0x20 * 6 = 0xC0: no carry out of the byte)."""
    p = w ^ uint32(0x20202020)
    return p | ((p & uint32(0x20202020)) * uint32(6))


@cuda.jit(device=True, inline=True)
def _int8_of(v, k):
    """Byte k of v as a signed integer."""
    return int32(uint32(v) << uint32(24 - 8 * k)) >> 24


@cuda.jit(device=True, inline=True)
def _q6k_word(l, h, sh, xs, xa, xb, i, a, b):
    """v20, Q6_K: quant word i of a pair (4 low-nibble bytes l, their 2-bit crumbs at bits sh, sh + 4 of h)
    against code word i of x' blocks xa (low nibbles, crumb sh) and xb (high nibbles, crumb sh + 4)."""
    h = h >> sh
    lo = (l & NIBBLES) | ((h << uint32(4)) & uint32(0x30303030))
    hi = ((l >> uint32(4)) & NIBBLES) | (h & uint32(0x30303030))
    a = ptx.dp4a(_signed6(lo), _as_bits(xs[xa + uint32(i)]), a)
    b = ptx.dp4a(_signed6(hi), _as_bits(xs[xb + uint32(i)]), b)
    return a, b


@cuda.jit(device=True, inline=True)
def _q6k_at(w16, w32, wh, rbyte, p, q, sel, xs, x0, bs, mg):
    """v20, Q6_K: pair p of the row that starts at byte rbyte. Half h = p // 2 of the row (128 weights, super-block
    h // 2, its half n = h % 2) and t = p % 2: weights 32 t + l and 32 (t + 2) + l (l < 32) of the half share the
    ql bytes 64 n + 32 t + l (low and high nibble) and the qh bytes 128 + 32 n + l (bits 2t, 2t + 1 and 2t + 4,
    2t + 5), so the pair is x' blocks 4h + t and 4h + t + 2. Each has two int8 scales (one per 16 weights: bytes
    192 + 8n + 2t, + 1 and + 4, + 5), so four dp4a sums. Super-blocks are 210 bytes, 2-aligned only: nine words
    are read for eight and realigned by ``prmt`` (selector 0x3210, a no-op, or 0x5432). x' block i starts at slot
    bs i. (x0, q, sel, mg: other types', unused.)"""
    pu = uint32(p)                                # (32-bit index arithmetic throughout)
    h_ = pu >> uint32(1)
    t = pu & uint32(1)
    n = h_ & uint32(1)
    B = rbyte + uint32(210) * (h_ >> uint32(1))   # the super-block's first byte
    al = uint32(0x3210) + ((B >> uint32(1)) & uint32(1)) * uint32(0x2222)
    ql = (B + uint32(64) * n + uint32(32) * t) >> uint32(2)
    qh = (B + uint32(128) + uint32(32) * n) >> uint32(2)
    m0, m1, m2, m3, m4 = w32[ql], w32[ql + uint32(1)], w32[ql + uint32(2)], w32[ql + uint32(3)], w32[ql + uint32(4)]
    m5, m6, m7, m8 = w32[ql + uint32(5)], w32[ql + uint32(6)], w32[ql + uint32(7)], w32[ql + uint32(8)]
    k0, k1, k2, k3, k4 = w32[qh], w32[qh + uint32(1)], w32[qh + uint32(2)], w32[qh + uint32(3)], w32[qh + uint32(4)]
    k5, k6, k7, k8 = w32[qh + uint32(5)], w32[qh + uint32(6)], w32[qh + uint32(7)], w32[qh + uint32(8)]
    sb = (B + uint32(192) + uint32(8) * n + uint32(2) * t) >> uint32(1)
    s01, s23 = uint32(w16[sb]), uint32(w16[sb + uint32(2)])
    sh = uint32(2) * t
    xa = uint32(4 * bs) * h_ + uint32(bs) * t
    xb = xa + uint32(2 * bs)
    a0, b0 = _q6k_word(uint32(_prmt(m0, m1, al)), uint32(_prmt(k0, k1, al)), sh, xs, xa, xb, 0, int32(0), int32(0))
    a0, b0 = _q6k_word(uint32(_prmt(m1, m2, al)), uint32(_prmt(k1, k2, al)), sh, xs, xa, xb, 1, a0, b0)
    a0, b0 = _q6k_word(uint32(_prmt(m2, m3, al)), uint32(_prmt(k2, k3, al)), sh, xs, xa, xb, 2, a0, b0)
    a0, b0 = _q6k_word(uint32(_prmt(m3, m4, al)), uint32(_prmt(k3, k4, al)), sh, xs, xa, xb, 3, a0, b0)
    a1, b1 = _q6k_word(uint32(_prmt(m4, m5, al)), uint32(_prmt(k4, k5, al)), sh, xs, xa, xb, 4, int32(0), int32(0))
    a1, b1 = _q6k_word(uint32(_prmt(m5, m6, al)), uint32(_prmt(k5, k6, al)), sh, xs, xa, xb, 5, a1, b1)
    a1, b1 = _q6k_word(uint32(_prmt(m6, m7, al)), uint32(_prmt(k6, k7, al)), sh, xs, xa, xb, 6, a1, b1)
    a1, b1 = _q6k_word(uint32(_prmt(m7, m8, al)), uint32(_prmt(k7, k8, al)), sh, xs, xa, xb, 7, a1, b1)
    ia = _int8_of(s01, 0) * a0 + _int8_of(s01, 1) * a1        # |sum| < 2^24: exact in float32
    ib = _int8_of(s23, 0) * b0 + _int8_of(s23, 1) * b1
    d = float32(wh[(B + uint32(208)) >> uint32(1)])
    return d * (xs[xa + uint32(8)] * float32(ia) + xs[xb + uint32(8)] * float32(ib))


X8_PAIRS = {GGMLType.Q4_K: _q4k_at, GGMLType.Q5_K: _q5k_at, GGMLType.Q8_0: _q8_0_at, GGMLType.Q5_0: _q5_0_at,
            GGMLType.Q6_K: _q6k_at}               # v20's types: each one's pair of 32-weight blocks
assert X8_PAIRS.keys() == X8_K_MULTIPLE.keys()   # (ref.matmul's: the K each type's rows need, whole pairs)


@cuda.jit(device=True, inline=True)
def _group_sum(v, LG):
    """Sum of v over each group of LG consecutive lanes (LG a power of 2, a compile-time constant): lane
    g LG of the group holds it."""
    off = LG >> 1
    while off > 0:
        v += cuda.shfl_down_sync(0xFFFFFFFF, v, off)
        off >>= 1
    return v


@cuda.jit(device=True, inline=True)
def _group_sums(acc, a0, a1, a2, a3, R, LG):
    """acc[r] = ``_group_sum`` of a_r for the first R of the four (R a constant after inlining)."""
    acc[0] = _group_sum(a0, LG)
    if R > 1:
        acc[1] = _group_sum(a1, LG)
    if R > 2:
        acc[2] = _group_sum(a2, LG)
        acc[3] = _group_sum(a3, LG)


@functools.lru_cache(maxsize=None)
def _x8_rows_at(R, LG, gated, ggml_type=GGMLType.Q4_K, BS=33):
    """v20 device function: the rows n0 .. n3 (the first R of them, already clamped to the matrix) of one lane
    group (LG lanes, G = 32 / LG groups per warp) dotted with the int8 x'. Lane l of the group takes the pairs of
    32-weight blocks p = l, l + LG, .. < K / 64 (K-quants: super-block p // 4, pair c = p % 4: the same c every
    step, hence one ``sel``) of each of its rows (and with ``gated`` the R up rows ``up_row0 + n`` too, of the
    same type); ``ag`` (and with ``gated`` ``au``) receive the group sums in the group's first lane. x' block i
    starts at slot BS i of xs (33: v20's staging; 11: v21's compact copy, ``_xq_loader``)."""
    pair = X8_PAIRS[ggml_type]

    @cuda.jit(device=True, inline=True)
    def rows_at(g16, g32, gh, grb, u16, u32, uh, urb, up_row0, n0, n1, n2, n3, K, xs, ag, au):
        li = cuda.threadIdx.x & (LG - 1)
        c = li & 3
        sel = (2 * c) | ((2 * c + 1) << 4)
        gb0, gb1 = uint32(n0 * grb), uint32(n1 * grb)                 # the rows' first bytes
        gb2, gb3 = uint32(n2 * grb), uint32(n3 * grb)
        ub0, ub1 = uint32((up_row0 + n0) * urb), uint32((up_row0 + n1) * urb)
        ub2, ub3 = uint32((up_row0 + n2) * urb), uint32((up_row0 + n3) * urb)
        g0 = g1 = g2 = g3 = u0 = u1 = u2 = u3 = float32(0.0)
        mg = _magic(K)
        q = uint32(4 + 8 * c)                     # K-quants: the pair's scale-relative quant words
        P = int32(K >> 6)
        p = int32(li)
        while p < P:
            x0 = uint32(2 * BS * p)               # slot of block 2p's codes: BS slots per 32-weight block
            g0 += pair(g16, g32, gh, gb0, p, q, sel, xs, x0, BS, mg)
            if gated:
                u0 += pair(u16, u32, uh, ub0, p, q, sel, xs, x0, BS, mg)
            if R > 1:
                g1 += pair(g16, g32, gh, gb1, p, q, sel, xs, x0, BS, mg)
                if gated:
                    u1 += pair(u16, u32, uh, ub1, p, q, sel, xs, x0, BS, mg)
            if R > 2:
                g2 += pair(g16, g32, gh, gb2, p, q, sel, xs, x0, BS, mg)
                g3 += pair(g16, g32, gh, gb3, p, q, sel, xs, x0, BS, mg)
                if gated:
                    u2 += pair(u16, u32, uh, ub2, p, q, sel, xs, x0, BS, mg)
                    u3 += pair(u16, u32, uh, ub3, p, q, sel, xs, x0, BS, mg)
            p = int32(p + LG)
        _group_sums(ag, g0, g1, g2, g3, R, LG)
        if gated:
            _group_sums(au, u0, u1, u2, u3, R, LG)
    return rows_at


@functools.lru_cache(maxsize=None)
def _x8_rows(R, LG, gated, ggml_type=GGMLType.Q4_K, BS=33):
    """v20 device function: ``_x8_rows_at`` for the consecutive rows rg .. rg + R - 1 of a lane group. Rows past
    N re-read row N - 1 and are not stored."""
    rows_at = _x8_rows_at(R, LG, gated, ggml_type, BS)

    @cuda.jit(device=True, inline=True)
    def rows(g16, g32, gh, grb, u16, u32, uh, urb, up_row0, rg, N, K, xs, ag, au):
        rows_at(g16, g32, gh, grb, u16, u32, uh, urb, up_row0, min(rg, N - 1), min(rg + 1, N - 1),
                min(rg + 2, N - 1), min(rg + 3, N - 1), K, xs, ag, au)
    return rows


@functools.lru_cache(maxsize=None)
def _unit(ggml_type, width, vector=None):
    """Device function: sum_{i < width} W[row, k + i] x'[k + i] for the row at byte ``rowb``.

    The octets are written out (not a loop), so they are unrolled whatever LLVM's unrolling
    threshold and their offsets from the unit's base indices are constants. ``vector``: v15's 16-byte
    global loads (None: ``VECTOR_LOADS``; False for rows in shared memory, v18)."""
    vector = VECTOR_LOADS if vector is None else vector
    qsh, bb, prep, octet, fin = DOT_PARTS[ggml_type]
    if vector and width >= 16:                       # v15: such units' quants are 16-byte aligned
        octet = _VECTOR_OCTET.get(octet, octet)      # (an octet replaced by benchmarks/ladder.py stays)
    mask = (1 << qsh) - 1

    @cuda.jit(device=True, inline=True)
    def unit8(w16, w32, wh, wf, rowb, k, xs, xo, mg):
        a, b, c, e, h, h2 = prep(w16, w32, wh, wf, uint32(rowb + (k >> qsh) * bb), uint32(k & mask))
        return fin(a, octet(w16, w32, wh, wf, 0, xs, xo, a, b, c, e, h, h2, mg))

    @cuda.jit(device=True, inline=True)
    def unit16(w16, w32, wh, wf, rowb, k, xs, xo, mg):
        a, b, c, e, h, h2 = prep(w16, w32, wh, wf, uint32(rowb + (k >> qsh) * bb), uint32(k & mask))
        s = octet(w16, w32, wh, wf, 0, xs, xo, a, b, c, e, h, h2, mg)
        s += octet(w16, w32, wh, wf, 1, xs, xo, a, b, c, e, h, h2, mg)
        return fin(a, s)

    @cuda.jit(device=True, inline=True)
    def unit32(w16, w32, wh, wf, rowb, k, xs, xo, mg):
        a, b, c, e, h, h2 = prep(w16, w32, wh, wf, uint32(rowb + (k >> qsh) * bb), uint32(k & mask))
        s = octet(w16, w32, wh, wf, 0, xs, xo, a, b, c, e, h, h2, mg)
        s += octet(w16, w32, wh, wf, 1, xs, xo, a, b, c, e, h, h2, mg)
        s += octet(w16, w32, wh, wf, 2, xs, xo, a, b, c, e, h, h2, mg)
        s += octet(w16, w32, wh, wf, 3, xs, xo, a, b, c, e, h, h2, mg)
        return fin(a, s)

    return {8: unit8, 16: unit16, 32: unit32}[width]


STAGE_LOADS = int(os.environ.get("LLAMA_BETA_STAGE_LOADS", "4"))   # v13: x loads in flight per thread (1 or 4)
SPLIT_STAGE_LOADS = int(os.environ.get("LLAMA_BETA_SPLIT_STAGE_LOADS", "1"))   # ... in the split-K kernel


@cuda.jit(device=True, inline=True)
def _stage_x1(x, nw, has_norm, eps, K, xs, red):
    """``_stager``'s body before v13: one element a thread at a time."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    scale = float32(1.0)
    if has_norm:
        ss = float32(0.0)
        p = int32(tid)
        while p < K:
            v = x[uint32(p)]
            ss += v * v
            p = int32(p + nt)
        total = _block_sum(ss, red)
        scale = float32(1.0) / math.sqrt(total / float32(K) + eps)
    p = int32(tid)
    while p < K:
        v = x[uint32(p)]
        if has_norm:
            v = (v * scale) * nw[uint32(p)]
        xs[uint32(p + (p >> 5))] = v
        p = int32(p + nt)
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def _load4(a, p, nt, last):
    """a[p], a[p + nt], a[p + 2 nt], a[p + 3 nt], indices clamped to ``last`` so that all four loads
    are unconditional and in flight together (the caller ignores the clamped ones)."""
    return (a[uint32(min(p, last))], a[uint32(min(p + nt, last))],
            a[uint32(min(p + 2 * nt, last))], a[uint32(min(p + 3 * nt, last))])


@cuda.jit(device=True, inline=True)
def _slot(q, K):
    """Padded index of x'[q] in xs, or for q >= K the spare slot after the last one (``xs_floats``):
    the element's store goes there, unconditionally, so the compiler keeps its load with the others
    (a store under ``if q < K`` let LLVM sink the load into the branch, one round trip after the rest)."""
    return uint32(q + (q >> 5)) if q < K else uint32(K + (K >> 5))


@cuda.jit(device=True, inline=True)
def _add_square(ss, v, q, K):
    """ss + v^2 for element q < K, else ss. The square is of v or 0, so the compiler contracts it with the add
    into one FMA, as it does ``ss += v * v`` in ``_stage_x1`` (a select between v * v and 0 would round the
    square first: another last bit of the norm)."""
    u = v if q < K else float32(0.0)
    return ss + u * u


@cuda.jit(device=True, inline=True)
def _put_raw(xs, q, K, v, ss):
    """xs[q] = v (the spare slot for q >= K) and ``_add_square``."""
    xs[_slot(q, K)] = v
    return _add_square(ss, v, q, K)


@cuda.jit(device=True, inline=True)
def _scale_in_place(xs, q, K, scale, w):
    i = _slot(q, K)
    xs[i] = (xs[i] * scale) * w


@cuda.jit(device=True, inline=True)
def _stage_x4(x, nw, has_norm, eps, K, xs, red):
    """``_stager``'s v13 body: rounds of four elements a thread (see there). Written out rather than
    looped over the four, so the loads stay in registers and are issued together."""
    nt = int32(cuda.blockDim.x)
    last = int32(K - 1)
    ss = float32(0.0)
    p = int32(cuda.threadIdx.x)
    while p < K:                                     # pass 1: x -> xs raw, sum of squares
        v0, v1, v2, v3 = _load4(x, p, nt, last)
        ss = _put_raw(xs, p, K, v0, ss)
        ss = _put_raw(xs, p + nt, K, v1, ss)
        ss = _put_raw(xs, p + 2 * nt, K, v2, ss)
        ss = _put_raw(xs, p + 3 * nt, K, v3, ss)
        p = int32(p + 4 * nt)
    if has_norm:                                     # pass 2: each thread scales its own elements
        total = _block_sum(ss, red)
        scale = float32(1.0) / math.sqrt(total / float32(K) + eps)
        p = int32(cuda.threadIdx.x)
        while p < K:
            w0, w1, w2, w3 = _load4(nw, p, nt, last)
            _scale_in_place(xs, p, K, scale, w0)
            _scale_in_place(xs, p + nt, K, scale, w1)
            _scale_in_place(xs, p + 2 * nt, K, scale, w2)
            _scale_in_place(xs, p + 3 * nt, K, scale, w3)
            p = int32(p + 4 * nt)
    cuda.syncthreads()


def xs_floats(K: int) -> int:
    """Floats of a fused kernel's x' buffer: K padded one per 32, plus ``_slot``'s spare."""
    return K + K // 32 + 1


def _stager(loads: int):
    """Device function: x' = x, or RMSNorm(x) * nw, into shared memory padded one float per 32 (xs[p + p // 32]).

    Every block computes the sum of squares itself (K floats, from L2), so no separate
    rmsnorm launch is needed; same arithmetic as ``numba_kernels.rmsnorm`` (float32 sums).

    x is the previous launch's output: under programmatic dependent launch (``ptx.py``) the block waits
    for that launch here, after its weight rows were touched (``_warm_rows``) and before reading x.

    Thread t handles the elements p = t + j * blockDim (j = 0, 1, ...). v13 (``STAGE_LOADS = 4``, the
    default): x is read once, four elements a thread in flight at a time (the one-load loop waits for an
    L2 round trip per element: K / blockDim trips, 12 per pass at Phi-3's K = 3072 and 256 threads, and it
    read x twice when normalizing), stored raw, and scaled in place after the block sum, with the norm
    weights again read four at a time. The per-thread order of the sum of squares and the per-element
    product (x * scale) * nw are unchanged, so x' is bit-identical to the one-load loop's
    (``LLAMA_BETA_STAGE_LOADS=1``). ``loads``: 4 (v13, ``_stage_x4``) or 1 (``_stage_x1``)."""
    body = _stage_x4 if loads == 4 else _stage_x1

    @cuda.jit(device=True, inline=True)
    def stage_x(x, nw, has_norm, eps, K, xs, red):
        ptx.allow_next_grid()
        ptx.wait_previous_grid()
        body(x, nw, has_norm, eps, K, xs, red)
    return stage_x


_stage_x = _stager(STAGE_LOADS)                  # the fused decode kernels
_stage_x_split = _stager(SPLIT_STAGE_LOADS)      # the split-K kernel (v7): with v13 staging it measured slower


WARM = os.environ.get("LLAMA_BETA_MATVEC_WARM", "1") != "0"   # v8: touch the rows before staging x'


@cuda.jit(device=True, inline=True)
def _warm_row_loads(w16, rb, row, N):
    """The xor of 2-byte loads at bytes 32 l + 1024 j (j < 4, clamped to the row) of row min(row, N - 1),
    lane l: one load per 32-byte sector of rows up to 4 KiB. Written out: one basic block, so the
    compiler issues all the loads before the first xor waits for one."""
    last = int32(rb - 2)
    b = int32(min(row, N - 1) * rb)
    off = int32(32 * (cuda.threadIdx.x & (WARP - 1)))
    t0 = w16[uint32((b + min(off, last)) >> 1)]
    t1 = w16[uint32((b + min(off + 1024, last)) >> 1)]
    t2 = w16[uint32((b + min(off + 2048, last)) >> 1)]
    t3 = w16[uint32((b + min(off + 3072, last)) >> 1)]
    return int32(t0 ^ t1 ^ t2 ^ t3)


@cuda.jit(device=True, inline=True)
def _warm_row_l2(w16, rb, row, N):
    """v17 (opt-in, ``LLAMA_BETA_WARM_L2=1``): the whole row min(row, N - 1) asked of L2 by one bulk prefetch
    (``cp.async.bulk.prefetch.L2``, lane 0): one instruction per row instead of a load per 32-byte sector, no
    registers held, nothing brought into L1, rows of any length (the loads stop at 4 KiB). Returns 0."""
    if cuda.threadIdx.x & (WARP - 1) == 0:
        ptx.prefetch_l2(w16, int32(min(row, N - 1) * rb), rb)
    return int32(0)


# v17 (the default; LLAMA_BETA_WARM_L2=0: v8's loads): the row warm-up as L2 bulk prefetches. The kernel
# factories bind the choice into their closures, so the disk cache's key sees it.
WARM_L2 = os.environ.get("LLAMA_BETA_WARM_L2", "1") == "1"
_warm_row = _warm_row_l2 if WARM_L2 else _warm_row_loads


@functools.lru_cache(maxsize=None)
def _warm_rows(R):
    """Device function (v8): ``_warm_row`` for rows row0 .. row0+R-1 (R = 1, 2, 4), issued *before* x' is
    staged, so the weight bytes travel from DRAM to L1/L2 while the block sums and scales x; the dot
    products then find them in cache. Rows past N touch row N - 1. Returns the xor of the loaded words:
    ``_keep`` consumes it after staging, else the compiler would drop loads whose values are unused."""
    warm_row = _warm_row                             # (bound here: the disk cache's key sees v17 or v8)

    @cuda.jit(device=True, inline=True)
    def warm(w16, rb, row0, N):
        t = warm_row(w16, rb, row0, N)
        if R > 1:
            t ^= warm_row(w16, rb, row0 + 1, N)
        if R > 2:
            t ^= warm_row(w16, rb, row0 + 2, N) ^ warm_row(w16, rb, row0 + 3, N)
        return t
    return warm


@cuda.jit(device=True, inline=True)
def _keep(t, N):
    """Consume ``_warm_rows``' xor after staging: a branch the compiler cannot fold (t >= 0 is a xor of
    uint16 words, N >= 1 a run-time argument), so the loads stay - and stay before the staging."""
    if t == -N:
        cuda.threadfence_block()


@functools.lru_cache(maxsize=None)
def _rows_dot(ggml_type, width, R, S=1):
    """Device function: the dot products of the rows row0, row0 + rstep, row2, row2 + rstep2 (the first R of
    them; R = 1, 2 or 4; consecutive rows: rstep = rstep2 = 1, row2 = row0 + 2) with x', warp-reduced into
    ``acc`` (lane 0 holds them). Rows past N re-read row N - 1 and are not stored. (Two RoPE pairs of rows
    per warp, v9 with ``QKV_ROPE_PAIRS = 2``, are the rows (row0, row0 + rstep) and (row2, row2 + rstep2).)

    S > 1 (v7 split-K, S a power of 2): S consecutive warps share the rows; warp j of the S dots
    the j-th of every S stretches of 32 units (a step of the S warps covers 32 S consecutive
    units), so ``acc`` holds that warp's partial sums. S = 1 folds to the v4 indexing.

    R is a compile-time constant, so the ``if R > r`` lines fold away: the rows are written out
    rather than looped over, which keeps every accumulator in a register and all the rows'
    loads in flight together whatever LLVM's unrolling threshold (a loop over R rows of 32-weight
    units was not unrolled: the accumulators went to local memory)."""
    unit = _unit(ggml_type, width)
    step = width * WARP * S
    smask = S - 1

    @cuda.jit(device=True, inline=True)
    def rows_dot(w16, w32, wh, wf, rb, row0, N, K, xs, acc, rstep, row2, rstep2):
        b0 = int32(min(row0, N - 1) * rb)           # byte offsets of the rows
        b1 = int32(min(row0 + rstep, N - 1) * rb)
        b2 = int32(min(row2, N - 1) * rb)
        b3 = int32(min(row2 + rstep2, N - 1) * rb)
        a0 = a1 = a2 = a3 = float32(0.0)
        mg = _magic(K)
        tid = cuda.threadIdx.x                      # lane l of part j: weights k .. k+width
        k = int32(width * ((tid & (WARP - 1)) + WARP * ((tid >> 5) & smask)))
        while k < K:
            xo = uint32(k + (k >> 5))               # padded index of x'[k]
            a0 += unit(w16, w32, wh, wf, b0, k, xs, xo, mg)
            if R > 1:
                a1 += unit(w16, w32, wh, wf, b1, k, xs, xo, mg)
            if R > 2:
                a2 += unit(w16, w32, wh, wf, b2, k, xs, xo, mg)
                a3 += unit(w16, w32, wh, wf, b3, k, xs, xo, mg)
            k = int32(k + step)
        acc[0] = _warp_sum(a0)
        if R > 1:
            acc[1] = _warp_sum(a1)
        if R > 2:
            acc[2] = _warp_sum(a2)
            acc[3] = _warp_sum(a3)
    return rows_dot


@functools.lru_cache(maxsize=None)
def _rows_dot_pair(gate_type, up_type, width, R, vector=None):
    """``_rows_dot`` for SwiGLU: R rows of W_gate and the matching R rows of W_up in the same
    loop (2R rows' loads in flight); ``ag``, ``au`` receive the warp-reduced sums. ``vector`` as ``_unit``."""
    gunit, uunit = _unit(gate_type, width, vector), _unit(up_type, width, vector)
    step = width * WARP

    @cuda.jit(device=True, inline=True)
    def rows_dot_pair(g16, g32, gh, gf, grb, u16, u32, uh, uf, urb, up_row0, row0, F, K, xs, ag, au):
        n0, n1, n2, n3 = min(row0, F - 1), min(row0 + 1, F - 1), min(row0 + 2, F - 1), min(row0 + 3, F - 1)
        gb0, gb1, gb2, gb3 = int32(n0 * grb), int32(n1 * grb), int32(n2 * grb), int32(n3 * grb)
        ub0, ub1 = int32((up_row0 + n0) * urb), int32((up_row0 + n1) * urb)
        ub2, ub3 = int32((up_row0 + n2) * urb), int32((up_row0 + n3) * urb)
        g0 = g1 = g2 = g3 = u0 = u1 = u2 = u3 = float32(0.0)
        mg = _magic(K)
        k = int32(width * (cuda.threadIdx.x & (WARP - 1)))
        while k < K:
            xo = uint32(k + (k >> 5))
            g0 += gunit(g16, g32, gh, gf, gb0, k, xs, xo, mg)
            u0 += uunit(u16, u32, uh, uf, ub0, k, xs, xo, mg)
            if R > 1:
                g1 += gunit(g16, g32, gh, gf, gb1, k, xs, xo, mg)
                u1 += uunit(u16, u32, uh, uf, ub1, k, xs, xo, mg)
            if R > 2:
                g2 += gunit(g16, g32, gh, gf, gb2, k, xs, xo, mg)
                u2 += uunit(u16, u32, uh, uf, ub2, k, xs, xo, mg)
                g3 += gunit(g16, g32, gh, gf, gb3, k, xs, xo, mg)
                u3 += uunit(u16, u32, uh, uf, ub3, k, xs, xo, mg)
            k = int32(k + step)
        ag[0], au[0] = _warp_sum(g0), _warp_sum(u0)
        if R > 1:
            ag[1], au[1] = _warp_sum(g1), _warp_sum(u1)
        if R > 2:
            ag[2], au[2] = _warp_sum(g2), _warp_sum(u2)
            ag[3], au[3] = _warp_sum(g3), _warp_sum(u3)
    return rows_dot_pair


@cuda.jit(device=True, inline=True)
def _silu(g):
    """g / (1 + expf(-g)) as ref.swiglu.silu; exp(-g) is inf beyond the float32 range (silu -> -0),
    written out because the simulator's math.exp raises OverflowError instead."""
    e = math.exp(-g) if g > EXP_LIMIT else F_INF
    return g / (float32(1.0) + e)


@cuda.jit(device=True, inline=True)
def _store_if(lead, v, n, N, bias, has_bias, accumulate, out):
    """If ``lead``: out[n] (=, or += with ``accumulate``) v + bias[n], for rows n < N."""
    if lead and n < N:
        v = v + bias[n] if has_bias else v
        out[n] = out[n] + v if accumulate else v


@cuda.jit(device=True, inline=True)
def _store(v, n, N, bias, has_bias, accumulate, out):
    """Lane 0: ``_store_if``."""
    _store_if(cuda.threadIdx.x % WARP == 0, v, n, N, bias, has_bias, accumulate, out)


@cuda.jit(device=True, inline=True)
def _store_swiglu(ag, au, row0, F, out):
    """Lane 0: out[row0 + r] = silu(ag[r]) au[r] for the warp's rows r below F."""
    for r in range(ag.shape[0]):
        _store(_silu(ag[r]) * au[r], row0 + r, F, out, False, False, out)


DECODE_MIN_BLOCKS = int(os.environ.get("LLAMA_BETA_DECODE_MIN_BLOCKS", "0"))   # launch bounds (0: none; an experiment)


def _decode_jit(NW):
    """cuda.jit options of the fused decode kernels of NW warps. With DECODE_MIN_BLOCKS = b > 0 they carry launch
    bounds asking ptxas for b resident blocks per SM (fewer registers, perhaps spills): an experiment for shapes
    whose grid is a little more than one wave (Phi-3's gate/up: 512 blocks, 3 per SM at 72 registers; offline
    ptxas at b = 4: 64 registers, 68 bytes spilled). Off: measured slower on the H200 (twelfth session, Phi-3 twin,
    b = 4: gate/up 27.0 us against 22.3, whole step 2858 us against 2562)."""
    if DECODE_MIN_BLOCKS and not config.ENABLE_CUDASIM:
        return {"cache": JIT_CACHE, "launch_bounds": (NW * WARP, DECODE_MIN_BLOCKS)}
    return {"cache": JIT_CACHE}


@functools.lru_cache(maxsize=None)
def _fused_kernels(types, width, R, NW):
    """(matvec, multi, swiglu) kernels of NW warps x R rows per warp, for a tuple of 3 types
    (multi: one per matrix; matvec uses types[0]; swiglu types[0] for the gate, types[1] for
    up). Every type, width, R and NW is a compile-time constant of the kernels."""
    rows0, rows1, rows2 = (_rows_dot(t, width, R) for t in types)
    pair = _rows_dot_pair(types[0], types[1], width, R)
    warm_rows = _warm_rows(R)

    @cuda.jit(**_decode_jit(NW))
    def matvec_fused(x, nw, has_norm, eps, K, warm, w16, w32, wh, wf, rb, N, bias, has_bias, accumulate, out):
        xs = cuda.shared.array(0, float32)          # dynamic: xs_floats(K)
        red = cuda.shared.array(WARP, float32)
        row0 = (cuda.blockIdx.x * NW + cuda.threadIdx.x // WARP) * R
        t = int32(0)
        if warm:
            t = warm_rows(w16, rb, row0, N)          # the rows' bytes fly while x' is staged
        _stage_x(x, nw, has_norm, eps, K, xs, red)
        _keep(t, N)
        if row0 >= N:
            return                                   # whole warp leaves
        acc = cuda.local.array(R, float32)
        rows0(w16, w32, wh, wf, rb, row0, N, K, xs, acc, 1, row0 + 2, 1)
        for r in range(R):
            _store(acc[r], row0 + r, N, bias, has_bias, accumulate, out)

    @cuda.jit(**_decode_jit(NW))
    def multi_fused(x, nw, has_norm, eps, K, warm, blk1, blk2,
                    a16, a32, ah, af, arb, aN, abias, ahas, aout,
                    b16, b32, bh, bf, brb, bN, bbias, bhas, bout,
                    c16, c32, ch, cf, crb, cN, cbias, chas, cout):
        # blocks [0, blk1) -> matrix a, [blk1, blk2) -> b, [blk2, grid) -> c (block-uniform branch)
        xs = cuda.shared.array(0, float32)
        red = cuda.shared.array(WARP, float32)
        acc = cuda.local.array(R, float32)
        blk = cuda.blockIdx.x
        warp = cuda.threadIdx.x // WARP
        t = int32(0)
        if warm:
            if blk < blk1:
                t = warm_rows(a16, arb, (blk * NW + warp) * R, aN)
            elif blk < blk2:
                t = warm_rows(b16, brb, ((blk - blk1) * NW + warp) * R, bN)
            else:
                t = warm_rows(c16, crb, ((blk - blk2) * NW + warp) * R, cN)
        _stage_x(x, nw, has_norm, eps, K, xs, red)
        _keep(t, aN)
        if blk < blk1:
            row0 = (blk * NW + warp) * R
            if row0 < aN:
                rows0(a16, a32, ah, af, arb, row0, aN, K, xs, acc, 1, row0 + 2, 1)
                for r in range(R):
                    _store(acc[r], row0 + r, aN, abias, ahas, False, aout)
        elif blk < blk2:
            row0 = ((blk - blk1) * NW + warp) * R
            if row0 < bN:
                rows1(b16, b32, bh, bf, brb, row0, bN, K, xs, acc, 1, row0 + 2, 1)
                for r in range(R):
                    _store(acc[r], row0 + r, bN, bbias, bhas, False, bout)
        else:
            row0 = ((blk - blk2) * NW + warp) * R
            if row0 < cN:
                rows2(c16, c32, ch, cf, crb, row0, cN, K, xs, acc, 1, row0 + 2, 1)
                for r in range(R):
                    _store(acc[r], row0 + r, cN, cbias, chas, False, cout)

    @cuda.jit(**_decode_jit(NW))
    def swiglu_fused(x, nw, has_norm, eps, K, warm, g16, g32, gh, gf, grb, u16, u32, uh, uf, urb, up_row0, F,
                     out):
        # out[n] = silu(W_gate[n] . x') * (W_up[up_row0 + n] . x'), n < F
        xs = cuda.shared.array(0, float32)
        red = cuda.shared.array(WARP, float32)
        row0 = (cuda.blockIdx.x * NW + cuda.threadIdx.x // WARP) * R
        t = int32(0)
        if warm:
            t = warm_rows(g16, grb, row0, F) ^ warm_rows(u16, urb, up_row0 + row0, up_row0 + F)
        _stage_x(x, nw, has_norm, eps, K, xs, red)
        _keep(t, F)
        if row0 >= F:
            return
        ag = cuda.local.array(R, float32)
        au = cuda.local.array(R, float32)
        pair(g16, g32, gh, gf, grb, u16, u32, uh, uf, urb, up_row0, row0, F, K, xs, ag, au)
        _store_swiglu(ag, au, row0, F, out)

    return matvec_fused, multi_fused, swiglu_fused


@cuda.jit(device=True, inline=True)
def _warm_group_rows(w16, rb, rg, R, N, LG):
    """v20's row warm-up: lane i < R of a lane group asks L2 for row min(rg + i, N - 1) (one bulk prefetch
    each, v17's instruction)."""
    i = cuda.threadIdx.x & (LG - 1)
    if i < R:
        ptx.prefetch_l2(w16, int32(min(rg + i, N - 1) * rb), rb)


@cuda.jit(device=True, inline=True)
def _stage_round(x, nw, has_norm, eps, K, xs, red):
    """v20's staging: x' as v4 stages it (``_stage_x``, RMSNorm inside), rounded in place (``_quantize_staged``)."""
    _stage_x(x, nw, has_norm, eps, K, xs, red)
    _quantize_staged(xs, K)


@functools.lru_cache(maxsize=None)
def _x8_kernels(R, NW, LG, ggml_type=GGMLType.Q4_K, pre=False, out_q=False, compact=False):
    """v20 (matvec, swiglu) kernels over rows of one type (``X8_PAIRS``) and int8 x': NW warps, G = 32 / LG lane
    groups per warp, R rows per group (R of W_gate and R of W_up for SwiGLU), so ROWS = NW G R rows per block.
    Each block stages x' as v4 does (``_stage_x``, RMSNorm inside) and rounds it to int8 blocks in place
    (``_quantize_staged``); each group then dots its rows with ``_x8_rows``.

    v21 options (compile-time): ``pre``: x arrives rounded by the launch before (uint32 [K / 32, XQ_WORDS],
    ``_xq_loader``; no norm); ``out_q``: the SwiGLU kernel also writes its outputs rounded to int8 blocks of 32
    into ``xq_out`` (``_round_rows_out``; ROWS a multiple of 32 and F a multiple of 32), the ``pre`` input of
    the next product (W_down). Without ``out_q``, ``xq_out`` is not touched (any uint32 array). ``compact``
    (with ``pre``): the copy keeps ``COMPACT_SLOTS`` shared slots per block of 32 instead of 33
    (``xq_shared_floats``)."""
    G = WARP // LG
    ROWS = NW * G * R
    assert not out_q or ROWS % 32 == 0, (NW, G, R)
    assert pre or not compact
    BS = COMPACT_SLOTS if compact else 33
    rows_plain, rows_gated = _x8_rows(R, LG, False, ggml_type, BS), _x8_rows(R, LG, True, ggml_type, BS)
    stage = _xq_loader(BS) if pre else _stage_round
    HV = ROWS if out_q else 1                        # v21's shared outputs of a block (a constant)

    @cuda.jit(**_decode_jit(NW))
    def matvec_x8(x, nw, has_norm, eps, K, warm, w16, w32, wh, wf, rb, N, bias, has_bias, accumulate, out):
        xs = cuda.shared.array(0, float32)          # dynamic: xs_floats(K) (compact: xq_shared_floats)
        red = cuda.shared.array(WARP, float32)
        row0 = (cuda.blockIdx.x * NW + cuda.threadIdx.x // WARP) * (G * R)
        rg = row0 + ((cuda.threadIdx.x & (WARP - 1)) // LG) * R      # the lane group's first row
        if warm:
            _warm_group_rows(w16, rb, rg, R, N, LG)
        stage(x, nw, has_norm, eps, K, xs, red)
        if row0 >= N:
            return                                   # whole warp leaves
        acc = cuda.local.array(R, float32)
        rows_plain(w16, w32, wh, rb, w16, w32, wh, rb, 0, rg, N, K, xs, acc, acc)
        lead = (cuda.threadIdx.x & (LG - 1)) == 0
        for r in range(R):
            _store_if(lead, acc[r], rg + r, N, bias, has_bias, accumulate, out)

    @cuda.jit(**_decode_jit(NW))
    def swiglu_x8(x, nw, has_norm, eps, K, warm, g16, g32, gh, gf, grb, u16, u32, uh, uf, urb, up_row0, F, out,
                  xq_out):
        xs = cuda.shared.array(0, float32)
        red = cuda.shared.array(WARP, float32)
        hv = cuda.shared.array(HV, float32)          # v21: the block's outputs, to be rounded
        blk0 = cuda.blockIdx.x * ROWS
        row0 = (cuda.blockIdx.x * NW + cuda.threadIdx.x // WARP) * (G * R)
        rg = row0 + ((cuda.threadIdx.x & (WARP - 1)) // LG) * R
        if warm:
            _warm_group_rows(g16, grb, rg, R, F, LG)
            _warm_group_rows(u16, urb, up_row0 + rg, R, up_row0 + F, LG)
        stage(x, nw, has_norm, eps, K, xs, red)
        if row0 >= F and not out_q:
            return                                   # (with out_q every warp reaches the barrier below)
        ag = cuda.local.array(R, float32)
        au = cuda.local.array(R, float32)
        rows_gated(g16, g32, gh, grb, u16, u32, uh, urb, up_row0, rg, F, K, xs, ag, au)
        lead = (cuda.threadIdx.x & (LG - 1)) == 0
        for r in range(R):
            h = _silu(ag[r]) * au[r]
            _store_if(lead, h, rg + r, F, out, False, False, out)
            if out_q and lead:
                hv[rg + r - blk0] = h
        if out_q:
            cuda.syncthreads()
            _round_rows_out(hv, ROWS, blk0, F, xq_out)

    return matvec_x8, swiglu_x8


# v18 (opt-in, LLAMA_BETA_STAGE_ROWS=1; sm_90): the gate/up rows of a warp copied into shared memory by the
# bulk-copy engine while x' is staged, and the dot products read them from there (see ``_staged_swiglu``).
STAGE_ROWS = os.environ.get("LLAMA_BETA_STAGE_ROWS", "0") == "1"
SHARED_MAX = 227 * 1024          # dynamic shared memory one block may have on sm_90 (after opting in)
_NO_CLAMP = 1 << 30              # "rows" of the shared row slots: never clamped (every slot was copied)


def staged_layout(K: int, NW: int, rows: int, rb: int) -> tuple[int, int, int]:
    """Dynamic shared memory of a v18 block: x' (``xs_floats(K)`` floats), NW barriers (8 bytes each, from
    the next multiple of 8), then NW x ``rows`` row slots of ``rb`` bytes starting at a multiple of rb (rb a
    multiple of 16, so every slot is 16-byte aligned). Returns (index of the first barrier in a uint64 view,
    index of the first slot in rows of rb bytes, total bytes)."""
    bar_byte = -(-4 * xs_floats(K) // 8) * 8
    slot0 = -(-(bar_byte + 8 * NW) // rb)
    return bar_byte // 8, slot0, (slot0 + NW * rows) * rb


@functools.lru_cache(maxsize=None)
def _staged_swiglu(ggml_type, width, R, NW):
    """v18: ``swiglu_fused`` with the warp's R gate and R up rows in shared memory. Lane 0 of each warp arms the
    warp's barrier for 2R rows and issues one bulk copy per row (``ptx.bulk_copy``: DRAM -> shared memory, no
    registers, no L1) before the block stages x'; after staging, the warp waits for its barrier and the dot
    products read the rows from shared memory (4-byte loads: v15's 16-byte loads are global-only). In v17 the
    rows came from DRAM into L2 by a prefetch and then the loop read them again from L2 a unit per lane per
    step, a round trip each; here the copy engine moves whole rows with every byte in flight at once. Same
    arithmetic, same order: the results are bit-identical to ``swiglu_fused``. Gate and up share the type
    (and so the row size: Phi-3's fused gate_up)."""
    pair = _rows_dot_pair(ggml_type, ggml_type, width, R, False)

    @cuda.jit(**_decode_jit(NW))
    def swiglu_staged(x, nw, has_norm, eps, K, bar0, slot0, g32, u32, rb, up_row0, F, out):
        xs = cuda.shared.array(0, float32, alignment=SMEM_ALIGN)   # x' | barriers | row slots
        s16 = cuda.shared.array(0, uint16)
        s32 = cuda.shared.array(0, uint32)
        sh = cuda.shared.array(0, float16)
        bars = cuda.shared.array(0, uint64)
        red = cuda.shared.array(WARP, float32)
        warp = cuda.threadIdx.x // WARP
        row0 = (cuda.blockIdx.x * NW + warp) * R
        slot = slot0 + warp * 2 * R                  # the warp's slots: R gate rows, then R up rows
        bar = bar0 + warp
        if row0 < F and cuda.threadIdx.x % WARP == 0:
            ptx.bulk_expect(bars, bar, 2 * R * rb)
            for r in range(R):                       # rows past F copy row F - 1 (not stored)
                n = min(row0 + r, F - 1)
                ptx.bulk_copy(s32, (slot + r) * rb, g32, n * rb, rb, bars, bar)
                ptx.bulk_copy(s32, (slot + R + r) * rb, u32, (up_row0 + n) * rb, rb, bars, bar)
        _stage_x(x, nw, has_norm, eps, K, xs, red)   # (its block barrier also publishes the barriers' init)
        if row0 >= F:
            return
        while ptx.bulk_ready(bars, bar, 0) == 0:
            pass
        ag = cuda.local.array(R, float32)
        au = cuda.local.array(R, float32)
        pair(s16, s32, sh, xs, rb, s16, s32, sh, xs, rb, R, slot, _NO_CLAMP, K, xs, ag, au)
        _store_swiglu(ag, au, row0, F, out)
    return swiglu_staged


@functools.lru_cache(maxsize=None)
def _split_kernel(ggml_type, width, R, NW, S):
    """v7 split-K matvec: NW warps per block, groups of S warps share R rows (NW // S groups, so
    R NW // S rows per block). Each warp's partial sums (``_rows_dot`` with S) go to shared
    memory; after one barrier thread t < R NW // S adds the S parts of one row in a fixed order
    (j = 0 .. S-1) and stores it with the bias / residual add. Every size is a compile-time
    constant. The parts go to ``red`` (32 floats, free once ``_stage_x`` has passed its last
    barrier), so NW R <= 32 and the shared memory is v4's: K up to MAX_K_FUSED."""
    assert NW * R <= WARP and NW % S == 0 and S & (S - 1) == 0, (NW, R, S)
    rows = _rows_dot(ggml_type, width, R, S)
    warm_rows = _warm_rows(R)
    G = NW // S                                      # row groups per block
    ROWS = G * R                                     # rows per block
    SR = S * R

    @cuda.jit(cache=JIT_CACHE)
    def matvec_split(x, nw, has_norm, eps, K, warm, w16, w32, wh, wf, rb, N, bias, has_bias, accumulate, out):
        xs = cuda.shared.array(0, float32)          # dynamic: xs_floats(K)
        red = cuda.shared.array(WARP, float32)       # the norm's warp sums, then the NW R parts
        tid = cuda.threadIdx.x
        warp = tid // WARP
        row0 = (cuda.blockIdx.x * G + warp // S) * R
        t = int32(0)
        if warm:
            t = warm_rows(w16, rb, row0, N)          # (the S warps of a row each touch it all)
        _stage_x_split(x, nw, has_norm, eps, K, xs, red)
        _keep(t, N)
        part = red
        acc = cuda.local.array(R, float32)
        # every warp dots (groups past N re-read row N - 1, only in the last block; their parts are
        # never read): no early return and no divergent shuffles before the barrier below
        rows(w16, w32, wh, wf, rb, row0, N, K, xs, acc, 1, row0 + 2, 1)
        if tid % WARP == 0:
            for r in range(R):
                part[warp * R + r] = acc[r]
        cuda.syncthreads()
        if tid < ROWS:
            g = tid // R
            r = tid - g * R
            n = cuda.blockIdx.x * ROWS + tid         # = (blockIdx G + g) R + r
            if n < N:
                at = g * SR + r
                v = part[at]
                for j in range(1, S):
                    v += part[at + j * R]
                v = v + bias[n] if has_bias else v
                out[n] = out[n] + v if accumulate else v

    return matvec_split


@cuda.jit(device=True, inline=True)
def _pair_rows(slot, hs, half, neox):
    """RoPE pair slot ``slot`` of a matrix of heads (hs/2 slots a head, as ``rope._rotate_slot``):
    (first row, step to the second row, pair index or -1 for two pass-through rows)."""
    slots = hs // 2
    head = slot // slots
    k = slot - head * slots
    if k < half:
        a = k if neox else 2 * k
        return head * hs + a, half if neox else 1, k
    return head * hs + 2 * k, 1, -1


@cuda.jit(device=True, inline=True)
def _prefetch_cache(k_flat, v_flat, pos_arr, width):
    """Thread 0 of each block asks L2 (``ptx.prefetch_l2``, one bulk hint each) for its share of the bytes of
    cache rows 0 .. pos - 1 of K and of V (``width`` floats a row; at most KV_PREFETCH_MAX bytes in all), which
    the attention launch after this one reads. Issued before ``wait_previous_grid``: rows before pos were
    written by earlier steps, and a prefetch is only a hint - it cannot change a value any kernel reads, even
    if pos (``state``, advanced at the end of the step before) were read early."""
    if cuda.threadIdx.x == 0:
        total = min(int(pos_arr[0]) * width * 4, KV_PREFETCH_MAX // 2)      # bytes of K (and as many of V)
        share = (total + 16 * cuda.gridDim.x - 1) // (16 * cuda.gridDim.x) * 16
        start = cuda.blockIdx.x * share
        if start < total:
            ptx.prefetch_l2(k_flat, start, min(share, total - start))
            ptx.prefetch_l2(v_flat, start, min(share, total - start))


@functools.lru_cache(maxsize=None)
def _qkv_slots(NW, P):
    """The Q/K/V + RoPE launches' (v9, v20) device functions: ``slot_rows``, the j-th of a warp's P RoPE pair slots
    (blocks [0, blk1) are q's, [blk1, blk2) k's, then v's plain row pairs), and ``finish``, which stores a slot's
    two rows (+ bias, rotated when they are a RoPE pair) from the thread ``lead``."""

    @cuda.jit(device=True, inline=True)
    def finish(lead, v0, v1, r0, step, pair, bias, has_bias, out, off, pos, ts, fscale, ff, has_ff, attn):
        if lead:
            if has_bias:
                v0, v1 = v0 + bias[r0], v1 + bias[r0 + step]
            if pair >= 0:
                c, s = _cos_sin(pos, pair, ts, fscale, ff, has_ff, attn)
                v0, v1 = v0 * c - v1 * s, v0 * s + v1 * c
            out[off + r0] = v0
            out[off + r0 + step] = v1

    @cuda.jit(device=True, inline=True)
    def slot_rows(blk, blk1, blk2, warp, hs, half, neox, j):
        # (slot, first row, step to the second row, pair index or -1)
        if blk < blk1:
            slot = (blk * NW + warp) * P + j
            r0, step, pair = _pair_rows(slot, hs, half, neox)
        elif blk < blk2:
            slot = ((blk - blk1) * NW + warp) * P + j
            r0, step, pair = _pair_rows(slot, hs, half, neox)
        else:
            slot = ((blk - blk2) * NW + warp) * P + j
            r0, step, pair = 2 * slot, 1, -1
        return slot, r0, step, pair
    return slot_rows, finish


@functools.lru_cache(maxsize=None)
def _qkv_rope_kernel(types, width, NW, P=1, KVP=False):
    """v9: NW warps per block, P RoPE pair slots (2P rows) per warp (P = 1, 2: ``QKV_ROPE_PAIRS``); matrices a
    (q), b (k), c (v) of types[0..2]. Every type, width, NW and P is a compile-time constant. A warp's P slots
    are consecutive and computed together (their rows' loads in flight in one loop: ``_rows_dot`` with R = 2P).
    KVP (``KV_PREFETCH``): before waiting for the previous kernel, the blocks ask L2 for the cache rows the
    layer's attention will read next (``_prefetch_cache``)."""
    assert P in (1, 2), P
    R = 2 * P                                        # rows per warp
    warm_row = _warm_row                             # (bound here: the disk cache's key sees v17 or v8)
    rows_a, rows_b, rows_c = (_rows_dot(t, width, R) for t in types)
    slot_rows, finish = _qkv_slots(NW, P)

    @cuda.jit(**_decode_jit(NW))
    def qkv_rope(x, nw, has_norm, eps, K, warm, blk1, blk2, hs, pos_arr, ts, fscale, ff, has_ff, attn, half, neox,
                 a16, a32, ah, af, arb, aN, abias, ahas, q_out,
                 b16, b32, bh, bf, brb, bN, bbias, bhas, k_flat,
                 c16, c32, ch, cf, crb, cN, cbias, chas, v_flat):
        # blocks [0, blk1): q's slots, [blk1, blk2): k's, [blk2, grid): v's row pairs (block-uniform);
        # q_out: [aN]; k_flat, v_flat: flat [S_max * bN] views of the layer's caches (row p at p * bN)
        xs = cuda.shared.array(0, float32)
        red = cuda.shared.array(WARP, float32)
        acc = cuda.local.array(R, float32)
        blk = cuda.blockIdx.x
        warp = cuda.threadIdx.x // WARP
        slot, r0, step, pair = slot_rows(blk, blk1, blk2, warp, hs, half, neox, 0)
        r2, step2, pair2 = r0, step, pair                # (P = 1: unused)
        if P > 1:
            _, r2, step2, pair2 = slot_rows(blk, blk1, blk2, warp, hs, half, neox, 1)
        n_rows = aN if blk < blk1 else (bN if blk < blk2 else cN)
        t = int32(0)
        if warm:
            if blk < blk1:
                t = warm_row(a16, arb, r0, aN) ^ warm_row(a16, arb, r0 + step, aN)
                if P > 1:
                    t ^= warm_row(a16, arb, r2, aN) ^ warm_row(a16, arb, r2 + step2, aN)
            elif blk < blk2:
                t = warm_row(b16, brb, r0, bN) ^ warm_row(b16, brb, r0 + step, bN)
                if P > 1:
                    t ^= warm_row(b16, brb, r2, bN) ^ warm_row(b16, brb, r2 + step2, bN)
            else:
                t = warm_row(c16, crb, r0, cN) ^ warm_row(c16, crb, r0 + 1, cN)
                if P > 1:
                    t ^= warm_row(c16, crb, r2, cN) ^ warm_row(c16, crb, r2 + 1, cN)
        if KVP:
            _prefetch_cache(k_flat, v_flat, pos_arr, bN)
        _stage_x(x, nw, has_norm, eps, K, xs, red)
        _keep(t, aN)
        p = pos_arr[0]                               # (state: read after _stage_x's wait)
        if 2 * slot >= n_rows:
            return                                   # whole warp leaves: past the matrix's slots
        second = P > 1 and 2 * slot + 2 < n_rows     # the second slot exists (rows past N re-read row N - 1)
        lead = cuda.threadIdx.x % WARP == 0
        if blk < blk1:
            rows_a(a16, a32, ah, af, arb, r0, aN, K, xs, acc, step, r2, step2)
            finish(lead, acc[0], acc[1], r0, step, pair, abias, ahas, q_out, 0, p, ts, fscale, ff, has_ff, attn)
            if second:
                finish(lead, acc[2], acc[3], r2, step2, pair2, abias, ahas, q_out, 0, p, ts, fscale, ff, has_ff,
                       attn)
        elif blk < blk2:
            rows_b(b16, b32, bh, bf, brb, r0, bN, K, xs, acc, step, r2, step2)
            finish(lead, acc[0], acc[1], r0, step, pair, bbias, bhas, k_flat, p * bN, p, ts, fscale, ff, has_ff,
                   attn)
            if second:
                finish(lead, acc[2], acc[3], r2, step2, pair2, bbias, bhas, k_flat, p * bN, p, ts, fscale, ff,
                       has_ff, attn)
        else:
            rows_c(c16, c32, ch, cf, crb, r0, cN, K, xs, acc, 1, r2, 1)
            finish(lead, acc[0], acc[1], r0, 1, -1, cbias, chas, v_flat, p * cN, p, ts, fscale, ff, has_ff, attn)
            if second:
                finish(lead, acc[2], acc[3], r2, 1, -1, cbias, chas, v_flat, p * cN, p, ts, fscale, ff, has_ff,
                       attn)

    return qkv_rope


@cuda.jit(device=True, inline=True)
def _warm_pair(w16, rb, r0, step, N, LG):
    """v20: lanes 0 and 1 of a lane group ask L2 for rows r0 and r0 + step (clamped to N - 1), one bulk prefetch
    each (as ``_warm_row_l2``)."""
    i = cuda.threadIdx.x & (LG - 1)
    if i < 2:
        ptx.prefetch_l2(w16, int32(min(r0 + i * step, N - 1) * rb), rb)


@functools.lru_cache(maxsize=None)
def _qkv_rope_x8_kernel(types, NW, LG):
    """v20's Q/K/V + RoPE launch (``LLAMA_BETA_DP4A=1``): v9's work and arguments, over int8 x' (staged, then
    rounded in place by ``_quantize_staged``) and ``dp4a``. A lane group of LG lanes takes one RoPE pair slot (its
    two rows, ``_x8_rows_at`` with R = 2), so a warp takes G = 32 / LG consecutive slots; matrices a, b, c of
    types[0..2], each in ``X8_PAIRS``. (``_prefetch_cache`` is not offered: v9's opt-in, measured slower.)"""
    G = WARP // LG
    slot_rows, finish = _qkv_slots(NW, G)
    rows_a, rows_b, rows_c = (_x8_rows_at(2, LG, False, t) for t in types)

    @cuda.jit(**_decode_jit(NW))
    def qkv_rope_x8(x, nw, has_norm, eps, K, warm, blk1, blk2, hs, pos_arr, ts, fscale, ff, has_ff, attn, half,
                    neox, a16, a32, ah, af, arb, aN, abias, ahas, q_out,
                    b16, b32, bh, bf, brb, bN, bbias, bhas, k_flat,
                    c16, c32, ch, cf, crb, cN, cbias, chas, v_flat):
        xs = cuda.shared.array(0, float32)
        red = cuda.shared.array(WARP, float32)
        acc = cuda.local.array(2, float32)
        blk = cuda.blockIdx.x
        g = (cuda.threadIdx.x & (WARP - 1)) // LG     # the lane group: the warp's g-th slot
        slot, r0, step, pair = slot_rows(blk, blk1, blk2, cuda.threadIdx.x // WARP, hs, half, neox, g)
        n_rows = aN if blk < blk1 else (bN if blk < blk2 else cN)
        if warm:
            if blk < blk1:
                _warm_pair(a16, arb, r0, step, aN, LG)
            elif blk < blk2:
                _warm_pair(b16, brb, r0, step, bN, LG)
            else:
                _warm_pair(c16, crb, r0, step, cN, LG)
        _stage_x(x, nw, has_norm, eps, K, xs, red)
        _quantize_staged(xs, K)
        p = pos_arr[0]                               # (state: read after _stage_x's wait)
        if 2 * (slot - g) >= n_rows:
            return                                   # whole warp leaves: past the matrix's slots
        n0, n1 = min(r0, n_rows - 1), min(r0 + step, n_rows - 1)    # groups past them re-read the last row ...
        lead = (cuda.threadIdx.x & (LG - 1)) == 0 and 2 * slot < n_rows    # ... and store nothing
        if blk < blk1:
            rows_a(a16, a32, ah, arb, a16, a32, ah, arb, 0, n0, n1, n1, n1, K, xs, acc, acc)
            finish(lead, acc[0], acc[1], r0, step, pair, abias, ahas, q_out, 0, p, ts, fscale, ff, has_ff, attn)
        elif blk < blk2:
            rows_b(b16, b32, bh, brb, b16, b32, bh, brb, 0, n0, n1, n1, n1, K, xs, acc, acc)
            finish(lead, acc[0], acc[1], r0, step, pair, bbias, bhas, k_flat, p * bN, p, ts, fscale, ff, has_ff,
                   attn)
        else:
            rows_c(c16, c32, ch, crb, c16, c32, ch, crb, 0, n0, n1, n1, n1, K, xs, acc, acc)
            finish(lead, acc[0], acc[1], r0, step, pair, cbias, chas, v_flat, p * cN, p, ts, fscale, ff, has_ff,
                   attn)

    return qkv_rope_x8


# ---------------------------------------------------------------------------------------------
# fused decode: launch helpers (grid arithmetic, views, the launch-configuration heuristic)
# ---------------------------------------------------------------------------------------------
def forget_decode_kernels() -> None:
    """Forget the decode kernels built so far (their factories' caches), so that the next launches compile
    with the module's compile-time settings as they are now (``VECTOR_LOADS``, ``DOT_PARTS``): for tests
    and ``benchmarks/ladder.py``. The on-disk cache does not see these settings: run such A/Bs with
    ``LLAMA_BETA_JIT_CACHE=0``."""
    for factory in (_unit, _rows_dot, _rows_dot_pair, _warm_rows, _fused_kernels, _staged_swiglu, _split_kernel,
                    _qkv_rope_kernel):
        factory.cache_clear()


@functools.lru_cache(maxsize=None)
def _sm_count():
    return getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 0)   # the simulator: 0


def fused_config(rows, blocks_per_sm=None):
    """(warps per block, rows per warp) for ``rows`` rows: the most rows per block (x' is staged
    once per block) that still gives ``blocks_per_sm`` (default BLOCKS_PER_SM) blocks per SM; else
    the smallest blocks. (The simulator has no SMs to fill and pays per block and per thread: it
    gets (4, 4).)"""
    if not _sm_count():
        return 4, 4
    want = (blocks_per_sm or BLOCKS_PER_SM) * _sm_count()
    for nw, r in FUSED_CONFIGS:
        if -(-rows // (nw * r)) >= want:
            return nw, r
    return FUSED_CONFIGS[-1]


SPLIT_K = os.environ.get("LLAMA_BETA_SPLIT_K", "1") != "0"   # decode_matvec may split K (v7); "0": v4 only
SPLIT_WARPS = 16          # warps per block of the split-K launches (v7)
SPLIT_MAX = 8             # most warps per row
SPLIT_WARPS_PER_SM = 32   # split until N * S reaches this many warps per SM


def split_config(N, K, width=32, min_split=1):
    """(warps per block, rows per warp, warps per row S) for v7, or None when no split is worth it.

    S doubles (up to SPLIT_MAX) while the N S warps are fewer than SPLIT_WARPS_PER_SM per SM and
    every lane of the 2S warps would still get at least one ``width``-weight step (2 S 32 width
    <= K): 896 x 4864 -> S = 4 (3584 warps, 1-2 steps a lane instead of 4.75), 3072 x 8192 -> 2,
    3072 x 3072 -> 2; 896 x 896 (28 units a row) and N >= 4224 rows -> no split. Blocks of
    SPLIT_WARPS warps, one row per warp group (x' is staged once per SPLIT_WARPS / S rows: the
    same number of blocks as v4's (4, 1) at S = 4). ``min_split`` forces a split (timings)."""
    sms = _sm_count()
    S = 1
    while S < SPLIT_MAX and 2 * S * WARP * width <= K and (N * S < SPLIT_WARPS_PER_SM * sms or S < min_split):
        S *= 2
    S = max(S, min_split)
    return (SPLIT_WARPS, 1, S) if S > 1 else None


def decode_config(N, K, width=32):
    """decode_matvec's default launch: split_config (v7) when SPLIT_K and it splits, else
    fused_config (v4): a (warps, rows per warp) or (warps, rows per warp, S) tuple."""
    return (split_config(N, K, width) if SPLIT_K else None) or fused_config(N)


def _fused_views(w_raw, ggml_type, vector=None):
    """(w16, w32, wh, wf, row_bytes, N): the four views of the raw bytes that the decoders read. ``vector``: whether
    the kernel reads Q4_K/Q5_K quants 16 bytes at a time (None: ``VECTOR_LOADS``; v20 always does)."""
    N, rb = w_raw.shape
    if N * rb >= 2 ** 31:
        raise ValueError(f"decode_matvec: {ggml_type.name} weight of {N * rb} bytes: the fused "
                         f"kernels index bytes with int32 (< 2 GiB); use matvec")
    iface = getattr(w_raw, "__cuda_array_interface__", None)     # (the simulator has none)
    vector = VECTOR_LOADS if vector is None else vector
    align = 16 if vector and ggml_type in VECTOR_TYPES else 4
    words = ggml_type in ALIGN4_TYPES or (vector is True and ggml_type in X8_PAIRS)   # (v20 reads words)
    if words and iface is not None and iface["data"][0] % align:
        raise ValueError(f"decode_matvec: {ggml_type.name} weight must start at a {align}-byte aligned address")
    flat = w_raw.reshape(N * rb)
    w32 = flat[:N * rb // 4 * 4].view(np.uint32)
    return flat.view(np.uint16), w32, flat.view(np.float16), w32.view(np.float32), rb, N


def _stage_args(x, norm_weight, eps, K):
    """The kernels' first six arguments: x, the norm weight (x stands in), has_norm, eps, K, warm (v8)."""
    has_norm = norm_weight is not None
    return x, norm_weight if has_norm else x, has_norm, np.float32(eps), K, WARM


def _check_fits(K):
    if K > MAX_K_FUSED:
        raise ValueError(f"decode_matvec: K={K} does not fit in shared memory (padded x' needs "
                         f"K <= {MAX_K_FUSED}); use matvec")


def _launch(kern, blocks, nw, K, stream, *args, floats=None):
    _check_fits(K)
    smem = 4 * (floats or xs_floats(K))                # dynamic: padded x' (+ a static 32 floats)
    kern[blocks, nw * WARP, stream, smem](*args)


def _width(width, K):
    """The weights a lane dots per step: ``width``, else DECODE_WIDTH, else 8 (v5) when K is not a
    multiple of DECODE_WIDTH (F16/F32 rows of 8n weights)."""
    width = width or (DECODE_WIDTH if K % DECODE_WIDTH == 0 else 8)
    if K % width:
        raise ValueError(f"decode_matvec: K={K} must be a multiple of {width}, the weights a lane dots per step")
    return width


def launch_decode_matvec(x, w_raw, ggml_type, K, out, bias=None, norm_weight=None, eps=1e-6,
                         accumulate=False, width=None, config=None, stream=0, xq=None):
    """v4/v5/v6 (width 32/8/16) on device arrays: x [K], w_raw uint8 [N, row_bytes], out [N].

    ``config``: (warps, rows per warp) = v4-v6, (warps, rows per warp, S) with S > 1 = v7
    split-K (S warps per row, S a power of 2 dividing warps); default ``decode_config``. Where ``X8.product``
    chooses it, v20 (``x8_config``; a given (warps, rows) is kept, as rows per lane group; a given split config
    keeps v7). ``xq`` (v21): x' already rounded to int8 blocks of 32 by the launch before (uint32
    [xq_words(K)], ``launch_decode_swiglu(xq_out=...)``): v20 reads it in place of x (no norm)."""
    N = w_raw.shape[0]
    if xq is not None:
        if norm_weight is not None or not x8_fits(ggml_type, K):
            raise ValueError(f"decode_matvec: a rounded x' (xq) takes no norm and a v20 type, got {ggml_type!r}")
        _launch_x8(0, ggml_type, xq, K, N, config and config[:2], None, eps, stream,
                   *_fused_views(w_raw, ggml_type, vector=True), *_bias(bias, out), accumulate, out, pre=True)
        return
    width = _width(width, K)
    nw, R, *rest = config or decode_config(N, K, width)
    S = rest[0] if rest else 1
    if S & (S - 1) or nw % S or R not in (1, 2, 4) or (S > 1 and nw * R > WARP):
        raise ValueError(f"decode_matvec: config {config}: S must be a power of 2 dividing the warps, "
                         f"R 1, 2 or 4, and warps x R <= 32 with a split")
    b, has = _bias(bias, out)
    if X8.product(ggml_type, N, K) and (S == 1 or not config):     # v20 (a given split config keeps v7)
        _launch_x8(0, ggml_type, x, K, N, config and config[:2], norm_weight, eps, stream,
                   *_fused_views(w_raw, ggml_type, vector=True), b, has, accumulate, out)
        return
    if S > 1:
        kern = _split_kernel(ggml_type, width, R, nw, S)
        blocks = -(-N // (nw // S * R))                         # nw / S groups of R rows per block
    else:
        kern = _fused_kernels((ggml_type,) * 3, width, R, nw)[0]
        blocks = -(-N // (nw * R))                              # nw warps of R rows per block
    _launch(kern, blocks, nw, K, stream, *_stage_args(x, norm_weight, eps, K), *_fused_views(w_raw, ggml_type),
            b, has, accumulate, out)


def launch_decode_multi(x, mats, outs, K, norm_weight=None, eps=1e-6, width=None, config=None, stream=0):
    """One launch for 1-3 matrices sharing x: mats = [(w_raw, type, bias or None)], outs = [N_i]."""
    types = tuple(t for _, t, _ in mats)
    nw, R = config or fused_config(sum(m[0].shape[0] for m in mats), MULTI_BLOCKS_PER_SM)
    blocks = [-(-m[0].shape[0] // (nw * R)) for m in mats]    # each matrix its own blocks
    slots = []
    for (w, t, bias), o in zip(mats, outs):
        slots += [*_fused_views(w, t), *_bias(bias, o), o]
    slots += slots[:9] * (3 - len(mats))               # unused slots: matrix 0 again, no blocks
    blk1 = blocks[0]
    blk2 = blk1 + (blocks[1] if len(mats) > 1 else 0)
    kern = _fused_kernels(types + types[:1] * (3 - len(types)), _width(width, K), R, nw)[1]
    _launch(kern, sum(blocks), nw, K, stream, *_stage_args(x, norm_weight, eps, K), blk1, blk2, *slots)


QKV_ROPE_WARPS = 8     # v9: warps per block
QKV_ROPE_PAIRS = int(os.environ.get("LLAMA_BETA_QKV_PAIRS", "1"))   # v9: RoPE pair slots per warp (1; 2: an
#                        experiment for Phi-3's 4608 slots, 1.09 waves of one-slot warps at 64 registers; measured
#                        slower in the ninth session: 22.4 us with 4-warp blocks, 26.5 with 8, against 20.9)
KV_PREFETCH = os.environ.get("LLAMA_BETA_KV_PREFETCH", "0") == "1"   # v9: ask L2 for the layer's K/V cache (opt-in)
KV_PREFETCH_MAX = 16 << 20   # ... at most this many bytes of it (K and V together): L2 holds 50 MB on an H200


def launch_decode_qkv_rope(x, mats, q_out, k_cache, v_cache, K, head_size, rope_args, norm_weight=None, eps=1e-6,
                           width=None, n_warps=None, pairs=None, prefetch=None, stream=0):
    """v9: q_out [nh hs] = RoPE(W_q x' + b_q); row pos[0] of k_cache / v_cache [S_max, nkv, hs] =
    RoPE(W_k x' + b_k) and W_v x' + b_v; x' = RMSNorm(x) * norm_weight (or x). ``mats``: three
    (w_raw, type, bias or None); ``rope_args``: ``rope._args`` (positions first: pos, a device int32 [1]).
    ``prefetch``: ask L2 for cache rows 0 .. pos - 1 (default ``KV_PREFETCH``). Where ``X8.qkv`` chooses it, v20
    (``_qkv_rope_x8_kernel``) serves it unless ``pairs`` or ``prefetch`` is asked for."""
    types = tuple(t for _, t, _ in mats)
    nw = n_warps or (QKV_ROPE_WARPS if _sm_count() else 2)     # the simulator pays per thread: small blocks
    x8 = X8.qkv(types, K) and not pairs and not prefetch       # v20: a lane group per slot (G a warp)
    P = WARP // x8_lanes(K) if x8 else pairs or QKV_ROPE_PAIRS
    flat = [q_out, k_cache.reshape(k_cache.size), v_cache.reshape(v_cache.size)]
    blocks = [-(-(m[0].shape[0] // 2) // (nw * P)) for m in mats]     # a warp per P slots of two rows
    slots = []
    for (w, t, bias), o in zip(mats, flat):
        slots += [*_fused_views(w, t, vector=True if x8 else None), *_bias(bias, o), o]
    if x8:
        kern = _qkv_rope_x8_kernel(types, nw, x8_lanes(K))
    else:
        kern = _qkv_rope_kernel(types, _width(width, K), nw, P, KV_PREFETCH if prefetch is None else prefetch)
    _launch(kern, sum(blocks), nw, K, stream, *_stage_args(x, norm_weight, eps, K), blocks[0],
            blocks[0] + blocks[1], head_size, *rope_args, *slots)


# v20 (default "auto"): the decode products over X8_PAIRS' types round x' to int8 blocks of 32 and multiply with dp4a, a
# lane per pair of blocks (``_x8_kernels``, ``_qkv_rope_x8_kernel``; reference: ``ref.matmul.matmul_x8``). Which
# launches take it: ``X8`` (``ref.matmul.X8Choice``, from LLAMA_BETA_DP4A; the NumPy backend follows the same
# choice). "0": none; "1": wherever the types allow; "auto" (the default since the eighteenth session): rows of at
# least 2048 weights, and plain products of at least 4096 rows (H100: Phi-3's K = 3072 Q/K/V, gate/up and output
# launches win, the step 2678 -> 2401 us; Qwen's K = 896 ones lose, and so do the products of fewer rows, which v7
# splits over K on 132 SMs: Qwen2.5-0.5B's decode is unchanged).
X8 = X8Choice.from_env()
DP4A_MODE = os.environ.get("LLAMA_BETA_DP4A", "auto")    # (recorded by bench)
X8_CONFIG = tuple(int(v) for v in os.environ.get("LLAMA_BETA_X8_CONFIG", "").split(",") if v) or None   # sweeps


def x8_lanes(K: int) -> int:
    """v20's lanes per row group: of 32, 16 and 8, the one that leaves the fewest idle lane-steps over the K / 64
    sub-block pairs of a row (ties: the most lanes). K = 3072 (48 pairs) -> 16: three full steps, where 32 lanes
    would idle half the second; 8192 -> 32; 4864 (76 pairs) -> 16."""
    pairs = K // 64
    return min((WARP, 16, 8), key=lambda lg: (-(-pairs // lg) * lg, -lg))


X8_SWIGLU_WIDEN = 2   # v20's SwiGLU launch: blocks of this many times the warps x8_config picks, rows per group kept
#                       (H100, eighteenth session, Phi-3's 8192 x 3072 gate/up: (16, 1, 16) 15.8 us against (8, 1, 16)
#                       17.7 in the decode graph; (4, 1, 16) 23.2, (8, 1, 8) 19.9; the plain products kept theirs:
#                       the 32064-row output (8, 4, 16) 45.8 us, forced to (16, 1, 16) 51.2)


def x8_config(N: int, K: int, config=None, swiglu: bool = False) -> tuple[int, int, int]:
    """(warps per block, rows per lane group, lanes per group) of a v20 launch: ``config``'s (warps, rows) if
    given, else the most rows per block that still give BLOCKS_PER_SM blocks per SM, as ``fused_config`` (a
    block holds NW (32 / LG) R rows of each matrix); a SwiGLU launch then takes X8_SWIGLU_WIDEN times the warps
    (at most 16: blocks of 512 threads), so half as many blocks."""
    if X8_CONFIG and not config:
        return X8_CONFIG
    LG = x8_lanes(K)
    if config:
        return config[0], config[1], LG
    if not _sm_count():
        return 2, 2, LG                              # the simulator pays per thread
    want = BLOCKS_PER_SM * _sm_count()
    nw, r = FUSED_CONFIGS[-1]
    for c in FUSED_CONFIGS:
        if -(-N // (c[0] * c[1] * (WARP // LG))) >= want:
            nw, r = c
            break
    return (min(16, nw * X8_SWIGLU_WIDEN) if swiglu else nw), r, LG


def launch_quantize_x8(x, K, out, norm_weight=None, eps=1e-6, stream=0, n_warps=8):
    """out [xs_floats(K)] = the rounded x' of a v20 block of ``n_warps`` warps (``quantize_x8_kernel``)."""
    if K % 32:
        raise ValueError(f"quantize_x8: K={K} must be a multiple of 32")
    _launch(quantize_x8_kernel, 1, n_warps, K, stream, *_stage_args(x, norm_weight, eps, K)[:5], out)


X8_PRE_CONFIG = tuple(int(v) for v in os.environ.get("LLAMA_BETA_X8_PRE_CONFIG", "4,1").split(","))
# v21's product over a rounded x' (warps, rows per group; LLAMA_BETA_X8_PRE_CONFIG for sweeps): H100, nineteenth
# session, Phi-3's 3072 x 8192 W_down (LG 32), per launch in the decode graph: (4, 1) 11.6 us, (2, 1) 12.7, (8, 1)
# 18.0 (x8_config's choice), (16, 1) 15.6, (8, 2) 15.6, (4, 2) 16.4, (1, 1) 20.7; v7 split-K 16.8


def _rows_of_32(nw: int, R: int, LG: int) -> tuple[int, int]:
    """v21: (warps, rows per group) grown until a block's rows nw (32 / LG) R are a multiple of 32, so that its
    outputs are whole blocks of 32 (``_round_rows_out``): warps first (at most 16), then rows (at most 2)."""
    while nw * (WARP // LG) * R % 32:
        nw, R = (nw * 2, R) if nw < 16 else (nw, R * 2)
    return nw, R


def _launch_x8(which, ggml_type, x, K, N, config, norm_weight, eps, stream, *args, pre=False, out_q=False):
    """One v20 product (``which``: 0 matvec, 1 SwiGLU; ``args``: the weight views onwards) with N rows per
    matrix; ``pre`` / ``out_q``: v21's rounded input / rounded output (``_x8_kernels``)."""
    if pre and not config and not X8_CONFIG:       # (LLAMA_BETA_X8_CONFIG, a sweep, still wins)
        config = X8_PRE_CONFIG
    nw, R, LG = x8_config(N, K, config, swiglu=which == 1)
    if out_q:
        nw, R = _rows_of_32(nw, R, LG)
    compact = pre and X8_COMPACT
    _launch(_x8_kernels(R, nw, LG, ggml_type, pre, out_q, compact)[which], -(-N // (nw * R * (WARP // LG))), nw, K,
            stream, *_stage_args(x, norm_weight, eps, K), *args, floats=xq_shared_floats(K, compact))


def _stage_rows(gate_type, up_type, K, nw, rows, weights) -> bool:
    """Whether v18 serves this launch: ``STAGE_ROWS`` on, an sm_90+ GPU (or the simulator), one type whose rows
    are whole multiples of 16 bytes, weights starting 16-byte aligned, and the block's shared memory fitting."""
    if not STAGE_ROWS or gate_type != up_type or gate_type in (GGMLType.F16, GGMLType.F32):
        return False
    rb = row_bytes(gate_type, K)
    aligned = all(w.__cuda_array_interface__["data"][0] % 16 == 0 for w in weights
                  if hasattr(w, "__cuda_array_interface__"))
    gpu_ok = config.ENABLE_CUDASIM or cuda.get_current_device().compute_capability >= (9, 0)
    return rb % 16 == 0 and aligned and gpu_ok and staged_layout(K, nw, rows, rb)[2] <= SHARED_MAX


def _launch_staged_swiglu(x, w_gate, gate_type, w_up, up_row0, K, out, norm_weight, eps, width, nw, R, stream):
    F = out.shape[0]
    rb = row_bytes(gate_type, K)
    bar0, slot0, smem = staged_layout(K, nw, 2 * R, rb)
    kern = _staged_swiglu(gate_type, width, R, nw)
    g32, u32 = (_fused_views(w, gate_type)[1] for w in (w_gate, w_up))
    x, nw_arg, has_norm, eps, K, _ = _stage_args(x, norm_weight, eps, K)
    launch_with_shared(kern, -(-F // (nw * R)), nw * WARP, stream, smem,
                       x, nw_arg, has_norm, eps, K, bar0, slot0, g32, u32, rb, up_row0, F, out)


def launch_decode_swiglu(x, w_gate, gate_type, w_up, up_type, up_row0, K, out, norm_weight=None,
                         eps=1e-6, width=None, config=None, stream=0, xq_out=None):
    """out [F] = silu(W_gate x') * (W_up[up_row0:] x'); w_up may be w_gate itself (fused gate_up).
    ``xq_out`` (v21; only where ``X8`` puts this launch on v20, and F a multiple of 32): also out rounded to
    int8 blocks of 32, uint32 [xq_words(F)], for W_down (``launch_decode_matvec(xq=...)``)."""
    F = out.shape[0]
    if xq_out is not None and not (X8.gate_up(gate_type, up_type, K) and F % 32 == 0):
        raise ValueError(f"decode_swiglu: xq_out needs the v20 launch (LLAMA_BETA_DP4A) and F % 32 == 0, F={F}")
    nw, R = config or fused_config(F)
    width = _width(width, K)
    if _stage_rows(gate_type, up_type, K, nw, 2 * R, (w_gate, w_up)):
        _launch_staged_swiglu(x, w_gate, gate_type, w_up, up_row0, K, out, norm_weight, eps, width, nw, R, stream)
        return
    x8 = X8.gate_up(gate_type, up_type, K)                # v20 reads its quants 16 bytes at a time
    g16, g32, gh, gf, grb, _ = _fused_views(w_gate, gate_type, vector=x8 or None)
    u16, u32, uh, uf, urb, _ = _fused_views(w_up, up_type, vector=x8 or None)
    if x8:
        _launch_x8(1, gate_type, x, K, F, config, norm_weight, eps, stream,
                   g16, g32, gh, gf, grb, u16, u32, uh, uf, urb, up_row0, F, out,
                   out if xq_out is None else xq_out, out_q=xq_out is not None)
        return
    kern = _fused_kernels((gate_type, up_type, gate_type), width, R, nw)[2]
    _launch(kern, -(-F // (nw * R)), nw, K, stream, *_stage_args(x, norm_weight, eps, K),
            g16, g32, gh, gf, grb, u16, u32, uh, uf, urb, up_row0, F, out)


# ---------------------------------------------------------------------------------------------
# public functions: NumPy in -> NumPy out; device arrays in -> device arrays out
# ---------------------------------------------------------------------------------------------



def _check(w_raw, ggml_type, K) -> GGMLType:
    ggml_type = GGMLType(ggml_type)
    if ggml_type not in DECODERS:
        raise ValueError(f"matmul kernels: ggml type {ggml_type.name} is not supported "
                         f"(supported: {', '.join(t.name for t in DECODERS)})")
    rb = row_bytes(ggml_type, K)
    if len(w_raw.shape) != 2 or w_raw.shape[1] != rb or np.dtype(w_raw.dtype) != np.uint8:
        raise ValueError(f"matmul kernels: {ggml_type.name} weight with K={K} must be uint8 "
                         f"[N, {rb}], got {w_raw.dtype} {tuple(w_raw.shape)}")
    if K % 8:
        raise ValueError(f"matmul kernels: K={K} must be a multiple of 8")
    return ggml_type


def matvec(x, w_raw, ggml_type, K, bias=None, out=None, stream=0):
    """y [N] = W x (+ bias) for x [K] (or [1, N] from [1, K]); the decode path.

    ``w_raw``: the raw GGUF bytes, uint8 [N, row_bytes], NumPy or device. With ``out`` (a device
    array [N] or [1, N]) nothing is allocated and nothing synchronized.
    """
    ggml_type = _check(w_raw, ggml_type, K)
    shape = tuple(x.shape)                          # (the simulator's shapes reject shape[-1])
    if shape not in ((K,), (1, K)):
        raise ValueError(f"matvec: x must be [K] or [1, K] with K={K}, got {shape}")
    host = not _is_device(x)
    N = w_raw.shape[0]
    x_d = _device(x, np.float32, stream).reshape(K)
    w_d = _device(w_raw, np.uint8, stream)
    b_d = _device(bias, np.float32, stream)
    out_d = out if out is not None else cuda.device_array((N,), np.float32, stream=stream)
    flat = out_d.reshape(N)
    # measured on the H200: v2 wins for large N, v1 for the 896/128-row matrices (see docs)
    launch = launch_matvec_v2 if K <= MAX_K_SHARED and N >= V2_MIN_ROWS else launch_matvec_v1
    launch(x_d, w_d, ggml_type, K, b_d, flat, stream)
    if out is not None:
        return out
    y = out_d.reshape(shape[:-1] + (N,))
    return y.copy_to_host(stream=stream) if host else y


def matmul(x, w_raw, ggml_type, K, bias=None, out=None, stream=0, version=10):
    """y [T, N] = x [T, K] W^T (+ bias); the prefill path (tiled, float32 accumulation).

    ``version``: 10 (default, ``matmul_prefill``'s kernels), 11 (the tensor-core kernel: float16 operands,
    float32 sums; ``matmul_prefill(..., mma=True)``) or 3 (``matmul_tiled``, kept for comparisons)."""
    ggml_type = _check(w_raw, ggml_type, K)
    if version not in (3, 10, 11):
        raise ValueError(f"matmul: version must be 3, 10 or 11, got {version}")
    if len(x.shape) != 2 or x.shape[1] != K:
        raise ValueError(f"matmul: x must be [T, K] with K={K}, got {tuple(x.shape)}")
    host = not _is_device(x)
    T, N = x.shape[0], w_raw.shape[0]
    x_d = _device(x, np.float32, stream)
    w_d = _device(w_raw, np.uint8, stream)
    b_d = _device(bias, np.float32, stream)
    out_d = out if out is not None else cuda.device_array((T, N), np.float32, stream=stream)
    if version == 3:
        launch_matmul_tiled(x_d, w_d, ggml_type, K, b_d, out_d, stream)
    else:
        launch_matmul_prefill(x_d, w_d, ggml_type, K, out_d, b_d, stream=stream, mma=version == 11)
    if out is not None or not host:
        return out_d
    return out_d.copy_to_host(stream=stream)


# --- fused decode (v4-v6): device arrays in, device arrays out, graph-capturable ------------------
def _check_fused(w_raw, ggml_type, K):
    ggml_type = _check(w_raw, ggml_type, K)
    _check_fits(K)
    return ggml_type


def _words(a, n, what):
    """A v21 rounded x' buffer: a device uint32 [n] (it is written by one launch and read by the next)."""
    if tuple(a.shape) != (n,) or np.dtype(a.dtype) != np.uint32 or not _is_device(a):
        raise ValueError(f"decode_matvec: {what} must be a device uint32 [{n}], got {a.dtype} {tuple(a.shape)}")
    return a


def _vector(a, n, what):
    """A device [n] view of ``a`` ([n] or [1, n]); a NumPy x is copied (allocates), out must be
    a device array (the result is written into it)."""
    if tuple(a.shape) not in ((n,), (1, n)):
        raise ValueError(f"decode_matvec: {what} must be [{n}] or [1, {n}], got {tuple(a.shape)}")
    if what == "out" and not _is_device(a):
        raise ValueError("decode_matvec: out must be a device array (the result is written into it)")
    d = _device(a, np.float32)
    return d[0] if len(d.shape) == 2 else d   # (NumPy may give a [1, n] array a 0 stride that reshape rejects)


def _use_mma(mma, types, K, what):
    """v12 or not: ``mma`` None = the default (LLAMA_BETA_DECODE_MMA=1 and ``decode_mma_supported``),
    True = v12 or an error, False = the float32 kernels."""
    if mma is None:
        return DECODE_MMA and decode_mma_supported(types, K)
    if mma and not decode_mma_supported(types, K):
        raise ValueError(f"{what}: the tensor-core kernel (v12) takes Q5_0/Q8_0 weights with K a multiple of 32 "
                         f"on sm_80+, got {[t.name for t in types]} with K={K}")
    return bool(mma)


def decode_matvec(x, w_raw, ggml_type, K, out, *, bias=None, norm_weight=None, eps=1e-6,
                  accumulate=False, stream=0, mma=None, xq=None):
    r"""out[n] (=, or += with ``accumulate``) $\sum_k W_{n,k} x'_k + b_n$ in one launch.

    $x' = x$, or $\mathrm{RMSNorm}(x) \odot$ ``norm_weight`` when given (every block sums the
    squares of x itself, so the separate rmsnorm launch disappears). ``accumulate=True`` fuses
    the residual add: ``out`` is the residual stream (it must not alias x). x is [K] or [1, K],
    out a device array [N] or [1, N]; with device inputs nothing is allocated and nothing is
    synchronized, so the launch can be captured in a CUDA graph. Returns ``out``.

    ``mma``: the tensor-core kernel v12 (x' rounded to float16; Q5_0/Q8_0 weights) always (True), never
    (False: the float32 kernels v4-v7), or None: v12 where it applies if LLAMA_BETA_DECODE_MMA=1 (off by
    default: measured slower on the H200).

    ``xq`` (v21): x' already rounded to int8 blocks of 32 (``decode_matvec_swiglu(xq_out=...)``, uint32
    [xq_words(K)]): the v20 kernel reads it in place of x (x is then not read; no norm).
    """
    ggml_type = _check_fused(w_raw, ggml_type, K)
    N = w_raw.shape[0]
    if xq is not None:
        launch_decode_matvec(None, _device(w_raw, np.uint8), ggml_type, K, _vector(out, N, "out"),
                             bias=_device(bias, np.float32), norm_weight=_device(norm_weight, np.float32),
                             eps=eps, accumulate=accumulate, stream=stream, xq=_words(xq, xq_words(K), "xq"))
        return out
    launch = launch_decode_mma if _use_mma(mma, (ggml_type,), K, "decode_matvec") else launch_decode_matvec
    launch(_vector(x, K, "x"), _device(w_raw, np.uint8), ggml_type, K, _vector(out, N, "out"),
           bias=_device(bias, np.float32), norm_weight=_device(norm_weight, np.float32),
           eps=eps, accumulate=accumulate, stream=stream)
    return out


def decode_matvec_multi(x, mats, outs, *, norm_weight=None, eps=1e-6, stream=0):
    """Several matrix-vector products of the same x' in one launch (the Q, K, V projections).

    ``mats``: 1-3 tuples ``(w_raw, ggml_type, K, bias_or_None)``, the types may differ (the kernel
    is compiled for the tuple of types); ``outs``: device arrays [N_i] or [1, N_i]. Returns outs.
    """
    if not 1 <= len(mats) <= 3 or len(outs) != len(mats):
        raise ValueError(f"decode_matvec_multi: 1-3 matrices and as many outputs, got {len(mats)} and {len(outs)}")
    K = mats[0][2]
    if any(m[2] != K for m in mats):
        raise ValueError(f"decode_matvec_multi: all matrices must have the same K, got {[m[2] for m in mats]}")
    dev = [(_device(w, np.uint8), _check_fused(w, t, K), _device(b, np.float32)) for w, t, _, b in mats]
    flat = [_vector(o, m[0].shape[0], "out") for o, m in zip(outs, dev)]
    launch_decode_multi(_vector(x, K, "x"), dev, flat, K, norm_weight=_device(norm_weight, np.float32),
                        eps=eps, stream=stream)
    return outs


def decode_qkv_rope(x, mats, q, k_cache, v_cache, pos, base, *, norm_weight=None, eps=1e-6, rot_dims=None,
                    neox=True, freq_scale=1.0, freq_factors=None, attn_factor=1.0, stream=0):
    """The decode step's Q/K/V products, RoPE and KV append in one launch (v9): ``q`` [1, nh, hs] =
    RoPE(W_q x' + b_q); row pos[0] of ``k_cache`` / ``v_cache`` [S_max, nkv, hs] = RoPE(W_k x' + b_k) and
    W_v x' + b_v. The same result as ``decode_matvec_multi`` into q, k, v followed by
    ``rope.rope_qk_append``. ``mats``: three ``(w_raw, ggml_type, K, bias_or_None)``; ``pos``: a device
    int32 [1] (a captured graph replays with the next position); the RoPE options as ``rope.rope``."""
    _, nh, hs = q.shape
    S, nkv = k_cache.shape[0], k_cache.shape[1]
    K = mats[0][2]
    rows = [m[0].shape[0] for m in mats]
    if (len(mats) != 3 or any(m[2] != K for m in mats) or rows != [nh * hs, nkv * hs, nkv * hs]
            or tuple(k_cache.shape) != (S, nkv, hs) or tuple(v_cache.shape) != (S, nkv, hs)):
        raise ValueError(f"decode_qkv_rope: matrices of {rows} rows and K {[m[2] for m in mats]}, q {tuple(q.shape)}, "
                         f"caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)}: want Q, K, V of nh hs, nkv hs, "
                         f"nkv hs rows, one K, and caches [S, nkv, hs]")
    if not all(_is_device(a) for a in (q, k_cache, v_cache, pos)):
        raise ValueError("decode_qkv_rope: q, the caches and pos must be device arrays (they are written / replayed)")
    dev = [(_device(w, np.uint8), _check_fused(w, t, K), _device(b, np.float32)) for w, t, _, b in mats]
    args = _rope_args(q, pos, base, _rot_dims(hs, rot_dims), neox, freq_scale,
                     _device(freq_factors, np.float32), attn_factor)
    launch_decode_qkv_rope(_vector(x, K, "x"), dev, q.reshape(nh * hs), k_cache, v_cache, K, hs, args,
                           norm_weight=_device(norm_weight, np.float32), eps=eps, stream=stream)
    return q


def _gate_up_rows(w_gate, gate_type, w_up, up_type, K, F, what, check):
    """(gate bytes, up bytes, up type, first up row) of a SwiGLU pair on the device: separate gate and up
    tensors [F, row_bytes], or (``w_up`` None) Phi-3's fused gate_up [2F, row_bytes], up in rows F..2F-1.
    ``check`` validates the up tensor's type and row size; errors name ``what``."""
    w_g = _device(w_gate, np.uint8)
    if w_up is None:
        if w_gate.shape[0] != 2 * F:
            raise ValueError(f"{what}: fused gate_up needs 2F = {2 * F} rows, got {w_gate.shape[0]}")
        return w_g, w_g, gate_type, F
    up_type = check(w_up, up_type, K)
    if w_gate.shape[0] != F or w_up.shape[0] != F:
        raise ValueError(f"{what}: gate and up need F = {F} rows, got {w_gate.shape[0]} and {w_up.shape[0]}")
    return w_g, _device(w_up, np.uint8), up_type, 0


def decode_matvec_swiglu(x, w_gate, w_up, ggml_type_gate, ggml_type_up, K, out, *, norm_weight=None,
                         eps=1e-6, stream=0, mma=None, xq_out=None):
    r"""out[n] = silu(g_n) u_n, g = W_gate x', u = W_up x' (x' as in ``decode_matvec``), one launch.

    ``w_up=None``: the fused gate_up tensor of Phi-3 (``ffn_up``, 2F rows): ``w_gate`` holds the
    gate in rows 0..F-1 and up in rows F..2F-1 (F = out's length; ``ggml_type_up`` is ignored).
    ``mma`` as in ``decode_matvec``. ``xq_out`` (v21, where v20 serves the launch): out again, rounded to
    int8 blocks of 32 (uint32 [xq_words(F)]), which ``decode_matvec(xq=...)`` reads in place of x.
    """
    gt = _check_fused(w_gate, ggml_type_gate, K)
    F = tuple(out.shape)[-1]                       # (the simulator's shapes reject shape[-1])
    w_g, w_u, ut, up_row0 = _gate_up_rows(w_gate, gt, w_up, ggml_type_up, K, F, "decode_matvec_swiglu", _check_fused)
    use = _use_mma(mma, (gt, ut), K, "decode_matvec_swiglu") and xq_out is None
    extra = {} if xq_out is None else {"xq_out": _words(xq_out, xq_words(F), "xq_out")}
    launch = launch_decode_mma_swiglu if use else launch_decode_swiglu
    launch(_vector(x, K, "x"), w_g, gt, w_u, ut, up_row0, K, _vector(out, F, "out"),
           norm_weight=_device(norm_weight, np.float32), eps=eps, stream=stream, **extra)
    return out


# =============================================================================================
# v10: prefill (matrix-matrix) products with register micro-tiles, double-buffered tiles, the
# bias / residual add / SwiGLU in the epilogue. (v1-v9 above are unchanged.)
#
# Tiling. A block of NTH = groups * tx * ty threads owns an output tile of BM = ty * mt tokens x
# BN = tx * nt rows. Per K-step of KC = groups * kg weights the block decodes the W tile [BN, KC]
# once into shared memory (every token of the tile reuses it) and copies the x tile [BM, KC];
# thread (tx, ty) of group g accumulates the mt x nt products of tokens ty + ty_n i and rows
# tx + tx_n j over the group's kg weights of the step (g kg .. g kg + kg): groups split K inside
# the block, and group 0 adds the other groups' partial tiles at the end, in a fixed order (a
# deterministic split-K that needs neither atomics nor a workspace).
#
# Shared memory: both tiles are row-major along k with rows of KP = KC + 4 floats (16-byte
# aligned, KP / 4 odd). A thread reads 4 consecutive k of a row as one ld.shared.v4 (checked in
# the PTX: the arrays are declared 16-byte aligned), and the 8 lanes of a quarter warp read rows
# tx .. tx + 7, whose starts KP * tx mod 32 are 8 distinct multiples of 4 banks: conflict-free;
# lanes of one ty read the same x row (a broadcast). Per 4 weights a thread loads mt + nt float4
# and does 4 mt nt FMAs: 16 loads per 256 FMAs at 8 x 8 (v3: 2 scalar loads per 4 FMAs).
#
# Pipelining: two tile buffers. Step s computes from buffer s & 1 while the thread's share of step
# s + 1 (x values, and W decoded by decode8) is loaded into registers before the compute and
# written to buffer (s + 1) & 1 after it: one barrier per step (buffer (s + 1) & 1 was last read
# in step s - 1, before the previous barrier). Past the last step the loads are clamped to valid
# addresses and never used; weights past K are clamped to the row's last octet and meet x = 0;
# rows past N and tokens past T re-read row N - 1 / token T - 1 and are not stored.
#
# Registers: the micro-tile, the nt float4 of W of one 4-weight step and the prefetched values
# are cuda.local.arrays indexed only by constants in loops of constant trip count, which LLVM
# unrolls, so SROA keeps them in registers. Checked offline (PTX from numba-cuda, ptxas -v for
# sm_90): the 4-weight step is one basic block of 128 (8 x 4) or 256 (8 x 8) FMAs, 11-15 ld.shared.v4
# and ~8 other instructions; 126-128 registers for the 8 x 4 tiles under launch bounds (256, 2), so
# two blocks fit an SM; 161 for the 8 x 8 tile (168 SwiGLU), one block per SM; no spills. (The
# 8 x 8 plain kernel's epilogue loop is not unrolled: the micro-tile goes through a 256-byte stack
# frame once per block, after the K loop.) Indices into shared memory are uint64 (no negative-index
# wrapping; the constant offsets of the unrolled loads fold into the address); x and out are flat
# views indexed with uint32.
#
# Per K-step a thread also loads XPT = 8 x values and decodes (at most) one octet of W: ~300
# instructions against 1024 FMAs (128 x 128), 512 (128 x 64, 64 x 64) or 256 (64 x 32, whose groups
# have 8 weights a step): FMAs are roughly 75 %, 60 % and 45 % of the issued instructions.
# =============================================================================================
PrefillConfig = collections.namedtuple("PrefillConfig", "mt nt tx ty groups kg")
PrefillConfig.__doc__ = ("v10 tile: mt x nt (tokens x rows) outputs per thread, tx x ty threads per group "
                         "(tx along rows), groups splitting each K-step of groups * kg weights")

# The family, largest tile first (all 256 threads; shared memory for two buffers in brackets):
PREFILL_CONFIGS = (
    PrefillConfig(8, 8, 16, 16, 1, 16),     # 128 tokens x 128 rows, KC 16 [40 KiB]
    PrefillConfig(8, 4, 16, 16, 1, 16),     # 128 tokens x 64 rows, KC 16 [30 KiB]
    PrefillConfig(8, 4, 16, 8, 2, 16),      # 64 tokens x 64 rows, 2 groups, KC 32 [36 KiB]
    PrefillConfig(8, 4, 8, 8, 4, 8),        # 64 tokens x 32 rows, 4 groups, KC 32 [27 KiB]
)
# The tiles prefill_config chooses from: all but the 8 x 8 one, which measured slower than 128 x 64 at every
# shape of Qwen2.5-0.5B and Phi-3-mini on the H200 (fifth session, benchmarks/sweep_prefill_tiles.py: e.g.
# Qwen's gate/up SwiGLU 444 -> 368 us, Phi-3's attn_qkv 1740 -> 1484 us): it fits one block per SM.
PREFILL_AUTO = PREFILL_CONFIGS[1:]
# The simulator pays per thread and per FMA: small blocks (32 threads, 8 x 8 tiles, 2 groups).
SIM_PREFILL_CONFIG = PrefillConfig(2, 2, 4, 4, 2, 8)
PREFILL_BLOCKS_PER_SM = 2   # prefill_config takes the largest tile that still gives this many blocks per SM
SMEM_ALIGN = ptx.SHARED_ALIGN   # 16-byte aligned tiles (None in the simulator, which rejects alignment=)
# (threads, blocks per SM) for ptxas: at most 65536 / (256 * 2) = 128 registers for the 8 x 4 tiles, so two
# blocks fit an SM; the 8 x 8 tile keeps its registers (one block per SM)
LAUNCH_BOUNDS = {cfg: (256, 2) for cfg in PREFILL_CONFIGS[1:]}


def _jit_options(cfg):
    """cuda.jit options of a v10 kernel (the simulator's jit takes no launch_bounds)."""
    bounds = None if config.ENABLE_CUDASIM else LAUNCH_BOUNDS.get(tuple(cfg))
    return {"cache": JIT_CACHE, **({"launch_bounds": bounds} if bounds else {})}


def prefill_sizes(cfg):
    """(BM tokens, BN rows, KC weights per step, KP padded row, threads) of a v10 configuration."""
    mt, nt, tx, ty, g, kg = cfg
    return ty * mt, tx * nt, g * kg, g * kg + 4, g * tx * ty


def prefill_smem(cfg):
    """Bytes of shared memory of a configuration: two buffers of the x and W tiles."""
    bm, bn, _, kp, _ = prefill_sizes(cfg)
    return 2 * (bm + bn) * kp * 4


def _check_prefill_config(cfg, swiglu):
    mt, nt, tx, ty, g, kg = cfg
    bm, bn, kc, kp, nth = prefill_sizes(cfg)
    dt = bn * kc // 8                                   # octets of W per step
    ok = (kg % 4 == 0 and kc % 8 == 0 and nth % kc == 0 and (bm * kc) % nth == 0 and nth % bn == 0
          and (dt % nth == 0 or dt < nth) and (g - 1) * nth // g * mt * nt <= 2 * (bm + bn) * kp
          and prefill_smem(cfg) <= SMEM_LIMIT and (nt % 2 == 0 or not swiglu))
    if not ok:
        raise ValueError(f"matmul_prefill: config {tuple(cfg)} does not tile (kg % 4, KC % 8, threads % KC, "
                         f"threads % BN, the x and W shares per thread, the group reduction, 48 KiB of shared memory, "
                         f"even nt for SwiGLU)")


TileOctets = collections.namedtuple("TileOctets", "DT DPT ALL OSTEP")


@functools.lru_cache(maxsize=None)
def _tile_decoder(gate_type, up_type, BN, NTH, KC, swiglu):
    """The W-tile staging v10 and v11 share, as two device functions: ``tile_row(n0, N, up_row0)`` -> (the W
    row thread tid decodes, whether it is an up row) and ``decode_w(wga, wgb, wua, wub, row, is_up, k0, K, wn)``
    -> wn[8u:8u+8] = W[row, k0 + 8 (tid // BN + NTH / BN u) : + 8] for u < DPT (the thread's octets of the
    step's KC weights; clamped to the row's last octet). Tile row r = tid % BN is row n0 + r, or with the
    SwiGLU pair (r >= BN / 2) up row up_row0 + n0 + r - BN / 2; rows past N re-read row N - 1 (never stored).
    Threads tid >= BN KC / 8 decode nothing when the tile has fewer octets than threads. Also returned, for the
    kernels' staging of the decoded octets: ``TileOctets`` (DT octets a step, DPT per thread, ALL: every thread
    decodes, OSTEP octets between a thread's octets)."""
    DT = BN * KC // 8                   # octets of W per step, one decode8 each
    DPT = -(-DT // NTH)                 # ... per thread
    ALL_DECODE = DT >= NTH
    OSTEP, HALF = NTH // BN, BN // 2    # octets between a thread's octets; the first up row of a SwiGLU tile
    dec_g, dec_u = DECODERS[gate_type], DECODERS[up_type]

    @cuda.jit(device=True, inline=True)
    def tile_row(n0, N, up_row0):
        r = int32(cuda.threadIdx.x) % BN
        if swiglu and r >= HALF:
            return int32(up_row0 + min(n0 + r - HALF, N - 1)), True
        return int32(min(n0 + r, N - 1)), False

    @cuda.jit(device=True, inline=True)
    def decode_w(wga, wgb, wua, wub, row, is_up, k0, K, wn):
        tid = int32(cuda.threadIdx.x)
        if ALL_DECODE or tid < DT:
            for u in range(DPT):
                k = min(int32(k0 + 8 * (tid // BN + OSTEP * u)), K - 8)
                if is_up:
                    dec_u(wua, wub, row, k, wn, 8 * u)
                else:
                    dec_g(wga, wgb, row, k, wn, 8 * u)

    return tile_row, decode_w, TileOctets(DT, DPT, ALL_DECODE, OSTEP)


@functools.lru_cache(maxsize=None)
def _prefill_kernel(gate_type, up_type, cfg, swiglu):
    """v10 kernel for one configuration. ``swiglu`` False: out (+)= x W^T (+ b) over W = gate (of
    ``gate_type``; up_type is ignored). True: tile rows [0, BN/2) are gate rows and [BN/2, BN) the
    matching up rows, so thread column j < nt/2 (row tx + TX j) pairs with column j + nt/2 and the
    epilogue writes out[t, f] = silu(g) u. Every size and type is a compile-time constant.

    Thread roles per step: x value u of thread tid is x[t0 + tid // KC + u NTH / KC, k0 + tid % KC]
    (16 or 32 consecutive threads read one token's consecutive weights); thread tid < BN KC / 8
    decodes octet tid // BN (+ u NTH / BN) of tile row tid % BN (a warp: 32 consecutive rows)."""
    _check_prefill_config(cfg, swiglu)
    MT, NT, TX, TY, G, KG = cfg
    BM, BN, KC, KP, NTH = prefill_sizes(cfg)
    TG = TX * TY                        # threads per group
    XS = BM * KP                        # a buffer: the x tile [BM, KP], then the W tile [BN, KP]
    BUF = XS + BN * KP                  # floats per buffer
    tile_row, decode_w, (DT, DPT, ALL_DECODE, OROWS) = _tile_decoder(gate_type, up_type, BN, NTH, KC, swiglu)
    XPT = BM * KC // NTH                # x values per thread per step
    XROWS = NTH // KC                   # token rows between a thread's x values (OROWS: octets between its octets)
    HALF = BN // 2
    SMF, ACC, WF, WN = 2 * BUF, MT * NT, 4 * NT, 8 * DPT   # array sizes (literals for the typing)
    OUT_COLS = NT // 2 if swiglu else NT

    @cuda.jit(device=True, inline=True)
    def load_x(x, T, K, t0, k0, xr):
        # xr[u] = x[t0 + tid // KC + XROWS u, k0 + tid % KC]: 0 past K, token rows past T re-read row T - 1
        tid = int32(cuda.threadIdx.x)
        k = int32(k0 + tid % KC)
        kk = min(k, K - 1)
        for u in range(XPT):
            t = min(int32(t0 + tid // KC + XROWS * u), T - 1)
            v = x[uint32(t * K + kk)]
            xr[u] = v if k < K else float32(0.0)

    @cuda.jit(device=True, inline=True)
    def stage(sm, base, xr, wn):
        # the prefetched values into the buffer at sm[base:] (a thread's positions are base + constants)
        tid = int32(cuda.threadIdx.x)
        xat = uint64(base + (tid // KC) * KP + tid % KC)
        for u in range(XPT):
            sm[xat + uint64(XROWS * KP * u)] = xr[u]
        if ALL_DECODE or tid < DT:
            wat = uint64(base + XS + (tid % BN) * KP + 8 * (tid // BN))
            for u in range(DPT):
                for i in range(8):
                    sm[wat + uint64(8 * OROWS * u + i)] = wn[8 * u + i]

    @cuda.jit(device=True, inline=True)
    def compute(sm, xb, wb, acc, wf):
        # acc[i NT + j] += sum_k x[ty + TY i, k] W[tx + TX j, k] over the group's KG weights of the step;
        # xb, wb: the thread's first x row and W row in the buffer, at the group's slice; k ascending
        for q in range(KG // 4):
            for j in range(NT):
                at = wb + uint64(TX * KP * j + 4 * q)
                w0, w1, w2, w3 = sm[at], sm[at + uint64(1)], sm[at + uint64(2)], sm[at + uint64(3)]
                wf[4 * j], wf[4 * j + 1], wf[4 * j + 2], wf[4 * j + 3] = w0, w1, w2, w3
            for i in range(MT):
                at = xb + uint64(TY * KP * i + 4 * q)
                a0, a1, a2, a3 = sm[at], sm[at + uint64(1)], sm[at + uint64(2)], sm[at + uint64(3)]
                for j in range(NT):
                    s = acc[i * NT + j]
                    s += a0 * wf[4 * j]
                    s += a1 * wf[4 * j + 1]
                    s += a2 * wf[4 * j + 2]
                    s += a3 * wf[4 * j + 3]
                    acc[i * NT + j] = s

    @cuda.jit(device=True, inline=True)
    def reduce_groups(sm, g, lt, acc):
        # groups 1..G-1 leave their partial tiles in shared memory (the buffers are free after the last
        # barrier); group 0 adds them in the order g = 1, 2, ..: deterministic
        if g > 0:
            at = uint64((g - 1) * ACC * TG + lt)
            for m in range(ACC):
                sm[at + uint64(m * TG)] = acc[m]
        cuda.syncthreads()
        if g == 0:
            for h in range(G - 1):
                for m in range(ACC):
                    acc[m] += sm[uint64((h * ACC + m) * TG + lt)]

    @cuda.jit(device=True, inline=True)
    def store(acc, t0, n0, T, N, tx, ty, bias, has_bias, accumulate, out):
        # out[t, n] (flat [T N]): v (+ bias[n]), += with accumulate; SwiGLU: silu(gate) * up (columns j, j + NT/2)
        for i in range(MT):
            t = int32(t0 + ty + TY * i)
            for j in range(OUT_COLS):
                n = int32(n0 + tx + TX * j)
                if t < T and n < N:
                    v = acc[i * NT + j]
                    at = uint32(t * N + n)
                    if swiglu:
                        out[at] = _silu(v) * acc[i * NT + j + NT // 2]
                    else:
                        v = v + bias[n] if has_bias else v
                        out[at] = out[at] + v if accumulate else v

    @cuda.jit(**_jit_options(cfg))
    def prefill(x, T, K, wga, wgb, wua, wub, up_row0, N, bias, has_bias, accumulate, out):
        # x flat [T K]; out flat [T N] (plain) or [T F], F = N (swiglu); block (bx, by): rows bx BN
        # (features bx BN / 2) .., tokens by BM ..
        sm = cuda.shared.array(SMF, float32, alignment=SMEM_ALIGN)
        acc = cuda.local.array(ACC, float32)
        wf = cuda.local.array(WF, float32)
        xr = cuda.local.array(XPT, float32)
        wn = cuda.local.array(WN, float32)
        tid = int32(cuda.threadIdx.x)
        g, lt = tid // TG, tid % TG
        tx, ty = lt % TX, lt // TX
        n0 = int32(cuda.blockIdx.x * (HALF if swiglu else BN))
        t0 = int32(cuda.blockIdx.y * BM)
        row, is_up = tile_row(n0, N, up_row0)         # the W row this thread decodes (if tid < DT)
        xo = ty * KP + g * KG                         # the thread's first x row and W row in a buffer
        wo = XS + tx * KP + g * KG
        for m in range(ACC):
            acc[m] = float32(0.0)
        load_x(x, T, K, t0, 0, xr)
        decode_w(wga, wgb, wua, wub, row, is_up, 0, K, wn)
        stage(sm, 0, xr, wn)
        cuda.syncthreads()
        steps = int32((K + KC - 1) // KC)
        s = int32(0)
        while s < steps:
            base = (s & 1) * BUF
            k1 = int32(s * KC + KC)                   # the next step (past K on the last: clamped, unused)
            load_x(x, T, K, t0, k1, xr)
            decode_w(wga, wgb, wua, wub, row, is_up, k1, K, wn)
            compute(sm, uint64(base + xo), uint64(base + wo), acc, wf)
            stage(sm, BUF - base, xr, wn)
            cuda.syncthreads()
            s = int32(s + 1)
        if G > 1:
            reduce_groups(sm, g, lt, acc)
        if g == 0:
            store(acc, t0, n0, T, N, tx, ty, bias, has_bias, accumulate, out)

    return prefill


def prefill_grid(cfg, T, N, swiglu=False):
    """(blocks along rows, blocks along tokens): ceil(N / BN) x ceil(T / BM); a SwiGLU tile covers
    BN / 2 features (N = F). E.g. T = 512 at 4864 x 896 (128 x 64 tiles): 76 x 4 = 304 blocks."""
    bm, bn, *_ = prefill_sizes(cfg)
    rows = bn // 2 if swiglu else bn
    return -(-N // rows), -(-T // bm)


def prefill_config(T, N, swiglu=False):
    """The largest tile of PREFILL_AUTO with at least PREFILL_BLOCKS_PER_SM blocks per SM, else the
    smallest (which splits K four ways inside the block). At T = 512 on 132 SMs (264 blocks wanted):
    9216 and 16384 rows -> 128 x 64 (576, 1024 blocks); 4864 rows -> 128 x 64 (304); the 4864-feature
    SwiGLU -> 128 x 64 (32 gate + 32 up rows a tile: 608); 3072 rows -> 64 x 64 (384); 896 and 128
    rows -> 64 x 32 (224 and 32 blocks: the 128-row product is too small to fill the GPU; its 4 groups
    per block split K). The simulator gets SIM_PREFILL_CONFIG."""
    return _largest_filling(PREFILL_AUTO, prefill_grid, PREFILL_BLOCKS_PER_SM, SIM_PREFILL_CONFIG, T, N, swiglu)


def _largest_filling(configs, grid, blocks_per_sm, sim_config, T, N, swiglu):
    """The first of ``configs`` (largest tile first) whose ``grid(cfg, T, N, swiglu)`` has at least
    ``blocks_per_sm`` blocks per SM, else the last; ``sim_config`` in the simulator (no SMs to fill)."""
    sms = _sm_count()
    if not sms:
        return sim_config
    for cfg in configs:
        bx, by = grid(cfg, T, N, swiglu)
        if bx * by >= blocks_per_sm * sms:
            return cfg
    return configs[-1]


def launch_matmul_prefill(x, w_raw, ggml_type, K, out, bias=None, accumulate=False, config=None, stream=0,
                          mma=False):
    """v10 (v11 with ``mma``) on device arrays: out [T, N] (+)= x [T, K] W^T (+ bias), a ``PrefillProduct``
    used once (grid: ``prefill_grid`` / ``mma_grid``)."""
    T, N = out.shape
    if T * N:                                         # (a grid of 0 blocks is a launch error)
        PrefillProduct(w_raw, ggml_type, K, bias=bias, accumulate=accumulate, config=config, mma=mma)(
            x.reshape(T * K), out.reshape(T * N), T, stream)


def launch_matmul_prefill_swiglu(x, w_gate, gate_type, w_up, up_type, up_row0, K, out, config=None, stream=0,
                                 mma=False):
    """v10 (v11 with ``mma``) SwiGLU pair on device arrays: out [T, F] = silu(x W_gate^T) * (x W_up[up_row0:]^T)."""
    T, F = out.shape
    if T * F:
        PrefillProduct(w_gate, gate_type, K, up=(w_up, up_type, up_row0), config=config, mma=mma)(
            x.reshape(T * K), out.reshape(T * F), T, stream)


class PrefillProduct:
    """v10 or v11 for one weight matrix with everything that does not depend on the tokens decided once: the
    views of W, the bias arguments, and per token count T the tile (``prefill_config``), kernel and grid.
    Calling it with flat device buffers only launches. For the prefill fast path
    (``llama_beta/backends/cuda_prefill.py``), where host time per launch is what bounds a small model:
    on the H200 ``matmul_prefill``'s checks and views cost 140-180 us of host time per launch, about as
    much as the GPU time of the launch, on top of Numba's own typing and marshalling of the arguments.

    Plain: out [T, N] (+)= x [T, K] W^T (+ b). With ``up = (w_up, up_type, up_row0)``, the SwiGLU pair:
    out [T, F] = silu(x W_gate^T) * (x W_up[up_row0:]^T), F = ``w_raw``'s rows (or ``up_row0`` when
    w_up is w_raw: Phi-3's fused gate_up). ``mma``: the kernel, v11 on the tensor cores (float16 operands,
    float32 sums) or v10 (float32); default v11 where supported unless ``LLAMA_BETA_PREFILL_MMA=0``.
    ``config``: one tile for every T (a PrefillConfig for v10, an MmaConfig for v11; default:
    ``prefill_config`` / ``mma_config`` of T). ``split``: v11's blocks per tile along K (default ``mma_split``).
    ``x16``: v11 reads x as float16 pairs (uint32 [T K / 2], ``launch_pack_f16``) instead of float32: the same
    bits, half the bytes. ``f16w``: v23 (W decoded once to a float16 scratch, then a GEMM; x16 in v23's tile
    order). ``out16`` (SwiGLU pairs only): OUT_PAIRS / OUT_TILES, out_flat is uint32 and gets the next product's
    x16 (plain pairs, or v23's tile order) instead of float32. Arguments are checked as ``matmul_prefill`` checks
    them. (The launch helpers above use one too, so the kernel's arguments are spelled out in one place.)"""

    def __init__(self, w_raw, ggml_type, K, *, bias=None, accumulate=False, up=None, config=None, mma=None,
                 split=None, x16=False, f16w=False, out16=OUT_F32):
        gate_type = _check(w_raw, ggml_type, K)
        if not _is_device(w_raw) or (bias is not None and not _is_device(bias)):
            raise ValueError("PrefillProduct: the weight and bias must be device arrays")
        self.K, self.swiglu, self.accumulate = K, up is not None, accumulate and up is None
        ga, gb = _views(w_raw, gate_type)
        if up is None:
            ua, ub, up_type, up_row0, self.N = ga, gb, gate_type, 0, w_raw.shape[0]
        else:
            w_up, up_type, up_row0 = up
            up_type = _check(w_up, up_type, K)
            ua, ub = _views(w_up, up_type)
            self.N = up_row0 if w_up is w_raw else w_raw.shape[0]        # F
            if w_up.shape[0] - up_row0 < self.N:
                raise ValueError(f"PrefillProduct: up needs {self.N} rows from {up_row0}, has {w_up.shape[0]}")
        if bias is not None and tuple(bias.shape) != (self.N,):
            raise ValueError(f"PrefillProduct: bias must be [{self.N}], got {tuple(bias.shape)}")
        self._types, self._weights, self._bias = (gate_type, up_type), (ga, gb, ua, ub, up_row0), bias
        self.mma = (PREFILL_MMA and mma_supported()) if mma is None else bool(mma)     # v11, else v10
        self.x16, self.f16w = bool(x16), bool(f16w)
        _check_x16(self.x16, self.mma, "PrefillProduct")
        _check_f16w(self.f16w, self.x16, K, "PrefillProduct")
        self.out16 = int(out16)
        if self.out16 and not (up is not None and self.mma and self.N % (32 if out16 == OUT_TILES else 2) == 0):
            raise ValueError(f"PrefillProduct: float16-pair outputs (out16) are for a SwiGLU pair on the tensor cores "
                             f"(v11, v23) of an even number of features (a multiple of 32 in v23's tile order), got "
                             f"{self.N} features")
        self._config = None if config is None else (MmaConfig if self.mma else PrefillConfig)(*config)
        self._split = split                                               # v11 split-K (default: mma_split)
        self._by_tokens = {}                                              # T -> (kernel, grid, threads, extra)

    def __call__(self, x_flat, out_flat, T: int, stream=0) -> None:
        """x_flat: device float32 [>= T K] (x row-major; with ``x16`` uint32 [>= T K / 2], float16 pairs),
        out_flat: device float32 [>= T N]."""
        launch = self._by_tokens.get(T)
        if launch is None:
            launch = self._by_tokens[T] = self._launch_for(T)
        kern, grid, threads, split_args, w16 = launch
        if self.mma:
            _check_x_layout(x_flat, "PrefillProduct")
        has = self._bias is not None
        if self.f16w:                                     # v23: W16 = W as float16 pairs, then the GEMM
            rows, bn, scratch, smem = w16
            _check_tile_words(x_flat, T, self.K, "PrefillProduct")
            launch_f16w(self._weights[:4], self._types, self._weights[4], self.N, self.K, scratch, 0, rows, bn,
                        self.swiglu, stream)
            launch_with_shared(kern, grid, threads, stream, smem, x_flat, T, self.K, scratch, self.N,
                               self._bias if has else out_flat, has, self.accumulate, out_flat, *split_args)
            return
        kern[grid, threads, stream](x_flat, T, self.K, *self._weights, self.N, self._bias if has else out_flat,
                                    has, self.accumulate, out_flat, *split_args)

    def _launch_for(self, T: int):
        """(kernel, grid, threads, extra arguments) for T tokens: v11 (tensor cores; split-K workspace and
        counters) or v10, tile from the token count."""
        if self.f16w:
            cfg = self._config or f16w_config(T, self.N, self.swiglu)
            split = self._split or F16W_SPLIT or mma_split(cfg, T, self.N, self.K, self.swiglu)
            bx, by = mma_grid(cfg, T, self.N, self.swiglu)
            bn = mma_sizes(cfg)[1]
            return (_gemm_kernel(cfg, self.swiglu, split, None, self.out16), (by, bx, split), mma_sizes(cfg)[2],
                    _split_args(cfg, split, bx, by), (bx * bn, bn, f16w_scratch(bx * bn * self.K // 2), f16w_smem(cfg)))
        if self.mma:
            cfg = self._config or mma_config(T, self.N, self.K, self.swiglu)
            split = self._split or mma_split(cfg, T, self.N, self.K, self.swiglu)
            bx, by = mma_grid(cfg, T, self.N, self.swiglu)
            return (_mma_kernel(*self._types, cfg, self.swiglu, split, self.x16, self.out16), (bx, by, split),
                    mma_sizes(cfg)[2],
                    _split_args(cfg, split, bx, by), None)
        cfg = self._config or prefill_config(T, self.N, self.swiglu)
        return (_prefill_kernel(*self._types, cfg, self.swiglu), prefill_grid(cfg, T, self.N, self.swiglu),
                prefill_sizes(cfg)[4], (), None)


# =============================================================================================
# v11: the prefill product on the tensor cores (mma.sync m16n8k16, float16 inputs, float32 sums).
#
# v10 is float32 FMA on the CUDA cores: 15-24 TFLOP/s at Qwen2.5-0.5B's FFN shapes, so a 512-token
# prefill spends ~16 of its ~22 GPU milliseconds in two products. The H200's tensor cores multiply
# float16 matrices many times faster; Numba has no API for them, so ``numba_kernels/ptx.py`` emits the
# PTX instruction (``ptx.mma_f16``) and the float32 -> float16x2 conversion (``ptx.pack_f16x2``).
#
# Numerics: x and the decoded weights are rounded to float16 (11 significant bits; range 6e-5 ..
# 65504) before the product; products are exact and summed in float32. So the result equals the
# float32 product of the ROUNDED operands up to float32 summation order (the tests compare against
# exactly that), and differs from v10 by the rounding of the operands: relative 2^-11 per term. The
# issue allows half precision for the prefill "where accuracy allows"; the real model's greedy tokens
# are checked against the NumPy backend on the GPU (``benchmarks/real_model_checks.py``).
# ``LLAMA_BETA_PREFILL_MMA=0`` keeps v10 (float32 throughout).
#
# Tiling. A block of NTH = 32 wm wn threads owns BM = 16 wm mi tokens x BN = 8 wn nj rows; warp (wr, wc)
# owns mi m16-tiles of tokens x nj n8-tiles of rows, mi nj accumulators of 4 floats per lane. Per K-step
# of KC = 32 ks weights (2 ks k16 slices) the block stages the x tile [BM, KC] and the decoded W tile
# [BN, KC] in shared memory as float16 pairs (one uint32 = two consecutive k), rows padded to KPW =
# 16 ks + 4 words (4 mod 32): the 32 lanes of a fragment load read words (row g) KPW + t, g < 8, t < 4,
# which fall in 32 distinct banks. Per k16 slice a warp loads 4 mi + 2 nj words per lane and issues
# mi nj mma. Staging is v10's: x pairs (two consecutive k of one token per thread, 16 ks threads per
# token row: coalesced), decode8 octets (thread tid decodes row tid % BN, octets tid // BN + NTH / BN u),
# two buffers, the next step's loads in registers before the current step's mma, one barrier a step.
#
# Split-K (``mma_split``): the products with few rows and long rows (W_down: 896 x 4864) have too few
# tiles to fill 132 SMs with large tiles, and small tiles re-decode W for every 32 tokens. Grid z then cuts
# the K-steps into ``split`` stretches; each block leaves its partial tile in a workspace and the last
# block of the tile (an atomic counter per tile) adds the parts in order z = 0, 1, .. and runs the
# epilogue: deterministic, one launch, counters reset by the block that used them (graph-replay safe).
#
# Row order for the SwiGLU epilogue: the warp's n8-tile j covers tile rows
#   row_of(wc, j) = (j // H) (BN / 2) + wc H 8 + (j % H) 8,   H = nj / 2,
# so tiles j < H hold gate rows and tile j + H the up rows of the same features, in the same lanes and
# registers: the epilogue writes silu(gate) up without an exchange. (For plain products it is only a
# permutation of the block's rows.)
# =============================================================================================
MmaConfig = collections.namedtuple("MmaConfig", "wm wn mi nj ks")
MmaConfig.__doc__ = ("v11 tile: wm x wn warps, each mi m16-tiles (tokens) x nj n8-tiles (rows); K-steps of "
                     "32 ks weights")
# The tiles mma_config chooses from, by the shape of the product. Measured on the H200 at T = 512
# (benchmarks/sweep_prefill_tiles.py, twelve tiles per shape; sixth session): the largest tile wins wherever
# the grid has a few blocks per SM, and small-N products want more blocks but long K-steps.
MMA_WIDE = MmaConfig(4, 2, 2, 4, 1)      # 128 tokens x 64 rows, 256 threads, K-steps of 32 [30 KiB]:
#                                          gate/up + SwiGLU 137 us (65 TFLOP/s; 64x64: 187), 4864 x 896 100 us
MMA_MID = MmaConfig(4, 2, 2, 2, 1)       # 128 x 32, K-steps of 32 [25 KiB]: 896 x 896 29 us (64x64: 41)
MMA_LONG = MmaConfig(4, 4, 2, 2, 1)      # 128 x 64, 512 threads [30 KiB], with mma_split 2: 896 x 4864 Q4_K
#                                          112 us, Q6_K 123 (unsplit 186 / 215; 64x32/k64: 141 / 169);
#                                          Phi-3's 3072 x 8192 Q6_K 705 (best: MMA_WIDE split 2, 646)
MMA_NARROW = MmaConfig(2, 2, 1, 2, 4)    # 32 x 32, 128 threads, K-steps of 128 [34 KiB]: 128 x 896 19 us
MMA_CONFIGS = (MMA_WIDE, MMA_MID, MMA_LONG, MMA_NARROW)
SIM_MMA_CONFIG = MmaConfig(1, 1, 1, 2, 1)   # 16 x 16, one warp (the simulator pays per thread)
MMA_BLOCKS_PER_SM = 2                    # mma_config / mma_split want this many blocks per SM
MMA_MAX_SPLIT = 2                        # mma_split: at most this many blocks along K per tile (4: slower) ...
MMA_MIN_STEPS = 8                        # ... each with at least this many K-steps
PREFILL_MMA = os.environ.get("LLAMA_BETA_PREFILL_MMA", "1") != "0"


def mma_sizes(cfg):
    """(BM tokens, BN rows, threads) of a v11 configuration."""
    wm, wn, mi, nj, _ = cfg
    return 16 * wm * mi, 8 * wn * nj, 32 * wm * wn


def mma_smem(cfg):
    """Bytes of shared memory of a v11 configuration: two buffers of [BM + BN, 16 ks + 4] words."""
    bm, bn, _ = mma_sizes(cfg)
    return 2 * (bm + bn) * (16 * cfg.ks + 4) * 4


def mma_supported() -> bool:
    """v11 needs mma.sync with float16 inputs (compute capability 8.0+), or the simulator's stand-in."""
    if config.ENABLE_CUDASIM:
        return True
    return cuda.is_available() and cuda.get_current_device().compute_capability >= (8, 0)


def _check_mma_config(cfg):
    bm, bn, nth = mma_sizes(cfg)
    pc, dt = 16 * cfg.ks, 4 * cfg.ks * bn          # x pairs per tile row, W octets per step
    ok = (cfg.nj % 2 == 0 and cfg.ks >= 1 and nth % pc == 0 and (bm * pc) % nth == 0 and nth % bn == 0
          and (dt % nth == 0 or dt < nth) and mma_smem(cfg) <= SMEM_LIMIT)
    if not ok:
        raise ValueError(f"matmul_prefill: mma config {tuple(cfg)} does not tile (even nj, x pairs and W octets "
                         f"per thread, 48 KiB of shared memory)")


@functools.lru_cache(maxsize=None)
def _mma_coords(WN, BM, BN, swiglu):
    """Where a thread of a tensor-core tile (v11, v23; warps wm x WN) stands, as a device function ``coords(bx, by)``
    -> (wr, wc, g, t, n0, t0): its warp's row and column in the block, its lane's group g and thread t in the mma
    fragments, the tile's first output row (feature for SwiGLU) and first token."""
    @cuda.jit(device=True, inline=True)
    def coords(bx, by):
        tid = int32(cuda.threadIdx.x)
        warp, lane = tid // 32, tid % 32
        return (warp // WN, warp % WN, lane // 4, lane % 4, int32(bx * (BN // 2 if swiglu else BN)),
                int32(by * BM))
    return coords


@functools.lru_cache(maxsize=None)
def _mma_epilogue(MI, NJ, BN, NTH, swiglu, split, out16=OUT_F32):
    """The end of a tensor-core tile (v11, v23), for warps of MI m16 x NJ n8 accumulator tiles in a block of NTH
    threads and BN tile rows: ``row_of(wc, j)`` (the tile row of the warp's n8-tile j, the SwiGLU pairing below),
    ``store(acc, t0, n0, T, N, wr, wc, g, t, bias, has_bias, accumulate, out)`` (the epilogues) and
    ``finish_split(acc, ws, counters, last, z)`` (split-K: True in the block that adds the parts). ``out16``
    (SwiGLU only): out is uint32 and gets float16 pairs (lane (g, t) holds features 2t, 2t + 1 of a token: one
    pair), plain [T, N / 2] or in v23's tile order (``_x16_word``)."""
    H = NJ // 2
    ACC = MI * NJ * 4
    SPLIT = split
    if out16 and not swiglu:
        raise ValueError("matmul: float16-pair outputs are for the SwiGLU launch")

    @cuda.jit(device=True, inline=True)
    def row_of(wc, j):
        return (j // H) * (BN // 2) + wc * (H * 8) + (j % H) * 8

    @cuda.jit(device=True, inline=True)
    def store_pairs(acc, t0, n0, T, N, wr, wc, g, t, out):
        # SwiGLU into float16 pairs: features n, n + 1 (n = 2t + ..., even; N even) of tokens g and g + 8
        hk = N // 2
        for i in range(MI):
            for j in range(H):
                for h in range(2):
                    tok = int32(t0 + wr * MI * 16 + i * 16 + g + 8 * h)
                    n = int32(n0 + row_of(wc, j) + 2 * t)
                    if tok < T and n < N:
                        m, u = (i * NJ + j) * 4 + 2 * h, (i * NJ + j + H) * 4 + 2 * h
                        out[_x16_word(tok * hk + n // 2, hk, N if out16 == OUT_TILES else 0)] = ptx.pack_f16x2(
                            _silu(acc[m]) * acc[u], _silu(acc[m + 1]) * acc[u + 1])

    @cuda.jit(device=True, inline=True)
    def store(acc, t0, n0, T, N, wr, wc, g, t, bias, has_bias, accumulate, out):
        # lane (g, t) of tile (i, j) holds out[token g (+8), tile row 2t (+1)]; SwiGLU pairs tile j with j + H
        if out16:
            store_pairs(acc, t0, n0, T, N, wr, wc, g, t, out)
            return
        for i in range(MI):
            for j in range(H if swiglu else NJ):
                for r in range(4):
                    tok = int32(t0 + wr * MI * 16 + i * 16 + g + 8 * (r // 2))
                    n = int32(n0 + row_of(wc, j) + 2 * t + r % 2)
                    if tok < T and n < N:
                        v = acc[(i * NJ + j) * 4 + r]
                        at = uint32(tok * N + n)
                        if swiglu:
                            out[at] = _silu(v) * acc[(i * NJ + j + H) * 4 + r]
                        else:
                            v = v + bias[n] if has_bias else v
                            out[at] = out[at] + v if accumulate else v

    @cuda.jit(device=True, inline=True)
    def finish_split(acc, ws, counters, last, z):
        # every block of a tile leaves its partial sums in ws[z, tile]; the last of the tile's SPLIT blocks to
        # finish (one atomic counter per tile) adds the SPLIT partials in the order z = 0, 1, .. (deterministic)
        # and resets the counter for the next launch. Returns True in that block only.
        tid = int32(cuda.threadIdx.x)
        tile = int32(cuda.blockIdx.x + cuda.gridDim.x * cuda.blockIdx.y)
        tiles = int32(cuda.gridDim.x * cuda.gridDim.y)
        at = uint32(((z * tiles + tile) * NTH + tid) * ACC)
        for m in range(ACC):
            ws[at + uint32(m)] = acc[m]
        cuda.threadfence()                            # the partials are visible before the count
        cuda.syncthreads()
        if tid == 0:
            last[0] = cuda.atomic.add(counters, tile, 1)
        cuda.syncthreads()
        if last[0] != SPLIT - 1:
            return False
        cuda.threadfence()
        for m in range(ACC):
            acc[m] = float32(0.0)
        for z in range(SPLIT):
            at = uint32(((z * tiles + tile) * NTH + tid) * ACC)
            for m in range(ACC):
                acc[m] += ws[at + uint32(m)]
        if tid == 0:
            counters[tile] = 0
        return True

    return row_of, store, finish_split


@functools.lru_cache(maxsize=None)
def _mma_tile(gate_type, up_type, cfg, swiglu, split=1, x16=False, out16=OUT_F32):
    """v11's work for one output tile, as a device function ``tile(sm, last, x, T, K, wga, wgb, wua, wub, up_row0,
    N, bias, has_bias, accumulate, out, ws, counters, bx, by, z)`` (block (bx, by, z) of the product's grid;
    ``sm``: the block's shared uint32 [smem words], ``last``: shared int32 [1]), and the shared words it needs.
    ``x16``: x comes already rounded to float16, as uint32 pairs [T K / 2] (``launch_pack_f16``: the same
    ``cvt.rn`` the staging applies to float32 x, so the same bits), half the bytes every tile reads.
    Arguments and epilogues are v10's (``_prefill_kernel``) plus the split-K workspace ``ws`` and tile
    ``counters`` (read only when ``split`` > 1: grid z = split, see ``finish_split``). The kernels below wrap
    it: one product per launch (``_mma_kernel``), or Q, K and V in one launch (``_mma_qkv_kernel``)."""
    _check_mma_config(cfg)
    WM, WN, MI, NJ, KS = cfg
    BM, BN, NTH = mma_sizes(cfg)
    KC = 32 * KS                         # weights per K-step
    PC = KC // 2                         # float16 pairs (words) per tile row
    KPW = PC + 4                         # padded row: 4 mod 32 words apart, fragment loads conflict-free
    XW = BM * KPW                        # words of the x tile in a buffer; the W tile follows
    BUF = XW + BN * KPW                  # words per buffer
    PAIRS = BM * PC // NTH               # x pairs a thread stages per step
    PROWS = NTH // PC                    # token rows between a thread's pairs
    tile_row, decode_w, (DT, DPT, ALL_DECODE, OSTEP) = _tile_decoder(gate_type, up_type, BN, NTH, KC, swiglu)
    ACC = MI * NJ * 4
    SMW, XR, WN8 = 2 * BUF, (PAIRS if x16 else 2 * PAIRS), 8 * DPT
    XDT = uint32 if x16 else float32     # x as prefetched: float16 pairs, or two floats a pair
    QUADS = PC // 4 if x16 else PC // 2  # 16-byte loads per token row and K-step (4 pairs x16, 2 pairs float32) ...
    VEC = (BM * QUADS) % NTH == 0 and NTH % QUADS == 0   # ... that the threads share evenly
    VLOADS = BM * QUADS // NTH           # 16-byte loads a thread issues per K-step
    VROWS = NTH // QUADS                 # token rows between them
    SPLIT = split

    row_of, store, finish_split = _mma_epilogue(MI, NJ, BN, NTH, swiglu, split, out16)
    coords = _mma_coords(WN, BM, BN, swiglu)

    if x16:
        @cuda.jit(device=True, inline=True)
        def read_pair(x, at, inside, xr, u):
            # the float16 pair of x's flat floats at, at + 1 (a word of the pairs): xr[u]
            w = x[at >> uint64(1)]
            xr[u] = w if inside else uint32(0)

        @cuda.jit(device=True, inline=True)
        def x_word(xr, u):
            return xr[u]
    else:
        @cuda.jit(device=True, inline=True)
        def read_pair(x, at, inside, xr, u):
            # x's flat floats at, at + 1: xr[2u], xr[2u + 1]
            a, b = x[at], x[at + uint64(1)]
            xr[2 * u] = a if inside else float32(0.0)
            xr[2 * u + 1] = b if inside else float32(0.0)

        @cuda.jit(device=True, inline=True)
        def x_word(xr, u):
            return ptx.pack_f16x2(xr[2 * u], xr[2 * u + 1])

    if VEC:
        EL = 8 if x16 else 4             # values of x (k) one 16-byte load brings: 4 float16 pairs, or 4 floats
        SH = 1 if x16 else 0             # the array index of x's flat value at is at >> SH
        load4 = ptx.load_u32x4 if x16 else ptx.load_f32x4
        ZERO = XDT(0)

        @cuda.jit(device=True, inline=True)
        def load_x(x, T, K, t0, k0, xr):
            # load v of this thread: x[t0 + tid // QUADS + VROWS v, k0 + EL (tid % QUADS) ..+ EL] in one
            # ld.global.nc.v4 (K % 8 == 0 and 16-byte aligned rows: ``_check_x_layout``), 0 past K
            tid = int32(cuda.threadIdx.x)
            k = int32(k0 + EL * (tid % QUADS))
            inside = k < K
            kk = min(k, K - EL)
            for v in range(VLOADS):
                t = min(int32(t0 + tid // QUADS + VROWS * v), T - 1)
                a, b, c, d = load4(x, uint64(t * K + kk) >> uint64(SH))
                xr[4 * v] = a if inside else ZERO
                xr[4 * v + 1] = b if inside else ZERO
                xr[4 * v + 2] = c if inside else ZERO
                xr[4 * v + 3] = d if inside else ZERO

        PPL = EL // 2                    # float16 pairs a load brings

        @cuda.jit(device=True, inline=True)
        def stage_x(sm, base, xr):
            tid = int32(cuda.threadIdx.x)
            xat = uint32(base + (tid // QUADS) * KPW + PPL * (tid % QUADS))
            for v in range(VLOADS):
                for i in range(PPL):
                    sm[xat + uint32(VROWS * KPW * v + i)] = x_word(xr, PPL * v + i)
    else:
        @cuda.jit(device=True, inline=True)
        def load_x(x, T, K, t0, k0, xr):
            # pair u of this thread: x[t0 + tid // PC + PROWS u, k0 + 2 (tid % PC) + (0, 1)] (read_pair): 0 past K
            tid = int32(cuda.threadIdx.x)
            k = int32(k0 + 2 * (tid % PC))
            kk = min(k, K - 2)
            for u in range(PAIRS):
                t = min(int32(t0 + tid // PC + PROWS * u), T - 1)
                read_pair(x, uint64(t * K + kk), k < K, xr, u)   # 64-bit: no truncation mask per load

        @cuda.jit(device=True, inline=True)
        def stage_x(sm, base, xr):
            tid = int32(cuda.threadIdx.x)
            xat = uint32(base + (tid // PC) * KPW + tid % PC)
            for u in range(PAIRS):
                sm[xat + uint32(PROWS * KPW * u)] = x_word(xr, u)

    @cuda.jit(device=True, inline=True)
    def stage(sm, base, xr, wn):
        # the prefetched values, as float16 pairs, into the buffer at sm[base:]
        tid = int32(cuda.threadIdx.x)
        stage_x(sm, base, xr)
        if ALL_DECODE or tid < DT:
            wat = uint32(base + XW + (tid % BN) * KPW + 4 * (tid // BN))
            for u in range(DPT):
                for i in range(4):
                    sm[wat + uint32(4 * OSTEP * u + i)] = ptx.pack_f16x2(wn[8 * u + 2 * i], wn[8 * u + 2 * i + 1])

    @cuda.jit(device=True, inline=True)
    def compute(sm, base, wr, wc, g, t, acc):
        # acc[(i NJ + j) 4 + r] += the warp's mma over the step's 2 KS k16 slices
        for kk in range(2 * KS):
            for i in range(MI):
                ra = uint32(base + (wr * MI * 16 + i * 16 + g) * KPW + kk * 8 + t)
                a0, a1 = sm[ra], sm[ra + uint32(8 * KPW)]
                a2, a3 = sm[ra + uint32(4)], sm[ra + uint32(8 * KPW + 4)]
                for j in range(NJ):
                    rb = uint32(base + XW + (row_of(wc, j) + g) * KPW + kk * 8 + t)
                    m = (i * NJ + j) * 4
                    acc[m], acc[m + 1], acc[m + 2], acc[m + 3] = ptx.mma_f16(
                        a0, a1, a2, a3, sm[rb], sm[rb + uint32(4)], acc[m], acc[m + 1], acc[m + 2], acc[m + 3])

    @cuda.jit(device=True, inline=True)
    def tile(sm, last, x, T, K, wga, wgb, wua, wub, up_row0, N, bias, has_bias, accumulate, out, ws, counters,
             bx, by, z):
        # x flat [T K]; out flat [T N] (plain) or [T F], F = N (swiglu); tile (bx, by, z): rows bx BN
        # (features bx BN / 2 for swiglu), tokens by BM, the z-th of SPLIT stretches of K-steps
        acc = cuda.local.array(ACC, float32)
        xr = cuda.local.array(XR, XDT)
        wn = cuda.local.array(WN8, float32)
        wr, wc, g, t, n0, t0 = coords(bx, by)
        row, is_up = tile_row(n0, N, up_row0)         # the W row this thread decodes
        for m in range(ACC):
            acc[m] = float32(0.0)
        steps = int32((K + KC - 1) // KC)
        per = int32((steps + SPLIT - 1) // SPLIT)
        s = int32(z * per)                            # this block's K-steps: s .. s_end - 1
        s_end = min(steps, int32(s + per))
        load_x(x, T, K, t0, s * KC, xr)
        decode_w(wga, wgb, wua, wub, row, is_up, s * KC, K, wn)
        stage(sm, (s & 1) * BUF, xr, wn)
        cuda.syncthreads()
        while s < s_end:
            base = (s & 1) * BUF
            k1 = int32(s * KC + KC)                   # the next step (past K on the last: clamped, unused)
            load_x(x, T, K, t0, k1, xr)
            decode_w(wga, wgb, wua, wub, row, is_up, k1, K, wn)
            compute(sm, base, wr, wc, g, t, acc)
            stage(sm, BUF - base, xr, wn)
            cuda.syncthreads()
            s = int32(s + 1)
        if SPLIT > 1 and not finish_split(acc, ws, counters, last, z):
            return
        store(acc, t0, n0, T, N, wr, wc, g, t, bias, has_bias, accumulate, out)

    return tile, SMW


@functools.lru_cache(maxsize=None)
def _mma_kernel(gate_type, up_type, cfg, swiglu, split=1, x16=False, out16=OUT_F32):
    """v11 kernel: one product (or SwiGLU pair) per launch, grid (tiles along rows, along tokens, split); x
    float32 [T K], or float16 pairs uint32 [T K / 2] with ``x16``."""
    tile, SMW = _mma_tile(gate_type, up_type, cfg, swiglu, split, x16, out16)

    @cuda.jit(cache=JIT_CACHE)
    def prefill_mma(x, T, K, wga, wgb, wua, wub, up_row0, N, bias, has_bias, accumulate, out, ws, counters):
        sm = cuda.shared.array(SMW, uint32)
        last = cuda.shared.array(1, int32)
        tile(sm, last, x, T, K, wga, wgb, wua, wub, up_row0, N, bias, has_bias, accumulate, out, ws, counters,
             int32(cuda.blockIdx.x), int32(cuda.blockIdx.y), int32(cuda.blockIdx.z))

    return prefill_mma


@functools.lru_cache(maxsize=None)
def _mma_qkv_kernel(q_type, k_type, v_type, cfg, x16=False):
    """v11 kernel for the Q, K and V products of one x in ONE launch (three small products: one launch fills
    the GPU better than three, and the graph has two nodes less). Grid x: q's row tiles, then k's, then v's
    (each block one tile of one matrix, its type a compile-time constant); grid y: token tiles."""
    tq, SMW = _mma_tile(q_type, q_type, cfg, False, 1, x16)
    tk, _ = _mma_tile(k_type, k_type, cfg, False, 1, x16)
    tv, _ = _mma_tile(v_type, v_type, cfg, False, 1, x16)

    @cuda.jit(cache=JIT_CACHE)
    def prefill_qkv(x, T, K, qa, qb, q_n, q_bias, q_has, q_out, ka, kb, k_n, k_bias, k_has, k_out,
                    va, vb, v_n, v_bias, v_has, v_out, q_tiles, k_tiles, counters):
        sm = cuda.shared.array(SMW, uint32)
        last = cuda.shared.array(1, int32)
        bx, by = int32(cuda.blockIdx.x), int32(cuda.blockIdx.y)
        if bx < q_tiles:
            tq(sm, last, x, T, K, qa, qb, qa, qb, 0, q_n, q_bias, q_has, False, q_out, q_out, counters, bx, by, 0)
        elif bx < q_tiles + k_tiles:
            tk(sm, last, x, T, K, ka, kb, ka, kb, 0, k_n, k_bias, k_has, False, k_out, k_out, counters,
               bx - q_tiles, by, 0)
        else:
            tv(sm, last, x, T, K, va, vb, va, vb, 0, v_n, v_bias, v_has, False, v_out, v_out, counters,
               bx - q_tiles - k_tiles, by, 0)

    return prefill_qkv


def _check_x16(x16, mma, who):
    """(K is a multiple of 8, ``_check``: every row of x16 is whole 16-byte loads of pairs, and starts 16-byte
    aligned when x does, ``_check_x_layout``.)"""
    if x16 and not mma:
        raise ValueError(f"{who}: x as float16 pairs (x16) needs v11 (mma=True)")


def _check_x_layout(x_flat, who):
    """v11 reads x's rows (float32, or float16 pairs) with 16-byte loads: x must start at a 16-byte aligned address
    (a whole allocation does; a slice may not)."""
    iface = getattr(x_flat, "__cuda_array_interface__", None)     # (the simulator has none)
    if iface is not None and iface["data"][0] % 16:
        raise ValueError(f"{who}: x must start at a 16-byte aligned address (v11 reads its rows 16 bytes at a time)")


@cuda.jit(device=True, inline=True)
def _x16_word(i, hk, tile_k):
    """Where ``pack_f16_kernel`` puts pair i of x (rows of hk pairs): i itself, or with ``tile_k`` = 2 hk > 0
    v23's tile order (``ref.matmul.a_tile_index``)."""
    if not tile_k:
        return i
    t, p = i // hk, i % hk
    q = p % 16
    w = q % 8
    return (((t // 16) * (tile_k // 32) + p // 16) * 256 + 128 * (q // 8) + 4 * (4 * (t % 8) + w % 4)
            + 2 * (w // 4) + (t % 16) // 8)


@cuda.jit(cache=JIT_CACHE)
def norm_pack_f16_kernel(x, w, out, C, eps, tile_k):
    """RMSNorm of row t of x [T, C] times w, written as float16 pairs (as ``pack_f16_kernel`` would write
    ``rmsnorm.rmsnorm_kernel3``'s output: the same scale (``rmsnorm.row_scale``), the same (x scale) w, the
    same cvt.rn), so the prefill's products read their x16 from one launch instead of two. One block per row,
    ``rmsnorm.threads_for(C)`` threads."""
    t = cuda.blockIdx.x
    warp_sums = cuda.shared.array(32, float32)
    scale = row_scale(x, t, C, eps, warp_sums)
    hk = C // 2
    for i in range(cuda.threadIdx.x, hk, cuda.blockDim.x):
        y0 = (x[t, 2 * i] * scale) * w[2 * i]
        y1 = (x[t, 2 * i + 1] * scale) * w[2 * i + 1]
        out[_x16_word(t * hk + i, hk, tile_k)] = ptx.pack_f16x2(y0, y1)


def launch_norm_pack_f16(x, w, eps, out_flat, stream=0, tile_k: int = 0) -> None:
    """out_flat = the float16 pairs of RMSNorm(x [T, C]) w, plain or (``tile_k`` = C) in v23's tile order: what
    ``rmsnorm.rmsnorm`` then ``launch_pack_f16`` write, bit for bit, in one launch."""
    from numba_kernels.rmsnorm import threads_for
    T, C = x.shape
    if C % 2 or (tile_k and tile_k != C):
        raise ValueError(f"norm_pack_f16: rows of {C} floats (even; tile_k must be C or 0, got {tile_k})")
    norm_pack_f16_kernel[T, threads_for(C), stream](x, w, out_flat, C, np.float32(eps), int(tile_k))


@cuda.jit(cache=JIT_CACHE)
def pack_f16_kernel(x, n_pairs, tile_k, out):
    """out[i] = (x[2 i], x[2 i + 1]) rounded to a float16 pair (``ptx.pack_f16x2``: cvt.rn, the rounding v11's
    staging applies), i < n_pairs; a thread per pair. ``tile_k`` > 0: x is [T, tile_k] and the pair of token t goes
    where v23 reads it instead (``ref.matmul.a_tile_index``: blocks of 16 tokens, each K-step's pairs as the mma's
    A operands)."""
    i = cuda.grid(1)
    if i < n_pairs:
        out[_x16_word(i, tile_k // 2, tile_k)] = ptx.pack_f16x2(x[2 * i], x[2 * i + 1])


def launch_pack_f16(x_flat, out_flat, n: int, stream=0, threads: int = 256, tile_k: int = 0) -> None:
    """v11's x16 operand: out_flat uint32 [>= n / 2] = x_flat float32 [>= n] as float16 pairs (n even); with
    ``tile_k`` = K, v23's (x [n / K, K], K a multiple of 32, in ``ref.matmul.a_tile_index`` order: out_flat needs
    ``tile_words(n // K, K)`` words, whole blocks of 16 tokens)."""
    if tile_k and (tile_k % 32 or n % tile_k):
        raise ValueError(f"pack_f16: v23's tile order needs K a multiple of 32 and whole rows, got K={tile_k}, n={n}")
    if n % 2:
        raise ValueError(f"pack_f16: n={n} must be even (pairs of consecutive floats)")
    if n:
        pairs = n // 2
        pack_f16_kernel[-(-pairs // threads), threads, stream](x_flat, pairs, int(tile_k), out_flat)


def tile_words(T: int, K: int) -> int:
    """uint32 words of x16 in v23's tile order for T tokens of K: ceil(T / 16) blocks of 16 tokens."""
    return -(-T // 16) * 16 * K // 2


def mma_grid(cfg, T, N, swiglu=False):
    """(blocks along rows, blocks along tokens) of v11: ceil(N / BN) x ceil(T / BM) (BN / 2 features for SwiGLU)."""
    bm, bn, _ = mma_sizes(cfg)
    return -(-N // (bn // 2 if swiglu else bn)), -(-T // bm)


def mma_config(T, N, K, swiglu=False):
    """The v11 tile for a product (rules from the measured sweep, see MMA_CONFIGS): MMA_WIDE when its grid
    has at least MMA_BLOCKS_PER_SM blocks per SM; else, for at least 512 rows, MMA_LONG for long rows
    (K >= 2048) and MMA_MID for short ones; MMA_NARROW for fewer rows. The simulator: SIM_MMA_CONFIG."""
    sms = _sm_count()
    if not sms:
        return SIM_MMA_CONFIG
    bx, by = mma_grid(MMA_WIDE, T, N, swiglu)
    if bx * by >= MMA_BLOCKS_PER_SM * sms:
        return MMA_WIDE
    if N >= 512:
        return MMA_LONG if K >= 2048 else MMA_MID
    return MMA_NARROW


class PrefillQKV:
    """v11's Q, K and V products of one x in one launch (``_mma_qkv_kernel``): out_m [T, N_m] = x [T, K] W_m^T
    (+ b_m) for ``mats`` = [(w_raw, ggml_type, bias or None)] * 3, with one tile for the three (``config``,
    default ``mma_config`` of their rows together). Bit for bit what three ``PrefillProduct(..., mma=True)``
    launches with that tile compute. Called as ``(x_flat, (q_flat, k_flat, v_flat), T, stream)``; ``x16``: x_flat
    as float16 pairs (uint32 [T K / 2]), as ``PrefillProduct``'s."""

    def __init__(self, mats, K, *, config=None, x16=False, f16w=False):
        if len(mats) != 3:
            raise ValueError(f"PrefillQKV: needs 3 matrices (Q, K, V), got {len(mats)}")
        self.x16, self.f16w = bool(x16), bool(f16w)
        _check_x16(self.x16, True, "PrefillQKV")
        _check_f16w(self.f16w, self.x16, K, "PrefillQKV")
        self.K, self._mats = K, []
        for w, t, b in mats:
            t = _check(w, t, K)
            if not _is_device(w) or (b is not None and not _is_device(b)):
                raise ValueError("PrefillQKV: the weights and biases must be device arrays")
            if b is not None and tuple(b.shape) != (w.shape[0],):
                raise ValueError(f"PrefillQKV: bias must be [{w.shape[0]}], got {tuple(b.shape)}")
            self._mats.append((t, *_views(w, t), w.shape[0], b))
        self._config = None if config is None else MmaConfig(*config)
        self._by_tokens = {}                                              # T -> (kernel, grid, threads, tiles)

    def __call__(self, x_flat, outs, T: int, stream=0) -> None:
        launch = self._by_tokens.get(T)
        if launch is None:
            N = sum(m[3] for m in self._mats)
            cfg = self._config or (f16w_config(T, N) if self.f16w else mma_config(T, N, self.K))
            bm, bn, threads = mma_sizes(cfg)
            tiles = [-(-m[3] // bn) for m in self._mats]
            if self.f16w:                                 # v23: the three W16 stacked, tiles q, k, v
                kern, grid = _gemm_qkv_kernel(cfg), (-(-T // bm), sum(tiles))
                scratch = (f16w_scratch(sum(tiles) * bn * self.K // 2), f16w_smem(cfg))
            else:
                kern, grid, scratch = _mma_qkv_kernel(*(m[0] for m in self._mats), cfg, self.x16), \
                    (sum(tiles), -(-T // bm)), None
            launch = self._by_tokens[T] = (kern, grid, threads, tiles, bn, scratch)
        kern, grid, threads, tiles, bn, scratch = launch
        _check_x_layout(x_flat, "PrefillQKV")
        args = []
        for (_, wa, wb, n, b), out in zip(self._mats, outs):
            args += ([] if self.f16w else [wa, wb]) + [n, out if b is None else b, b is not None, out]
        if self.f16w:
            w16, smem = scratch
            _check_tile_words(x_flat, T, self.K, "PrefillQKV")
            row0 = 0
            for (t, wa, wb, n, _), rows in zip(self._mats, tiles):
                launch_f16w((wa, wb, wa, wb), (t, t), 0, n, self.K, w16, row0, rows * bn, bn, False, stream)
                row0 += rows * bn
            launch_with_shared(kern, grid, threads, stream, smem, x_flat, T, self.K, w16, *args, tiles[0], tiles[1],
                               split_workspace(1, 1)[1])
            return
        kern[grid, threads, stream](x_flat, T, self.K, *args, tiles[0], tiles[1], split_workspace(1, 1)[1])


def mma_split(cfg, T, N, K, swiglu=False):
    """Blocks per tile along K for v11 (grid z): long rows (K >= 2048) whose grid has fewer than
    MMA_BLOCKS_PER_SM blocks per SM are split until it has (at most MMA_MAX_SPLIT ways, each part at least
    MMA_MIN_STEPS K-steps); 1 otherwise and in the simulator."""
    sms = _sm_count()
    bx, by = mma_grid(cfg, T, N, swiglu)
    steps = -(-K // (32 * cfg.ks))
    split = 1
    while (sms and K >= 2048 and bx * by * split < MMA_BLOCKS_PER_SM * sms and split < MMA_MAX_SPLIT
           and steps // (2 * split) >= MMA_MIN_STEPS):
        split *= 2
    return split


def _split_args(cfg, split, bx, by):
    """The (workspace, counters) a v11 / v23 launch of bx x by tiles split ``split`` ways along K passes."""
    return split_workspace(split * bx * by * mma_sizes(cfg)[2] * 4 * cfg.mi * cfg.nj, bx * by) if split > 1 \
        else split_workspace(1, 1)


def _check_tile_words(x_flat, T, K, who):
    """v23 reads x16 in whole blocks of 16 tokens (``tile_words``): a smaller buffer would be read past its end."""
    if x_flat.size < tile_words(T, K):
        raise ValueError(f"{who}: x16 in v23's tile order for {T} tokens needs {tile_words(T, K)} words (whole "
                         f"blocks of 16 tokens), got {x_flat.size}")


def _check_f16w(f16w, x16, K, who):
    if f16w and not (x16 and K % 32 == 0):
        raise ValueError(f"{who}: v23 (f16w) reads x as float16 pairs in its tile order (x16) and needs K a "
                         f"multiple of 32, got K={K}{'' if x16 else ' and x16 off'}")


_SPLIT_BUFFERS = []        # [(workspace, counters)], largest last; never freed (captured graphs keep pointers)


def split_workspace(floats: int, tiles: int):
    """(workspace float32 [>= floats], counters int32 [>= tiles], all zero) shared by every v11 split-K launch.
    The launches of one stream run one after another, and each leaves its counters at zero, so one buffer
    serves them all; a larger request allocates a larger pair and keeps the old one alive (a captured graph
    may hold its address)."""
    if not _SPLIT_BUFFERS or _SPLIT_BUFFERS[-1][0].size < floats or _SPLIT_BUFFERS[-1][1].size < tiles:
        have = _SPLIT_BUFFERS[-1] if _SPLIT_BUFFERS else None
        floats = max(floats, 1, have[0].size if have else 0)
        tiles = max(tiles, 1, have[1].size if have else 0)
        _SPLIT_BUFFERS.append((cuda.device_array(floats, np.float32), cuda.to_device(np.zeros(tiles, np.int32))))
    return _SPLIT_BUFFERS[-1]


# =============================================================================================
# v23: the prefill product over float16 weights decoded once per launch (twenty-third session; opt-in,
# ``LLAMA_BETA_PREFILL_F16W=1``, not yet timed on a GPU).
#
# Why. v11 decodes its W tile in every block, so with 128-token tiles each weight is decoded T / 128 times,
# and the decoding is most of v11's instructions: the sm_90 SASS of its K-loop (Q4_K SwiGLU, WIDE tile, x16)
# has 435 instructions per warp for 16 mma, about 300 of them one decode8 per thread (its loads, the scale
# extraction, shifts, index arithmetic). The tensor cores wait for the issue slots. v23 does the work in two
# launches, as llama.cpp's cuBLAS path does for large batches:
# 1. ``_f16w_kernel``: W decoded once, a thread per 32 weights of a row (four decode8), rounded to float16 pairs
#    (the cvt.rn of v11's staging: the same bits) into a scratch matrix W16 (uint32 [NP, K / 2]);
# 2. ``_gemm_tile``: a float16 GEMM of x16 and W16 on the tensor cores whose K-loop only moves 16-byte lines
#    and issues mma: each thread copies its lines of a K-step's x and W tiles global -> shared with
#    ``ptx.cp_async16`` (no registers, no staging instructions) into a ring of F16W_STAGES buffers, so that
#    F16W_STAGES - 1 steps' loads are in flight while the tensor cores work on the oldest (one barrier a step),
#    and a warp reads each mma operand with one ``ptx.load_shared_u32x4``.
#
# Layouts, both made so that a 16-byte line is what a lane needs. Lane (g, t) of an m16n8k16 needs, of a row's
# 16 pairs (32 k) of a K-step, the pairs t, t + 4 (the first k16 slice) and t + 8, t + 12 (the second).
# - W16 keeps each row's groups of 16 pairs in the order pos(p) = 4 (p % 4) + p // 4 (``ref.matmul.
#   fragment_order``): line t of a row's group is the lane's B operands of both slices.
# - x16 (``launch_pack_f16(..., tile_k=K)``, ``ref.matmul.a_tile_index``) goes one step further: tokens in blocks
#   of 16, each block's K-step as 256 words holding, per slice and lane, the line [x(g, t), x(g + 8, t),
#   x(g, t + 4), x(g + 8, t + 4)]: the A operand in the instruction's register order (with two separate row
#   lines the compiler spent 15 MOVs a K-step rearranging them). Whole blocks of 16 tokens: the buffer has
#   ``tile_words(T, K)`` words, and the rows past T are computed and never stored.
# In shared memory both keep the global order (x: 256 words a block, W: 16 words a row), so every warp-wide
# 16-byte access covers 128 consecutive words or two 64-byte rows per quarter-warp: no bank conflicts.
#
# Rows. W16 holds NP = (row tiles) BN rows; rows past N repeat row N - 1 (computed, never stored). For the
# SwiGLU pair the tiles interleave: tile b = the gate rows of features b BN/2 .. + BN/2, then their up rows, the
# order v11's ``row_of`` expects, so the epilogues are v11's (``_mma_epilogue``). The Q, K and V products stack
# their W16 (each padded to whole tiles) and run as one launch.
#
# Numerics: the operands are v11's float16 values and every output is the same chain of mma (k16 slices in
# order), so with the same split v23 computes v11's bits (``tests/test_matmul.py`` checks that).
# =============================================================================================
F16W = os.environ.get("LLAMA_BETA_PREFILL_F16W", "0") == "1"
# tiles, largest first (f16w_config takes the first whose grid fills the SMs): registers per thread <= 128
F16W_CONFIGS = (MmaConfig(2, 4, 4, 4, 1),     # 128 tokens x 128 rows, 256 threads [16 KiB a K-step buffer]
                MmaConfig(4, 2, 2, 4, 1),     # 128 x 64, 256 threads [12 KiB]
                MmaConfig(2, 2, 2, 4, 1),     # 64 x 64, 128 threads [8 KiB]
                MmaConfig(2, 2, 2, 2, 1))     # 64 x 32, 128 threads [6 KiB]
SIM_F16W_CONFIG = MmaConfig(1, 1, 1, 2, 1)    # 16 x 16, one warp (the simulator pays per thread)
F16W_STAGES = int(os.environ.get("LLAMA_BETA_F16W_STAGES", "4"))   # K-steps in flight + 1 (shared buffers)
if F16W_STAGES not in range(2, 9):
    raise ValueError(f"LLAMA_BETA_F16W_STAGES: expected 2 to 8 buffers, got {F16W_STAGES}")
F16W_BLOCKS_PER_SM = 1                        # f16w_config: the largest tile with at least this many blocks per SM
# for the sweeps on a GPU (a whole prefill with one tile or split): LLAMA_BETA_F16W_CONFIG=wm,wn,mi,nj (K-steps of
# 32) and LLAMA_BETA_F16W_SPLIT=n replace f16w_config's and mma_split's choices for every v23 product (the
# one-launch Q/K/V has no split)
F16W_CONFIG = tuple(int(v) for v in os.environ.get("LLAMA_BETA_F16W_CONFIG", "").split(",") if v) or None
F16W_SPLIT = int(os.environ.get("LLAMA_BETA_F16W_SPLIT", "0"))
F16W_THREADS = 256                            # the decode launch's block


def f16w_supported(K: int) -> bool:
    """v23 needs the tensor cores and whole 32-weight groups per row (the fragment order's unit)."""
    return mma_supported() and K % 32 == 0


def f16w_smem(cfg, stages=None):
    """Bytes of dynamic shared memory of a v23 tile: ``stages`` (default F16W_STAGES) buffers of [BM + BN, 16]
    words (a K-step of 32 weights)."""
    bm, bn, _ = mma_sizes(cfg)
    return (F16W_STAGES if stages is None else stages) * (bm + bn) * 16 * 4


def _check_f16w_config(cfg):
    bm, bn, nth = mma_sizes(cfg)
    if not (cfg.nj % 2 == 0 and cfg.ks == 1 and (4 * bm) % nth == 0 and (4 * bn) % nth == 0):
        raise ValueError(f"matmul v23: config {tuple(cfg)} does not tile (even nj, K-steps of 32, whole lines per "
                         f"thread)")


def f16w_config(T, N, swiglu=False):
    """The v23 tile: F16W_CONFIG if set, else the largest of F16W_CONFIGS whose grid has F16W_BLOCKS_PER_SM blocks
    per SM, else the smallest (``mma_split`` then splits long rows). The simulator: SIM_F16W_CONFIG."""
    if F16W_CONFIG:
        cfg = MmaConfig(*F16W_CONFIG, 1)
        _check_f16w_config(cfg)
        return cfg
    return _largest_filling(F16W_CONFIGS, mma_grid, F16W_BLOCKS_PER_SM, SIM_F16W_CONFIG, T, N, swiglu)


def _f16w_jit_options(cfg):
    """cuda.jit options of a v23 GEMM: at most 128 registers (two 256-thread blocks, or four of 128, per SM)."""
    if config.ENABLE_CUDASIM:
        return {"cache": JIT_CACHE}
    nth = mma_sizes(cfg)[2]
    return {"cache": JIT_CACHE, "launch_bounds": (nth, 65536 // (128 * nth))}


@functools.lru_cache(maxsize=None)
def _f16w_kernel(gate_type, up_type, BN, swiglu):
    """v23's first launch: W16 rows w_row0 .. w_row0 + rows of the scratch ``w16`` (uint32, K / 2 words a row,
    fragment order) = W decoded and rounded to float16 pairs. A thread per (row r, group of 32 weights); row r
    is W's row min(r, N - 1), or for the SwiGLU pair (tiles of BN rows: BN / 2 gate rows, then the same
    features' up rows, from up_row0 of the up matrix) the feature min((r // BN) BN / 2 + r % (BN / 2), N - 1)."""
    dec_g, dec_u = DECODERS[gate_type], DECODERS[up_type]
    HALF = BN // 2

    @cuda.jit(cache=JIT_CACHE)
    def f16w(wga, wgb, wua, wub, up_row0, N, K, w16, w_row0, rows):
        i = uint32(cuda.grid(1))
        groups = uint32(K // 32)
        if i >= uint32(rows) * groups:
            return
        r, gi = int32(i // groups), int32(i % groups)
        up = swiglu and r % BN >= HALF
        src = int32(min((r // BN) * HALF + r % HALF, N - 1) if swiglu else min(r, N - 1))
        wn = cuda.local.array(32, float32)
        for c in range(4):                                  # octet c: pairs 4c .. 4c + 3 of the group
            if up:
                dec_u(wua, wub, int32(up_row0 + src), int32(32 * gi + 8 * c), wn, 8 * c)
            else:
                dec_g(wga, wgb, src, int32(32 * gi + 8 * c), wn, 8 * c)
        at = uint32((w_row0 + r) * (K // 2) + 16 * gi)
        for j in range(4):                                  # line j: pair j of each octet (pos(4c + j) = 4j + c)
            ptx.store_u32x4(w16, at + uint32(4 * j), ptx.pack_f16x2(wn[2 * j], wn[2 * j + 1]),
                            ptx.pack_f16x2(wn[8 + 2 * j], wn[9 + 2 * j]), ptx.pack_f16x2(wn[16 + 2 * j], wn[17 + 2 * j]),
                            ptx.pack_f16x2(wn[24 + 2 * j], wn[25 + 2 * j]))

    return f16w


def launch_f16w(views, types, up_row0, N, K, w16, w_row0, rows, BN, swiglu, stream=0):
    """Queue ``_f16w_kernel``: ``rows`` W16 rows from w_row0 of ``w16`` (views = (wga, wgb, wua, wub) of the
    gate / plain and the up matrix, ``_views``; types their GGML types)."""
    n = rows * (K // 32)
    kernel = _f16w_kernel(*types, BN if swiglu else 1, swiglu)    # (BN orders a SwiGLU pair's rows only)
    kernel[-(-n // F16W_THREADS), F16W_THREADS, stream](*views, up_row0, N, K, w16, w_row0, rows)


def f16w_words(N: int, K: int, parts: int = 1) -> int:
    """An upper bound of the W16 words v23 decodes for ``parts`` matrices of N rows in all (2F for a SwiGLU pair)
    and K columns, whatever the tile: each part padded by less than the largest tile's rows."""
    return (N + parts * max(mma_sizes(c)[1] for c in F16W_CONFIGS)) * K // 2


_F16W_SCRATCH = []         # W16 buffers, largest last; never freed (captured graphs keep pointers)


def f16w_scratch(words: int):
    """The W16 scratch (uint32 [>= words]) shared by every v23 launch: the launches of a stream run one after
    another, each product decoding its W just before its GEMM reads it."""
    if not _F16W_SCRATCH or _F16W_SCRATCH[-1].size < words:
        _F16W_SCRATCH.append(cuda.device_array(max(words, 4), np.uint32))
    return _F16W_SCRATCH[-1]


@functools.lru_cache(maxsize=None)
def _gemm_tile(cfg, swiglu, split=1, stages=None, out16=OUT_F32):
    """v23's GEMM for one output tile as a device function ``tile(sm, last, x, T, K, w16, w_row0, N, bias,
    has_bias, accumulate, out, ws, counters, bx, by, z)``: x uint32 in tile order (``launch_pack_f16(...,
    tile_k=K)``) and W16 rows w_row0 + bx BN .. + BN (fragment order), out / bias / ws / counters and the tile
    (bx, by, z) as v11's ``_mma_tile``; ``sm`` the block's dynamic shared memory, ``f16w_smem(cfg)`` bytes.

    Shared memory: a ring of ``stages`` buffers (default F16W_STAGES), one per K-step in flight, each the x tile
    (BM / 16 blocks of 256 words: the K-step's words of a block of 16 tokens exactly as x16 holds them, per k16
    slice and lane the A operand in register order) then the W tile (BN rows of 16 words: a row's line t holds
    the B operands of both slices). Every line moves global -> shared by ``ptx.cp_async16``, with no register in
    between; the copies of step s + stages - 1 are issued (one group per step and thread) right after the
    barrier that ends step s - 1, so stages - 1 steps' loads are in flight while the tensor cores work."""
    _check_f16w_config(cfg)
    WM, WN, MI, NJ, _ = cfg
    BM, BN, NTH = mma_sizes(cfg)
    STAGES = F16W_STAGES if stages is None else stages
    XW = BM * 16                         # words of the x tile in a buffer; the W tile follows
    BUF = XW + BN * 16
    LX, LW = 4 * BM // NTH, 4 * BN // NTH     # 16-byte lines a thread copies per K-step: of x, of W
    ACC, BQN, LINES = MI * NJ * 4, 4 * NJ, LX + LW   # registers: the sums, the B operand lines, line starts
    wait_ring = ptx.CP_ASYNC_WAIT[STAGES - 2]  # until the oldest step in flight has landed
    row_of, store, finish_split = _mma_epilogue(MI, NJ, BN, NTH, swiglu, split, out16)
    coords = _mma_coords(WN, BM, BN, swiglu)

    @cuda.jit(device=True, inline=True)
    def line_starts(mb0, MB, K, wr0, at):
        # at[u] = the word of this thread's line u in K-step 0: x's lines (its block of 16 tokens clamped to the
        # last, MB - 1: rows past T are computed and never stored), then W16's; step s adds 256 s / 16 s words
        tid = int32(cuda.threadIdx.x)
        for u in range(LX):
            li = tid + NTH * u
            at[u] = uint32(min(mb0 + li // 64, MB - 1)) * uint32(8 * K) + uint32(4 * (li % 64))
        for u in range(LW):
            li = tid + NTH * u
            at[LX + u] = uint32(wr0 + li // 4) * uint32(K // 2) + uint32(4 * (li % 4))

    @cuda.jit(device=True, inline=True)
    def issue(sm, base, x, w16, at, s):
        # this thread's lines of K-step s into the buffer at sm[base:]: x's, then W16's
        tid = int32(cuda.threadIdx.x)
        for u in range(LX):
            ptx.cp_async16(sm, uint32(base + 4 * (tid + NTH * u)), x, at[u] + uint32(256 * s))
        for u in range(LW):
            ptx.cp_async16(sm, uint32(base + XW + 4 * (tid + NTH * u)), w16, at[LX + u] + uint32(16 * s))

    @cuda.jit(device=True, inline=True)
    def compute(sm, base, wr, wc, g, t, acc, bq):
        # acc[(i NJ + j) 4 + r] += the warp's mma over the step's two k16 slices: one 16-byte load per operand
        lane = 4 * g + t
        for j in range(NJ):
            b0, b1, b2, b3 = ptx.load_shared_u32x4(sm, uint32(base + XW + (row_of(wc, j) + g) * 16 + 4 * t))
            bq[4 * j], bq[4 * j + 1], bq[4 * j + 2], bq[4 * j + 3] = b0, b1, b2, b3
        for i in range(MI):
            for sl in range(2):
                a0, a1, a2, a3 = ptx.load_shared_u32x4(sm, uint32(base + (wr * MI + i) * 256 + 128 * sl + 4 * lane))
                for j in range(NJ):
                    m = (i * NJ + j) * 4
                    acc[m], acc[m + 1], acc[m + 2], acc[m + 3] = ptx.mma_f16(
                        a0, a1, a2, a3, bq[4 * j + 2 * sl], bq[4 * j + 2 * sl + 1],
                        acc[m], acc[m + 1], acc[m + 2], acc[m + 3])

    @cuda.jit(device=True, inline=True)
    def tile(sm, last, x, T, K, w16, w_row0, N, bias, has_bias, accumulate, out, ws, counters, bx, by, z):
        acc = cuda.local.array(ACC, float32)
        bq = cuda.local.array(BQN, uint32)
        wr, wc, g, t, n0, t0 = coords(bx, by)
        mb0, MB = int32(t0 // 16), int32((T + 15) // 16)   # the tile's first block of 16 tokens, the blocks of x
        wr0 = int32(w_row0 + bx * BN)                 # the tile's first W16 row
        for m in range(ACC):
            acc[m] = float32(0.0)
        at = cuda.local.array(LINES, uint32)
        line_starts(mb0, MB, K, wr0, at)
        steps = int32(K // 32)
        per = int32((steps + split - 1) // split)
        s = int32(z * per)                            # this block's K-steps: s .. s_end - 1
        s_end = min(steps, int32(s + per))
        for u in range(STAGES - 1):                   # the first stages - 1 steps in flight (empty groups past the end)
            if s + u < s_end:
                issue(sm, u * BUF, x, w16, at, s + u)
            ptx.cp_async_commit()
        base = uint32(0)                              # the buffer of step s
        while s < s_end:
            wait_ring()                               # this thread's copies of step s have landed ...
            cuda.syncthreads()                        # ... everyone's; and step s - 1's buffer is free
            ahead = uint32(base - BUF if base > 0 else (STAGES - 1) * BUF)
            if s + STAGES - 1 < s_end:
                issue(sm, ahead, x, w16, at, s + STAGES - 1)
            ptx.cp_async_commit()
            compute(sm, base, wr, wc, g, t, acc, bq)
            base = uint32(base + BUF if base < (STAGES - 1) * BUF else 0)
            s = int32(s + 1)
        if split > 1 and not finish_split(acc, ws, counters, last, z):
            return
        store(acc, t0, n0, T, N, wr, wc, g, t, bias, has_bias, accumulate, out)

    return tile


@functools.lru_cache(maxsize=None)
def _gemm_kernel(cfg, swiglu, split=1, stages=None, out16=OUT_F32):
    """v23 GEMM, one product (or SwiGLU pair) per launch, ``f16w_smem(cfg, stages)`` bytes of dynamic shared
    memory. Grid (token tiles, row tiles, split): the blocks that run together share their W16 tile, so W16
    comes from DRAM about once and x (small) stays in L2."""
    tile = _gemm_tile(cfg, swiglu, split, stages, out16)

    @cuda.jit(**_f16w_jit_options(cfg))
    def gemm_f16(x, T, K, w16, N, bias, has_bias, accumulate, out, ws, counters):
        sm = cuda.shared.array(0, uint32, alignment=SMEM_ALIGN)        # the ring of K-step buffers
        last = cuda.shared.array(1, int32)
        tile(sm, last, x, T, K, w16, 0, N, bias, has_bias, accumulate, out, ws, counters,
             int32(cuda.blockIdx.y), int32(cuda.blockIdx.x), int32(cuda.blockIdx.z))

    return gemm_f16


@functools.lru_cache(maxsize=None)
def _gemm_qkv_kernel(cfg, stages=None):
    """v23 GEMM of the Q, K and V products in one launch over their stacked W16 (q's row tiles, k's, v's)."""
    tile = _gemm_tile(cfg, False, 1, stages)
    BN = mma_sizes(cfg)[1]

    @cuda.jit(**_f16w_jit_options(cfg))
    def gemm_qkv(x, T, K, w16, q_n, q_bias, q_has, q_out, k_n, k_bias, k_has, k_out, v_n, v_bias, v_has, v_out,
                 q_tiles, k_tiles, counters):
        sm = cuda.shared.array(0, uint32, alignment=SMEM_ALIGN)
        last = cuda.shared.array(1, int32)
        bx = int32(cuda.blockIdx.y)
        n, bias, has, out, first = q_n, q_bias, q_has, q_out, int32(0)     # the block's matrix and its first tile
        if bx >= q_tiles + k_tiles:
            n, bias, has, out, first = v_n, v_bias, v_has, v_out, int32(q_tiles + k_tiles)
        elif bx >= q_tiles:
            n, bias, has, out, first = k_n, k_bias, k_has, k_out, int32(q_tiles)
        # one call of the tile (the weights are all float16 now: no per-type code to choose), its W16 rows after
        # the matrices before it
        tile(sm, last, x, T, K, w16, first * BN, n, bias, has, False, out, out, counters, bx - first,
             int32(cuda.blockIdx.x), 0)

    return gemm_qkv


def _prefill_matrix(a, shape, what):
    """A device float32 array of ``shape`` (a NumPy array is copied: allocates)."""
    if a is None or tuple(a.shape) != shape:
        raise ValueError(f"matmul_prefill: {what} must be {list(shape)}, got {None if a is None else tuple(a.shape)}")
    return _device(a, np.float32)


def matmul_prefill(x, w_raw, ggml_type, K, out, *, bias=None, accumulate=False, config=None, stream=0, mma=False):
    r"""v10: out [T, N] = x [T, K] W^T (+ bias), or out += that with ``accumulate`` (the residual add of
    W_o and W_down fused in). ``out`` is a device array (nothing is allocated when x, w_raw and bias are
    device arrays, nothing synchronized); ``config``: a PrefillConfig, default ``prefill_config``.
    ``mma=True``: v11 on the tensor cores (x and W rounded to float16, float32 sums; ``config`` an MmaConfig)."""
    ggml_type = _check(w_raw, ggml_type, K)
    N = w_raw.shape[0]
    T = x.shape[0] if len(x.shape) == 2 else -1
    if not _is_device(out):
        raise ValueError("matmul_prefill: out must be a device array (the result is written into it)")
    x_d = _prefill_matrix(x, (T, K), "x")
    _prefill_matrix(out, (T, N), "out")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"matmul_prefill: bias must be [{N}], got {tuple(bias.shape)}")
    launch_matmul_prefill(x_d, _device(w_raw, np.uint8), ggml_type, K, out, _device(bias, np.float32),
                          accumulate, config, stream, mma)
    return out


def matmul_prefill_swiglu(x, w_gate, gate_type, w_up, up_type, K, out, *, config=None, stream=0, mma=False):
    r"""v10 SwiGLU pair: out[t, f] = silu(x_t . gate_f) * (x_t . up_f), silu(g) = g / (1 + e^{-g}), the
    gate and up products and the SwiGLU in one launch. out [T, F] device; ``w_up=None``: Phi-3's fused
    gate_up tensor (``w_gate`` [2F, row_bytes]: gate rows, then up rows; ``up_type`` ignored).
    ``mma=True``: v11 (tensor cores, float16 operands)."""
    gate_type = _check(w_gate, gate_type, K)
    T = x.shape[0] if len(x.shape) == 2 else -1
    F = tuple(out.shape)[-1]
    if not _is_device(out):
        raise ValueError("matmul_prefill_swiglu: out must be a device array (the result is written into it)")
    x_d = _prefill_matrix(x, (T, K), "x")
    _prefill_matrix(out, (T, F), "out")
    w_g, w_u, up_type, up_row0 = _gate_up_rows(w_gate, gate_type, w_up, up_type, K, F, "matmul_prefill_swiglu", _check)
    launch_matmul_prefill_swiglu(x_d, w_g, gate_type, w_u, up_type, up_row0, K, out, config, stream, mma)
    return out


# =============================================================================================
# v12: the decode products (one token) on the tensor cores.
#
# Why. In the decode step every product reads each weight once, so v4-v9 are built for memory
# traffic; but Nsight Compute shows them issue-bound: the gate/up launch executes 3.5 M warp
# instructions for 8.7 M weights (~13 per weight per lane-row: decode a byte, remove its bias, one
# FMA, the x' loads and the staging around them) at 0.45 instructions per cycle per scheduler.
# One mma.sync m16n8k16 does 16 rows x 16 weights of multiply-adds for a warp, so the FMAs leave the
# CUDA cores and what is left per weight is turning quantized codes into float16.
#
# One token. B's 8 columns all hold x (the same column eight times), so D's 8 columns are equal and
# lane (g, t) = (lane // 4, lane % 4) receives rows g and g + 8 of the tile (d0 and d2).
#
# The k order. A sum over k may take its terms in any order as long as x and W agree. In a group of
# 32 weights (one Q5_0/Q8_0 block) lane t puts weights 4t..4t+3 into the first mma's k slots 2t, 2t+1,
# 2t+8, 2t+9 and weights 16+4t..16+4t+3 into the second's. Then the x fragments are x's float16 pairs
# in their natural order (pairs 2t, 2t+1 and 8+2t, 9+2t of the group), and a lane's 8 weights of a row
# come from one 4-byte word of quants (Q5_0: its low and high nibbles; Q8_0: two words).
#
# Codes to float16: a code u < 1024 in the low bits of 0x6400 is the float16 1024 + u, exactly; one
# prmt builds a pair from two code bytes, one sub.f16x2 takes 1024 + z off both (w = d (u - z); Q5_0: u
# the 5-bit code, z = 16; Q8_0: u = q + 128, z = 128): the integers u - z, exact. The mma sums
# x (u - z) over the group in float32 (products exact) and the lane scales the sum by d.
#
# Numerics, as v11's prefill: x' is rounded to float16 (relative 2^-11 per term), everything else is
# float32.
#
# Measured (H200, seventh session, ``benchmarks/sweep_decode_mma.py``: 24 weight copies in a graph, PDL):
# SLOWER than the float32 kernels at every Qwen2.5-0.5B shape, so it is opt-in (LLAMA_BETA_DECODE_MMA=1):
# W_o 896 x 896 3.0 us (float32 2.8), gate/up + SwiGLU 10.0 us (6.6), output 151936 x 896 Q8_0 69 us (68).
# The time grows with the groups per warp (W_o: s = 1 12 us, s = 14 3.0 us; each round of 8 groups ~2 us):
# the chain of a warp is latency-bound - load, convert, mma, per round - not issue-bound. What would
# change that is not built: more rows per warp in flight (two or more tiles per warp), 4-byte loads
# (Q5_0's 22-byte blocks are only 2-byte aligned: 5 loads per row and group), x' fragments kept in
# registers across tiles.
#
# Blocks. NW = TM x S warps: TM 16-row tiles, each dotted by S warps that split its groups (warp s takes
# groups s, s + S, ...: C = K / 32 / S of them, a compile-time count, like K itself), in rounds of up to
# V12_UNROLL groups whose loads are all issued before the round's first mma. The S partial sums of a row
# meet in shared memory and one thread adds them in order (deterministic), then the epilogue: + bias,
# += into the residual stream (accumulate), or silu(gate) up (SwiGLU: tile 0 gate rows, tile 1 the same
# rows of up). Before waiting for the previous launch (PDL) one lane per tile asks L2 for the tile's
# bytes (16 consecutive rows are one stretch of memory). x' is staged as v4's (``_stage_x``) and then
# packed into float16 pairs.
# =============================================================================================
V12_TYPES = (GGMLType.Q5_0, GGMLType.Q8_0)
MMA_M16 = 16                             # rows of a v12 tile (the mma's M)
H1024 = 0x64646464                       # the high byte of float16 1024 + u, u < 256, in every byte
Z_Q5_0, Z_Q8_0 = 0x64106410, 0x64806480  # float16 pairs (1024 + z, 1024 + z): z = 16, 128
V12_UNROLL = 8                           # groups a warp loads and multiplies per round (in flight together)
# Opt-in: measured slower than the float32 kernels on the H200 (seventh session, "Measured" in the header
# above); "1" makes decode_matvec / decode_matvec_swiglu take v12 for Q5_0/Q8_0 weights.
DECODE_MMA = os.environ.get("LLAMA_BETA_DECODE_MMA", "0") == "1"
V12_WARM = os.environ.get("LLAMA_BETA_V12_WARM", "1") != "0"   # touch the first round's groups before staging
MmaDecodeConfig = collections.namedtuple("MmaDecodeConfig", "tm s")
MmaDecodeConfig.__doc__ = "v12 block: tm 16-row tiles, each split along K over s warps (tm * s warps)"


@cuda.jit(device=True, inline=True)
def _codes_f16(lo, hi, zero):
    """Four float16 pairs u - z from two words of code bytes: (lo bytes 0, 1), (lo 2, 3), (hi 0, 1), (hi 2, 3)."""
    return (ptx.sub_f16x2(_prmt(lo, H1024, 0x4140), zero), ptx.sub_f16x2(_prmt(lo, H1024, 0x4342), zero),
            ptx.sub_f16x2(_prmt(hi, H1024, 0x4140), zero), ptx.sub_f16x2(_prmt(hi, H1024, 0x4342), zero))


@cuda.jit(device=True, inline=True)
def _grp_q5_0(w16, wh, g, t):
    """Lane t's A fragments of one Q5_0 block (22 bytes at byte g: d f16 @0, qh u32 @2, qs @6) of
    one row: float16 pairs of weights (4t, 4t+1), (4t+2, 4t+3), (16+4t, ..), (18+4t, ..) as codes
    u - 16, and d. Weight j < 16 is the low nibble of qs[j], j >= 16 the high nibble of qs[j - 16];
    its fifth bit is bit j of qh."""
    d = float32(wh[g >> 1])
    qh = _u32(w16, uint32((g + 2) >> 1))
    qs = _u32(w16, uint32((g + 6 + 4 * t) >> 1))
    lo = (qs & 0x0F0F0F0F) | _spread4(qh >> (4 * t))
    hi = ((qs >> 4) & 0x0F0F0F0F) | _spread4(qh >> (16 + 4 * t))
    p0, p1, p2, p3 = _codes_f16(lo, hi, Z_Q5_0)
    return p0, p1, p2, p3, d


@cuda.jit(device=True, inline=True)
def _grp_q8_0(w16, wh, g, t):
    """The same for a Q8_0 block (34 bytes: d f16 @0, int8 q @2): u = q + 128 (the byte xor 0x80)."""
    d = float32(wh[g >> 1])
    a = _u32(w16, uint32((g + 2 + 4 * t) >> 1)) ^ 0x80808080
    b = _u32(w16, uint32((g + 18 + 4 * t) >> 1)) ^ 0x80808080
    p0, p1, p2, p3 = _codes_f16(a, b, Z_Q8_0)
    return p0, p1, p2, p3, d


V12_GROUPS = {GGMLType.Q5_0: _grp_q5_0, GGMLType.Q8_0: _grp_q8_0}


@functools.lru_cache(maxsize=None)
def _tile_dot(ggml_type, C, S):
    """Device function (v12): (row r0 + g, row r0 + g + 8) . x' over groups s, s + S, .. (C of them) for
    lane (g, t); rows past N re-read row N - 1. Every lane of the warp must call it (mma.sync).

    Rounds of UF = min(C, V12_UNROLL) groups written out (``if UF > u`` folds at compile time: one
    basic block, so the round's loads are all issued before its first mma waits; a loop over them was
    not unrolled). A round past the last group re-reads group C - 1 and adds it times 0."""
    grp = V12_GROUPS[ggml_type]
    bb = BLOCK_SIZES[ggml_type][1]
    zero = float32(0.0)
    UF = min(C, V12_UNROLL)
    ROUNDS = -(-C // UF)

    @cuda.jit(device=True, inline=True)
    def group(w16, wh, ba, bc, t, xp, s, c):
        # the contributions of group min(c, C - 1) (times 0 past C) to rows g and g + 8
        j = s + min(c, C - 1) * S
        pa0, pa1, pa2, pa3, da = grp(w16, wh, uint32(ba + j * bb), t)
        pc0, pc1, pc2, pc3, dc = grp(w16, wh, uint32(bc + j * bb), t)
        xo = uint32(16 * j + 2 * t)
        d0, d1, d2, d3 = ptx.mma_f16(pa0, pc0, pa1, pc1, xp[xo], xp[xo + uint32(1)], zero, zero, zero, zero)
        d0, d1, d2, d3 = ptx.mma_f16(pa2, pc2, pa3, pc3, xp[xo + uint32(8)], xp[xo + uint32(9)], d0, d1, d2, d3)
        keep = float32(1.0) if c < C else zero
        return (keep * da) * d0, (keep * dc) * d2

    @cuda.jit(device=True, inline=True)
    def warm_group(w16, ba, bc, t, s, c):
        # touch group min(c, C - 1) of both rows at byte 8t of the block (its 32-byte sectors, into L1)
        j = s + min(c, C - 1) * S
        off = uint32(j * bb + min(8 * t, bb - 2))
        return int32(w16[(uint32(ba) + off) >> 1]) ^ int32(w16[(uint32(bc) + off) >> 1])

    @cuda.jit(device=True, inline=True)
    def warm(w16, rb, r0, N, s):
        """The first round's groups of the lane's two rows, touched before x' is staged (as v8's
        ``_warm_rows``): an xor of the loads for ``_keep``, written out so that all are in flight."""
        lane = cuda.threadIdx.x & (WARP - 1)
        g, t = lane >> 2, lane & 3
        ba = int32(min(r0 + g, N - 1) * rb)
        bc = int32(min(r0 + g + 8, N - 1) * rb)
        h = warm_group(w16, ba, bc, t, s, 0)
        if UF > 1:
            h ^= warm_group(w16, ba, bc, t, s, 1)
        if UF > 2:
            h ^= warm_group(w16, ba, bc, t, s, 2)
        if UF > 3:
            h ^= warm_group(w16, ba, bc, t, s, 3)
        if UF > 4:
            h ^= warm_group(w16, ba, bc, t, s, 4)
        if UF > 5:
            h ^= warm_group(w16, ba, bc, t, s, 5)
        if UF > 6:
            h ^= warm_group(w16, ba, bc, t, s, 6)
        if UF > 7:
            h ^= warm_group(w16, ba, bc, t, s, 7)
        return h

    @cuda.jit(device=True, inline=True)
    def tile_dot(w16, wh, rb, r0, N, xp, s):
        lane = cuda.threadIdx.x & (WARP - 1)
        g, t = lane >> 2, lane & 3
        ba = int32(min(r0 + g, N - 1) * rb)
        bc = int32(min(r0 + g + 8, N - 1) * rb)
        acc_a = acc_c = zero
        for r in range(ROUNDS):
            c = r * UF
            a0, c0 = group(w16, wh, ba, bc, t, xp, s, c)
            a1 = c1 = a2 = c2 = a3 = c3 = a4 = c4 = a5 = c5 = a6 = c6 = a7 = c7 = zero
            if UF > 1:
                a1, c1 = group(w16, wh, ba, bc, t, xp, s, c + 1)
            if UF > 2:
                a2, c2 = group(w16, wh, ba, bc, t, xp, s, c + 2)
            if UF > 3:
                a3, c3 = group(w16, wh, ba, bc, t, xp, s, c + 3)
            if UF > 4:
                a4, c4 = group(w16, wh, ba, bc, t, xp, s, c + 4)
            if UF > 5:
                a5, c5 = group(w16, wh, ba, bc, t, xp, s, c + 5)
            if UF > 6:
                a6, c6 = group(w16, wh, ba, bc, t, xp, s, c + 6)
            if UF > 7:
                a7, c7 = group(w16, wh, ba, bc, t, xp, s, c + 7)
            acc_a += ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
            acc_c += ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7))
        return acc_a, acc_c
    return tile_dot, warm


@cuda.jit(device=True, inline=True)
def _stage_x16(x, nw, has_norm, eps, K, xs, xp, red):
    """x' (x, or RMSNorm(x) * nw) as float16 pairs xp[i] = (x'[2i], x'[2i+1]) in shared memory: staged
    in float32 by ``_stage_x`` (which waits for the previous launch), then packed."""
    _stage_x(x, nw, has_norm, eps, K, xs, red)
    i = cuda.threadIdx.x
    while i < K // 2:
        p = 2 * i
        xp[uint32(i)] = ptx.pack_f16x2(xs[uint32(p + (p >> 5))], xs[uint32(p + 1 + ((p + 1) >> 5))])
        i += cuda.blockDim.x
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def _prefetch_tile(w16, rb, r0, N):
    """Lane 0 of the warp: ask L2 for rows r0 .. r0 + 15 (clamped to N), one stretch of bytes."""
    if cuda.threadIdx.x % WARP == 0 and r0 < N:
        ptx.prefetch_l2(w16, r0 * rb, (min(r0 + MMA_M16, N) - r0) * rb)


@functools.lru_cache(maxsize=None)
def _decode_mma_kernel(kind, types, K, cfg):
    """v12 kernel for ``kind`` "matvec" (types[0]) or "swiglu" (gate types[0], up types[1]); K and the
    block configuration are compile-time constants."""
    TM, S = cfg
    NG = K // 32
    C = NG // S
    assert K % 32 == 0 and NG % S == 0 and (kind != "swiglu" or TM == 2), (kind, K, cfg)
    (dot_a, warm_a), (dot_b, warm_b) = _tile_dot(types[0], C, S), _tile_dot(types[-1], C, S)
    ROWS = TM * MMA_M16
    XS, XP, PARTS = xs_floats(K), K // 2, S * ROWS

    @cuda.jit(device=True, inline=True)
    def store_parts(part, s, tm, acc_a, acc_c):
        # lanes (g, 0) hold rows g and g + 8 of the warp's tile (the other three lanes of g the same)
        lane = cuda.threadIdx.x & (WARP - 1)
        if lane % 4 == 0:
            part[s * ROWS + tm * MMA_M16 + (lane >> 2)] = acc_a
            part[s * ROWS + tm * MMA_M16 + (lane >> 2) + 8] = acc_c
        cuda.syncthreads()

    @cuda.jit(cache=JIT_CACHE)
    def matvec_mma(x, nw, has_norm, eps, w16, wh, rb, N, bias, has_bias, accumulate, out):
        xs = cuda.shared.array(XS, float32)
        xp = cuda.shared.array(XP, uint32)
        part = cuda.shared.array(PARTS, float32)
        red = cuda.shared.array(WARP, float32)
        warp = cuda.threadIdx.x >> 5
        tm, s = warp % TM, warp // TM
        r0 = (cuda.blockIdx.x * TM + tm) * MMA_M16
        if s == 0:
            _prefetch_tile(w16, rb, r0, N)
        h = warm_a(w16, rb, r0, N, s) if V12_WARM else int32(0)
        _stage_x16(x, nw, has_norm, eps, K, xs, xp, red)
        _keep(h, N)
        acc_a, acc_c = dot_a(w16, wh, rb, r0, N, xp, s)
        store_parts(part, s, tm, acc_a, acc_c)
        i = cuda.threadIdx.x
        n = cuda.blockIdx.x * ROWS + i
        if i < ROWS and n < N:
            v = part[i]
            for j in range(1, S):
                v += part[j * ROWS + i]
            v = v + bias[n] if has_bias else v
            out[n] = out[n] + v if accumulate else v

    @cuda.jit(cache=JIT_CACHE)
    def swiglu_mma(x, nw, has_norm, eps, g16, gh, grb, u16, uh, urb, up_row0, F, out):
        # out[n] = silu(W_gate[n] . x') * (W_up[up_row0 + n] . x'); tile 0 gate rows, tile 1 up rows
        xs = cuda.shared.array(XS, float32)
        xp = cuda.shared.array(XP, uint32)
        part = cuda.shared.array(PARTS, float32)
        red = cuda.shared.array(WARP, float32)
        warp = cuda.threadIdx.x >> 5
        tm, s = warp % TM, warp // TM
        r0 = cuda.blockIdx.x * MMA_M16
        if s == 0:
            if tm == 0:
                _prefetch_tile(g16, grb, r0, F)
            else:
                _prefetch_tile(u16, urb, up_row0 + r0, up_row0 + F)
        h = int32(0)
        if V12_WARM:
            h = warm_a(g16, grb, r0, F, s) if tm == 0 else warm_b(u16, urb, up_row0 + r0, up_row0 + F, s)
        _stage_x16(x, nw, has_norm, eps, K, xs, xp, red)
        _keep(h, F)
        if tm == 0:
            acc_a, acc_c = dot_a(g16, gh, grb, r0, F, xp, s)
        else:
            acc_a, acc_c = dot_b(u16, uh, urb, up_row0 + r0, up_row0 + F, xp, s)
        store_parts(part, s, tm, acc_a, acc_c)
        i = cuda.threadIdx.x
        n = r0 + i
        if i < MMA_M16 and n < F:
            gv, uv = part[i], part[MMA_M16 + i]
            for j in range(1, S):
                gv += part[j * ROWS + i]
                uv += part[j * ROWS + MMA_M16 + i]
            out[n] = _silu(gv) * uv

    return matvec_mma if kind == "matvec" else swiglu_mma


def decode_mma_supported(types, K) -> bool:
    """v12 can serve the product: mma.sync available, every type Q5_0 or Q8_0, K a multiple of 32 whose
    staged x' fits the static shared memory. (Whether it does by default: ``DECODE_MMA``.)"""
    return (mma_supported() and all(t in V12_TYPES for t in types) and K % 32 == 0
            and 4 * (xs_floats(K) + K // 2 + WARP + 8 * 2 * MMA_M16) <= SMEM_LIMIT)


def decode_mma_config(N, K, swiglu=False):
    """(tm, s) of a v12 launch: SwiGLU one row tile of gate and up (tm 2), else one tile (tm 1); s the
    largest of 7, 4, 2, 1 that divides K's 32-weight groups (Qwen2.5-0.5B's K = 896: 28 groups, 4 per
    warp). In the simulator: one warp (no split)."""
    if not _sm_count():
        return MmaDecodeConfig(2 if swiglu else 1, 1)
    groups = K // 32
    s = next(d for d in (7, 4, 2, 1) if groups % d == 0)
    return MmaDecodeConfig(2 if swiglu else 1, s)


def launch_decode_mma(x, w_raw, ggml_type, K, out, bias=None, norm_weight=None, eps=1e-6, accumulate=False,
                      config=None, stream=0):
    """v12 on device arrays: x [K], w_raw uint8 [N, row_bytes], out [N] (see ``decode_matvec``)."""
    N = w_raw.shape[0]
    cfg = MmaDecodeConfig(*(config or decode_mma_config(N, K)))
    kern = _decode_mma_kernel("matvec", (ggml_type,), K, cfg)
    w16, _, wh, _, rb, _ = _fused_views(w_raw, ggml_type)
    b, has = _bias(bias, out)
    blocks = -(-N // (MMA_M16 * cfg.tm))
    x_, nw_, has_norm, eps_, _, _ = _stage_args(x, norm_weight, eps, K)
    kern[blocks, WARP * cfg.tm * cfg.s, stream](x_, nw_, has_norm, eps_, w16, wh, rb, N, b, has, accumulate, out)


def launch_decode_mma_swiglu(x, w_gate, gate_type, w_up, up_type, up_row0, K, out, norm_weight=None, eps=1e-6,
                             config=None, stream=0):
    """v12 SwiGLU on device arrays (see ``decode_matvec_swiglu``): out [F]."""
    F = out.shape[0]
    cfg = MmaDecodeConfig(*(config or decode_mma_config(F, K, swiglu=True)))
    kern = _decode_mma_kernel("swiglu", (gate_type, up_type), K, cfg)
    g16, _, gh, _, grb, _ = _fused_views(w_gate, gate_type)
    u16, _, uh, _, urb, _ = _fused_views(w_up, up_type)
    x_, nw_, has_norm, eps_, _, _ = _stage_args(x, norm_weight, eps, K)
    kern[-(-F // MMA_M16), WARP * cfg.tm * cfg.s, stream](x_, nw_, has_norm, eps_, g16, gh, grb, u16, uh, urb,
                                                           up_row0, F, out)


# ---------------------------------------------------------------------------------------------
# v22: Q8_0 rows as two planes, a quant plane and a scale plane (the output product's layout)
# ---------------------------------------------------------------------------------------------
PLANAR_LG = 8          # v22: lanes per row: 8 lanes x 16 bytes = 128 contiguous quant bytes per load instruction
PLANAR_CHUNK = 16      # int8 quants one 16-byte load brings (half a block of 32)
PLANAR_CONFIG = tuple(int(v) for v in os.environ.get("LLAMA_BETA_PLANAR_CONFIG", "").split(",") if v) or None
PLANAR_Q8 = os.environ.get("LLAMA_BETA_PLANAR_Q8", "0") == "1"   # v22 for the output product (opt-in: untimed)
PLANAR_MIN_ROWS = 32768   # ... for Q8_0 matrices of at least this many rows (the vocabulary-sized output)


def planar_q8_0_fits(ggml_type, N: int, K: int) -> bool:
    """Whether v22 can take a product: Q8_0, rows of whole 128-weight steps (8 lanes x 16 quants)."""
    return GGMLType(ggml_type) == GGMLType.Q8_0 and K % (PLANAR_LG * PLANAR_CHUNK) == 0 and N * K < 2 ** 31


def planar_q8_0_wanted(ggml_type, N: int, K: int) -> bool:
    """Whether the cuda backend keeps v22's copy of an output matrix: ``LLAMA_BETA_PLANAR_Q8=1``, a Q8_0 matrix of
    at least PLANAR_MIN_ROWS rows that v22 can take (``CudaBackend.prepare``; the memory plan counts it)."""
    return PLANAR_Q8 and N >= PLANAR_MIN_ROWS and planar_q8_0_fits(ggml_type, N, K)


@cuda.jit(cache=JIT_CACHE)
def planar_q8_0_kernel(w16, nb, qs16, d16):
    """Thread per Q8_0 block of 34 bytes (uint16 words: d, then 16 words of quants): block b of row n goes to
    the quant plane's words [n, 16 b : 16 b + 16] and the scale plane's d16[n, b] (the bits, not converted)."""
    i = cuda.grid(1)
    if i < w16.shape[0] // 17:
        n, b = i // nb, i % nb
        src = 17 * i
        d16[n, b] = w16[src]
        for j in range(16):
            qs16[n, 16 * b + j] = w16[src + 1 + j]


class PlanarQ8:
    """v22's layout of a Q8_0 matrix [N, K] on the device: ``qs`` int8 [N, K] (the quants, rows contiguous and
    16-byte aligned when K % 16 == 0) and ``d`` float16 [N, K / 32] (the block scales), the same 34 bytes a block
    as the GGUF layout (``ref.quants.planar_q8_0`` is the NumPy twin). Built on the device from the raw bytes."""

    def __init__(self, w_raw, K: int, stream=0):
        N, rb = w_raw.shape
        nb = K // 32
        if rb != 34 * nb:
            raise ValueError(f"PlanarQ8: rows of {rb} bytes are not the {nb} Q8_0 blocks of K={K}")
        self.n, self.k = N, K
        self.qs = cuda.device_array((N, K), np.int8, stream=stream)
        self.d = cuda.device_array((N, nb), np.float16, stream=stream)
        w16 = w_raw.reshape(N * rb).view(np.uint16)
        blocks = N * nb
        planar_q8_0_kernel[-(-blocks // 256), 256, stream](w16, nb, self.qs.view(np.uint16),
                                                          self.d.view(np.uint16))


@functools.lru_cache(maxsize=None)
def _planar_q8_kernel(NW, R, STEPS):
    """v22 kernel: NW warps, each 4 groups of PLANAR_LG lanes, R rows per group; STEPS = K / 128 (compile-time,
    so the R STEPS 16-byte loads of a pass sit in registers, all in flight before the first is used).

    Lane l of a group takes chunks c = l + 8 i (i < STEPS) of 16 quants of each of its rows: one
    ``ld.global.nc.v4`` per chunk and row (the 8 lanes of a group read 128 contiguous bytes, a warp 4 rows'
    worth), plus the float16 scale of the chunk's block. Its sum is d_c sum_j q_j x'_j (x' staged as v4 stages
    it: RMSNorm inside, padded one float per 32; the 8 chunks of one step sit in 8 different banks, and the 4
    groups read the same addresses); the quants become floats without I2F (``_qf`` on q + 128). The group's 8
    partial sums meet in 3 shuffles. A warp repeats for ``passes`` row sets one grid further on, so a launch of
    fewer blocks stages x' fewer times."""
    G = WARP // PLANAR_LG
    ND = STEPS * R                                  # chunks (and scales) a lane holds per pass
    NQ = 4 * ND                                     # ... and their quant words

    @cuda.jit(**_decode_jit(NW))
    def matvec_planar_q8(x, nw, has_norm, eps, K, q32, dh, N, passes, bias, has_bias, out):
        xs = cuda.shared.array(0, float32)          # dynamic: xs_floats(K)
        red = cuda.shared.array(WARP, float32)
        _stage_x(x, nw, has_norm, eps, K, xs, red)
        lane = cuda.threadIdx.x % WARP
        l8 = uint32(lane % PLANAR_LG)
        mg = _magic(K)
        wpr = uint32(K // 4)                        # quant words per row
        spr = uint32(K // 32)                       # scales per row
        warp_rows = G * R
        first = (cuda.blockIdx.x * NW + cuda.threadIdx.x // WARP) * warp_rows
        stride = cuda.gridDim.x * NW * warp_rows
        q = cuda.local.array(NQ, uint32)
        d = cuda.local.array(ND, float32)
        acc = cuda.local.array(R, float32)
        for p in range(passes):
            row0 = first + p * stride
            if row0 >= N:
                return                              # whole warp leaves (its rows are its groups')
            rg = row0 + (lane // PLANAR_LG) * R      # this group's first row
            t = uint32(0)
            for r in range(R):
                row = uint32(min(rg + r, N - 1))    # rows past N re-read row N - 1 and are not stored
                for i in range(STEPS):
                    c = l8 + uint32(PLANAR_LG * i)
                    w0, w1, w2, w3 = ptx.load_u32x4(q32, row * wpr + c * uint32(4))
                    at = 4 * (STEPS * r + i)
                    q[at] = w0
                    q[at + 1] = w1
                    q[at + 2] = w2
                    q[at + 3] = w3
                    t ^= w0 ^ w1 ^ w2 ^ w3
                    d[STEPS * r + i] = float32(dh[row * spr + (c >> uint32(1))])
            _keep(t, N)          # a branch on every word: ptxas keeps the loads ahead of the sums (all in flight)
            for r in range(R):
                s = float32(0.0)
                for i in range(STEPS):
                    c = l8 + uint32(PLANAR_LG * i)
                    xo = c * uint32(PLANAR_CHUNK) + (c >> uint32(1))     # padded x' index of the chunk
                    part = float32(0.0)
                    for t in range(4):
                        w = int32(q[4 * (STEPS * r + i) + t]) ^ int32(-2139062144)   # 0x80808080: q + 128
                        for j in range(4):
                            part += xs[xo + uint32(4 * t + j)] * _qf(w, j, F23_128, mg)
                    s += d[STEPS * r + i] * part
                acc[r] = _group_sum(s, PLANAR_LG)
            for r in range(R):
                _store_if(l8 == 0, acc[r], rg + r, N, bias, has_bias, False, out)

    return matvec_planar_q8


PLANAR_DEFAULT = (4, 1, 4)   # v22 at Qwen's output in the decode graph, H100: 57.9 us; (8, 1, 4) 60.1, (8, 1, 8) 63.9


def planar_config(N: int, K: int, config=None) -> tuple[int, int, int]:
    """v22's (warps per block, rows per lane group, passes): ``config`` or ``PLANAR_CONFIG``, else PLANAR_DEFAULT."""
    cfg = tuple(config or PLANAR_CONFIG or PLANAR_DEFAULT)
    return cfg + (1,) * (3 - len(cfg))


def launch_planar_q8(x, planar: PlanarQ8, out, bias=None, norm_weight=None, eps=1e-6, config=None, stream=0):
    """v22 on device arrays: out [N] = planar W [N, K] x' (+ bias), x' = x or RMSNorm(x) * norm_weight."""
    N, K = planar.n, planar.k
    if not planar_q8_0_fits(GGMLType.Q8_0, N, K):
        raise ValueError(f"launch_planar_q8: K={K} must be a multiple of {PLANAR_LG * PLANAR_CHUNK}")
    nw, R, passes = planar_config(N, K, config)
    rows_per_pass = nw * (WARP // PLANAR_LG) * R
    blocks = max(1, -(-N // (rows_per_pass * passes)))
    kern = _planar_q8_kernel(nw, R, K // (PLANAR_LG * PLANAR_CHUNK))
    x_, nw_, has_norm, eps_, _, _ = _stage_args(x, norm_weight, eps, K)
    b, has = _bias(bias, out)
    _launch(kern, blocks, nw, K, stream, x_, nw_, has_norm, eps_, K, planar.qs.reshape(N * K).view(np.uint32),
            planar.d.reshape(N * (K // 32)), N, passes, b, has, out)


# ---------------------------------------------------------------------------------------------
# __main__: check every version against ref, then time them
# ---------------------------------------------------------------------------------------------
def random_weight(rng, ggml_type, N, K):
    """Random valid raw blocks [N, row_bytes]: random bytes with finite float16 scales."""
    ggml_type = GGMLType(ggml_type)
    elems, nbytes = BLOCK_SIZES[ggml_type]
    if ggml_type == GGMLType.F32:
        return rng.standard_normal((N, K)).astype(np.float32).view(np.uint8)
    if ggml_type == GGMLType.F16:
        return rng.standard_normal((N, K)).astype(np.float16).view(np.uint8)
    blocks = rng.integers(0, 256, (N * K // elems, nbytes), dtype=np.uint8)
    scales = {GGMLType.Q6_K: [208], GGMLType.Q4_K: [0, 2], GGMLType.Q5_K: [0, 2]}.get(ggml_type, [0])
    for at in scales:                                  # scales in [2^-10, 2^-6): finite, varied
        blocks[:, at:at + 2] = rng.uniform(1e-3, 1.5e-2, len(blocks)).astype(np.float16)[:, None].view(np.uint8)
    return blocks.reshape(N, -1)


MAIN_TYPES = [GGMLType.Q8_0, GGMLType.Q5_0, GGMLType.Q4_0, GGMLType.Q4_K, GGMLType.Q5_K,
              GGMLType.Q6_K, GGMLType.F16, GGMLType.F32]
SHAPES = [  # (name, N, K, type): Qwen2.5-0.5B, then Phi-3-mini
    ("qwen output", 151936, 896, GGMLType.Q8_0), ("qwen ffn_gate/up", 4864, 896, GGMLType.Q5_0),
    ("qwen ffn_down", 896, 4864, GGMLType.Q6_K), ("qwen attn_q/o", 896, 896, GGMLType.Q5_0),
    ("qwen attn_k/v", 128, 896, GGMLType.Q5_0),
    ("phi3 attn_q/o", 3072, 3072, GGMLType.Q4_K), ("phi3 attn_qkv", 9216, 3072, GGMLType.Q5_K),
    ("phi3 ffn_gate_up", 16384, 3072, GGMLType.Q4_K), ("phi3 ffn_down", 3072, 8192, GGMLType.Q6_K),
    ("phi3 ffn_down q4k", 3072, 8192, GGMLType.Q4_K), ("phi3 output", 32064, 3072, GGMLType.Q6_K),
]
COPY_BW = 4.3e12


def _time(launch, reps=20):
    """GPU seconds per launch(stream) (runtime.kernel_time_us: no host launch cost)."""
    return kernel_time_us(lambda stream, i: launch(stream), reps) * 1e-6


FUSED_WIDTHS = {32: "v4", 8: "v5"}        # __main__ compares these two layouts (v6, width 16: tests)
FUSED_SHAPES = [  # (name, kind, rows, K, types): the fused launches of one decode step
    ("qwen qkv +norm", "multi", (896, 128, 128), 896, (GGMLType.Q5_0, GGMLType.Q5_0, GGMLType.Q8_0)),
    ("qwen gate/up swiglu", "swiglu", 4864, 896, (GGMLType.Q5_0, GGMLType.Q5_0)),
    ("qwen down +res Q6_K", "accumulate", 896, 4864, (GGMLType.Q6_K,)),
    ("qwen down +res Q4_K", "accumulate", 896, 4864, (GGMLType.Q4_K,)),
    ("qwen attn_o +res", "accumulate", 896, 896, (GGMLType.Q5_0,)),
    ("qwen output +norm", "norm", 151936, 896, (GGMLType.Q8_0,)),
    ("phi3 qkv +norm", "norm", 9216, 3072, (GGMLType.Q5_K,)),
    ("phi3 gate_up swiglu", "fused_swiglu", 8192, 3072, (GGMLType.Q4_K,)),
    ("phi3 down +res", "accumulate", 3072, 8192, (GGMLType.Q6_K,)),
]


def _ref_fused(x, nw, eps, mats, residual=None):
    """NumPy reference of the fused launches: [(y, sum|x' w| + |b|)] for each (w, type, K, bias)."""
    from ref.matmul import matmul as ref_matmul, term_magnitude
    from ref.rmsnorm import rmsnorm
    xn = x if nw is None else rmsnorm(x, nw, eps)
    out = []
    for w, t, K, b in mats:
        y, mag = ref_matmul(xn, w, t, K, b), term_magnitude(xn[None], w, t, K)[0]
        mag = mag + (0 if b is None else np.abs(b))
        if residual is not None:
            y, mag = residual + y, mag + np.abs(residual)
        out.append((y, mag))
    return out


def _check_fused_main(rng, sim):
    from ref.swiglu import swiglu
    K = 256 if sim else 3072
    N = 8 if sim else 300
    widths = [DECODE_WIDTH] if sim else list(FUSED_WIDTHS)
    cfg = (4, 2) if sim else fused_config(N)           # the simulator: one block of 128 threads; v4 layout
    print(f"\nfused decode check vs ref (N={N}, K={K}; norm, bias, accumulate); error / sum|x' w|:")
    x = rng.standard_normal(K).astype(np.float32)
    nw = rng.uniform(0.5, 1.5, K).astype(np.float32)
    x_d, nw_d = cuda.to_device(x), cuda.to_device(nw)
    for gt in MAIN_TYPES:
        w = random_weight(rng, gt, N, K)
        b = rng.standard_normal(N).astype(np.float32)
        res = rng.standard_normal(N).astype(np.float32)
        (want, mag), = _ref_fused(x, nw, 1e-6, [(w, gt, K, b)], residual=res)
        line = f"  {gt.name:5s}"
        for width in widths:
            o = cuda.to_device(res)
            launch_decode_matvec(x_d, cuda.to_device(w), gt, K, o, bias=cuda.to_device(b), norm_weight=nw_d,
                                 accumulate=True, width=width, config=cfg)
            err = np.max(np.abs(o.copy_to_host() - want) / mag)
            line += f"  {FUSED_WIDTHS[width]} {err:.1e}"
            assert err < 1e-5, (gt.name, width)
        o = cuda.to_device(res)                        # v7 split-K
        scfg = (2, 1, 2) if sim else (SPLIT_WARPS, 1, 4)
        launch_decode_matvec(x_d, cuda.to_device(w), gt, K, o, bias=cuda.to_device(b), norm_weight=nw_d,
                             accumulate=True, config=scfg)
        err = np.max(np.abs(o.copy_to_host() - want) / mag)
        line += f"  v7 {err:.1e}"
        assert err < 1e-5, (gt.name, "split")
        print(line)
    # the Q, K, V projections: three types in one launch
    types = (GGMLType.Q5_0, GGMLType.Q4_K, GGMLType.Q8_0)
    mats = [(random_weight(rng, t, n, K), t, K, rng.standard_normal(n).astype(np.float32))
            for t, n in zip(types, (N, N // 2 + 1, N // 3 + 1))]
    outs = [cuda.device_array(m[0].shape[0], np.float32) for m in mats]
    decode_matvec_multi(x_d, mats, outs, norm_weight=nw_d)
    for o, (want, mag) in zip(outs, _ref_fused(x, nw, 1e-6, mats)):
        assert np.max(np.abs(o.copy_to_host() - want) / mag) < 1e-5, "multi"
    print(f"  multi {'/'.join(t.name for t in types)} ok")
    # SwiGLU: separate gate and up (different types), then a fused gate_up tensor
    wg, wu = random_weight(rng, GGMLType.Q5_0, N, K), random_weight(rng, GGMLType.Q6_K, N, K)
    o = cuda.device_array(N, np.float32)
    decode_matvec_swiglu(x_d, wg, wu, GGMLType.Q5_0, GGMLType.Q6_K, K, o, norm_weight=nw_d)
    (g, gm), (u, um) = _ref_fused(x, nw, 1e-6, [(wg, GGMLType.Q5_0, K, None), (wu, GGMLType.Q6_K, K, None)])
    assert np.max(np.abs(o.copy_to_host() - swiglu(g, u)) / ((gm + np.abs(g)) * (um + np.abs(u)))) < 1e-5, "swiglu"
    wgu = random_weight(rng, GGMLType.Q4_K, 2 * N, K)
    decode_matvec_swiglu(x_d, wgu, None, GGMLType.Q4_K, None, K, o)
    (gu, gum), = _ref_fused(x, None, 0.0, [(wgu, GGMLType.Q4_K, K, None)])
    scale = (gum[:N] + np.abs(gu[:N])) * (gum[N:] + np.abs(gu[N:]))   # error ~ u (|g| d_u + |u| d_g)
    assert np.max(np.abs(o.copy_to_host() - swiglu(gu[:N], gu[N:])) / scale) < 1e-5, "fused swiglu"
    print("  swiglu Q5_0 gate + Q6_K up, fused Q4_K gate_up ok")


def _time_fused_main(rng):
    print("\nmatvec timings, fused decode versions (weight bytes / time; % of 4.3 TB/s); "
          f"v4/v5 = a lane dots 32/8 weights; * = the default (DECODE_WIDTH={DECODE_WIDTH})")
    for name, N, K, gt in SHAPES:
        w_d = cuda.to_device(random_weight(rng, gt, N, K))
        x_d = cuda.to_device(rng.standard_normal(K).astype(np.float32))
        o = cuda.device_array(N, np.float32)
        line = f"  {name:18s} {N:6d}x{K:<5d} {gt.name:5s}"
        for width, v in FUSED_WIDTHS.items():
            s = _time(lambda st: launch_decode_matvec(x_d, w_d, gt, K, o, width=width, config=fused_config(N),
                                                      stream=st))
            gbs = w_d.nbytes / s / 1e9
            line += f"  {v}{'*' if width == DECODE_WIDTH else ' '} {s * 1e6:6.1f} us {gbs:5.0f} GB/s {100 * gbs * 1e9 / COPY_BW:3.0f}%"
        print(line + f"  cfg {fused_config(N)}")
    print("\nfused launches of a decode step (norm / bias / residual / SwiGLU inside; bytes = weights); "
          "v4/v5 with fused_config, v7 = split-K (16 warps, S warps a row; * = decode_matvec's default)")
    for name, kind, rows, K, types in FUSED_SHAPES:
        x_d = cuda.to_device(rng.standard_normal(K).astype(np.float32))
        nw_d = cuda.to_device(rng.uniform(0.5, 1.5, K).astype(np.float32))
        if kind == "multi":
            mats = [(cuda.to_device(random_weight(rng, t, n, K)), t, K, cuda.to_device(np.zeros(n, np.float32)))
                    for t, n in zip(types, rows)]
            outs = [cuda.device_array(n, np.float32) for n in rows]
            nbytes = sum(m[0].nbytes for m in mats)
            dev = [(w, t, b) for w, t, _, b in mats]
            run = lambda st, wd: launch_decode_multi(x_d, dev, outs, K, norm_weight=nw_d, width=wd, stream=st)
        elif kind in ("swiglu", "fused_swiglu"):
            F = rows
            wg = cuda.to_device(random_weight(rng, types[0], F if kind == "swiglu" else 2 * F, K))
            wu = cuda.to_device(random_weight(rng, types[-1], F, K)) if kind == "swiglu" else wg
            up0 = 0 if kind == "swiglu" else F
            o = cuda.device_array(F, np.float32)
            nbytes = wg.nbytes + (wu.nbytes if kind == "swiglu" else 0)
            run = lambda st, wd: launch_decode_swiglu(x_d, wg, types[0], wu, types[-1], up0, K, o,
                                                      norm_weight=nw_d, width=wd, stream=st)
        else:
            w_d = cuda.to_device(random_weight(rng, types[0], rows, K))
            o = cuda.to_device(np.zeros(rows, np.float32))
            nbytes = w_d.nbytes
            run = lambda st, wd, cfg=fused_config(rows): launch_decode_matvec(
                x_d, w_d, types[0], K, o, norm_weight=nw_d if kind == "norm" else None,
                accumulate=kind == "accumulate", width=wd, config=cfg, stream=st)
        line = f"  {name:20s} {nbytes / 1e6:7.2f} MB"
        for width, v in FUSED_WIDTHS.items():
            s = _time(lambda st: run(st, width))
            gbs = nbytes / s / 1e9
            line += f"  {v}{'*' if width == DECODE_WIDTH else ' '} {s * 1e6:6.1f} us {gbs:5.0f} GB/s {100 * gbs * 1e9 / COPY_BW:3.0f}%"
        if kind == "accumulate":                        # v7 split-K (the default where split_config splits)
            cfg = split_config(rows, K, DECODE_WIDTH, min_split=2)
            s = _time(lambda st: run(st, DECODE_WIDTH, cfg))
            gbs = nbytes / s / 1e9
            star = "*" if decode_config(rows, K, DECODE_WIDTH) == cfg else " "
            line += f"  v7{star} {s * 1e6:6.1f} us {gbs:5.0f} GB/s {100 * gbs * 1e9 / COPY_BW:3.0f}% S={cfg[2]}"
        print(line)


PREFILL_T = 512
PREFILL_SHAPES = [  # (name, kind, N or F, K, type(s)): the prefill products at T = PREFILL_T
    ("qwen ffn_gate/up", "plain", 4864, 896, (GGMLType.Q5_0,)),
    ("qwen attn_q/o", "plain", 896, 896, (GGMLType.Q5_0,)),
    ("qwen attn_k/v", "plain", 128, 896, (GGMLType.Q8_0,)),
    ("qwen ffn_down", "plain", 896, 4864, (GGMLType.Q4_K,)),
    ("qwen ffn_down", "plain", 896, 4864, (GGMLType.Q6_K,)),
    ("qwen gate/up swiglu", "swiglu", 4864, 896, (GGMLType.Q5_0, GGMLType.Q5_0)),
    ("phi3 attn_qkv", "plain", 9216, 3072, (GGMLType.Q5_K,)),
    ("phi3 attn_q/o", "plain", 3072, 3072, (GGMLType.Q4_K,)),
    ("phi3 ffn_gate_up", "plain", 16384, 3072, (GGMLType.Q4_K,)),
    ("phi3 ffn_down", "plain", 3072, 8192, (GGMLType.Q6_K,)),
]


def _config_name(cfg):
    bm, bn, kc, _, _ = prefill_sizes(cfg)
    return f"{bm}x{bn}/{cfg.mt}x{cfg.nt}/g{cfg.groups}"


def _check_prefill_main(rng, sim):
    """v10 against ref: every type with bias and residual add (every configuration on the GPU), SwiGLU."""
    from ref.matmul import matmul as ref_matmul, term_magnitude
    from ref.swiglu import swiglu
    T, N, K = (5, 10, 256) if sim else (70, 300, 2048)
    configs = [None] if sim else list(PREFILL_CONFIGS)
    print(f"\nv10 prefill check vs ref (T={T}, N={N}, K={K}; bias + residual add); error / sum|x w|:")
    x = rng.standard_normal((T, K)).astype(np.float32)
    x_d = cuda.to_device(x)
    for gt in MAIN_TYPES:
        w = random_weight(rng, gt, N, K)
        b = rng.standard_normal(N).astype(np.float32)
        res = rng.standard_normal((T, N)).astype(np.float32)
        want = res + ref_matmul(x, w, gt, K, b)
        mag = term_magnitude(x, w, gt, K) + np.abs(b) + np.abs(res)
        line = f"  {gt.name:5s}"
        for cfg in configs:
            o = cuda.to_device(res)
            matmul_prefill(x_d, cuda.to_device(w), gt, K, o, bias=cuda.to_device(b), accumulate=True, config=cfg)
            err = np.max(np.abs(o.copy_to_host() - want) / mag)
            line += f"  {_config_name(cfg or prefill_config(T, N))} {err:.1e}"
            assert err < 1e-5, (gt.name, cfg)
        print(line)
    wg, wu = random_weight(rng, GGMLType.Q5_0, N, K), random_weight(rng, GGMLType.Q6_K, N, K)
    g, u = ref_matmul(x, wg, GGMLType.Q5_0, K), ref_matmul(x, wu, GGMLType.Q6_K, K)
    gm, um = term_magnitude(x, wg, GGMLType.Q5_0, K), term_magnitude(x, wu, GGMLType.Q6_K, K)
    scale = (gm + np.abs(g)) * (um + np.abs(u))           # error ~ u (|g| d_u + |u| d_g), as the decode check
    o = cuda.device_array((T, N), np.float32)
    matmul_prefill_swiglu(x_d, wg, GGMLType.Q5_0, wu, GGMLType.Q6_K, K, o)
    err = np.max(np.abs(o.copy_to_host() - swiglu(g, u)) / scale)
    print(f"  swiglu Q5_0 gate + Q6_K up {err:.1e}")
    assert err < 1e-5, "prefill swiglu"
    _check_mma_main(rng, sim)


def _half(a):
    """a rounded to float16 and back (v11's operands)."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def _check_mma_main(rng, sim):
    """v11 against ref on float16-rounded operands (the product v11 computes, float32 sums) and, for scale,
    against the float32 ref: every type with bias and residual add, every configuration, SwiGLU."""
    from ref.quants import dequantize
    T, N, K = (5, 10, 256) if sim else (70, 300, 2048)
    configs = [None] if sim else list(MMA_CONFIGS)
    print(f"\nv11 (tensor cores) check (T={T}, N={N}, K={K}; bias + residual add); error / sum|x w| against "
          f"the product of float16-rounded x and W, then against the float32 product:")
    x = rng.standard_normal((T, K)).astype(np.float32)
    x_d, xh = cuda.to_device(x), _half(x).astype(np.float64)
    for gt in MAIN_TYPES:
        w = random_weight(rng, gt, N, K)
        W = dequantize(w, gt, (N, K))
        b = rng.standard_normal(N).astype(np.float32)
        res = rng.standard_normal((T, N)).astype(np.float32)
        mag = np.abs(x) @ np.abs(W).T + np.abs(b) + np.abs(res)
        want16, want32 = res + (xh @ _half(W).astype(np.float64).T + b), res + (x @ W.T + b)
        line = f"  {gt.name:5s}"
        for cfg in configs:
            o = cuda.to_device(res)
            matmul_prefill(x_d, cuda.to_device(w), gt, K, o, bias=cuda.to_device(b), accumulate=True, config=cfg,
                           mma=True)
            got = o.copy_to_host()
            err16, err32 = np.max(np.abs(got - want16) / mag), np.max(np.abs(got - want32) / mag)
            name = "x".join(map(str, mma_sizes(cfg or mma_config(T, N, K))[:2]))
            line += f"  {name} {err16:.1e} ({err32:.1e})"
            assert err16 < 1e-5, (gt.name, cfg)
        o23 = cuda.to_device(res)                  # v23: W decoded once, then the GEMM; v11's bits
        PrefillProduct(cuda.to_device(w), gt, K, bias=cuda.to_device(b), accumulate=True, mma=True, x16=True,
                       f16w=True, split=1)(_x16_tiles(x_d), o23.reshape(T * N), T)
        o11 = cuda.to_device(res)
        matmul_prefill(x_d, cuda.to_device(w), gt, K, o11, bias=cuda.to_device(b), accumulate=True, mma=True)
        assert np.array_equal(o23.copy_to_host(), o11.copy_to_host()), (gt.name, "v23 differs from v11")
        print(line + "  v23 = v11 bit for bit")
    wg, wu = random_weight(rng, GGMLType.Q5_0, N, K), random_weight(rng, GGMLType.Q6_K, N, K)
    Wg = _half(dequantize(wg, GGMLType.Q5_0, (N, K))).astype(np.float64)
    Wu = _half(dequantize(wu, GGMLType.Q6_K, (N, K))).astype(np.float64)
    g, u = xh @ Wg.T, xh @ Wu.T
    scale = (np.abs(xh) @ np.abs(Wg).T + np.abs(g)) * (np.abs(xh) @ np.abs(Wu).T + np.abs(u))   # as v10's check
    o = cuda.device_array((T, N), np.float32)
    matmul_prefill_swiglu(x_d, wg, GGMLType.Q5_0, wu, GGMLType.Q6_K, K, o, mma=True)
    from ref.swiglu import swiglu
    err = np.max(np.abs(o.copy_to_host() - swiglu(g.astype(np.float32), u.astype(np.float32))) / scale)
    print(f"  swiglu Q5_0 gate + Q6_K up {err:.1e}")
    assert err < 1e-5, "v11 swiglu"


def _x16_tiles(x_d):
    """Device float32 x [T, K] -> v23's x16 (float16 pairs in its tile order, whole blocks of 16 tokens)."""
    T, K = x_d.shape
    x16 = cuda.to_device(np.zeros(tile_words(T, K), np.uint32))      # (the padding rows: zeros)
    launch_pack_f16(x_d.reshape(T * K), x16, T * K, tile_k=K)
    return x16


def _time_prefill_main(rng):
    """TFLOP/s (2 T N K per product) of v3, v10, v11 and v23 at T = PREFILL_T; SwiGLU: v3 = two launches."""
    T = PREFILL_T
    print(f"\nmatmul prefill (T={T}) timings: v3 matmul_tiled, v10 matmul_prefill (its config: "
          f"tile tokens x rows / micro-tile / groups), v11 on the tensor cores, v23 (decode + GEMM)")
    for name, kind, N, K, types in PREFILL_SHAPES:
        x_d = cuda.to_device(rng.standard_normal((T, K)).astype(np.float32))
        ws = [cuda.to_device(random_weight(rng, t, N, K)) for t in types]
        o = cuda.device_array((T, N), np.float32)
        o2 = cuda.device_array((T, N), np.float32)
        if kind == "swiglu":
            v3 = lambda st: (launch_matmul_tiled(x_d, ws[0], types[0], K, None, o, st),
                             launch_matmul_tiled(x_d, ws[1], types[1], K, None, o2, st))
            v10 = lambda st: launch_matmul_prefill_swiglu(x_d, ws[0], types[0], ws[1], types[1], 0, K, o, stream=st)
            cfg = prefill_config(T, N, swiglu=True)
        else:
            v3 = lambda st: launch_matmul_tiled(x_d, ws[0], types[0], K, None, o, st)
            v10 = lambda st: launch_matmul_prefill(x_d, ws[0], types[0], K, o, stream=st)
            cfg = prefill_config(T, N)
        swiglu = kind == "swiglu"
        v11 = PrefillProduct(ws[0], types[0], K, up=(ws[1], types[1], 0) if swiglu else None, mma=True)
        v23 = PrefillProduct(ws[0], types[0], K, up=(ws[1], types[1], 0) if swiglu else None, mma=True, x16=True,
                             f16w=True)
        x16 = _x16_tiles(x_d)
        flop = 2 * T * N * K * len(ws)
        line = f"  {name:20s} {N:6d}x{K:<5d} {'/'.join(t.name for t in types):9s}"
        for v, launch in (("v3", v3), ("v10", v10), ("v11", lambda st: v11(x_d.reshape(T * K), o.reshape(T * N), T, st)),
                          ("v23", lambda st: v23(x16, o.reshape(T * N), T, st))):
            s = _time(launch, reps=5)
            line += f"  {v} {s * 1e6:8.1f} us {flop / s / 1e12:5.1f} TFLOP/s"
        mcfg = mma_config(T, N, K, swiglu)
        print(line + f"  {_config_name(cfg)} {'x'.join(map(str, prefill_grid(cfg, T, N, swiglu)))} blocks; v11 "
              f"{'x'.join(map(str, mma_sizes(mcfg)[:2]))} {'x'.join(map(str, mma_grid(mcfg, T, N, swiglu)))} blocks")



def _main():
    from ref.matmul import matmul as ref_matmul, term_magnitude

    rng = np.random.default_rng(0)
    sim = bool(config.ENABLE_CUDASIM)
    N, K, T = (12, 512, 3) if sim else (300, 2048, 70)
    print(f"check vs ref (N={N}, K={K}, T={T}); error / sum|x w|:")
    for gt in MAIN_TYPES:
        w = random_weight(rng, gt, N, K)
        x = rng.standard_normal((T, K)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        want = ref_matmul(x, w, gt, K, bias)
        scale = term_magnitude(x, w, gt, K) + np.abs(bias)
        x_d, w_d, b_d = cuda.to_device(x[:1].reshape(K)), cuda.to_device(w), cuda.to_device(bias)
        errs = []
        for launch in (launch_matvec_v1, launch_matvec_v2):
            o = cuda.device_array(N, np.float32)
            launch(x_d, w_d, gt, K, b_d, o)
            errs.append(np.max(np.abs(o.copy_to_host() - want[0]) / scale[0]))
        for version in (3, 10):
            got = matmul(x, w, gt, K, bias, version=version)
            errs.append(np.max(np.abs(got - want) / scale))
        print(f"  {gt.name:5s} v1 {errs[0]:.1e}  v2 {errs[1]:.1e}  v3 {errs[2]:.1e}  v10 {errs[3]:.1e}")
        assert max(errs) < 1e-5, gt.name
    _check_fused_main(rng, sim)
    _check_prefill_main(rng, sim)
    if sim:
        return
    print("\nmatvec timings (weight bytes / time; % of 4.3 TB/s copy bandwidth)")
    for name, N, K, gt in SHAPES:
        w_d = cuda.to_device(random_weight(rng, gt, N, K))
        x_d = cuda.to_device(rng.standard_normal(K).astype(np.float32))
        o = cuda.device_array(N, np.float32)
        line = f"  {name:18s} {N:6d}x{K:<5d} {gt.name:5s}"
        for v, launch in (("v1", launch_matvec_v1), ("v2", launch_matvec_v2)):
            if v == "v2" and K > MAX_K_SHARED:
                continue
            s = _time(lambda st: launch(x_d, w_d, gt, K, None, o, st))
            gbs = w_d.nbytes / s / 1e9
            line += f"  {v} {s * 1e6:7.1f} us {gbs:6.0f} GB/s {100 * gbs * 1e9 / COPY_BW:3.0f}%"
        print(line)
    _time_fused_main(rng)
    _time_prefill_main(rng)


def _main_prefill():
    """``python -m numba_kernels.matmul prefill``: only v10's check and the prefill timings."""
    rng = np.random.default_rng(0)
    sim = bool(config.ENABLE_CUDASIM)
    _check_prefill_main(rng, sim)
    if not sim:
        _time_prefill_main(rng)


if __name__ == "__main__":
    import sys
    if config.ENABLE_CUDASIM:                      # v1, v2 and the fused kernels use warp shuffles
        from numba_kernels.runtime import install_simulator_shuffles
        install_simulator_shuffles()
    _main_prefill() if sys.argv[1:] == ["prefill"] else _main()
