"""The ``llama-beta`` command line.

Every command that reads a model file turns a problem with the file into one line on
stderr and exit status 1 (set ``LLAMA_BETA_DEBUG=1`` for the traceback). Heavy modules
(Numba) are imported only by the commands that need them, so ``inspect`` and ``models``
start fast.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

EXIT_ERROR = 1


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _user_errors() -> tuple[type, ...]:
    from llama_beta.backends import BackendUnavailable
    from llama_beta.chat import TemplateError
    from llama_beta.config import ModelError
    from llama_beta.registry import RegistryError
    from ref.gguf import GGUFError

    return (GGUFError, ModelError, RegistryError, TemplateError, CLIError, BackendUnavailable, OSError, ValueError)


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
            value = cfg[key]
            print(f"  {key:<16}{value:g}" if isinstance(value, float) else f"  {key:<16}{value}")
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


# ------------------------------------------------------------- tokenize, detokenize


def _load_tokenizer(model):
    from llama_beta import registry
    from ref import tokenizer

    return tokenizer.load(registry.resolve(model, fetch=True))


def cmd_tokenize(args) -> int:
    tok = _load_tokenizer(args.model)
    ids = tok.encode(args.text, add_bos=None, parse_special=not args.no_special)
    if args.json:
        pieces = [tok.token_bytes(i).decode("utf-8", "replace") for i in ids]
        print(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
    else:
        print(" ".join(str(i) for i in ids))
    return 0


def cmd_detokenize(args) -> int:
    tok = _load_tokenizer(args.model)
    bad = [i for i in args.ids if not 0 <= i < tok.vocab_size]
    if bad:
        raise CLIError(f"token id {bad[0]} out of range: expected 0 <= id < {tok.vocab_size}")
    sys.stdout.write(tok.decode(args.ids) + "\n")
    return 0


# ---------------------------------------------------------------- generate, chat


def _load_model(args):
    import llama_beta

    context = args.context
    if context is None and hasattr(args, "prompt_tokens"):
        context = args.prompt_tokens + args.gen_tokens + 8
    return llama_beta.load(args.model, backend=args.backend, context=context,
                           vram_limit=getattr(args, "vram_limit", None), kv_type=args.kv_type)


def _sampling_kwargs(args) -> dict:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repeat_penalty=args.repeat_penalty, seed=args.seed, stop=args.stop or ())


def _print_stats(result) -> None:
    t = result.timings
    rate = f"{t['decode_tok_s']:.1f} tok/s" if t.get("decode_tok_s") else "-"
    prefill = f"{t['prefill_tok_s']:.1f} tok/s" if t.get("prefill_tok_s") else "-"
    print(f"[{t['prompt_tokens']} prompt tokens at {prefill}, {t['generated_tokens']} generated at {rate}, "
          f"{t['backend']} backend, stop: {result.finish_reason}]", file=sys.stderr)


def cmd_generate(args) -> int:
    model = _load_model(args)
    stream = None if args.json else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    result = model.generate(args.prompt, chat=not args.no_chat, system=args.system, on_text=stream,
                            **_sampling_kwargs(args))
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, indent=2))
    else:
        sys.stdout.write("\n")
        if not args.quiet:
            _print_stats(result)
    return 0


def cmd_chat(args) -> int:
    from llama_beta.chat import render

    model = _load_model(args)
    tok = model.tokenizer
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("chat with the model; an empty line or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        messages.append({"role": "user", "content": line})
        text = render(tok.chat_template, messages) if tok.chat_template else line
        stream = lambda s: (sys.stdout.write(s), sys.stdout.flush())  # noqa: E731
        result = model.generate("", prompt_ids=list(tok.encode(text)), on_text=stream, **_sampling_kwargs(args))
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": result.text})
    return 0


def cmd_bench(args) -> int:
    from llama_beta import bench

    model = _load_model(args)
    note = (lambda i, n, run: print(f"  run {i}/{n}: prefill {run['prefill_s']:.3f} s, decode {run['decode_s']:.3f} s",
                                    file=sys.stderr)) if not args.json else None
    result = bench.run(model, args.prompt_tokens, args.gen_tokens, args.repeat, progress=note)
    if args.output:
        bench.save(result, args.output)
    print(json.dumps(result, indent=2) if args.json else bench.format_report(result))
    return 0


def _number(kind, low, high=None, above=False):
    """An argparse ``type``: ``kind`` (int or float), finite, in the range ``generate.describe_range`` names;
    otherwise argparse's one-line usage error naming the option and what it expected."""
    from llama_beta.generate import describe_range, in_range

    expected = f"{'an integer' if kind is int else 'a number'} {describe_range(low, high, above)}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and in_range(value, low, high, above)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return parse


