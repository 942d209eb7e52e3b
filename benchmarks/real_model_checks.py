"""Checks on the real default model for the GPU machine: cuda greedy == numpy greedy, seeded runs repeat.

    python benchmarks/real_model_checks.py [OUT.json] [--kv-type f32|f16]

``--kv-type``: both backends' KV cache element type (default f32).
"""
import argparse
import json
import time

import llama_beta
from llama_beta.model import KV_TYPES

parser = argparse.ArgumentParser()
parser.add_argument("out", nargs="?", default=None)
parser.add_argument("--kv-type", choices=list(KV_TYPES), default="f32")
args = parser.parse_args()
PROMPT = "Write a haiku about a llama."
results = {"kv_type": args.kv_type}
for backend in ("cuda", "numpy"):
    t = time.perf_counter()
    model = llama_beta.load(backend=backend, progress=False, kv_type=args.kv_type)
    load_s = time.perf_counter() - t
    greedy = model.generate(PROMPT, temperature=0, max_tokens=40)
    seeded = [model.generate(PROMPT, temperature=0.8, seed=7, max_tokens=24).ids for _ in range(10)]
    results[backend] = {"load_s": load_s, "greedy_ids": greedy.ids, "greedy_text": greedy.text,
                        "timings": greedy.timings, "seeded_identical": all(s == seeded[0] for s in seeded),
                        "seeded_ids": seeded[0]}
    print(f"{backend}: load {load_s:.1f} s, {greedy.timings['decode_tok_s']:.1f} tok/s decode, "
          f"seeded x10 identical: {results[backend]['seeded_identical']}")
    print(repr(greedy.text))
    model.close()
same = results["cuda"]["greedy_ids"] == results["numpy"]["greedy_ids"]
print("greedy ids identical across backends:", same)
results["greedy_identical"] = same
if args.out:
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
