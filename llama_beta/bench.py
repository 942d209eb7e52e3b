"""``llama-beta bench``: prefill and decode speed, measured the same way on every backend.

Method: a prompt of ``p`` token ids (a fixed pseudo-random draw from the vocabulary, so
runs are comparable) is prefilled into a fresh KV cache; then ``n`` tokens are decoded
greedily one at a time. Each of ``repeat`` runs is timed separately (after one warm-up
run that also triggers JIT compilation); we report the median and the spread (min..max).

- prefill tok/s = p / prefill time;  time to first token = prefill + first sample;
- decode tok/s = n / decode time (greedy; on the cuda backend the token is chosen on the device);
- bytes per decode step = the weight bytes every token must read (each matrix once, one
  embedding row) plus the KV cache read at the mean position; the fraction of copy
  bandwidth compares bytes/step x tok/s with ``--bandwidth`` (default 4.3 TB/s, the H200's
  measured device-to-device copy rate).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

H200_COPY_BANDWIDTH = 4.3e12  # bytes/s, measured device-to-device copy on the lent H200


def weight_bytes_per_token(model) -> int:
    """Bytes of weights one decode step reads: every matrix of every block, the output, one embedding row."""
    g, cfg = model.gguf, model.config
    total = 0
    for i in range(cfg.n_layers):
        for role, name in model.adapter.layer_tensors(cfg, i).items():
            total += g.tensors[name].nbytes
    out = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
    total += g.tensors[out].nbytes + g.tensors["output_norm.weight"].nbytes
    total += g.tensors["token_embd.weight"].row_bytes
    return total


def kv_bytes_per_token(model, position: int) -> int:
    """Bytes of the KV cache (float32 or float16: ``model.kv_type``) one decode step reads at ``position``."""
    c = model.config
    return 2 * c.n_layers * position * c.n_kv_heads * c.head_size * model.kv_itemsize


def _one_run(model, cache, next_token, prompt: np.ndarray, n: int) -> dict:
    """Prefill ``prompt`` into ``cache`` from position 0, then ``n`` greedy decode steps."""
    t0 = time.perf_counter()
    logits = model.prefill(prompt, 0, cache)
    token = int(np.argmax(logits))
    t1 = time.perf_counter()
    for i in range(n):
        token = next_token(token, len(prompt) + i, i + 1, None, ahead=n - 1 - i)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1}


def run(model, prompt_tokens: int = 512, gen_tokens: int = 128, repeat: int = 3,
        bandwidth: float = H200_COPY_BANDWIDTH, progress=None) -> dict:
    """Benchmark ``model``; returns a JSON-ready dict of settings, medians and spreads."""
    for name, value, least in (("prompt_tokens", prompt_tokens, 1), ("gen_tokens", gen_tokens, 0), ("repeat", repeat, 1)):
        if value < least:
            raise ValueError(f"bench: {name} must be >= {least}, got {value}")
    rng = np.random.default_rng(1234)
    prompt = rng.integers(0, min(model.config.vocab_size, 100_000), prompt_tokens).astype(np.int32)
    from llama_beta.generate import SamplingParams

    # One cache and one decoder for every run (a run overwrites the cache from position 0), so the
    # warm-up run pays for JIT compilation and the decode step's graph capture, once.
    warm_up_tokens = 2
    cache = model.new_cache(prompt_tokens + max(gen_tokens, warm_up_tokens) + 1)
    next_token = model.token_fn(cache, SamplingParams(temperature=0.0), seed=0)
    _one_run(model, cache, next_token, prompt, warm_up_tokens)   # the same prompt length: the same kernels
    runs = []
    for r in range(repeat):
        runs.append(_one_run(model, cache, next_token, prompt, gen_tokens))
        if progress:
            progress(r + 1, repeat, runs[-1])
    prefill = [prompt_tokens / x["prefill_s"] for x in runs]
    decode = [gen_tokens / x["decode_s"] for x in runs] if gen_tokens else [0.0]
    bytes_step = weight_bytes_per_token(model) + kv_bytes_per_token(model, prompt_tokens + gen_tokens // 2)
    med_decode = statistics.median(decode)
    return {
        "model": Path(model.path).name, "name": model.config.name, "backend": model.backend.name,
        "gpu": _gpu_name(model), "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "repeat": repeat,
        "prefill_tok_s": {"median": statistics.median(prefill), "min": min(prefill), "max": max(prefill)},
        "decode_tok_s": {"median": med_decode, "min": min(decode), "max": max(decode)},
        "ttft_s": statistics.median(x["prefill_s"] for x in runs),
        "bytes_per_decode_step": bytes_step,
        "fraction_of_copy_bandwidth": bytes_step * med_decode / bandwidth,
        "bandwidth_assumed": bandwidth,
        "kv_type": model.kv_type,
        "prefill_variant": model.prefill_variant,
        # the prefill's switches: the tensor-core products (numba_kernels.matmul v11) and the captured graphs
        "prefill_settings": {"mma": os.environ.get("LLAMA_BETA_PREFILL_MMA", "1") != "0",
                             "graph": os.environ.get("LLAMA_BETA_PREFILL_GRAPH", "1") != "0"},
        "decode_variant": {"body": os.environ.get("LLAMA_BETA_DECODE", "fused"),
                           "graph": os.environ.get("LLAMA_BETA_GRAPH", "1") != "0",
                           # the kernel switches read at import (numba_kernels.attention / .matmul)
                           "attention": os.environ.get("LLAMA_BETA_ATTENTION", "auto"),
                           "split_k": os.environ.get("LLAMA_BETA_SPLIT_K", "1") != "0",
                           "matvec_warm": os.environ.get("LLAMA_BETA_MATVEC_WARM", "1") != "0",
                           **_decode_step_settings(model)},
        "runs": runs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _gpu_name(model) -> str | None:
    """The GPU the cuda backend ran on (as the driver names it), None on other backends."""
    if model.backend.name != "cuda":
        return None
    from numba import cuda

    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def _decode_step_settings(model) -> dict:
    """The cuda decode step's own switches, as those modules decided them (zero / off on other backends):
    steps queued ahead of the host, RoPE inside the Q/K/V launch, programmatic dependent launch (asked for:
    it also needs an sm_90 GPU), the tensor-core decode products (matmul v12) and the x loads in flight per
    thread while the products stage x' (matmul v13: 4; 1 before), and whether the Q/K/V launch asks L2 for the
    layer's K/V cache (``LLAMA_BETA_KV_PREFETCH=1``, ninth session, opt-in), whether the Q4_K/Q5_K products
    read their quants in 16-byte loads (matmul v15, ``LLAMA_BETA_VECTOR_LOADS``) and whether the products warm
    their rows with L2 bulk prefetches (matmul v17, ``LLAMA_BETA_WARM_L2``; both on since the eleventh session), and
    whether gate/up copies its rows into shared memory (matmul v18, ``LLAMA_BETA_STAGE_ROWS=1``, opt-in), and whether
    the decode products use integer dot products over 8-bit x' (matmul v20, ``LLAMA_BETA_DP4A``: "auto", the
    default, where K is large and, for a plain product, the rows many; "0" off; "1" wherever the types allow),
    whether W_down reads the SwiGLU outputs as the gate/up launch rounded them (matmul v21,
    ``LLAMA_BETA_X8_CHAIN``, on since the nineteenth session) and keeps them in 11 shared slots per block of 32
    (``LLAMA_BETA_X8_COMPACT=1``, opt-in), and whether the prefill products read x as
    float16 pairs (``LLAMA_BETA_PREFILL_X16``: "auto" by default, on for models at least 2048 wide), and whether
    they decode each weight matrix once to float16 before a GEMM (matmul v23, ``LLAMA_BETA_PREFILL_F16W=1``, opt-in)."""
    if model.backend.name != "cuda":
        return {"run_ahead": 0, "qkv_rope": False, "pdl": False, "decode_mma": False, "stage_loads": 0,
                "kv_prefetch": False, "vector_loads": False, "warm_l2": False, "stage_rows": False,
                "dp4a": "0", "x8_chain": False, "x8_compact": False, "prefill_x16": False, "prefill_f16w": False}
    from llama_beta.backends import cuda_decode, cuda_prefill
    from numba_kernels import matmul

    return {"run_ahead": cuda_decode.RUN_AHEAD, "qkv_rope": cuda_decode.QKV_ROPE, "pdl": cuda_decode.PDL,
            "decode_mma": matmul.DECODE_MMA, "stage_loads": matmul.STAGE_LOADS, "kv_prefetch": matmul.KV_PREFETCH,
            "vector_loads": matmul.VECTOR_LOADS, "warm_l2": matmul.WARM_L2,
            "stage_rows": matmul.STAGE_ROWS, "dp4a": matmul.DP4A_MODE, "x8_chain": matmul.X8.chain,
            "x8_compact": matmul.X8_COMPACT,
            "prefill_x16": cuda_prefill.uses_f16w(model.config) or cuda_prefill.uses_x16(model.config.dim),
            "prefill_f16w": cuda_prefill.uses_f16w(model.config)}


def format_report(r: dict) -> str:
    p, d = r["prefill_tok_s"], r["decode_tok_s"]
    return "\n".join([
        f"model    {r['name'] or r['model']}  ({r['backend']} backend, {r.get('kv_type', 'f32')} KV cache)",
        f"prefill  {r['prompt_tokens']} tokens: {p['median']:.1f} tok/s (min {p['min']:.1f}, max {p['max']:.1f})",
        f"decode   {r['gen_tokens']} tokens: {d['median']:.1f} tok/s (min {d['min']:.1f}, max {d['max']:.1f})"
        if r["gen_tokens"] else "decode   none (-n 0: prefill only)",
        f"TTFT     {r['ttft_s'] * 1000:.1f} ms",
        f"traffic  {r['bytes_per_decode_step'] / 1e6:.1f} MB per decode step = "
        f"{100 * r['fraction_of_copy_bandwidth']:.1f}% of {r['bandwidth_assumed'] / 1e12:.1f} TB/s",
    ])


def save(r: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(r, f, indent=2)
