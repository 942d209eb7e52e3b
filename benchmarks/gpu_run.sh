#!/usr/bin/env bash
# One GPU-machine session: the kernel test suite for real, every kernel's __main__ check and timing,
# and end-to-end benchmarks. Results land in $OUT (or benchmarks/results/ when OUT is unset).
# Usage: bash benchmarks/gpu_run.sh [tests] [kernels] [bench] [decode] [variants] [prefill] [v12] [phi3] [phi3prof]
#        [ladder] [toggles] [ncu] [x8] [x8test] [x16] [chain] [kv16] [kv16test] [ab] [real] [output] [planar] [s22]
#        [f16w]
#   needs the numpy<2.5 wheel in .whl/ (shared/device/fetch_wheels.sh) on the lent H200 image.
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if [ -d .whl ] && [ ! -d /tmp/site/numpy ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 LLAMA_BETA_CACHE=/tmp/llama-beta-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | tee -a "$OUT/gpu.txt"
if [ -d .dev-model/vocab ]; then   # llama.cpp's vocabulary files: the registry finds them offline
  mkdir -p "$LLAMA_BETA_CACHE/models" && cp -n .dev-model/vocab/* "$LLAMA_BETA_CACHE/models/"
fi

for step in "$@"; do
  case "$step" in
    tests)    # the whole suite, kernels for real (tests needing the 491 MB model skip unless it is cached).
      #          Serially it is over 10 minutes (each launch configuration compiles), so: the memory tests
      #          alone (they read free device memory), then the rest in groups side by side, without the disk cache.
      start=$SECONDS
      timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_memory.py > "$OUT/pytest-gpu-0.log" 2>&1
      #          test_matvec_fused.py compiles a kernel per hypothesis example (3-5 s each on the H200): over 7
      #          minutes in one process, so its tests run as five groups (-k) of their own.
      others=$(ls tests/test_*.py | grep -v -e test_memory -e test_matvec_fused -e test_attention -e test_upload -e test_tokenizer)
      #          The second half of the other files ran past 420 s in one process (tenth session: test_matmul 264 s,
      #          test_matvec_mma 160, test_model 155, test_phi3 136 with the real model cached): one process each.
      i=1
      for group in tests/test_attention.py "tests/test_upload.py tests/test_tokenizer.py" \
          "$(echo "$others" | head -15)" $(echo "$others" | tail -n +16); do
        (LLAMA_BETA_JIT_CACHE=0 timeout 420 python3 -m pytest -q -p no:cacheprovider $group > "$OUT/pytest-gpu-$i.log" 2>&1
         echo "group $i exit $? at $((SECONDS - start)) s") &
        i=$((i + 1))
      done
      for k in "decode_matvec_matches_ref or public_decode or split_k or split_config" "multi_matches" \
          "swiglu" "qkv_rope" "not (decode_matvec_matches_ref or public_decode or split_k or split_config \
          or multi_matches or swiglu or qkv_rope)"; do
        (LLAMA_BETA_JIT_CACHE=0 timeout 420 python3 -m pytest -q -p no:cacheprovider tests/test_matvec_fused.py \
           -k "$k" > "$OUT/pytest-gpu-$i.log" 2>&1
         echo "group $i (test_matvec_fused: $k) exit $? at $((SECONDS - start)) s") &
        i=$((i + 1))
      done
      wait
      #          one line per log (their files may be too many to come back from the machine), then the failures
      for log in "$OUT"/pytest-gpu-*.log; do echo "$(basename "$log"): $(grep -E "passed|failed" "$log" | tail -1)"; done
      grep -h -E "^(FAILED|ERROR) " "$OUT"/pytest-gpu-*.log ;;
    output)   # issue 4's output shape alone: v4 on the raw blocks, v22 on the two planes (configs), a pure read;
      #          then the cost of a grid barrier (the question before a persistent decode kernel)
      timeout 240 python3 benchmarks/output_product.py --json "$OUT/output-product.json" ${OUTPUT_CONFIGS:-} \
        2>&1 | grep -v -i warn | tee "$OUT/output-product.txt"
      timeout 120 python3 benchmarks/grid_sync_probe.py 2>&1 | grep -v -i warn | tee "$OUT/grid-sync.txt" ;;
    planar)   # v22 (the Q8_0 output product over two planes) in the WHOLE Qwen decode step, per launch and replayed
      model=/tmp/qwen-synth.gguf
      [ -f $model ] || python3 -m llama_beta.cli synth $model --preset qwen2.5-0.5b \
        --vocab .dev-model/vocab/ggml-vocab-qwen2.gguf --force -q
      best=""   # the fastest v22 config of the output step, when it ran before in this call
      [ -f "$OUT/output-product.json" ] && best=$(python3 -c "import json; r = [x for x in json.load(open('$OUT/output-product.json'))['rows'] if x['kernel'].startswith('v22')]; print('LLAMA_BETA_PLANAR_CONFIG=' + min(r, key=lambda x: x['us'])['kernel'][5:-1].replace(' ', '') if r else '')")
      for v in LLAMA_BETA_PLANAR_Q8=0 LLAMA_BETA_PLANAR_Q8=1 $best ${PLANAR_ENVS:-}; do
        echo "== $v"
        env LLAMA_BETA_PLANAR_Q8=1 "$v" timeout 120 python3 benchmarks/profile_decode.py $model \
          --json "$OUT/planar-$(echo "${v#LLAMA_BETA_}" | tr =, -x).json" 2>&1 | grep -v -i warn | tail -12
      done | tee "$OUT/planar.txt" ;;
    s22)      # the twenty-second session's kernels in one call: their GPU tests (v22, v11's 16-byte x16 loads), the
      #          output shape (the output step), and the Phi-3 twin's prefill per launch kind with x16 (the default)
      LLAMA_BETA_JIT_CACHE=0 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_matmul.py \
        tests/test_matvec_fused.py tests/test_ptx.py -k "x16 or planar or decode8 or shr_u32" 2>&1 | tail -4
      timeout 200 python3 benchmarks/output_product.py --json "$OUT/output-product.json" 2>&1 | grep -v -i warn \
        | tee "$OUT/output-product.txt"
      model=/tmp/phi3-mini.gguf
      [ -f $model ] || python3 -m llama_beta.cli synth $model --preset phi3-mini \
        --vocab .dev-model/vocab/ggml-vocab-phi-3.gguf --force -q
      timeout 150 python3 benchmarks/profile_prefill.py $model 512 --no-cprofile 2>&1 | grep -v -i warn | tail -14 \
        | tee "$OUT/x16-prefill.txt" ;;
    f16w)     # matmul v23 (LLAMA_BETA_PREFILL_F16W=1, twenty-third session, never timed) and the session's fused
      #          x16 producers (norm, attention v8, SwiGLU), grouped RoPE heads and attention v9
      #          (LLAMA_BETA_PREFILL_ATTN_MMA=1): their GPU tests, the 512-token prefill of both twins per
      #          launch kind with the defaults, v23, and v23 + attention v9, side by side, then
      #          every prefill shape: v11's chosen tile (float32 and x16) against each v23 tile and its decode alone
      LLAMA_BETA_JIT_CACHE=0 timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_matmul.py \
        tests/test_ptx.py tests/test_cuda_prefill.py tests/test_attention.py tests/test_rope.py -k "f16w or \
        fragment or lines or cp_async or tile_order or norm_pack or next_products or float16 or head_groups or \
        flash_mma or tensor_core_attention" \
        2>&1 | tail -4
      for preset in phi3-mini qwen2.5-0.5b; do
        model=/tmp/$preset.gguf vocab=.dev-model/vocab/ggml-vocab-$([ $preset = phi3-mini ] && echo phi-3 || echo qwen2).gguf
        [ -f $model ] || python3 -m llama_beta.cli synth $model --preset $preset --vocab $vocab --force -q
        for f in "0 0" "1 0" "1 1"; do                # (v23, attention v9): off/off, on/off, on/on
          read -r fw am <<< "$f"
          echo "== $preset prefill-512, LLAMA_BETA_PREFILL_F16W=$fw LLAMA_BETA_PREFILL_ATTN_MMA=$am"
          LLAMA_BETA_PREFILL_F16W=$fw LLAMA_BETA_PREFILL_ATTN_MMA=$am timeout 150 python3 benchmarks/profile_prefill.py \
            $model 512 --no-cprofile 2>&1 | grep -v -i warn | tail -14
        done
      done 2>&1 | tee "$OUT/f16w-prefill.txt"
      timeout 300 python3 benchmarks/sweep_prefill_tiles.py 512 --v11 --v23 --chosen --x16 2>&1 \
        | grep -v -i warn | tee "$OUT/f16w-sweep.txt"
      # then, if the sweep says another tile or split wins: the whole prefill with it, e.g.
      # LLAMA_BETA_PREFILL_F16W=1 LLAMA_BETA_F16W_CONFIG=4,2,2,4 LLAMA_BETA_F16W_SPLIT=2 profile_prefill.py ...
      ;;
    kernels)  # every kernel file's __main__: check against ref, then time
      for k in dequant embedding rmsnorm residual rope swiglu softmax sampling attention matmul ptx bpe; do
        [ -f "numba_kernels/$k.py" ] || continue
        echo "== numba_kernels.$k"; timeout 120 python3 -m "numba_kernels.$k" 2>&1 | grep -v Warning | tail -30
      done 2>&1 | tee "$OUT/kernels-gpu.log" ;;
    bench)    # a Qwen2.5-0.5B-shaped synthetic model, same tensor shapes and type mix as the default model
      #          and vocabulary (without the vocabulary file the output layer would be a tiny one)
      vocab=.dev-model/vocab/ggml-vocab-qwen2.gguf
      [ -f "$vocab" ] || { echo "bench: $vocab missing (the git-ignored .dev-model/vocab, see NOTES.md)"; continue; }
      python3 -m llama_beta.cli synth /tmp/qwen-synth.gguf --preset qwen2.5-0.5b --vocab $vocab --force -q
      timeout 300 python3 -m llama_beta.cli bench --model /tmp/qwen-synth.gguf --backend cuda -p 512 -n 128 -r 3 \
        -o "$OUT/bench-qwen-synth-cuda.json" 2>&1 | tail -8 ;;
    decode)   # decode variants (readable/fused layer body, with/without graph) on $DECODE_MODEL
      #          (default: the real model if assembled, else a synthetic one with its shapes and type mix)
      model=${DECODE_MODEL:-/tmp/qwen.gguf}
      if [ ! -f "$model" ]; then
        model=/tmp/qwen-synth.gguf vocab=.dev-model/vocab/ggml-vocab-qwen2.gguf
        [ -f "$vocab" ] || vocab=tiny
        [ -f $model ] || python3 -m llama_beta.cli synth $model --preset qwen2.5-0.5b --vocab $vocab --force -q
      fi
      for variant in $(echo "${DECODE_VARIANTS:-readable:0:16,readable:1:128,fused:1:128}" | tr , ' '); do
        IFS=: read -r body graph n <<< "$variant"
        echo "== $(basename $model): decode body $body, graph $graph"
        LLAMA_BETA_DECODE=$body LLAMA_BETA_GRAPH=$graph timeout 200 python3 -m llama_beta.cli bench \
          --model $model --backend cuda -p 512 -n "$n" -r 3 -o "$OUT/bench-$(basename $model .gguf)-$body-graph$graph.json" 2>&1 | tail -6
      done ;;
    variants) # the decode step's optimizations one at a time on the Qwen2.5-0.5B-shaped synthetic model:
      #          VARIANTS="label:ENV=V,ENV=V label2:..." (default below), each a bench with those variables
      model=/tmp/qwen-synth.gguf
      [ -f $model ] || python3 -m llama_beta.cli synth $model --preset qwen2.5-0.5b \
        --vocab .dev-model/vocab/ggml-vocab-qwen2.gguf --force -q
      for variant in ${VARIANTS:-default: no-warm:LLAMA_BETA_MATVEC_WARM=0 attention-v6:LLAMA_BETA_ATTENTION=v6 \
          attention-v4:LLAMA_BETA_ATTENTION=v4 no-split-k:LLAMA_BETA_SPLIT_K=0}; do
        label=${variant%%:*} vars=${variant#*:}
        echo "== $label ${vars:-(defaults)}"
        env ${vars//,/ } timeout 200 python3 -m llama_beta.cli bench --model $model --backend cuda -p 512 -n 128 -r 3 \
          -o "$OUT/bench-qwen-synth-$label.json" 2>&1 | tail -5
      done ;;
    phi3)     # a Phi-3-mini-shaped synthetic model (3.8B, Q4_K_M-like mix, the real Phi-3 vocabulary)
      python3 -m llama_beta.cli synth /tmp/phi3-mini.gguf --preset phi3-mini --vocab .dev-model/vocab/ggml-vocab-phi-3.gguf --force -q
      ls -la /tmp/phi3-mini.gguf
      timeout 200 python3 -m llama_beta.cli generate --model /tmp/phi3-mini.gguf --backend cuda --max-tokens 16 --seed 1 "Hello" 2>&1 | tail -2
      timeout 250 python3 -m llama_beta.cli bench --model /tmp/phi3-mini.gguf --backend cuda -p 512 -n 128 -r 3 \
        -o "$OUT/bench-phi3-mini-synth-fused-graph1.json" 2>&1 | tail -6 ;;
    phi3prof) # the Phi-3-mini-shaped twin's decode step per launch, then the sweeps the eighth session left for
      #          the next one: attention v4 with fewer chunks per head (one wave), Q/K/V blocks of 4 or 16 warps and
      #          two RoPE pair slots per warp (matmul.QKV_ROPE_PAIRS),
      #          gate/up under launch bounds (matmul.DECODE_MIN_BLOCKS)
      model=/tmp/phi3-mini.gguf
      [ -f $model ] || python3 -m llama_beta.cli synth $model --preset phi3-mini \
        --vocab .dev-model/vocab/ggml-vocab-phi-3.gguf --force -q
      timeout 120 python3 benchmarks/profile_decode.py $model --reps 50 --json "$OUT/profile-decode-phi3.json" 2>&1 \
        | grep -v -i warn
      for blocks in 256 128; do echo "== attention v4, about $blocks blocks"
        timeout 60 python3 benchmarks/profile_decode.py $model --reps 50 --only attention --v4-blocks $blocks 2>&1 | grep -v -i warn
      done
      for wp in 4:1 16:1 4:2 8:2; do echo "== Q/K/V + RoPE, ${wp%:*} warps per block, ${wp#*:} pair slots per warp"
        timeout 60 python3 benchmarks/profile_decode.py $model --reps 50 --only qkv --qkv-warps ${wp%:*} \
          --qkv-pairs ${wp#*:} 2>&1 | grep -v -i warn
      done
      echo "== gate/up with launch bounds of 4 blocks per SM (one wave; spills a little)"
      LLAMA_BETA_DECODE_MIN_BLOCKS=4 LLAMA_BETA_JIT_CACHE=0 timeout 90 python3 benchmarks/profile_decode.py $model --reps 50 \
        --only gate 2>&1 | grep -v -i warn ;;
    ladder)   # where a decode product's time goes (benchmarks/ladder.py): each launch with its dot product's work
      #          removed (skeleton), with the loads only (loads), and real (full), on both twins; ~1 min a run;
      #          then the whole step with the K/V cache prefetched into L2 by the Q/K/V launch (opt-in, unmeasured)
      for m in phi3-mini:phi3-mini:ggml-vocab-phi-3 qwen-synth:qwen2.5-0.5b:ggml-vocab-qwen2; do
        IFS=: read -r name preset vocab <<< "$m"
        [ -f /tmp/$name.gguf ] || python3 -m llama_beta.cli synth /tmp/$name.gguf --preset $preset \
          --vocab .dev-model/vocab/$vocab.gguf --force -q
        for rung in skeleton loads full; do echo "== $name, ladder rung $rung"
          LLAMA_BETA_JIT_CACHE=0 timeout 120 python3 benchmarks/profile_decode.py /tmp/$name.gguf --reps 50 \
            --ladder $rung --json "$OUT/ladder-$name-$rung.json" 2>&1 | grep -v -i warn
        done
        echo "== $name, the Q/K/V launch prefetching the K/V cache into L2 (matmul.KV_PREFETCH; compare whole steps)"
        timeout 120 python3 benchmarks/profile_decode.py /tmp/$name.gguf --reps 50 --kv-prefetch \
          --json "$OUT/kv-prefetch-$name.json" 2>&1 | grep -v -i warn | tail -3
      done ;;
    toggles)  # each decode switch in $TOGGLES against the defaults, whole decode steps of both twins
      #          (profile_decode.py): a name is turned off (NAME=0), NAME=VALUE is set. Default: the defaults
      #          v17 and v15 turned off (the prefetch branch's windows were measured in the twelfth session and
      #          the branch removed; the disk cache keeps these apart, see test_disk_cache_key_sees_the_decode_settings)
      for m in phi3-mini:phi3-mini:ggml-vocab-phi-3 qwen-synth:qwen2.5-0.5b:ggml-vocab-qwen2; do
        IFS=: read -r name preset vocab <<< "$m"
        [ -f /tmp/$name.gguf ] || python3 -m llama_beta.cli synth /tmp/$name.gguf --preset $preset \
          --vocab .dev-model/vocab/$vocab.gguf --force -q
        for toggle in defaults ${TOGGLES:-LLAMA_BETA_WARM_L2 LLAMA_BETA_VECTOR_LOADS}; do
          [[ $toggle = *=* || $toggle = defaults ]] || toggle=$toggle=0
          echo "== $name, $toggle"
          env $([ $toggle = defaults ] || echo $toggle) timeout 120 python3 benchmarks/profile_decode.py \
            /tmp/$name.gguf --reps 50 --json "$OUT/toggle-$name-${toggle//=/-}.json" 2>&1 | grep -v -i warn
        done
      done ;;
    ncu)      # Nsight Compute: one layer of the Phi-3-shaped prefill (where v11 loses its time), and one decode layer
      #          of the Qwen twin with the split-K kernel's staging both ways (why v13's staging slows it)
      for m in phi3-mini:phi3-mini:ggml-vocab-phi-3 qwen-synth:qwen2.5-0.5b:ggml-vocab-qwen2; do
        IFS=: read -r name preset vocab <<< "$m"
        [ -f /tmp/$name.gguf ] || python3 -m llama_beta.cli synth /tmp/$name.gguf --preset $preset \
          --vocab .dev-model/vocab/$vocab.gguf --force -q
      done
      sections="--section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats"
      timeout 240 ncu --profile-from-start off $sections --section MemoryWorkloadAnalysis \
        python3 benchmarks/profile_prefill.py /tmp/phi3-mini.gguf 512 --ncu > "$OUT/ncu-prefill-phi3.txt" 2>&1
      grep -E "^  [a-z_].*\(|Duration|Compute \(SM\)|Memory Throughput|Achieved Occ" "$OUT/ncu-prefill-phi3.txt" | cut -c1-110
      for loads in 1 4; do
        LLAMA_BETA_SPLIT_STAGE_LOADS=$loads LLAMA_BETA_JIT_CACHE=0 timeout 150 ncu --profile-from-start off $sections \
          python3 benchmarks/profile_decode.py /tmp/qwen-synth.gguf --ncu > "$OUT/ncu-decode-split-stage$loads.txt" 2>&1
        echo "== split-K staging with $loads loads"; grep -A12 "matvec_split" "$OUT/ncu-decode-split-stage$loads.txt" \
          | grep -E "Duration|Registers|Achieved Occ|Theoretical Occ|Block Limit"
      done ;;
    prefill)  # the prefill's kernels and whole prompts on the Qwen2.5-0.5B-shaped twin: the tensor-core check
      #          (one mma), the v11 tile sweep at $SWEEP_SHAPES (default: qwen), the per-launch profile
      timeout 60 python3 -m numba_kernels.ptx 2>&1 | tail -2
      model=/tmp/qwen-synth.gguf
      [ -f $model ] || python3 -m llama_beta.cli synth $model --preset qwen2.5-0.5b \
        --vocab .dev-model/vocab/ggml-vocab-qwen2.gguf --force -q
      timeout 300 python3 benchmarks/sweep_prefill_tiles.py 512 "${SWEEP_SHAPES:-qwen}" --v11 2>&1 | grep -v -i warn \
        | tee "$OUT/sweep-prefill-v11.txt"
      timeout 120 python3 benchmarks/profile_prefill.py $model 512 --no-cprofile 2>&1 | tail -12 \
        | tee "$OUT/profile-prefill.txt" ;;
    v12)      # the decode products: float32 kernels against the tensor-core v12 blocks ($V12_CONFIGS, default all),
      #          and whether programmatic dependent launch overlaps launches inside a graph
      timeout 60 python3 benchmarks/pdl_probe.py 2>&1 | grep -v -i warn | tee "$OUT/pdl-probe.txt"
      timeout 400 python3 benchmarks/sweep_decode_mma.py qwen ${V12_CONFIGS:+--configs $V12_CONFIGS} 2>&1 \
        | grep -v -i warn | tee "$OUT/sweep-decode-mma.txt" ;;
    x8)       # matmul v20 against the defaults (DP4A=auto): both twins' decode steps per launch (X8_PRESETS:
      #          preset:vocab, default both) under each of X8_ENVS (default: the defaults, DP4A=0, DP4A=1) and
      #          with the launch shapes in X8_CONFIGS (warps,rows,lanes; default "8,2,16 4,2,16 8,1,32"; " " for none)
      #          forced on all (v20's tests: the x8test step)
      for preset in ${X8_PRESETS:-phi3-mini:phi-3 qwen2.5-0.5b:qwen2}; do
        model=/tmp/${preset%:*}.gguf
        [ -f $model ] || python3 -m llama_beta.cli synth $model --preset ${preset%:*} \
          --vocab .dev-model/vocab/ggml-vocab-${preset#*:}.gguf --force -q
        for env in ${X8_ENVS:-defaults LLAMA_BETA_DP4A=0 LLAMA_BETA_DP4A=1} \
            $(for c in ${X8_CONFIGS:-8,2,16 4,2,16 8,1,32}; do echo "LLAMA_BETA_DP4A=1,LLAMA_BETA_X8_CONFIG=$c"; done); do
          echo "== ${preset%:*} $env"
          vars=${env//,/ }
          env ${vars/defaults/} timeout 120 python3 benchmarks/profile_decode.py $model --reps 50 \
            --json "$OUT/profile-x8-${preset%:*}-$(echo "$env" | tr ' =,' '___').json" 2>&1 | grep -v -i warn
        done
      done ;;
    x16)      # v11 over float16-packed x (LLAMA_BETA_PREFILL_X16=1, the default for Phi-3) against float32 x on the Phi-3 twin's
      #          prefill (profile_prefill per launch kind), then Phi-3's product shapes with the 128 x 64 and the
      #          128 x 128 tiles, float32 and packed x (sweep_prefill_tiles --x16; X16_CONFIGS, X16_SPLITS)
      model=/tmp/phi3-mini.gguf
      [ -f $model ] || python3 -m llama_beta.cli synth $model --preset phi3-mini \
        --vocab .dev-model/vocab/ggml-vocab-phi-3.gguf --force -q
      for x16 in 0 1; do
        echo "== prefill, LLAMA_BETA_PREFILL_X16=$x16"
        LLAMA_BETA_PREFILL_X16=$x16 timeout 150 python3 benchmarks/profile_prefill.py $model 512 --no-cprofile 2>&1 \
          | grep -v -i warn | tail -14
      done | tee "$OUT/x16-prefill.txt"
      timeout ${X16_SWEEP_S:-240} python3 benchmarks/sweep_prefill_tiles.py 512 phi3 --v11 --x16 --splits=${X16_SPLITS:-1,2} \
        $(for c in ${X16_CONFIGS:-4,2,2,4,1 4,4,2,4,1}; do echo "--config=$c"; done) 2>&1 | grep -v -i warn \
        | tee "$OUT/x16-sweep.txt" ;;
    chain)    # v21 (W_down over the SwiGLU outputs rounded by the gate/up launch) in the WHOLE Phi-3 decode step:
      #          off, and W_down's block shapes (LLAMA_BETA_X8_PRE_CONFIG; per launch (4, 1) won, but the step
      #          gained only half of that: nineteenth session), and W_down's compact shared layout (11 slots per block
      #          of 32 instead of 33: 11 KB instead of 33 KB, 6 -> 16 blocks per SM offline; twentieth session)
      model=/tmp/phi3-mini.gguf
      [ -f $model ] || python3 -m llama_beta.cli synth $model --preset phi3-mini \
        --vocab .dev-model/vocab/ggml-vocab-phi-3.gguf --force -q
      for v in "LLAMA_BETA_X8_CHAIN=0" ${CHAIN_CONFIGS:-LLAMA_BETA_X8_PRE_CONFIG=4,1 LLAMA_BETA_X8_COMPACT=1 \
          LLAMA_BETA_X8_PRE_CONFIG=2,1 LLAMA_BETA_X8_PRE_CONFIG=8,1 LLAMA_BETA_X8_PRE_CONFIG=4,2}; do
        echo "== $v"
        env "$v" timeout 120 python3 benchmarks/profile_decode.py $model --json "$OUT/chain-$(echo "${v#LLAMA_BETA_}" | tr =, -x).json" 2>&1 \
          | grep -v -i warn | tail -12
      done | tee "$OUT/chain.txt" ;;
    x8test)   # v20's GPU tests alone (tests/test_matvec_x8.py in four groups, and test_ptx.py, side by side)
      i=0
      for k in "dp4a_matvec and (Q4_K or Q5_K)" "dp4a_matvec and not (Q4_K or Q5_K)" qkv_rope \
          "not dp4a_matvec and not qkv_rope" ptx; do
        file=tests/test_matvec_x8.py
        [ "$k" = ptx ] && file=tests/test_ptx.py k=test
        (timeout ${X8_TEST_S:-240} python3 -m pytest -q -p no:cacheprovider "$file" -k "$k" > "$OUT/pytest-x8-$i.log" 2>&1
         echo "x8 tests $i ($file -k '$k'): exit $?") &
        i=$((i + 1))
      done
      wait
      for log in "$OUT"/pytest-x8-*.log; do echo "$(basename "$log"): $(tail -1 "$log")"; done
      grep -h -A3 -E "^(E |FAILED)" "$OUT"/pytest-x8-*.log | head -40 ;;
    ab)       # the prefill of both twins (profile_prefill.py, 512 tokens) in this tree, then in .gpu-exp: an export
      #          of an experiment branch (git archive BRANCH | tar -x -C .gpu-exp, with .gpu-exp/ in .git/info/exclude;
      #          carry it); each tree compiles into its own disk cache
      for m in phi3-mini:phi3-mini:ggml-vocab-phi-3 qwen-synth:qwen2.5-0.5b:ggml-vocab-qwen2; do
        IFS=: read -r name preset vocab <<< "$m"
        [ -f /tmp/$name.gguf ] || python3 -m llama_beta.cli synth /tmp/$name.gguf --preset $preset \
          --vocab .dev-model/vocab/$vocab.gguf --force -q
        for side in main:. exp:.gpu-exp; do
          tree=${side#*:}
          [ -d $tree/numba_kernels ] || continue
          echo "== prefill of $name, ${side%:*} ($tree)"
          (cd $tree && PYTHONPATH=/tmp/site:$PWD timeout ${AB_S:-90} python3 benchmarks/profile_prefill.py \
            /tmp/$name.gguf 512 --no-cprofile) 2>&1 | grep -v -i warn | tail -13 | tee "$OUT/ab-prefill-$name-${side%:*}.txt"
        done
      done ;;
    kv16)     # the float16 KV cache (--kv-type f16, twentieth session, not yet measured) against float32, both twins,
      #          a 512-token prompt and 128 decoded tokens (its GPU tests: the kv16test step)
      vocab=.dev-model/vocab
      [ -f /tmp/qwen-synth.gguf ] || python3 -m llama_beta.cli synth /tmp/qwen-synth.gguf --preset qwen2.5-0.5b --vocab $vocab/ggml-vocab-qwen2.gguf --force -q
      [ -f /tmp/phi3-mini.gguf ] || python3 -m llama_beta.cli synth /tmp/phi3-mini.gguf --preset phi3-mini --vocab $vocab/ggml-vocab-phi-3.gguf --force -q
      for model in qwen-synth phi3-mini; do
        for kv in f32 f16; do
          echo "== $model, --kv-type $kv"
          timeout 250 python3 -m llama_beta.cli bench --model /tmp/$model.gguf --backend cuda -p 512 -n 128 -r 3 \
            --kv-type $kv -o "$OUT/bench-$model-kv-$kv.json" 2>&1 | tail -5
        done
      done ;;
    kv16test) # the float16 cache's kernel and model tests on the GPU
      LLAMA_BETA_JIT_CACHE=0 timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_attention.py \
        tests/test_model.py -k "float16 or one_launch or flash_prefill or kv_append or both_backends" 2>&1 | tail -4 ;;
    real)     # the real model, assembled from chunks in /tmp/chunks by earlier calls
      cat /tmp/chunks/qwen.gguf.part-* > /tmp/qwen.gguf && sha256sum /tmp/qwen.gguf
      mkdir -p $LLAMA_BETA_CACHE/models && ln -sf /tmp/qwen.gguf $LLAMA_BETA_CACHE/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
      timeout 400 python3 benchmarks/real_model_checks.py "$OUT/real-model-checks.json" 2>&1 | tail -8
      [ -n "${REAL_KV16:-}" ] && timeout 400 python3 benchmarks/real_model_checks.py "$OUT/real-model-checks-kv16.json" \
        --kv-type f16 2>&1 | tail -8
      timeout 200 python3 -m llama_beta.cli bench --backend cuda -p 512 -n 64 -r 3 -o "$OUT/bench-qwen-real-cuda.json" 2>&1 | tail -6 ;;
  esac
done
