"""Chain vs tree verification of Hydra heads, on the target's own greedy output (issue 16).

    python scripts/hydra_tree_estimate.py HEADS [--model DIR] [--limit N] [--new-tokens N]

For each bench prompt (code and chat), the target's greedy continuation is generated (AR) and its final hidden
states read in one forward over prompt + continuation. At every position the heads draft from the hidden state
and the next greedy token, as in decoding: a chain (each head's argmax) or a tree (the top ``w_k`` tokens of head
k under every node of depth k-1, HydraHeads.tree). A draft's accepted length is its longest root path that equals
the greedy continuation, exactly what one verification forward would accept. Tokens per step = 1 + that.

Step time is the target forward over 1 + draft rows, measured here per row count (alternating, median), plus the
heads' own NumPy time measured per shape; expected tokens/s = mean tokens per step / mean step time. A tree
needs a tree attention mask in the target graph (docs/hydra.md); this estimates whether one would pay before
building it.

``--assume A ...`` adds what chains would give at the same costs if every head were right with probability A
given the heads before it were (head 1's acceptance A, chain k's A^k): the speed a better-trained set of heads
could reach on this machine at most, with the heads' cost as measured.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SHAPES: dict[str, tuple[int, ...]] = {  # "chain N": N heads' argmax; tree widths per depth
    "chain 1": (1,), "chain 2": (1, 1), "chain 3": (1, 1, 1), "chain 4": (1, 1, 1, 1),
    "tree 2-1-1-1": (2, 1, 1, 1), "tree 3-1-1-1": (3, 1, 1, 1), "tree 2-2-1-1": (2, 2, 1, 1),
    "tree 3-2-1": (3, 2, 1), "tree 4-2-1-1": (4, 2, 1, 1),
}


def accepted(tree, truth: list[int]) -> int:
    """Longest root path of ``tree`` (HydraHeads.tree) equal to ``truth``'s first tokens."""
    best, alive = 0, {-1}
    for depth in range(1, int(tree.depth.max(initial=0)) + 1):
        if depth > len(truth):
            break
        nodes = np.flatnonzero((tree.depth == depth) & (tree.tokens == truth[depth - 1]))
        alive = {int(i) for i in nodes if int(tree.parents[i]) in alive}
        if not alive:
            break
        best = depth
    return best


def step_ms(session, rows: int, repeats: int = 5) -> float:
    """Median ms of a target forward over ``rows`` rows after a 200-token prefix."""
    times = []
    ids = np.arange(1000, 1000 + rows, dtype=np.int64)
    for _ in range(repeats):
        session.trim(200)
        start = time.perf_counter()
        session.forward(ids)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("heads")
    parser.add_argument("--model", default=None)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--assume", type=float, nargs="*", default=[0.6, 0.7, 0.9, 1.0],
                        help="per-head acceptances for the bound table")
    args = parser.parse_args()

    from threadpoolctl import ThreadpoolController

    import edgegen
    from edgegen.bench.runner import encode_prompts, load_prompts
    from edgegen.heads import HydraHeads

    blas = ThreadpoolController()
    heads = HydraHeads.open(args.heads, int8=True)  # as the strategy opens them
    gen = edgegen.load(args.model, backend=args.backend)
    session = gen.session
    prompts = load_prompts("all", args.limit)
    ids = encode_prompts(gen.folder, prompts)
    found: dict[str, dict[str, list[int]]] = {}
    heads_ms: dict[str, list[float]] = {name: [] for name in SHAPES}
    for p in prompts:
        out = gen.generate(ids[p.id], max_new_tokens=args.new_tokens, chat=False, strategy="ar", ignore_eos=True)
        seq = ids[p.id] + out.token_ids
        session.reset()
        session.forward(np.asarray(seq, np.int64), hidden=True)
        hidden = session.hidden_states()  # row t: after seq[:t + 1]
        start = len(ids[p.id]) - 1  # row of the prompt's last token: it chose the first new token
        for t in range(start, len(seq) - 2):
            truth = seq[t + 2 : t + 6]  # what heads 1..4 should say after base token seq[t + 1]
            for name, widths in SHAPES.items():
                begin = time.perf_counter()
                with blas.limit(limits=1, user_api="blas"):  # as the drafter runs them (strategies/hydra.py)
                    tree = heads.tree(hidden[t], seq[t + 1], widths[: heads.num_heads])
                heads_ms[name].append((time.perf_counter() - begin) * 1e3)
                found.setdefault(p.category, {}).setdefault(name, []).append(accepted(tree, truth))
    rows_needed = {name: 1 + int(np.sum(np.cumprod(w))) for name, w in SHAPES.items()}
    session.reset()
    session.forward(np.arange(500, 700, dtype=np.int64))
    cost: dict[int, list[float]] = {r: [] for r in sorted({1, *rows_needed.values()})}
    for _ in range(3):  # row counts alternate: a load change hits them alike
        for r in cost:
            cost[r].append(step_ms(session, r))
    cost_ms = {r: statistics.median(v) for r, v in cost.items()}
    print(f"target forward ms per row count ({args.backend}): "
          + ", ".join(f"{r}: {ms:.1f}" for r, ms in cost_ms.items()))
    heads_med = {name: statistics.median(v) for name, v in heads_ms.items()}
    step_total = {name: cost_ms[rows_needed[name]] + heads_med[name] for name in SHAPES}  # target + heads, ms
    for category, by_shape in found.items():
        print(f"\n{category} ({len(next(iter(by_shape.values())))} positions)")
        print("| draft | rows | accepted/step | heads ms | step ms | tokens/s (est.) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, lengths in by_shape.items():
            per_step = 1 + float(np.mean(lengths))
            rate = 1000 * per_step / step_total[name]
            print(f"| {name} | {rows_needed[name]} | {per_step - 1:.2f} | {heads_med[name]:.2f} | "
                  f"{step_total[name]:.1f} | {rate:.1f} |")
    ar_rate = 1000 / cost_ms[1]
    print(f"\nAR (1 row): {ar_rate:.1f} tokens/s (est.)")
    if args.assume:
        print("\nchains at assumed acceptance (every head right with probability A given the heads before it)")
        print("| A | best chain | rows | tokens/step | step ms | tokens/s (est.) | x AR |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for a in args.assume:
            rates = []
            for n in range(1, heads.num_heads + 1):
                name = f"chain {n}"
                per_step = sum(a**i for i in range(n + 1))
                rates.append((1000 * per_step / step_total[name], name, rows_needed[name], per_step, step_total[name]))
            rate, name, rows, per_step, total = max(rates)
            print(f"| {a:.2f} | {name} | {rows} | {per_step:.2f} | {total:.1f} | {rate:.1f} | {rate / ar_rate:.2f}x |")


if __name__ == "__main__":
    main()
