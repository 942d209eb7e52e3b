"""Chat templates: the Jinja2 template stored in a GGUF file, rendered the way transformers does.

``tokenizer.chat_template`` holds a Jinja2 template over ``messages`` (a list of
``{"role", "content"}``), ``add_generation_prompt``, ``bos_token`` and ``eos_token``. We render it
in a sandbox with ``trim_blocks``/``lstrip_blocks`` (as transformers'
``apply_chat_template`` does), with ``raise_exception`` and a ``tojson`` filter available.
A file with no template gets the prompt as is.
"""
from __future__ import annotations

import json


class TemplateError(ValueError):
    """The chat template in the file could not be rendered."""


def _raise(message: str):
    raise TemplateError(message)


def render(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True) -> str:
    """Render ``template`` for ``messages``."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent,
                                                                                  ensure_ascii=ensure_ascii)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                                add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"chat template: {exc}") from None


def format_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """The text to tokenize for a one-turn chat (the prompt itself when the file has no template)."""
    template = tokenizer.chat_template
    if not template:
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    bos = _token_text(tokenizer, tokenizer.bos_id)
    text = render(template, messages, bos_token=bos, eos_token=_token_text(tokenizer, tokenizer.eos_id))
    # The tokenizer adds BOS itself when the file asks for it; a template that also writes it
    # (Phi-3's does) would give two. llama.cpp strips the template's copy the same way.
    if tokenizer.add_bos and bos and text.startswith(bos):
        text = text[len(bos):]
    return text


def _token_text(tokenizer, token_id) -> str:
    if token_id is None:
        return ""
    return tokenizer.token_bytes(token_id).decode("utf-8", "replace")
