"""Checks on the real default model for the GPU machine: cuda greedy == numpy greedy, seeded runs repeat.

    python benchmarks/real_model_checks.py [OUT.json]
"""
import json
import sys
import time

import llama_beta

PROMPT = "Write a haiku about a llama."
results = {}
for backend in ("cuda", "numpy"):
    t = time.perf_counter()
    model = llama_beta.load(backend=backend, progress=False)
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
if len(sys.argv) > 1:
    json.dump(results, open(sys.argv[1], "w"), indent=2)
