"""Charts for the docs, drawn as plain SVG from the benchmark JSON (no plotting library needed).

    python benchmarks/plots.py        # prints the decode chart's SVG
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_rows(metric: str = "decode") -> list[tuple[str, float, str]]:
    """(label, tok/s, kind) for the reference engines and every recorded llama-beta run on Qwen2.5-0.5B;
    ``metric`` "decode" or "prefill" (prefill: the 512-token runs only, and the engines that report it)."""
    ref = json.loads((HERE / "reference.json").read_text())
    key = "decode_tok_s" if metric == "decode" else "prefill_512_tok_s"
    rows = [(f"{e['engine']}", float(e[key]), "reference", "") for e in ref["engines"]
            if "Qwen2.5-0.5B" in e["model"] and key in e]
    for f in sorted((HERE / "results").glob("*.json")):
        r = json.loads(f.read_text())
        if "phi3" in r["model"].lower():
            continue                                   # these charts are the Qwen2.5-0.5B ones
        if metric == "prefill" and r["prompt_tokens"] != 512:
            continue
        label = run_label(r) if metric == "decode" else prefill_label(r)
        rows.append((label, float(r[f"{metric}_tok_s"]["median"]), "ours", r.get("date", "")))
    if metric == "prefill":                            # few prefill variants: the latest run of each
        references = [row for row in rows if row[2] == "reference"]
        latest = {}
        for row in sorted((row for row in rows if row[2] == "ours"), key=lambda row: row[3]):
            latest[row[0]] = row                       # a later run with the same label replaces it
        rows = references + sorted(latest.values(), key=lambda row: row[1])
    return [row[:3] for row in rows]


def prefill_label(r: dict) -> str:
    """'llama-beta cuda prefill fused (H200, real)': the prefill path of a ``llama-beta bench`` record
    (records from before the preallocated prefill ran the readable forward pass)."""
    kind = "synthetic" if "synth" in r["model"] or r["name"].startswith("synthetic") else "real"
    st = r.get("prefill_settings")             # recorded from the sixth session on: products and graphs
    extra = "" if not st else (" v11" if st["mma"] else " v10") + ("+graph" if st["graph"] else "")
    return f"llama-beta {r['backend']} prefill {r.get('prefill_variant', 'readable')}{extra} (H200, {kind})"


def run_label(r: dict) -> str:
    """'llama-beta cuda fused+graph (H200, synthetic)' from a ``llama-beta bench`` JSON record."""
    if r["backend"] != "cuda":
        return f"llama-beta {r['backend']} (2 CPU cores)"
    v = r.get("decode_variant", {"body": "readable", "graph": False})
    kind = "synthetic" if "synth" in r["model"] or r["name"].startswith("synthetic") else "real"
    if "attention" not in v:        # recorded before the kernel switches existed: session 2's kernels
        notes = ["attention v4", "no split-K"] if v["body"] == "fused" else []
    else:
        notes = ([f"attention {v['attention']}"] if v["attention"] != "auto" else []) \
            + ([] if v["split_k"] else ["no split-K"]) + ([] if v["matvec_warm"] else ["no warm-up"]) \
            + ([f"{v['run_ahead']} steps ahead"] if v.get("run_ahead") else []) \
            + (["RoPE in Q/K/V"] if v.get("qkv_rope") else []) + (["PDL"] if v.get("pdl") else []) \
            + (["v12 products"] if v.get("decode_mma") else []) \
            + (["v13 staging"] if v.get("stage_loads") == 4 else []) + (["KV prefetch"] if v.get("kv_prefetch") else []) \
            + (["v15 loads"] if v.get("vector_loads") else []) + (["v17 L2 warm-up"] if v.get("warm_l2") else []) \
            + (["v18 staged rows"] if v.get("stage_rows") else []) + (["v20 dp4a"] if v.get("dp4a") not in (None, False, "0") else [])
    return f"llama-beta cuda {v['body']}{'+graph' if v['graph'] else ''} ({gpu_label(r)}, {', '.join([kind] + notes)})"


def gpu_label(r: dict) -> str:
    """'H100' or 'H200' from a bench record's GPU name; records from before the field were all made on the H200."""
    name = r.get("gpu") or "H200"
    return next((short for short in ("H100", "H200") if short in name), name)


def bar_chart_svg(rows, title: str, unit: str, width: int = 720, bar: int = 26) -> str:
    """Horizontal bars on a log scale (the values span three orders of magnitude)."""
    import math

    label_w, top, gap = 290, 40, 8
    height = top + len(rows) * (bar + gap) + 30
    top_value = max(v for _, v, _ in rows)
    decades = math.ceil(math.log10(top_value))
    scale = (width - label_w - 70) / decades                       # pixels per decade, from 1 tok/s
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" style="font: 13px sans-serif">',
             f'<text x="0" y="20" font-weight="bold">{escape(title)}</text>']
    for d in range(decades + 1):
        x = label_w + d * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 24}" stroke="#ccc"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle" fill="#666">{10 ** d:g}</text>')
    for i, (label, value, kind) in enumerate(rows):
        y = top + i * (bar + gap)
        w = max(2.0, math.log10(max(value, 1.0)) * scale)
        color = "#7e57c2" if kind == "ours" else "#9e9e9e"
        parts.append(f'<text x="{label_w - 8}" y="{y + bar * 0.7:.1f}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar * 0.7:.1f}">{value:,.1f} {escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def decode_chart() -> str:
    return bar_chart_svg(load_rows(), "Decode speed, Qwen2.5-0.5B Q4_K_M mix (log scale)", "tok/s")


def prefill_chart() -> str:
    return bar_chart_svg(load_rows("prefill"), "Prefill of 512 tokens, Qwen2.5-0.5B Q4_K_M mix (log scale)", "tok/s")


if __name__ == "__main__":
    print(decode_chart())
    print(prefill_chart())
