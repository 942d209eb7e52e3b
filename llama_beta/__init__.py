"""llama-beta: LLM inference on GGUF files, readable from the bytes on disk to the generated text.

>>> import llama_beta
>>> model = llama_beta.load("qwen2.5-coder-0.5b-instruct", backend="numpy")
>>> print(model.generate("Write a haiku about a llama.", temperature=0).text)
"""
__version__ = "0.1.0"


def load(model="qwen2.5-coder-0.5b-instruct", backend: str = "auto", context: int | None = None,
         progress: bool | None = None, vram_limit=None, kv_type: str = "f32"):
    """Load a model by path or registered name on a backend ("auto", "numpy" or "cuda").

    ``vram_limit`` (bytes or a size such as ``"8GiB"``) caps the GPU memory the cuda backend may
    plan for; a model that does not fit is refused before any upload. ``kv_type``: the KV cache's element
    type, "f32" (the default) or "f16" (half the memory and the bytes decode attention reads; each cached
    value rounded to 11 significant bits, as llama.cpp's default cache does).
    Returns a :class:`llama_beta.model.Model` with ``.config``, ``.tokenizer``,
    ``.forward(ids) -> logits [T, V]`` and ``.generate(prompt, ...)``.
    """
    from llama_beta.model import load as _load

    return _load(model, backend=backend, context=context, progress=progress, vram_limit=vram_limit,
                 kv_type=kv_type)
