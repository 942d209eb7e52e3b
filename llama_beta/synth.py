"""Synthetic models: random-weight GGUF files of any supported architecture and size.

Tests need tiny models whose every stage can be checked, and GPU benchmarks need files
with exactly the shapes and quantization mix of a real model (the GPU machine has no
network, so they are built there). Weights are random *blocks*: random bytes for the
quantized values with the scale fields overwritten by small positive float16 values chosen
so that every weight has a standard deviation of about ``0.5 / sqrt(K)`` - enough to keep
activations in range through many blocks without real training.

The vocabulary is either a tiny byte-level BPE (the 256 byte symbols, a few merges and the
chat special tokens) or copied from a real GGUF file (``vocab_from``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from llama_beta.gguf_writer import write_gguf
from ref.ggml import BLOCK_SIZES, GGMLType

G = GGMLType

# Where the float16 scale fields sit in each block, and how to size them for a target
# weight std ``sigma``: (byte offset, multiplier of sigma). Offsets follow ggml's block structs.
_SCALES = {
    G.Q4_0: [(0, 1 / 4.6)],
    G.Q4_1: [(0, 1 / 4.6), (2, -7.5 / 4.6)],
    G.Q5_0: [(0, 1 / 9.2)],
    G.Q5_1: [(0, 1 / 9.2), (2, -15.5 / 9.2)],
    G.Q8_0: [(0, 1 / 74.0)],
    G.Q2_K: [(80, 1 / 9.0), (82, 1.5 / 9.0)],
    G.Q3_K: [(108, 1 / 41.0)],
    G.Q4_K: [(0, 1 / 166.0), (2, 7.5 / 166.0)],
    G.Q5_K: [(0, 1 / 331.0), (2, 15.5 / 331.0)],
    G.Q6_K: [(208, 1 / 1369.0)],
}


def random_tensor(rng: np.random.Generator, ggml_type: GGMLType, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Raw bytes of a random tensor of ``shape`` (numpy order) in ``ggml_type``."""
    n = int(np.prod(shape))
    if ggml_type == G.F32:
        return (rng.standard_normal(n, dtype=np.float32) * np.float32(sigma)).view(np.uint8)
    if ggml_type == G.F16:
        return (rng.standard_normal(n, dtype=np.float32) * sigma).astype(np.float16).view(np.uint8)
    if ggml_type not in _SCALES:
        raise ValueError(f"synth: no random-block recipe for {ggml_type.name}")
    elems, nbytes = BLOCK_SIZES[ggml_type]
    blocks = rng.integers(0, 256, size=(n // elems, nbytes), dtype=np.uint8)
    for offset, mult in _SCALES[ggml_type]:
        scale = np.float16(abs(sigma * mult))
        blocks[:, offset:offset + 2] = np.frombuffer(scale.tobytes(), np.uint8)
    return blocks.reshape(-1)


@dataclass
class SynthSpec:
    arch: str = "qwen2"
    n_layers: int = 2
    dim: int = 256
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 512
    context_length: int = 2048
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    tied: bool = False
    matrix_type: GGMLType = G.Q8_0
    types: dict = field(default_factory=dict)  # role or tensor name -> GGMLType, overriding matrix_type
    seed: int = 0

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads


PRESETS = {
    "tiny": SynthSpec(),
    "micro": SynthSpec(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96, matrix_type=G.F32),
    "qwen2.5-0.5b": SynthSpec(arch="qwen2", n_layers=24, dim=896, n_heads=14, n_kv_heads=2, ffn_dim=4864,
                              context_length=32768, rope_base=1e6, matrix_type=G.Q5_0,
                              types={"token_embd": G.Q5_0, "output": G.Q8_0, "wv": G.Q8_0, "w_down": G.Q6_K}),
    "phi3-mini": SynthSpec(arch="phi3", n_layers=32, dim=3072, n_heads=32, n_kv_heads=32, ffn_dim=8192,
                           context_length=4096, rope_base=10000.0, norm_eps=1e-5, matrix_type=G.Q4_K,
                           types={"wqkv": G.Q5_K, "w_down": G.Q6_K, "output": G.Q6_K}),
}


def tiny_vocab() -> dict:
    """A byte-level BPE vocabulary: 256 byte symbols, a few merges, the chat special tokens."""
    from ref.bpe import bytes_to_unicode

    symbols = bytes_to_unicode()
    tokens = [symbols[b] for b in range(256)]
    merges = ["Ġ t", "Ġ a", "h e", "i n", "Ġt he", "e r"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * len(tokens) + [3] * len(specials)
    tokens += specials
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": np.array(types, np.int32), "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.eos_token_id": len(tokens) - 1, "tokenizer.ggml.bos_token_id": len(tokens) - 3,
            "tokenizer.ggml.padding_token_id": len(tokens) - 3, "tokenizer.ggml.add_bos_token": False,
            "tokenizer.chat_template": ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")}


def vocab_from(path) -> dict:
    """Every ``tokenizer.*`` key of an existing GGUF file."""
    from ref.gguf import GGUFFile

    with GGUFFile(path) as g:
        return {k: v for k, v in g.metadata.items() if k.startswith("tokenizer.")}


def _metadata(spec: SynthSpec, vocab: dict) -> dict:
    a = spec.arch
    md = {"general.architecture": a, "general.name": f"synthetic {a}", f"{a}.block_count": spec.n_layers,
          f"{a}.context_length": spec.context_length, f"{a}.embedding_length": spec.dim,
          f"{a}.feed_forward_length": spec.ffn_dim, f"{a}.attention.head_count": spec.n_heads,
          f"{a}.attention.head_count_kv": spec.n_kv_heads, f"{a}.rope.freq_base": float(spec.rope_base),
          f"{a}.attention.layer_norm_rms_epsilon": float(spec.norm_eps),
          f"{a}.rope.dimension_count": spec.head_size}
    md.update(vocab)
    return md


def _tensor_plan(spec: SynthSpec, vocab_size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (role, shape) for every tensor, built with the adapter so names always agree."""
    from llama_beta import architectures
    from llama_beta.config import ModelConfig

    adapter = architectures.get(spec.arch)
    cfg = ModelConfig(arch=spec.arch, n_layers=spec.n_layers, dim=spec.dim, n_heads=spec.n_heads,
                      n_kv_heads=spec.n_kv_heads, head_size=spec.head_size, ffn_dim=spec.ffn_dim,
                      vocab_size=vocab_size, context_length=spec.context_length, norm_eps=spec.norm_eps,
                      rope_base=spec.rope_base, rope_dims=spec.head_size, rope_neox=spec.arch != "llama",
                      tied_embeddings=spec.tied, fused_qkv=spec.arch == "phi3", fused_gate_up=spec.arch == "phi3")
    shapes = architectures.role_shapes(cfg)
    plan = {"token_embd.weight": ("token_embd", (vocab_size, spec.dim)), "output_norm.weight": ("norm", (spec.dim,))}
    if not spec.tied:
        plan["output.weight"] = ("output", (vocab_size, spec.dim))
    for i in range(spec.n_layers):
        for role, name in adapter.layer_tensors(cfg, i).items():
            plan[name] = (role, shapes[role])
    return plan


def synth_model(path, spec: SynthSpec | str = "tiny", vocab: dict | None = None, overwrite: bool = False,
                **overrides) -> Path:
    """Write a random-weight model to ``path``; ``spec`` is a :class:`SynthSpec` or a preset name."""
    spec = PRESETS[spec] if isinstance(spec, str) else spec
    spec = replace(spec, **overrides) if overrides else spec
    vocab = vocab if vocab is not None else tiny_vocab()
    V = len(vocab["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(spec.seed)
    tensors = {}
    for name, (role, shape) in _tensor_plan(spec, V).items():
        if len(shape) == 1:  # norm weights near 1, biases small
            base = 1.0 if role.endswith("norm") else 0.0
            data = (base + 0.1 * rng.standard_normal(shape[0])).astype(np.float32)
            tensors[name] = (G.F32, data.view(np.uint8), shape)
            continue
        gtype = spec.types.get(name, spec.types.get(role, spec.matrix_type))
        sigma = 0.5 / np.sqrt(shape[-1]) if role != "token_embd" else 1.0
        tensors[name] = (gtype, random_tensor(rng, gtype, shape, sigma), shape)
    return write_gguf(path, _metadata(spec, vocab), tensors, overwrite=overwrite)
