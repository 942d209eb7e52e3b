"""Generate a haiku with the default model on the NumPy backend, streaming the text as it comes.

    python examples/07_generate.py ["your prompt"]
"""
import sys

import llama_beta

prompt = sys.argv[1] if len(sys.argv) > 1 else "Write a haiku about a llama."
model = llama_beta.load("qwen2.5-coder-0.5b-instruct", backend="numpy", progress=False)
print(f"prompt: {prompt}\n")
result = model.generate(prompt, temperature=0, max_tokens=40, on_text=lambda s: print(s, end="", flush=True))
t = result.timings
print(f"\n\n{len(result.prompt_ids)} prompt tokens, {len(result.ids)} generated "
      f"({result.finish_reason}); decode {t['decode_tok_s']:.1f} tok/s")
