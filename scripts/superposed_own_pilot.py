"""Pilot of superposed continuation="own" (docs/superposed.md, issue 18 third round): quality only.

    python scripts/superposed_own_pilot.py INT8_FOLDER FP32_FOLDER R2_JSON [FLOOR]

Per prompt of the bench set (4 code + 4 chat, 16 and 64 tokens, ONNX Runtime): the greedy lead, and two drafts
that branch at the lead's first near-ties (a second or third token within FLOOR nats, default ln 2) and go on
greedily from their OWN distribution; Self-BLEU and fp32 perplexity (best-of-3, average) against the nucleus
samples of an earlier bench run (R2_JSON, its superposed.json).
"""

import json
import math
import sys

import numpy as np

import edgegen
from edgegen.bench.quality import fp32_session, perplexity, until_eos
from edgegen.bench.runner import encode_prompts, load_prompts
from edgegen.bench.superposed import self_bleu


def main() -> None:
    folder, fp32, earlier = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
    floor = float(sys.argv[4]) if len(sys.argv) > 4 else math.log(2)
    prompts = load_prompts("all", 4)
    ids = encode_prompts(folder, prompts)
    session = edgegen.load(folder, backend="onnxruntime").session
    scorer, eos = fp32_session(fp32)
    nucleus = {(r["prompt_id"], r["new_tokens"]): r["ppl"]["nucleus"] for r in earlier["prompts"]
               if r["backend"] == "onnxruntime"}

    def greedy(prefix: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
        session.reset()
        row = session.forward(np.asarray(prefix, np.int64), last_only=True)[-1]
        tokens, rows = [], []
        for _ in range(n):
            rows.append(row)
            tokens.append(int(np.argmax(row)))
            row = session.forward(np.asarray(tokens[-1:], np.int64))[-1]
        return tokens, rows

    for n in (16, 64):
        results = []
        for p in prompts:
            prompt = ids[p.id]
            lead, rows = greedy(prompt, n)
            ties = [(i, int(o[j])) for i, row in enumerate(rows) for o in [np.argsort(-row)[:3]] for j in (1, 2)
                    if row[o[j]] - row[o[0]] >= -floor]
            drafts = [lead]
            for i, token in ties:
                if len(drafts) < 3:
                    drafts.append(lead[:i] + [token] + greedy(prompt + lead[:i] + [token], n - i - 1)[0])
            texts = [until_eos(d, eos) for d in drafts]
            ppl = [perplexity(scorer, prompt, t) for t in texts]
            results.append((self_bleu(texts), min(ppl), np.mean(ppl), min(nucleus[p.id, n]), ppl[0]))
            print(n, p.id, " ".join(f"{v:.3f}" for v in results[-1]), "branches", [i for i, _ in ties[:2]], flush=True)
        a = np.array(results)
        print(f"N={n} floor={floor:.2f}: Self-BLEU {a[:, 0].mean():.3f} best-of-3 {a[:, 1].mean():.3f} (nucleus "
              f"{a[:, 3].mean():.3f}, greedy {a[:, 4].mean():.3f}) avg {a[:, 2].mean():.2f}", flush=True)


if __name__ == "__main__":
    main()
