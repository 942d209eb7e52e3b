"""The ``llama-beta`` command line.

Every command that reads a model file turns a problem with the file into one line on
stderr and exit status 1 (set ``LLAMA_BETA_DEBUG=1`` for the traceback). Heavy modules
(Numba) are imported only by the commands that need them, so ``inspect`` and ``models``
start fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_ERROR = 1


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _user_errors() -> tuple[type, ...]:
    from llama_beta.config import ModelError
    from llama_beta.registry import RegistryError
    from ref.gguf import GGUFError

    return (GGUFError, ModelError, RegistryError, CLIError, OSError)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------------- models


def cmd_models(args) -> int:
    from llama_beta import registry

    if args.action == "fetch":
        names = args.names or [registry.DEFAULT_MODEL]
        for name in names:
            registry.fetch_model(name, progress=not args.quiet)
        return 0
    if args.action == "verify":
        ok = True
        for name in args.names or [r["name"] for r in registry.listing() if r["cached"]]:
            good = registry.verify(name)
            ok &= good
            print(f"{name}: {'ok' if good else 'CHECKSUM MISMATCH'}")
        return 0 if ok else EXIT_ERROR
    rows = registry.listing()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"cache: {registry.models_dir()}")
    for r in rows:
        mark = "cached" if r["cached"] else "not fetched"
        default = " (default)" if r["default"] else ""
        print(f"  {r['name']}{default}  {_fmt_bytes(r['size'])}  [{mark}]")
        print(f"      {r['description']}")
        print(f"      source: {r['provenance']}")
    return 0


# ------------------------------------------------------------------------ inspect


def inspect_model(path) -> dict:
    """Everything ``inspect`` shows, as a JSON-ready dict (validates the model first)."""
    from collections import Counter

    from llama_beta.config import load_config
    from ref.gguf import GGUFFile

    with GGUFFile(path) as g:
        info = {"file": str(path), "gguf_version": g.version, "alignment": g.alignment,
                "n_tensors": len(g.tensors), "n_metadata": len(g.metadata),
                "name": g.metadata.get("general.name"), "architecture": g.metadata.get("general.architecture")}
        if g.tensors:
            cfg, _ = load_config(g)
            info["config"] = {k: v for k, v in cfg.as_dict().items() if k != "extra"}
        info["tokenizer"] = _tokenizer_summary(g)
        by_type, params = Counter(), Counter()
        for t in g.tensors.values():
            by_type[t.ggml_type.name] += t.nbytes
            params[t.ggml_type.name] += t.n_elements
        info["parameters"] = int(sum(params.values()))
        info["quantization"] = {k: {"bytes": int(by_type[k]), "parameters": int(params[k]),
                                    "tensors": sum(1 for t in g.tensors.values() if t.ggml_type.name == k)}
                                for k in sorted(by_type, key=lambda k: -by_type[k])}
        info["tensors"] = [{"name": t.name, "shape": list(t.shape), "type": t.ggml_type.name, "bytes": int(t.nbytes),
                            "offset": int(t.offset)} for t in g.tensors.values()]
        info["chat_template"] = isinstance(g.metadata.get("tokenizer.chat_template"), str)
    return info


def _tokenizer_summary(g) -> dict | None:
    model = g.metadata.get("tokenizer.ggml.model")
    if model is None:
        return None
    tokens = g.metadata.get("tokenizer.ggml.tokens")
    kind = {"gpt2": "byte-level BPE", "llama": "SentencePiece-style"}.get(model, model)
    return {"model": model, "kind": kind, "pre": g.metadata.get("tokenizer.ggml.pre"),
            "vocab_size": len(tokens) if isinstance(tokens, list) else None,
            "merges": len(m) if isinstance(m := g.metadata.get("tokenizer.ggml.merges"), list) else None,
            "bos_id": _int_or_none(g.metadata.get("tokenizer.ggml.bos_token_id")),
            "eos_id": _int_or_none(g.metadata.get("tokenizer.ggml.eos_token_id"))}


def _int_or_none(v):
    try:
        return None if v is None or isinstance(v, (str, list)) else int(v)
    except (TypeError, ValueError):
        return None


def _print_inspect(info: dict, tensors: bool) -> None:
    print(f"file          {info['file']}")
    print(f"name          {info['name']}")
    print(f"architecture  {info['architecture']}   (GGUF v{info['gguf_version']}, alignment {info['alignment']}, "
          f"{info['n_metadata']} metadata keys, {info['n_tensors']} tensors)")
    cfg = info.get("config")
    if cfg:
        print("hyperparameters")
        for key in ("n_layers", "dim", "n_heads", "n_kv_heads", "head_size", "ffn_dim", "vocab_size",
                    "context_length", "norm_eps", "rope_base", "rope_dims", "rope_neox", "rope_scaling",
                    "tied_embeddings", "fused_qkv", "fused_gate_up", "qkv_bias"):
            print(f"  {key:<16}{cfg[key]}")
    tok = info.get("tokenizer")
    if tok:
        extra = f", pre-tokenizer {tok['pre']}" if tok.get("pre") else ""
        merges = f", {tok['merges']:,} merges" if tok.get("merges") else ""
        print(f"tokenizer     {tok['kind']} ({tok['model']}): {tok['vocab_size']:,} tokens{merges}{extra}")
    print(f"parameters    {info['parameters']:,}")
    if info["quantization"]:
        total = sum(q["bytes"] for q in info["quantization"].values())
        print(f"quantization  {_fmt_bytes(total)} of tensor data")
        for name, q in info["quantization"].items():
            share = 100.0 * q["bytes"] / total if total else 0.0
            print(f"  {name:<6}{q['tensors']:>5} tensors {q['parameters']:>13,} params {_fmt_bytes(q['bytes']):>12}"
                  f"  {share:5.1f}%")
    if tensors:
        width = max((len(t["name"]) for t in info["tensors"]), default=4)
        print(f"{'tensor':<{width}}  {'shape':<16} {'type':<6} {'bytes':>12}")
        for t in info["tensors"]:
            shape = "x".join(str(d) for d in t["shape"])
            print(f"{t['name']:<{width}}  {shape:<16} {t['type']:<6} {t['bytes']:>12,}")


def cmd_inspect(args) -> int:
    from llama_beta import registry

    path = registry.resolve(args.model, fetch=False)
    info = inspect_model(path)
    if args.json:
        if not args.tensors:
            info.pop("tensors")
        print(json.dumps(info, indent=2))
    else:
        _print_inspect(info, args.tensors)
    return 0


# ------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from llama_beta import registry

    p = argparse.ArgumentParser(prog="llama-beta", description="LLM inference on GGUF files, readable end to end.")
    p.add_argument("--version", action="version", version=f"llama-beta {__import__('llama_beta').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("models", help="list, fetch or verify registered models")
    m.add_argument("action", nargs="?", choices=["list", "fetch", "verify"], default="list")
    m.add_argument("names", nargs="*", help=f"registered names (default: {registry.DEFAULT_MODEL})")
    m.add_argument("--json", action="store_true", help="machine-readable listing")
    m.add_argument("--quiet", action="store_true", help="no progress output")
    m.set_defaults(func=cmd_models)

    i = sub.add_parser("inspect", help="architecture, hyperparameters, tokenizer and quantization mix of a model")
    i.add_argument("model", nargs="?", default=registry.DEFAULT_MODEL, help="a .gguf path or a registered name")
    i.add_argument("--tensors", action="store_true", help="also print the tensor table")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("llama-beta: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # one line for people; the traceback on request
        if os.environ.get("LLAMA_BETA_DEBUG") == "1":
            raise
        known = isinstance(exc, _user_errors())
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        prefix = "error" if known else f"internal error ({type(exc).__name__}; LLAMA_BETA_DEBUG=1 shows more)"
        print(f"llama-beta: {prefix}: {text}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
