"""Generation pieces that need no model: stop strings, chat templates, sampling choices."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_beta.chat import TemplateError, render
from llama_beta.generate import SamplingParams, StopStringFilter, pick_token


@settings(deadline=None, max_examples=200)
@given(text=st.text(alphabet="ab<|>x", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8),
       stop=st.sampled_from(["<|x", "ab", "b<", "|>x>"]))
def test_stop_filter_equals_cutting_the_whole_text(text, cuts, stop):
    """However the text is split into pieces, the output is the text up to the first stop string."""
    f = StopStringFilter([stop])
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    out = ""
    for a, b in zip(bounds, bounds[1:]):
        out += f.push(text[a:b])
        if f.stopped:
            break
    if not f.stopped:
        out += f.flush()
    at = text.find(stop)
    assert out == (text if at < 0 else text[:at])
    assert f.stopped == (at >= 0)


def test_chat_template_renders_like_transformers():
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    text = render(template, [{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_errors_are_template_errors():
    with pytest.raises(TemplateError, match="nope"):
        render("{{ raise_exception('nope') }}", [])
    with pytest.raises(TemplateError):
        render("{% for %}", [])


def test_greedy_pick_is_argmax_and_ignores_seed():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    p = SamplingParams(temperature=0.0)
    assert {pick_token(logits, [], p, seed, 0) for seed in range(5)} == {1}


def test_repetition_penalty_changes_the_greedy_choice():
    logits = np.array([0.0, 3.0, 2.9], np.float32)
    p = SamplingParams(temperature=0.0, repeat_penalty=1.5)
    assert pick_token(logits, [1], p, 0, 0) == 2  # 3.0 / 1.5 = 2.0 < 2.9


def test_same_seed_same_choices():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50).astype(np.float32)
    p = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = [pick_token(logits, [], p, 7, s) for s in range(30)]
    b = [pick_token(logits, [], p, 7, s) for s in range(30)]
    c = [pick_token(logits, [], p, 8, s) for s in range(30)]
    assert a == b and a != c
