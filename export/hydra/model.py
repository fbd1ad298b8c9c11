"""The Hydra heads in torch, for training: the same computation as the NumPy runtime (edgegen/heads.py),
vectorised over every position of a batch (teacher forcing: head k at position t reads the sequence's own
tokens t+1..t+k, as at decoding time it reads the tokens drafted before it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgegen.errors import EdgegenError

# Head k starts as INIT_STATE_SCALE x r_{k-1}: the target's own next-token logits, flattened. At 1 (the plain
# identity) head 1 starts confidently predicting the token before its label: the first loss was ~10-16 nats on
# SmolLM2, above a uniform guess over the head vocabulary (8.3), and 40 steps did not recover from it.
INIT_STATE_SCALE = 0.25


def token_scale(hidden: np.ndarray, embed: Any) -> float:
    """The power of two nearest rms(hidden) / rms(embedding rows): the factor the heads' input layer applies to
    the token's embedding during training. SmolLM2's final-norm hidden states are ~15x the norm of its
    embedding rows; unscaled, Adam (whose steps are ~lr whatever the input's scale) grew the token's weights
    too slowly: after run 4's 160 steps head 1 drew ~5x less from the token than from the state, where the
    least-squares head draws about as much from each (docs/hydra.md). A power of two keeps the fold into the
    packed weights (pack_tensors / load_tensors) exact."""
    h = float(np.sqrt(np.mean(np.square(np.asarray(hidden, np.float32)))))
    e = float(np.sqrt(float((embed[:-1].float() ** 2).mean())))
    return float(2.0 ** round(np.log2(h / e))) if h > 0 and e > 0 else 1.0


def head_embedding(teacher: Any, vocab: np.ndarray) -> Any:
    """(V + 1, d) float32: the target's embedding rows of ``vocab``, then the unknown token's row (the mean
    of the other tokens' rows). The target must tie its embedding and LM head (the rows score the heads)."""
    import torch

    if not getattr(teacher.config, "tie_word_embeddings", False):
        raise EdgegenError("Hydra heads need a target whose LM head is its embedding (tie_word_embeddings)")
    full = teacher.get_input_embeddings().weight.detach().float()
    keep = torch.as_tensor(np.asarray(vocab), dtype=torch.long)
    rest = torch.ones(full.shape[0], dtype=torch.bool)
    rest[keep] = False
    unknown = full[rest].mean(0, keepdim=True) if bool(rest.any()) else torch.zeros(1, full.shape[1])
    return torch.cat([full[keep], unknown]).contiguous()


def build_heads(embed: Any, num_heads: int, layers: int, token_scale: float = 1.0) -> Any:
    """K heads over the frozen reduced embedding ``embed``; ``token_scale``: the factor on the token's embedding
    at each head's input (training parametrization only: the packed weights have it folded in)."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self, d: int, v: int) -> None:
            super().__init__()
            self.w_in = nn.Linear(2 * d, d)
            self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))
            self.bias = nn.Parameter(torch.zeros(v))
            with torch.no_grad():  # start as a damped "state so far" plus a small random read of the token
                self.w_in.weight[:, :d].copy_(torch.eye(d) * INIT_STATE_SCALE)
                self.w_in.weight[:, d:].mul_(0.1)
                self.w_in.bias.zero_()
                for b in self.blocks:
                    b.weight.zero_()  # each block starts as the identity (Medusa's ResBlock init)
                    b.bias.zero_()

        def forward(self, state: Any, tok_emb: Any) -> Any:
            x = self.w_in(torch.cat([state, token_scale * tok_emb], dim=-1))
            for b in self.blocks:
                x = x + nn.functional.silu(b(x))
            return x

    class Heads(nn.Module):
        """K heads over the frozen reduced embedding ``embed`` (V + 1, d; the unknown row last)."""

        def __init__(self) -> None:
            super().__init__()
            self.token_scale = token_scale
            self.register_buffer("embed", embed.float().contiguous(), persistent=False)
            d, v = embed.shape[1], embed.shape[0] - 1
            self.heads = nn.ModuleList(Head(d, v) for _ in range(num_heads))

        def states(self, hidden: Any, token_idx: Any) -> list[Any]:
            """hidden (B, W, d), token_idx (B, W) head indices of the sequence's tokens; returns per head k
            (1-based) the states r_k (B, W - k, d) of positions t < W - k (the label is the target's next
            token at position t + k)."""
            W = hidden.shape[1]
            state, out = hidden, []
            for k, head in enumerate(self.heads, start=1):
                if W - k < 1:
                    break
                state = head(state[:, :W - k], self.embed[token_idx[:, k:]])
                out.append(state)
            return out

        def score(self, k: int, state: Any) -> Any:
            """Head k's (1-based) logits over the head vocabulary for states (..., d)."""
            return state @ self.embed[:-1].T + self.heads[k - 1].bias

        def forward(self, hidden: Any, token_idx: Any) -> list[Any]:
            """Per head k the logits (B, W - k, V) of :meth:`states` (training scores only the rows that count)."""
            return [self.score(k, s) for k, s in enumerate(self.states(hidden, token_idx), start=1)]

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return Heads()


def pack_tensors(model: Any) -> dict[str, Any]:
    """The trained tensors under the names the runtime reads (heads.{k}.w_in, .b_in, .blocks.{j}.w/.b, .bias), in
    the runtime's form: the token half of each w_in times the model's token scale."""
    import torch

    out = {name: t.detach() for name, t in trained_tensors(model).items()}
    d = model.embed.shape[1]
    for k in range(len(model.heads)):
        w_in = out[f"heads.{k}.w_in"]
        out[f"heads.{k}.w_in"] = torch.cat([w_in[:, :d], w_in[:, d:] * model.token_scale], dim=1)
    return out


def load_tensors(model: Any, tensors: dict[str, Any]) -> None:
    """Put :func:`pack_tensors`-named tensors (a checkpoint's, runtime form) back into ``model`` (the token scale
    taken out again); EdgegenError on a mismatch."""
    import torch

    own = trained_tensors(model)
    if set(own) != set(tensors):
        raise EdgegenError(f"heads checkpoint does not fit the model (missing {sorted(set(own) - set(tensors))[:3]}, "
                           f"unknown {sorted(set(tensors) - set(own))[:3]})")
    with torch.no_grad():
        for name, t in own.items():
            if tuple(t.shape) != tuple(tensors[name].shape):
                raise EdgegenError(f"heads weight {name} has shape {tuple(tensors[name].shape)}, expected "
                                   f"{tuple(t.shape)}")
            t.copy_(tensors[name].to(t.dtype))
        d = model.embed.shape[1]
        for head in model.heads:
            head.w_in.weight[:, d:] /= model.token_scale


def trained_tensors(model: Any) -> dict[str, Any]:
    """The model's own parameters under the pack names, training form (the parameters themselves: writable)."""
    out = {}
    for k, head in enumerate(model.heads):
        out[f"heads.{k}.w_in"] = head.w_in.weight
        out[f"heads.{k}.b_in"] = head.w_in.bias
        for j, b in enumerate(head.blocks):
            out[f"heads.{k}.blocks.{j}.w"] = b.weight
            out[f"heads.{k}.blocks.{j}.b"] = b.bias
        out[f"heads.{k}.bias"] = head.bias
    return out
