"""Model configuration read from GGUF metadata, and the checks made before any weight is read.

``general.architecture`` names an adapter (``llama_beta/architectures/<arch>.py``). The
adapter turns metadata into a :class:`ModelConfig` and lists every tensor the forward
pass needs with its expected shape. :func:`load_config` then checks, before a single
weight byte is touched:

- hyperparameters: positive sizes, kv heads dividing heads, head size consistent with
  the projections, RoPE dimensions even and within the head, block count matching the
  ``blk.N`` tensors present;
- tensors: every expected name present, with the expected shape and a type the
  engine can read (norms and biases in F32; matrices in a supported ggml type).

Every problem is a :class:`ModelError` (a ``ValueError``) whose one-line message names the
file, the key or tensor, and what was expected.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ref.ggml import GGMLType


class ModelError(ValueError):
    """The file is a valid GGUF but not a model this engine can run (message names file, field, expectation)."""


# ggml types the matrix products can read (the NumPy backend reads every type ref.quants knows).
MATRIX_TYPES = {GGMLType.F32, GGMLType.F16, GGMLType.BF16, GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q5_0,
                GGMLType.Q5_1, GGMLType.Q8_0, GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K,
                GGMLType.Q6_K}
VECTOR_TYPES = {GGMLType.F32}
SANE_MAX = {"block_count": 512, "embedding_length": 1 << 16, "feed_forward_length": 1 << 18,
            "attention.head_count": 1024, "context_length": 1 << 24, "vocab": 1 << 22}


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layers: int
    dim: int                 # C: model width
    n_heads: int             # nh
    n_kv_heads: int          # nkv
    head_size: int           # hs
    ffn_dim: int             # F
    vocab_size: int          # V
    context_length: int
    norm_eps: float
    rope_base: float
    rope_dims: int           # rotated dimensions per head (<= hs)
    rope_neox: bool          # rotate-half pairs (i, i + d/2) rather than interleaved pairs (2i, 2i+1)
    rope_freq_scale: float = 1.0
    rope_scaling: str = "none"
    rope_orig_context: int = 0
    attn_factor: float = 1.0
    tied_embeddings: bool = False
    fused_qkv: bool = False
    fused_gate_up: bool = False
    qkv_bias: bool = False
    name: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def kv_mul(self) -> int:
        return self.n_heads // self.n_kv_heads

    def as_dict(self) -> dict:
        return asdict(self)


class MetadataView:
    """Typed access to ``{arch}.*`` metadata with one-line errors naming the file and key."""

    def __init__(self, gguf, arch: str):
        self.gguf, self.arch, self.md = gguf, arch, gguf.metadata

    def fail(self, key: str, expected: str, got=None) -> ModelError:
        tail = "" if got is None else f", got {got!r}"
        return ModelError(f"{self.gguf.path}: metadata '{key}': expected {expected}{tail}")

    def _get(self, key, default):
        if key in self.md:
            return self.md[key]
        if default is _REQUIRED:
            raise self.fail(key, "this key to be present (required for this architecture)")
        return default

    def int(self, key: str, default=None, lo: int = 1, hi: int = 1 << 31, arch_key: bool = True):
        key = f"{self.arch}.{key}" if arch_key else key
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int,)) and not _is_np_int(value):
            raise self.fail(key, "an integer", value)
        value = int(value)
        if not lo <= value <= hi:
            raise self.fail(key, f"an integer in [{lo}, {hi}]", value)
        return value

    def float(self, key: str, default=None, lo: float = 0.0, hi: float = 1e12):
        key = f"{self.arch}.{key}"
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_np_number(value):
            raise self.fail(key, "a number", value)
        value = float(value)
        if not (lo <= value <= hi):  # also rejects NaN
            raise self.fail(key, f"a number in [{lo:g}, {hi:g}]", value)
        return value

    def str(self, key: str, default=None):
        key = f"{self.arch}.{key}"
        value = self._get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, "a string", value)
        return value


_REQUIRED = object()


def _is_np_int(v) -> bool:
    import numpy as np

    return isinstance(v, np.integer)


def _is_np_number(v) -> bool:
    import numpy as np

    return isinstance(v, (np.integer, np.floating))


def vocab_size(gguf, mv: MetadataView) -> int:
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    if tokens is not None:
        if not isinstance(tokens, list) or not tokens:
            raise mv.fail("tokenizer.ggml.tokens", "a non-empty array of strings")
        return len(tokens)
    return mv.int("vocab_size", _REQUIRED, hi=SANE_MAX["vocab"])


def common_hparams(gguf, arch: str) -> dict:
    """The hyperparameters every llama-family architecture stores the same way."""
    mv = MetadataView(gguf, arch)
    dim = mv.int("embedding_length", _REQUIRED, hi=SANE_MAX["embedding_length"])
    n_heads = mv.int("attention.head_count", _REQUIRED, hi=SANE_MAX["attention.head_count"])
    n_kv = mv.int("attention.head_count_kv", n_heads, hi=n_heads)
    if n_heads % n_kv:
        raise mv.fail(f"{arch}.attention.head_count_kv", f"a divisor of attention.head_count={n_heads}", n_kv)
    if dim % n_heads and mv.md.get(f"{arch}.attention.key_length") is None:
        raise mv.fail(f"{arch}.embedding_length", f"a multiple of attention.head_count={n_heads}", dim)
    head_size = mv.int("attention.key_length", dim // n_heads or None, hi=1024)
    value_len = mv.int("attention.value_length", head_size, hi=1024)
    if value_len != head_size:
        raise mv.fail(f"{arch}.attention.value_length", f"equal to key_length={head_size}", value_len)
    rope_dims = mv.int("rope.dimension_count", head_size, hi=head_size)
    if rope_dims % 2:
        raise mv.fail(f"{arch}.rope.dimension_count", "an even number", rope_dims)
    scaling = mv.str("rope.scaling.type", "none")
    factor = mv.float("rope.scaling.factor", 0.0, lo=0.0, hi=1e6)
    freq_scale = 1.0 / factor if scaling == "linear" and factor > 0 else 1.0
    return dict(
        arch=arch,
        n_layers=mv.int("block_count", _REQUIRED, hi=SANE_MAX["block_count"]),
        dim=dim, n_heads=n_heads, n_kv_heads=n_kv, head_size=head_size,
        ffn_dim=mv.int("feed_forward_length", _REQUIRED, hi=SANE_MAX["feed_forward_length"]),
        vocab_size=vocab_size(gguf, mv),
        context_length=mv.int("context_length", 2048, hi=SANE_MAX["context_length"]),
        norm_eps=mv.float("attention.layer_norm_rms_epsilon", 1e-5, lo=0.0, hi=1.0),
        rope_base=mv.float("rope.freq_base", 10000.0, lo=1e-3, hi=1e12),
        rope_dims=rope_dims, rope_freq_scale=freq_scale, rope_scaling=scaling,
        rope_orig_context=mv.int("rope.scaling.original_context_length", 0, lo=0, hi=SANE_MAX["context_length"]),
        name=str(gguf.metadata.get("general.name", "")),
    )


# ------------------------------------------------------------------ tensor checks

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


def _first(numbers: list[int], shown: int = 3) -> str:
    """'0, 1, 2, ...': the first few of a sorted list, for a one-line message."""
    return ", ".join(map(str, numbers[:shown])) + (", ..." if len(numbers) > shown else "")


def check_block_count(gguf, cfg: ModelConfig) -> None:
    present = {int(m.group(1)) for name in gguf.tensors if (m := _BLOCK_RE.match(name))}
    expected = set(range(cfg.n_layers))
    if present != expected:
        missing, extra = sorted(expected - present), sorted(present - expected)
        what = (f"{len(missing)} of them missing ({_first(missing)})" if missing
                else f"unexpected blocks {_first(extra)}")
        raise ModelError(f"{gguf.path}: metadata '{cfg.arch}.block_count': expected {cfg.n_layers} blocks "
                         f"blk.0..blk.{cfg.n_layers - 1} in the tensors, but {what}")


def check_tensors(gguf, expected: dict[str, tuple[tuple[int, ...], set]]) -> None:
    """Every expected tensor present with the expected shape (numpy order) and an allowed type."""
    for name, (shape, types) in expected.items():
        info = gguf.tensors.get(name)
        if info is None:
            raise ModelError(f"{gguf.path}: tensor '{name}': expected it to be present with shape {shape}")
        if tuple(info.shape) != tuple(shape):
            raise ModelError(f"{gguf.path}: tensor '{name}': expected shape {tuple(shape)}, got {tuple(info.shape)}")
        if info.ggml_type not in types:
            allowed = ", ".join(sorted(t.name for t in types))
            raise ModelError(f"{gguf.path}: tensor '{name}': expected type in {{{allowed}}}, got {info.ggml_type.name}")


def load_config(gguf) -> tuple[ModelConfig, "object"]:
    """Detect the architecture, build and check its config and tensors; return (config, adapter module)."""
    from llama_beta import architectures

    arch = gguf.metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{gguf.path}: metadata 'general.architecture': expected a non-empty string, got {arch!r}")
    adapter = architectures.get(arch)
    if adapter is None:
        supported = ", ".join(architectures.supported())
        raise ModelError(f"{gguf.path}: metadata 'general.architecture': unsupported architecture '{arch}' "
                         f"(supported: {supported})")
    cfg = adapter.config(gguf)
    check_block_count(gguf, cfg)
    check_tensors(gguf, architectures.expected_tensors(cfg, adapter))
    return cfg, adapter
