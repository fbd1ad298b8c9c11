"""The model families edgegen exports, and the config each graph builder is handed.

Both builders read the transformers config; where transformers 5 writes a field differently from what a
builder expects, the builder gets a normalised copy here (installed packages are never patched):

- onnxruntime-genai 0.18 reads ``config.rope_parameters["rope_type"]`` and, for Gemma 3,
  ``rope_local_base_freq``; transformers 5 keeps one rope dict per attention type for Gemma 3
  (``{"full_attention": {...}, "sliding_attention": {...}}``).
- onnxruntime-genai applies a sliding window only to layers that ``layer_types`` marks; Mistral's
  config has a window and no ``layer_types`` (transformers slides every layer).
- onnxruntime-genai picks Phi-3's LongRoPE builder whenever ``max_position_embeddings`` differs from
  ``original_max_position_embeddings``, even when the config has no LongRoPE factors.
- optimum-intel 2.2.0 caps transformers at 5.0 for Gemma, Gemma 2 and Gemma 3 text; its export
  config is otherwise the right one, and its output is checked against transformers by the family
  tests (tests/test_families.py), so the cap is lifted for the duration of one export.

``FAMILIES`` is also what the tests iterate and what ``edgegen models`` prints: a row claims only
what a test checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgegen.errors import EdgegenError

ALL_STRATEGIES = ("ar", "prompt-lookup", "speculative", "superposed")


@dataclass(frozen=True)
class Family:
    """A model family: the architectures it covers and what the tests check for it."""

    name: str  # display name, e.g. "Llama 3.x / SmolLM2"
    model_type: str  # transformers' config.model_type
    architecture: str  # config.architectures[0], what onnxruntime-genai dispatches on
    tiny: dict[str, Any] = field(default_factory=dict)  # extra config fields of the tests' tiny model
    sources: tuple[str, ...] = ("hf",)  # checked sources: "hf" (a Hugging Face folder), "gguf"
    formats: tuple[str, ...] = ("onnx", "openvino")
    # precisions the tiny model is exported and checked at: fp32 greedy parity with transformers; int8 its quality
    # gate and >= 90% of transformers' greedy picks; the strategies == AR at each (superposed at fp32)
    weights: tuple[str, ...] = ("fp32",)
    gated: tuple[str, ...] = ()  # precisions at which the family's real GGUF model passes the export quality gate
    strategies: tuple[str, ...] = ALL_STRATEGIES
    chat_template: str | None = None  # for sources that carry none (a base model's GGUF)
    stop_tokens: tuple[str, ...] = ()  # end-of-turn pieces that also end generation


# Gemma's turn markup (text only), as in Google's Gemma 3 template: BOS first, "assistant" is "model",
# a system message is folded into the first user turn.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
_GEMMA = {"chat_template": GEMMA_CHAT_TEMPLATE, "stop_tokens": ("<end_of_turn>",)}


FAMILIES: tuple[Family, ...] = (
    # gated: SmolLM2's int8 (tests/test_api.py), Gemma 3 270M's int8 and int4 (tests/test_families.py, real_gemma;
    # its int4 keeps 75% of the weights at int8, export/int4.py)
    Family("Llama 3.x / SmolLM2", "llama", "LlamaForCausalLM", sources=("hf", "gguf"), gated=("int8",)),
    Family("Qwen2.5", "qwen2", "Qwen2ForCausalLM", weights=("fp32", "int8")),
    Family("Qwen3", "qwen3", "Qwen3ForCausalLM", {"head_dim": 16}),
    Family("Phi-3 / Phi-4-mini", "phi3", "Phi3ForCausalLM"),
    Family("Mistral", "mistral", "MistralForCausalLM", {"sliding_window": 16}),
    Family("Gemma 2", "gemma2", "Gemma2ForCausalLM", {"head_dim": 16, "sliding_window": 16}, **_GEMMA),
    Family("Gemma 3", "gemma3_text", "Gemma3ForCausalLM",
           {"head_dim": 16, "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]},
           sources=("hf", "gguf"), weights=("fp32", "int8"), gated=("int8", "int4"), **_GEMMA),
)
_BY_TYPE = {f.model_type: f for f in FAMILIES}


def supported_list() -> str:
    """The supported model types, for error messages."""
    return ", ".join(f.model_type for f in FAMILIES)


def family_of(config: dict[str, Any]) -> Family:
    """The family of a config.json dict; an architecture the builders cannot handle is one EdgegenError line."""
    model_type = str(config.get("model_type") or "")
    text = config.get("text_config")
    if model_type not in _BY_TYPE and isinstance(text, dict) and text.get("model_type") in _BY_TYPE:
        model_type = str(text["model_type"])  # a multimodal wrapper's text model (e.g. gemma3 -> gemma3_text)
    fam = _BY_TYPE.get(model_type)
    if fam is None:
        arch = ", ".join(config.get("architectures") or []) or "no architectures"
        raise EdgegenError(f"unsupported model architecture '{model_type or '?'}' ({arch}); "
                           f"edgegen exports: {supported_list()}")
    return fam


# GGUF general.architecture -> transformers model_type (what transformers' GGUF loader converts them to;
# Mistral GGUF files say "llama").
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma2": "gemma2",
                      "gemma3": "gemma3_text"}


def family_of_gguf(architecture: str) -> Family:
    """The family of a GGUF file's general.architecture; an unsupported one is one EdgegenError line."""
    model_type = GGUF_ARCHITECTURES.get(architecture)
    if model_type is None:
        raise EdgegenError(f"unsupported GGUF architecture '{architecture}'; edgegen converts GGUF files of: "
                           f"{', '.join(GGUF_ARCHITECTURES)}")
    return _BY_TYPE[model_type]


