"""``llama-beta bench``: the report people read, the JSON it records, and the arguments it refuses."""
from __future__ import annotations

import json

import pytest

from llama_beta.synth import synth_model
from test_cli import run_cli


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return synth_model(tmp_path_factory.mktemp("bench") / "m.gguf", "micro")


def test_json_record_on_the_numpy_backend(micro, tmp_path):
    out = tmp_path / "result.json"
    r = run_cli("bench", "--model", micro, "--backend", "numpy", "-p", 6, "-n", 3, "-r", 2, "--json", "-o", out)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert json.loads(out.read_text()) == result                      # -o records what --json prints
    assert (result["prompt_tokens"], result["gen_tokens"], result["repeat"]) == (6, 3, 2)
    assert result["backend"] == "numpy" and len(result["runs"]) == 2
    assert result["gpu"] is None                                      # only the cuda backend names its GPU
    for key in ("prefill_tok_s", "decode_tok_s"):
        spread = result[key]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"]
    decode = sorted(3 / run["decode_s"] for run in result["runs"])
    assert result["decode_tok_s"]["median"] == pytest.approx(sum(decode) / 2)   # the median of two runs
    assert result["bytes_per_decode_step"] > 0
    assert result["fraction_of_copy_bandwidth"] == pytest.approx(
        result["bytes_per_decode_step"] * result["decode_tok_s"]["median"] / result["bandwidth_assumed"])


def test_float16_kv_cache_is_recorded_and_counted(micro):
    """--kv-type f16: the JSON says so, and a decode step reads half the cache bytes of an f32 run (the
    weights' bytes are the same); an unknown type is a usage error before any model is loaded."""
    runs = {}
    for kv_type in ("f32", "f16"):
        r = run_cli("bench", "--model", micro, "--backend", "numpy", "-p", 4, "-n", 2, "-r", 1, "--json",
                    "--kv-type", kv_type)
        assert r.returncode == 0, r.stderr
        runs[kv_type] = json.loads(r.stdout)
        assert runs[kv_type]["kv_type"] == kv_type
    from llama_beta.bench import kv_bytes_per_token
    from llama_beta.model import Model

    model = Model(micro, backend="numpy", context=8, kv_type="f16")
    half = kv_bytes_per_token(model, 4 + 2 // 2)                        # the cache read at the mean position
    assert runs["f32"]["bytes_per_decode_step"] - runs["f16"]["bytes_per_decode_step"] == half > 0
    r = run_cli("bench", "--model", micro, "--kv-type", "f8")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--kv-type" in r.stderr.strip().splitlines()[-1] and "'f16'" in r.stderr


def test_report_and_progress_lines(micro):
    r = run_cli("bench", "--model", micro, "--backend", "numpy", "-p", 4, "-n", 0, "-r", 1)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["model", "prefill", "decode", "TTFT", "traffic"]
    assert "4 tokens:" in lines[1] and lines[2] == "decode   none (-n 0: prefill only)"
    assert [ln.split(":")[0].strip() for ln in r.stderr.splitlines() if ln.strip()] == ["run 1/1"]   # progress only


def test_run_refuses_empty_measurements(micro):
    import llama_beta
    from llama_beta import bench

    model = llama_beta.load(micro, backend="numpy", progress=False)
    for kwargs, name in ((dict(prompt_tokens=0), "prompt_tokens"), (dict(gen_tokens=-1), "gen_tokens"),
                         (dict(repeat=0), "repeat")):
        with pytest.raises(ValueError, match=f"bench: {name} must be >="):
            bench.run(model, **{"prompt_tokens": 4, "gen_tokens": 1, "repeat": 1, **kwargs})


def test_plot_labels_name_the_gpu_of_each_record():
    """Records name their GPU (eighteenth session on); older ones were all made on the lent H200."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from plots import gpu_label

    assert gpu_label({"gpu": "NVIDIA H100 80GB HBM3"}) == "H100"
    assert gpu_label({"gpu": "NVIDIA H200"}) == "H200"
    assert gpu_label({}) == "H200" and gpu_label({"gpu": None}) == "H200"
    assert gpu_label({"gpu": "NVIDIA A100-SXM4-80GB"}) == "NVIDIA A100-SXM4-80GB"
