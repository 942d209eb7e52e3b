"""Encode and decode a few strings with both vocabularies, showing the pieces.

Run: python examples/03_tokenize.py   (CPU only; needs the cached vocab files:
`llama-beta models fetch qwen2-vocab phi-3-vocab`)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_beta import registry  # noqa: E402
from ref.tokenizer import load  # noqa: E402

TEXTS = [
    "Hello world",
    "  two leading spaces, numbers 12345",
    "I'm here, they'LL come",
    "def f(x):\n    return x**2\n",
    "日本語 and emoji 👨‍👩‍👧",
    "<|im_start|>user\nHi<|im_end|>",
    "<|user|>\nHi<|end|>\n<|assistant|>",
]


def show(tok, text: str) -> None:
    ids = tok.encode(text, add_bos=False)
    pieces = [tok.token_bytes(i).decode("utf-8", "backslashreplace") for i in ids]
    print(f"  {text!r}")
    print(f"    ids    {ids}")
    print(f"    pieces {pieces}")
    print(f"    decode {tok.decode(ids)!r}")


for name in ("qwen2-vocab", "phi-3-vocab"):
    path = registry.cached_path(name)
    if path is None:
        print(f"{name}: not cached; run `llama-beta models fetch {name}`")
        continue
    tok = load(path)
    print(f"{name}: {tok.kind}, {tok.vocab_size} tokens, bos={tok.bos_id} eos={tok.eos_id} "
          f"end-of-generation={tok.eot_ids}")
    for text in TEXTS:
        show(tok, text)

    stream = tok.stream_decoder()                       # what generation does token by token
    ids = tok.encode("née 😀", add_bos=False)
    print("  streaming 'née 😀':", [stream.push(i) for i in ids] + [stream.flush()])
