"""What a float16 KV cache costs in accuracy on a real model: greedy generations with an f32 and an f16 cache,
and the logits of both over the same tokens (the f32 run's, teacher-forced), position by position.

    python benchmarks/kv_type_accuracy.py [--model NAME_OR_PATH] [--backend numpy|cuda] [--tokens N]

Prints, per prompt: whether the greedy tokens are identical (and the first position where they part), the largest
and the median logit difference relative to the largest logit, and how often the two argmaxes agree.
"""
from __future__ import annotations

import argparse

import numpy as np

import llama_beta
from llama_beta.generate import encode_prompt

PROMPTS = ["Write a haiku about a llama.",
           "Write a Python function that checks whether a number is prime, with a docstring and tests.",
           "Explain the difference between a list and a tuple in Python."]


def compare(m32, m16, prompt: str, tokens: int) -> str:
    a = m32.generate(prompt, temperature=0, max_tokens=tokens).ids
    b = m16.generate(prompt, temperature=0, max_tokens=tokens).ids
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    ids = np.array(encode_prompt(m32, prompt) + a, np.int32)       # the f32 run's tokens through both caches
    l32 = m32.backend.to_host(m32.step(ids, 0, m32.new_cache(len(ids)), all_logits=True))
    l16 = m16.backend.to_host(m16.step(ids, 0, m16.new_cache(len(ids)), all_logits=True))
    rel = np.abs(l32 - l16).max(axis=1) / np.abs(l32).max(axis=1)   # [positions]
    agree = np.mean(l32.argmax(axis=1) == l16.argmax(axis=1))
    same = "identical" if a == b else f"differ from token {first}"
    return (f"{len(a):4d} tokens, greedy {same}; over {len(ids)} positions: max |dlogit| / max|logit| "
            f"{rel.max():.2e} (median {np.median(rel):.2e}), argmax agree {agree:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cuda"])
    p.add_argument("--tokens", type=int, default=120, help="greedy tokens per prompt at most (default 120)")
    args = p.parse_args()
    m32, m16 = (llama_beta.load(args.model, backend=args.backend, progress=False, kv_type=kv, context=512)
                for kv in ("f32", "f16"))
    print(f"{args.model} on the {args.backend} backend: f16 KV cache against f32")
    for prompt in PROMPTS:
        print(f"{prompt[:40]!r:44s} {compare(m32, m16, prompt, args.tokens)}")


if __name__ == "__main__":
    main()
