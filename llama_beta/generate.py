"""Generation: prefill the prompt, then sample one token at a time from the KV-cached model.

The loop, per token: logits of the last position -> repetition penalty -> top-k -> top-p ->
min-p -> temperature -> a draw with the counter-based generator ``ref.sampling.uniform(seed,
step)`` (temperature 0 is greedy argmax). It stops at an end-of-generation token (the
tokenizer's ``eot_ids``: ``<|im_end|>``, ``<|endoftext|>``, ``<|end|>``, the file's eos ...), at a
user stop string, or after ``max_tokens``. Text is streamed through a UTF-8-safe decoder, so a
character split across tokens is never printed in halves, and text that might be the start
of a stop string is held back until it is decided.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ref import sampling

REPEAT_LAST_N = 64  # tokens the repetition penalty looks back over (llama.cpp's default)


# The meaningful values of each sampling setting: (lowest, highest or None, lowest excluded). SamplingParams
# refuses the rest, and the CLI's parser checks the same table before a model is loaded.
SAMPLING_RANGES = {"temperature": (0, None, False), "top_k": (0, None, False), "top_p": (0, 1, False),
                   "min_p": (0, 1, False), "repeat_penalty": (0, None, True)}


def describe_range(low, high=None, above=False) -> str:
    """'>= 0', '> 0' or 'in [0, 1]' / 'in (0, 1]' for a range of SAMPLING_RANGES' form."""
    if high is None:
        return f"{'>' if above else '>='} {low}"
    return f"in {'(' if above else '['}{low}, {high}]"


def in_range(value, low, high=None, above=False) -> bool:
    """``value`` within the range (NaN never is)."""
    return (value > low if above else value >= low) and (high is None or value <= high)


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        """Refuse settings that mean nothing (SAMPLING_RANGES)."""
        for name, bounds in SAMPLING_RANGES.items():
            if not in_range(getattr(self, name), *bounds):
                raise ValueError(f"sampling: {name} must be {describe_range(*bounds)}, got {getattr(self, name)}")

    def resolved_seed(self) -> int:
        return int.from_bytes(os.urandom(4), "little") if self.seed is None else int(self.seed)


@dataclass
class GenerationResult:
    text: str
    prompt_ids: list[int]
    ids: list[int]
    finish_reason: str                      # "eog", "stop", "length" or "context"
    seed: int
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class StopStringFilter:
    """Emits text as it arrives, holding back any tail that could start a stop string."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        self.pending += text
        for s in self.stops:
            at = self.pending.find(s)
            if at >= 0:
                out, self.pending, self.stopped = self.pending[:at], "", True
                return out
        hold = max((self._overlap(s) for s in self.stops), default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def _overlap(self, stop: str) -> int:
        for n in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:n]):
                return n
        return 0

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def pick_token(logits: np.ndarray, history: list[int], p: SamplingParams, seed: int, step: int) -> int:
    """One sampling step on host logits [V]."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)
    if p.repeat_penalty != 1.0 and history:
        logits = sampling.apply_repetition_penalty(logits, history[-REPEAT_LAST_N:], p.repeat_penalty)
    return int(sampling.sample(logits, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p,
                               u=sampling.uniform(seed, step)))


def encode_prompt(model, prompt: str, chat: bool = True, system: str | None = None) -> list[int]:
    from llama_beta.chat import format_prompt

    tok = model.tokenizer
    text = format_prompt(tok, prompt, system) if chat else prompt
    return list(tok.encode(text))


def generate(model, prompt: str, max_tokens: int = 256, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: int | None = None,
             chat: bool = True, system: str | None = None, stop=(), on_text: Callable[[str], None] | None = None,
             prompt_ids: list[int] | None = None) -> GenerationResult:
    """Generate up to ``max_tokens`` tokens after ``prompt``; ``on_text`` receives streamed text."""
    params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, seed)
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    seed_value = params.resolved_seed()
    tok = model.tokenizer
    ids_in = prompt_ids if prompt_ids is not None else encode_prompt(model, prompt, chat, system)
    if not ids_in:
        raise ValueError("the prompt encodes to no tokens")
    budget = min(len(ids_in) + max_tokens, model.context)
    if len(ids_in) >= model.context:
        raise ValueError(f"prompt of {len(ids_in)} tokens does not fit the context of {model.context}")
    cache = model.new_cache(budget)
    decoder, stops = tok.stream_decoder(), StopStringFilter(stop)
    emit = on_text or (lambda s: None)
    out_ids, text_parts, history = [], [], list(ids_in)
    eog = set(tok.eot_ids)

    t0 = time.perf_counter()
    logits = model.prefill(ids_in, 0, cache)
    next_token = model.token_fn(cache, params, seed_value)
    t_prefill = time.perf_counter() - t0
    finish, pos, token = "length", len(ids_in), None
    t1 = time.perf_counter()
    try:
        for step in range(max_tokens):
            if step == 0:
                token = pick_token(logits, history, params, seed_value, step)
            else:
                # the steps that follow unless a stop comes first: the cuda decoder queues some ahead
                ahead = min(max_tokens - 1 - step, budget - 1 - pos)
                token = next_token(token, pos, step, history, ahead=ahead)
                pos += 1
            if token in eog:
                finish = "eog"
                break
            out_ids.append(token)
            history.append(token)
            piece = stops.push(decoder.push(token))
            if piece:
                text_parts.append(piece)
                emit(piece)
            if stops.stopped:
                finish = "stop"
                break
            if step + 1 >= max_tokens:
                break
            if pos >= budget:
                finish = "context"
                break
    finally:
        next_token.finish()                     # steps queued past a stop are waited for
    if not stops.stopped:
        tail = stops.push(decoder.flush()) + stops.flush()
        if tail:
            text_parts.append(tail)
            emit(tail)
    t_decode = time.perf_counter() - t1
    timings = {"prompt_tokens": len(ids_in), "prefill_s": t_prefill,
               "prefill_tok_s": len(ids_in) / t_prefill if t_prefill > 0 else None,
               "generated_tokens": len(out_ids), "decode_s": t_decode,
               "decode_tok_s": len(out_ids) / t_decode if t_decode > 0 and out_ids else None,
               "backend": model.backend.name}
    return GenerationResult("".join(text_parts), list(ids_in), out_ids, finish, seed_value, timings)
