"""Synthetic models: random-weight GGUF files of any supported architecture and size.

Tests need tiny models whose every stage can be checked, and GPU benchmarks need files
with exactly the shapes and quantization mix of a real model (the GPU machine has no
network, so they are built there). Weights are random *blocks*: random bytes for the
quantized values with the scale fields overwritten by small positive float16 values chosen
so that every weight has a standard deviation of about ``0.5 / sqrt(K)`` - enough to keep
activations in range through many blocks without real training.

The vocabulary is either a tiny byte-level BPE (the 256 byte symbols, a few merges and the
chat special tokens) or copied from a real GGUF file (``vocab_from``).

``llama-beta synth OUT.gguf --preset phi3-mini --vocab phi-3-vocab`` does the same from the
command line (``add_synth_parser`` / ``cli_main`` at the end of this file).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from llama_beta.gguf_writer import write_gguf
from ref.ggml import BLOCK_SIZES, GGMLType
from ref.quants import FLOAT_FIELDS

G = GGMLType

# How to size each block's float16 scale fields (their byte offsets are ``ref.quants.FLOAT_FIELDS``)
# for a target weight std ``sigma``: one multiplier of sigma per field, in the fields' order.
_SCALE_MULTIPLIERS = {
    G.Q4_0: (1 / 4.6,),
    G.Q4_1: (1 / 4.6, -7.5 / 4.6),
    G.Q5_0: (1 / 9.2,),
    G.Q5_1: (1 / 9.2, -15.5 / 9.2),
    G.Q8_0: (1 / 74.0,),
    G.Q2_K: (1 / 9.0, 1.5 / 9.0),
    G.Q3_K: (1 / 41.0,),
    G.Q4_K: (1 / 166.0, 7.5 / 166.0),
    G.Q5_K: (1 / 331.0, 15.5 / 331.0),
    G.Q6_K: (1 / 1369.0,),
}


def random_tensor(rng: np.random.Generator, ggml_type: GGMLType, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Raw bytes of a random tensor of ``shape`` (numpy order) in ``ggml_type``."""
    n = int(np.prod(shape))
    if ggml_type == G.F32:
        return (rng.standard_normal(n, dtype=np.float32) * np.float32(sigma)).view(np.uint8)
    if ggml_type == G.F16:
        return (rng.standard_normal(n, dtype=np.float32) * sigma).astype(np.float16).view(np.uint8)
    if ggml_type not in _SCALE_MULTIPLIERS:
        raise ValueError(f"synth: no random-block recipe for {ggml_type.name}")
    elems, nbytes = BLOCK_SIZES[ggml_type]
    blocks = rng.integers(0, 256, size=(n // elems, nbytes), dtype=np.uint8)
    for (offset, _dtype), mult in zip(FLOAT_FIELDS[ggml_type], _SCALE_MULTIPLIERS[ggml_type], strict=True):
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
    rope_dims: int = 0       # rotated dimensions per head; 0 rotates the whole head
    orig_context: int = 0    # {arch}.rope.scaling.original_context_length (0: not written)
    longrope: bool = False   # write LongRoPE factors and attention factor (Phi-3 long-context style)
    matrix_type: GGMLType = G.Q8_0
    types: dict = field(default_factory=dict)  # role or tensor name -> GGMLType, overriding matrix_type
    seed: int = 0

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def rotated(self) -> int:
        return self.rope_dims or self.head_size


def _more_bits(i: int, n: int) -> bool:
    """A Q4_K_M-style rule (llama.cpp's ``use_more_bits``) for which blocks' attn_v / ffn_down get the
    larger type: the first and last eighth of the blocks and every third between them. For 24 blocks it
    picks 12, as many as the real default model (which picks a different twelve)."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _q4_k_m_layers(n: int, role: str, more: GGMLType, fewer: GGMLType) -> dict:
    """{tensor name: type} for ``role`` ('attn_v', 'ffn_down') over ``n`` blocks, by ``_more_bits``."""
    return {f"blk.{i}.{role}.weight": more if _more_bits(i, n) else fewer for i in range(n)}


PRESETS = {
    "tiny": SynthSpec(),
    "micro": SynthSpec(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=96, matrix_type=G.F32),
    # the default model's mix: rows of 896 cannot hold K-quant blocks, so Q5_0/Q8_0 stand in for Q4_K/Q6_K
    "qwen2.5-0.5b": SynthSpec(arch="qwen2", n_layers=24, dim=896, n_heads=14, n_kv_heads=2, ffn_dim=4864,
                              context_length=32768, rope_base=1e6, matrix_type=G.Q5_0,
                              types={"token_embd": G.Q5_0, "output": G.Q8_0,
                                     **_q4_k_m_layers(24, "attn_v", G.Q8_0, G.Q5_0),
                                     **_q4_k_m_layers(24, "ffn_down", G.Q6_K, G.Q4_K)}),
    "phi3-mini": SynthSpec(arch="phi3", n_layers=32, dim=3072, n_heads=32, n_kv_heads=32, ffn_dim=8192,
                           context_length=4096, orig_context=4096, rope_base=10000.0, norm_eps=1e-5,
                           matrix_type=G.Q4_K,
                           types={"wqkv": G.Q5_K, "output": G.Q6_K,
                                  **_q4_k_m_layers(32, "ffn_down", G.Q6_K, G.Q4_K)}),
}


def tiny_vocab(ascii_only: bool = False) -> dict:
    """A byte-level BPE vocabulary: the byte symbols, a few merges, the chat special tokens.

    ``ascii_only`` keeps just the 95 printable ASCII bytes (99 tokens with one merge): text
    outside ASCII cannot be encoded, but the output layer shrinks to 99 rows - what the CUDA
    simulator can afford in whole-model tests.
    """
    from ref.bpe import bytes_to_unicode

    symbols = bytes_to_unicode()
    tokens = [symbols[b] for b in (range(32, 127) if ascii_only else range(256))]
    merges = ["t h"] if ascii_only else ["Ġ t", "Ġ a", "h e", "i n", "Ġt he", "e r"]
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
          f"{a}.rope.dimension_count": spec.rotated}
    if spec.orig_context:
        md[f"{a}.rope.scaling.original_context_length"] = spec.orig_context
    if spec.longrope:
        md[f"{a}.rope.scaling.attn_factor"] = longrope_attn_factor(spec.context_length, spec.orig_context)
    md.update(vocab)
    return md


def longrope_attn_factor(context: int, orig_context: int) -> float:
    """LongRoPE's attention factor :math:`\\sqrt{1 + \\ln s / \\ln L_0}`, ``s = context / L_0`` (1 if s <= 1).

    The value llama.cpp's converter stores as ``rope.scaling.attn_factor`` and transformers'
    ``_compute_longrope_parameters`` derives from ``max_position_embeddings``.
    """
    if not orig_context or context <= orig_context:
        return 1.0
    return float(np.sqrt(1.0 + np.log(context / orig_context) / np.log(orig_context)))


def _tensor_plan(spec: SynthSpec, vocab_size: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (role, shape) for every tensor, built with the adapter so names always agree."""
    from llama_beta import architectures
    from llama_beta.config import ModelConfig

    adapter = architectures.get(spec.arch)
    cfg = ModelConfig(arch=spec.arch, n_layers=spec.n_layers, dim=spec.dim, n_heads=spec.n_heads,
                      n_kv_heads=spec.n_kv_heads, head_size=spec.head_size, ffn_dim=spec.ffn_dim,
                      vocab_size=vocab_size, context_length=spec.context_length, norm_eps=spec.norm_eps,
                      rope_base=spec.rope_base, rope_dims=spec.rotated, rope_neox=spec.arch != "llama",
                      tied_embeddings=spec.tied, fused_qkv=spec.arch == "phi3", fused_gate_up=spec.arch == "phi3")
    shapes = architectures.role_shapes(cfg)
    plan = {"token_embd.weight": ("token_embd", (vocab_size, spec.dim)), "output_norm.weight": ("norm", (spec.dim,))}
    if not spec.tied:
        plan["output.weight"] = ("output", (vocab_size, spec.dim))
    for i in range(spec.n_layers):
        for role, name in adapter.layer_tensors(cfg, i).items():
            plan[name] = (role, shapes[role])
    if spec.longrope:  # one factor per rotated pair, llama.cpp's rope_factors_{long,short}
        for kind in ("long", "short"):
            plan[f"rope_factors_{kind}.weight"] = (f"rope_factors_{kind}", (spec.rotated // 2,))
    return plan


def _vector(rng: np.random.Generator, role: str, n: int) -> np.ndarray:
    """Norm weights near 1, biases near 0, LongRoPE factors >= 1 growing towards low frequencies."""
    if role.startswith("rope_factors"):
        top = 8.0 if role.endswith("long") else 1.5
        return np.sort(1.0 + (top - 1.0) * rng.random(n)).astype(np.float32)
    base = 1.0 if role.endswith("norm") else 0.0
    return (base + 0.1 * rng.standard_normal(n)).astype(np.float32)


def synth_model(path, spec: SynthSpec | str = "tiny", vocab: dict | None = None, overwrite: bool = False,
                progress: bool = False, **overrides) -> Path:
    """Write a random-weight model to ``path``; ``spec`` is a :class:`SynthSpec` or a preset name."""
    from tqdm import tqdm

    spec = PRESETS[spec] if isinstance(spec, str) else spec
    spec = replace(spec, **overrides) if overrides else spec
    path = Path(path)
    if path.exists() and not overwrite:  # refuse before spending time on the weights
        raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
    vocab = vocab if vocab is not None else tiny_vocab()
    V = len(vocab["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(spec.seed)
    tensors = {}
    plan = _tensor_plan(spec, V)
    _check_types(spec, plan)
    for name, (role, shape) in tqdm(plan.items(), desc="random weights", unit="tensor", disable=not progress):
        if len(shape) == 1:
            tensors[name] = (G.F32, _vector(rng, role, shape[0]).view(np.uint8), shape)
            continue
        gtype = _matrix_type(spec, name, role)
        sigma = 0.5 / np.sqrt(shape[-1]) if role != "token_embd" else 1.0
        tensors[name] = (gtype, random_tensor(rng, gtype, shape, sigma), shape)
    return write_gguf(path, _metadata(spec, vocab), tensors, overwrite=overwrite)


def _matrix_type(spec: SynthSpec, name: str, role: str) -> GGMLType:
    return spec.types.get(name, spec.types.get(role, spec.matrix_type))


def _check_types(spec: SynthSpec, plan: dict) -> None:
    """Every matrix row must hold whole blocks of its type; say so before any weight is drawn."""
    for name, (role, shape) in plan.items():
        gtype = _matrix_type(spec, name, role) if len(shape) == 2 else G.F32
        if shape[-1] % BLOCK_SIZES[gtype][0]:
            raise ValueError(f"synth: tensor '{name}' has rows of {shape[-1]} values, not a multiple of "
                             f"{gtype.name}'s block of {BLOCK_SIZES[gtype][0]}; pick another --type")


# ------------------------------------------------------------------ command line

def add_synth_parser(sub) -> None:
    """The ``synth`` subcommand, added to ``llama-beta``'s subparsers."""
    s = sub.add_parser("synth", help="write a random-weight model (any architecture, preset shapes)")
    s.add_argument("output", help="the .gguf file to write")
    s.add_argument("--arch", choices=["qwen2", "phi3", "llama"], default=None,
                   help="architecture (default: the preset's)")
    s.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="shapes and quant mix (default tiny)")
    s.add_argument("--vocab", default="tiny", metavar="tiny|PATH|NAME",
                   help="'tiny' (a 265-token byte BPE), a GGUF path or a registered vocabulary name to copy")
    s.add_argument("--type", dest="gtype", default=None, metavar="TYPE",
                   help="one ggml type for every matrix, e.g. F32, Q8_0, Q4_K (default: the preset's mix)")
    s.add_argument("--layers", type=int, default=None, metavar="N", help="number of blocks (default: the preset's)")
    s.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    s.add_argument("--force", action="store_true", help="overwrite an existing file")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress or summary")
    s.set_defaults(func=cli_main)


def spec_from_args(args) -> SynthSpec:
    """The :class:`SynthSpec` the command-line options ask for."""
    spec = PRESETS[args.preset]
    changes = {"seed": args.seed}
    if args.arch:
        changes["arch"] = args.arch
    if args.layers is not None:
        if args.layers < 1:
            raise ValueError(f"synth: --layers must be at least 1, got {args.layers}")
        changes["n_layers"] = args.layers
    if args.gtype:
        known = {t.name: t for t in (G.F32, G.F16, *_SCALE_MULTIPLIERS)}
        if args.gtype.upper() not in known:
            raise ValueError(f"synth: --type {args.gtype!r}: expected one of {', '.join(known)}")
        changes.update(matrix_type=known[args.gtype.upper()], types={})
    return replace(spec, **changes)


def vocab_from_arg(text: str, progress: bool = False) -> dict:
    """``tiny``, a GGUF path, or a registered name (e.g. ``phi-3-vocab``) whose vocabulary to copy."""
    if text == "tiny":
        return tiny_vocab()
    from llama_beta import registry

    return vocab_from(registry.resolve(text, fetch=True, progress=progress))


def cli_main(args) -> int:
    """``llama-beta synth OUT.gguf [--arch A] [--preset P] [--vocab V] [--type T] [--layers N] [--seed S] [--force]``."""
    import sys

    spec = spec_from_args(args)
    out = Path(args.output)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out}: exists (pass --force to overwrite it)")
    vocab = vocab_from_arg(args.vocab, progress=not args.quiet)
    V = len(vocab["tokenizer.ggml.tokens"])
    n_params = sum(int(np.prod(shape)) for _, shape in _tensor_plan(spec, V).values())
    big = n_params > 20_000_000  # a few seconds or more: show progress
    synth_model(out, spec, vocab=vocab, overwrite=args.force, progress=big and not args.quiet)
    if not args.quiet:
        print(f"wrote {out}: {spec.arch}, {spec.n_layers} layers, C={spec.dim}, V={V}, "
              f"{n_params / 1e6:.1f}M parameters, {out.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    return 0