def normalize_for_onnx_builder(config: Any) -> Any:
    """Rewrite, in place, the transformers config object onnxruntime-genai's builder reads; returns it."""
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope and isinstance(rope["full_attention"], dict):
        # Gemma 3 under transformers 5: one rope dict per attention type. The builder wants the global
        # (full attention) one flat, plus the local theta as rope_local_base_freq.
        full, local = rope["full_attention"], rope.get("sliding_attention") or {}
        config.rope_parameters = dict(full)
        config.rope_theta = full.get("rope_theta")
        if "factor" in full:
            config.rope_scaling = dict(full)
        if local.get("rope_theta") is not None:
            config.rope_local_base_freq = local["rope_theta"]
    elif isinstance(rope, dict) and "rope_type" not in rope:
        rope["rope_type"] = rope.get("type", "default")
    if getattr(config, "sliding_window", None) and getattr(config, "layer_types", None) is None:
        # Mistral slides every layer; without layer_types the builder marks them all full attention
        # (local_window_size -1) and the window is lost.
        config.layer_types = ["sliding_attention"] * int(config.num_hidden_layers)
    if (getattr(config, "model_type", "") == "phi3" and isinstance(config.rope_parameters, dict)
            and config.rope_parameters.get("rope_type") != "longrope"):
        # Without LongRoPE factors the two lengths mean nothing; equal, they select the plain Phi-3 builder.
        config.original_max_position_embeddings = config.max_position_embeddings
    return config


# optimum-intel export configs capped below the installed transformers, checked by the family tests.
_OV_UNCAPPED = ("gemma", "gemma2", "gemma3_text")


@contextlib.contextmanager
def openvino_export_configs(model_type: str) -> Iterator[None]:
    """For the duration of one export, lift optimum-intel's transformers cap for the families it blocks."""
    if model_type not in _OV_UNCAPPED:
        yield
        return
    import optimum.exporters.openvino.model_configs  # noqa: F401  (registers the OpenVINO export configs)
    from optimum.exporters.tasks import TasksManager

    table = TasksManager._LIBRARY_TO_SUPPORTED_MODEL_TYPES["transformers"][model_type]["openvino"]
    saved = dict(table)
    try:
        for task, constructor in saved.items():
            table[task] = _uncapped(constructor)
        yield
    finally:
        table.clear()
        table.update(saved)


def _uncapped(constructor: Any) -> Any:
    """The registry holds functools.partial(ConfigClass, task=...); the same partial on a subclass without the cap."""
    import functools

    cls = constructor.func
    sub = type(f"Uncapped{cls.__name__}", (cls,), {"MAX_TRANSFORMERS_VERSION": None})
    return functools.partial(sub, *constructor.args, **constructor.keywords)


def models_table() -> str:
    """The README's "Models" table (markdown), generated from FAMILIES: what the tests check, nothing more."""
    rows = ["| Family | model_type | Sources | Formats | Precisions | Strategies |", "|---|---|---|---|---|---|"]
    for f in FAMILIES:
        sources = ", ".join({"hf": "HF folder", "gguf": "GGUF"}[s] for s in f.sources)
        precisions = ", ".join(f.weights) + (f"; real GGUF model gated: {', '.join(f.gated)}" if f.gated else "")
        rows.append(f"| {f.name} | `{f.model_type}` | {sources} | {', '.join(f.formats)} | {precisions} "
                    f"| {', '.join(f.strategies)} |")
    return "\n".join(rows)
