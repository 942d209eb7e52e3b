"""``llama-beta synth``: random-weight models from the command line.

The subcommand is defined in ``llama_beta/synth.py`` (``add_synth_parser`` / ``cli_main``); these
tests build a parser with it, so they run whether or not ``cli.py`` has wired it in yet (the last
test goes through ``llama_beta.cli.main`` once it has).
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from llama_beta.model import Model
from llama_beta.synth import add_synth_parser
from ref.ggml import GGMLType
from ref.gguf import GGUFFile


def synth(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="llama-beta")
    add_synth_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["synth", *map(str, argv)])
    return args.func(args)


def test_writes_the_requested_model(tmp_path):
    out = tmp_path / "m.gguf"
    assert synth(out, "--arch", "phi3", "--preset", "micro", "--layers", "3", "--type", "q8_0", "--seed", "4") == 0
    with GGUFFile(out) as g:
        assert g.metadata["general.architecture"] == "phi3" and g.metadata["phi3.block_count"] == 3
        matrices = [t for t in g.tensors.values() if len(t.shape) == 2]
        assert {t.ggml_type for t in matrices} == {GGMLType.Q8_0}
        assert "blk.2.attn_qkv.weight" in g.tensors and "blk.3.attn_norm.weight" not in g.tensors
    with Model(out, backend="numpy", context=16) as m:
        assert m.config.n_layers == 3 and np.isfinite(m.forward([1, 2, 3])).all()


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "m.gguf"
    synth(out, "--preset", "micro")
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        synth(out, "--preset", "micro", "--seed", "1")
    assert out.read_bytes() == before
    synth(out, "--preset", "micro", "--seed", "1", "--force")
    assert out.read_bytes() != before and len(out.read_bytes()) == len(before)


def test_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    synth(a, "--preset", "micro", "--arch", "llama", "--seed", "9", "-q")
    synth(b, "--preset", "micro", "--arch", "llama", "--seed", "9", "-q")
    assert a.read_bytes() == b.read_bytes()


def test_bad_type_is_one_clear_error_and_writes_nothing(tmp_path):
    out = tmp_path / "m.gguf"
    with pytest.raises(ValueError, match="Q9_9.*expected one of"):
        synth(out, "--preset", "micro", "--type", "Q9_9")
    with pytest.raises(ValueError, match="not a multiple of Q4_K's block of 256"):
        synth(out, "--preset", "micro", "--type", "Q4_K")     # C=64 rows cannot hold a 256-value block
    assert not out.exists()


def test_vocab_from_a_file_or_a_registered_name(tmp_path, phi3_vocab_path):
    for vocab in (str(phi3_vocab_path), "phi-3-vocab"):
        out = tmp_path / "v.gguf"
        synth(out, "--preset", "micro", "--arch", "phi3", "--vocab", vocab, "--force", "-q")
        with GGUFFile(out) as g:
            assert len(g.metadata["tokenizer.ggml.tokens"]) == 32064
            assert g.tensors["token_embd.weight"].shape == (32064, 64)


def test_big_preset_shows_progress(tmp_path, capsys):
    out = tmp_path / "phi3-mini-1layer.gguf"
    synth(out, "--preset", "phi3-mini", "--layers", "1")
    err = capsys.readouterr().err
    assert "random weights" in err and f"wrote {out}" in err and "phi3, 1 layers" in err
    with GGUFFile(out) as g:  # the preset's quantization mix
        assert g.tensors["blk.0.attn_qkv.weight"].ggml_type == GGMLType.Q5_K
        assert g.tensors["blk.0.ffn_down.weight"].ggml_type == GGMLType.Q6_K
        assert g.tensors["blk.0.ffn_up.weight"].shape == (2 * 8192, 3072)


def test_through_the_cli(tmp_path):
    from llama_beta import cli

    out = tmp_path / "c.gguf"
    assert cli.main(["synth", str(out), "--preset", "micro", "-q"]) == 0 and out.exists()
    assert cli.main(["synth", str(out), "--preset", "micro", "-q"]) == cli.EXIT_ERROR  # exists, no --force