def _sampling(kind, name):
    """The argparse ``type`` of a sampling option: ``generate.SAMPLING_RANGES``, as SamplingParams checks it."""
    from llama_beta.generate import SAMPLING_RANGES

    return _number(kind, *SAMPLING_RANGES[name])


def _memory_size(text: str) -> str:
    """An argparse ``type`` for --vram-limit: checked here (``memory.parse_size``), kept as written."""
    from llama_beta.memory import parse_size

    try:
        parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_kv_type(p) -> None:
    from llama_beta.model import KV_TYPES

    p.add_argument("--kv-type", choices=list(KV_TYPES), default="f32",
                   help="the KV cache's element type: f16 halves its memory and the bytes attention reads, "
                        "rounding each cached value to 11 significant bits (default: f32)")


def _add_sampling_options(p, registry) -> None:
    p.add_argument("--model", "-m", default=registry.DEFAULT_MODEL, help="a .gguf path or a registered name")
    p.add_argument("--backend", choices=["auto", "numpy", "cuda"], default="auto", help="where to run (default: auto)")
    p.add_argument("--context", type=_number(int, 1), default=None, help="context length to allocate (default: 4096)")
    p.add_argument("--vram-limit", type=_memory_size, default=None, help="GPU memory the model may use, e.g. 8GiB (default: free memory)")
    _add_kv_type(p)
    p.add_argument("--system", default=None, help="system message for the chat template")
    p.add_argument("--max-tokens", "-n", type=_number(int, 0), default=256, help="tokens to generate at most (default 256)")
    p.add_argument("--temperature", "-t", type=_sampling(float, "temperature"), default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=_sampling(int, "top_k"), default=40, help="keep the k most likely tokens; 0 keeps all (default 40)")
    p.add_argument("--top-p", type=_sampling(float, "top_p"), default=0.95,
                   help="nucleus sampling mass; 0 keeps the top token (default 0.95)")
    p.add_argument("--min-p", type=_sampling(float, "min_p"), default=0.05, help="drop tokens below min-p x the top probability")
    p.add_argument("--repeat-penalty", type=_sampling(float, "repeat_penalty"), default=1.0, help="penalize the last 64 tokens (1.0: off)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (same seed, same text)")
    p.add_argument("--stop", action="append", help="stop when this text appears (repeatable)")


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

    t = sub.add_parser("tokenize", help="text -> token ids with a model's tokenizer")
    t.add_argument("model", help="a .gguf path or a registered name")
    t.add_argument("text")
    t.add_argument("--json", action="store_true", help="print ids and pieces as JSON")
    t.add_argument("--no-special", action="store_true", help="treat special-token text as plain text")
    t.set_defaults(func=cmd_tokenize)

    d = sub.add_parser("detokenize", help="token ids -> text")
    d.add_argument("model", help="a .gguf path or a registered name")
    d.add_argument("ids", nargs="+", type=int)
    d.set_defaults(func=cmd_detokenize)

    g = sub.add_parser("generate", help="generate text from a prompt (streams to stdout)")
    g.add_argument("prompt")
    _add_sampling_options(g, registry)
    g.add_argument("--no-chat", action="store_true", help="use the prompt as is, without the chat template")
    g.add_argument("--json", action="store_true", help="print prompt ids, generated ids, text and timings as JSON")
    g.add_argument("--quiet", "-q", action="store_true", help="no statistics line on stderr")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat with the model's template")
    _add_sampling_options(c, registry)
    c.set_defaults(func=cmd_chat)

    b = sub.add_parser("bench", help="prefill and decode speed (median and spread over repeated runs)")
    b.add_argument("--model", "-m", default=registry.DEFAULT_MODEL, help="a .gguf path or a registered name")
    b.add_argument("--backend", choices=["auto", "numpy", "cuda"], default="auto")
    b.add_argument("-p", "--prompt-tokens", type=_number(int, 1), default=512, help="prompt length (default 512)")
    b.add_argument("-n", "--gen-tokens", type=_number(int, 0), default=128,
                   help="tokens to decode (default 128; 0: prefill only)")
    b.add_argument("-r", "--repeat", type=_number(int, 1), default=3, help="timed runs after one warm-up (default 3)")
    b.add_argument("--context", type=_number(int, 1), default=None, help=argparse.SUPPRESS)
    b.add_argument("--vram-limit", type=_memory_size, default=None, help="GPU memory the model may use, e.g. 8GiB")
    _add_kv_type(b)
    b.add_argument("--output", "-o", default=None, help="also write the JSON result to this file")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=cmd_bench)

    from llama_beta.synth import add_synth_parser

    add_synth_parser(sub)
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
