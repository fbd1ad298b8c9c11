"""Greedy parity: edgegen's fp32 exports produce Hugging Face transformers' greedy tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgegen

NEW_TOKENS = 40
PROMPTS = [
    ("def fibonacci(n):", False),
    ("The three primary colors are", False),
    ("import numpy as np\n\ndef normalize(v):\n", False),
    ("What is the boiling point of water?", True),
    ("Write a haiku about mountains.", True),
]


def _hf_greedy(hf_model, ids: list[int], eos: set[int]) -> list[int]:
    import torch

    with torch.no_grad():
        out = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=2)
    tokens = out[0, len(ids):].tolist()
    for i, t in enumerate(tokens):  # edgegen reports tokens before EOS
        if t in eos:
            return tokens[:i]
    return tokens


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_greedy_tokens_equal_transformers(backend: str, fp32_model: Path, hf_model) -> None:
    gen = edgegen.load(fp32_model, backend=backend)
    eos = set(gen.manifest.eos_token_ids)
    for prompt, chat in PROMPTS:
        result = gen.generate(prompt, max_new_tokens=NEW_TOKENS, chat=chat, strategy="ar")
        expected = _hf_greedy(hf_model, result.prompt_token_ids, eos)
        assert len(result.token_ids) >= min(32, len(expected))
        assert result.token_ids == expected, f"{backend} diverged from transformers on {prompt!r}"


def test_prompt_has_no_bos_for_smollm2(fp32_model: Path) -> None:
    # SmolLM2 was trained without BOS; the GGUF tokenizer would add one (REFERENCE.md, pitfall).
    gen = edgegen.load(fp32_model, backend="onnxruntime")
    assert gen.generate("def f():", max_new_tokens=1, chat=False).prompt_token_ids[0] != 1
