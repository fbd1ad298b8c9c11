"""The drafter: the target's architecture with fewer layers, seeded from the target's own weights."""

from __future__ import annotations

import copy
from typing import Any

from edgegen.errors import EdgegenError

SHARED_PREFIXES = ("model.embed_tokens.", "lm_head.")  # the target's; not shipped unless trained


def layer_map(num_target_layers: int, layers: int, init: str) -> list[int]:
    """Which target layers seed the drafter's layers: "spread" = evenly spaced from the first to the last."""
    if layers > num_target_layers:
        raise EdgegenError(f"the drafter cannot have more layers ({layers}) than the target ({num_target_layers})")
    if init == "first" or layers == 1:
        return list(range(layers))
    step = (num_target_layers - 1) / (layers - 1)
    return [int(round(i * step)) for i in range(layers)]


def load_teacher(hf_dir: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_student(teacher: Any, layers: int, init: str, train_embedding: bool = False) -> tuple[Any, list[int]]:
    """A fresh drafter initialised from `teacher`: embedding/head, chosen layers, final norm copied."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(teacher.config)
    inner = getattr(teacher, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")) or not hasattr(teacher, "lm_head"):
        raise EdgegenError(f"drafter training needs a decoder-only target (embedding, layers, final norm, head); "
                           f"'{getattr(cfg, 'model_type', '?')}' is not one")
    mapping = layer_map(cfg.num_hidden_layers, layers, init)
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in mapping]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        student.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
        if not cfg.tie_word_embeddings:
            student.lm_head.weight.copy_(teacher.lm_head.weight)
        for i, j in enumerate(mapping):
            student.model.layers[i].load_state_dict(teacher.model.layers[j].state_dict())
        student.model.norm.load_state_dict(teacher.model.norm.state_dict())
    for name, p in student.named_parameters():
        p.requires_grad_(train_embedding or not name.startswith(SHARED_PREFIXES))
    student.train()
    return student, mapping


def head_logits(model: Any, ids: Any, att: Any, kept: Any = None) -> Any:
    """``model``'s logits for ``ids``; with ``kept`` (target ids), only those columns, in that order, computed from
    the final hidden states through the rows of the output head they need (a 262k-token head costs more than
    a drafter's layers). Softcapping, where the config has it, is applied as the model's own forward does."""
    if kept is None:
        return model(input_ids=ids, attention_mask=att).logits
    hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state
    logits = hidden @ model.lm_head.weight[kept].T
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if not cap else (logits / cap).tanh() * cap


def trainable_state(student: Any) -> dict[str, Any]:
    """name -> tensor of the weights a drafter ships (the ones that are trained)."""
    return {n: p.detach() for n, p in student.named_parameters() if p.requires_grad}


def load_trainable(student: Any, tensors: dict[str, Any]) -> None:
    import torch

    params = dict(student.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in tensors]
    unknown = [n for n in tensors if n not in params]
    if missing or unknown:
        raise EdgegenError(f"drafter weights do not fit the model (missing {missing[:3]}, unknown {unknown[:3]})")
    with torch.no_grad():
        for n, t in tensors.items():
            if tuple(params[n].shape) != tuple(t.shape):
                raise EdgegenError(f"drafter weight {n} has shape {tuple(t.shape)}, expected {tuple(params[n].shape)}")
            params[n].copy_(t.to(params[n].dtype))
