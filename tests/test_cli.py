"""The ``llama-beta`` command: output people read, and one-line errors with exit status 1."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llama_beta.synth import synth_model


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "llama_beta.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for f in fragments:
        assert f in lines[0], lines[0]


def test_inspect_real_model(qwen_model_path):
    r = run_cli("inspect", qwen_model_path)
    assert r.returncode == 0, r.stderr
    assert "architecture  qwen2" in r.stdout
    assert "byte-level BPE (gpt2): 151,936 tokens, 151,387 merges" in r.stdout
    for t in ("Q5_0", "Q8_0", "Q6_K", "Q4_K", "F32"):
        assert f"  {t} " in r.stdout


def test_inspect_json_and_tensors(tmp_path):
    path = synth_model(tmp_path / "m.gguf", "micro")
    info = json.loads(run_cli("inspect", path, "--json", "--tensors").stdout)
    assert info["config"]["n_layers"] == 2 and info["architecture"] == "qwen2"
    assert len(info["tensors"]) == info["n_tensors"] and info["parameters"] > 0
    table = run_cli("inspect", path, "--tensors").stdout
    row = next(line for line in table.splitlines() if line.startswith("blk.1.ffn_down.weight"))
    assert row.split()[1:3] == ["64x96", "F32"]  # numpy order: [C, F] rows are outputs


@pytest.mark.parametrize("command", ["inspect", "generate"])
def test_malformed_file_is_one_line(tmp_path, command):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 24)
    args = ["inspect", bad] if command == "inspect" else ["generate", "--model", bad, "hi", "--backend", "numpy"]
    assert_one_line_error(run_cli(*args), str(bad))


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert_one_line_error(run_cli("inspect", bad), str(bad))


def test_missing_file_and_unknown_name():
    assert_one_line_error(run_cli("inspect", "/nonexistent/model.gguf"), "no such file")


def test_unsupported_architecture_exit_code(tmp_path):
    from llama_beta.gguf_writer import write_gguf

    path = write_gguf(tmp_path / "m.gguf", {"general.architecture": "mamba"},
                      {"x": (0, __import__("numpy").zeros(4, "float32"), (4,))})
    assert_one_line_error(run_cli("inspect", path), "unsupported architecture 'mamba'", "qwen2")


def test_models_listing():
    r = run_cli("models")
    assert r.returncode == 0
    assert "qwen2.5-coder-0.5b-instruct (default)" in r.stdout and "phi-3-vocab" in r.stdout


def test_tokenize_and_detokenize_round_trip(qwen2_vocab_path):
    r = run_cli("tokenize", qwen2_vocab_path, "Hello, llama!<|im_end|>", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ids"][-1] == 151645 and "".join(out["pieces"]) == "Hello, llama!<|im_end|>"
    plain = run_cli("tokenize", qwen2_vocab_path, "<|im_end|>", "--no-special").stdout.split()
    assert "151645" not in plain and len(plain) > 1          # the special token's text, spelled out
    back = run_cli("detokenize", qwen2_vocab_path, *out["ids"])
    assert back.returncode == 0 and back.stdout == "Hello, llama!<|im_end|>\n"


def test_detokenize_out_of_range_is_one_line(qwen2_vocab_path):
    assert_one_line_error(run_cli("detokenize", qwen2_vocab_path, "5", "999999"), "token id 999999 out of range")


def test_generate_json_on_a_tiny_model(tmp_path):
    path = synth_model(tmp_path / "m.gguf", "micro")
    r = run_cli("generate", "--model", path, "the", "--backend", "numpy", "--no-chat", "-n", "5", "--seed", "3",
                "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["seed"] == 3 and len(out["ids"]) <= 5 and out["prompt_ids"]
    assert set(out["timings"]) >= {"prefill_s", "decode_s", "decode_tok_s"}
    again = json.loads(run_cli("generate", "--model", path, "the", "--backend", "numpy", "--no-chat", "-n", "5",
                               "--seed", "3", "--json").stdout)
    assert again["ids"] == out["ids"] and again["text"] == out["text"]


def test_generate_streams_text_to_stdout(tmp_path):
    path = synth_model(tmp_path / "m.gguf", "micro")
    r = run_cli("generate", "--model", path, "the", "--backend", "numpy", "--no-chat", "-n", "4", "-t", "0")
    assert r.returncode == 0 and r.stdout.endswith("\n")
    assert "generated at" in r.stderr and "numpy backend" in r.stderr  # the statistics line


def test_non_finite_norm_weights_are_refused(tmp_path):
    import numpy as np

    from llama_beta.synth import PRESETS, _metadata, _tensor_plan, random_tensor, tiny_vocab
    from llama_beta.gguf_writer import write_gguf
    from ref.ggml import GGMLType

    vocab = tiny_vocab()
    plan = _tensor_plan(PRESETS["micro"], len(vocab["tokenizer.ggml.tokens"]))
    rng = np.random.default_rng(0)
    tensors = {n: (GGMLType.F32, random_tensor(rng, GGMLType.F32, shape, 0.1), shape) for n, (_, shape) in plan.items()}
    tensors["output_norm.weight"] = (GGMLType.F32, np.full(64, np.nan, np.float32).view(np.uint8), (64,))
    path = write_gguf(tmp_path / "nan.gguf", _metadata(PRESETS["micro"], vocab), tensors)
    assert_one_line_error(run_cli("generate", "--model", path, "hi", "--backend", "numpy"),
                          "'output_norm.weight': expected finite values")


@pytest.mark.parametrize("args, option, expected", [
    (["generate", "--max-tokens", "-1", "hi"], "--max-tokens", "an integer >= 0"),
    (["generate", "--temperature", "nan", "hi"], "--temperature", "a number >= 0"),
    (["generate", "--top-p", "1.5", "hi"], "--top-p", "a number in [0, 1]"),
    (["generate", "--min-p", "x", "hi"], "--min-p", "a number in [0, 1]"),
    (["generate", "--repeat-penalty", "0", "hi"], "--repeat-penalty", "a number > 0"),
    (["chat", "--context", "0"], "--context", "an integer >= 1"),
    (["bench", "-p", "0"], "--prompt-tokens", "an integer >= 1"),
    (["bench", "-r", "0"], "--repeat", "an integer >= 1"),
    (["generate", "--vram-limit", "8XB", "hi"], "--vram-limit", "a number with an optional unit"),
])
def test_out_of_range_options_are_usage_errors(args, option, expected):
    """Refused by the parser (exit 2, its usage line and one error line) before any model is loaded."""
    r = run_cli(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == ""
    last = r.stderr.strip().splitlines()[-1]
    assert option in last and f"expected {expected}" in last, last


def test_sampling_params_refuse_meaningless_values():
    from llama_beta.generate import SamplingParams

    assert SamplingParams(temperature=0.0, top_k=0, top_p=0.0, min_p=1.0).top_p == 0.0   # the edges are allowed
    for bad in (dict(temperature=-0.5), dict(top_k=-1), dict(top_p=-0.1), dict(top_p=float("nan")), dict(min_p=1.5),
                dict(repeat_penalty=0.0)):
        with pytest.raises(ValueError, match=f"sampling: {next(iter(bad))} must be"):
            SamplingParams(**bad)


def test_cuda_backend_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    """On a machine where Numba finds no GPU, ``--backend cuda`` says so (with Numba's reason) and exits 1."""
    from llama_beta import backends, cli

    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(backends, "cuda_usable", lambda: False)
    monkeypatch.setattr(backends, "_why_no_gpu", lambda: "CUDA driver library cannot be found.")
    path = synth_model(tmp_path / "m.gguf", "micro")
    assert cli.main(["generate", "--model", str(path), "--backend", "cuda", "hi"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["llama-beta: error: the cuda backend needs an NVIDIA GPU that Numba can use: "
                   "CUDA driver library cannot be found; --backend numpy runs on the CPU"]
