"""Pilot of superposed decoding's diversity rules (docs/superposed.md, "Choosing the rule"): quality only.

    EDGEGEN_TEST_CACHE=... python scripts/superposed_pilot.py INT8_FOLDER FP32_FOLDER [PROMPTS_PER_SET]

Per rule and length (16, 64): the k = 3 drafts of each prompt (the bench's code and chat sets, EOS ignored,
no rescoring: it changes no token), their Self-BLEU and fp32 perplexity (best-of-3, average); nucleus
(T 0.6, top-p 0.9, seeds 0-2) as the reference. Times are printed but only comparable on a quiet machine.
"""

import sys
import time

import numpy as np

import edgegen
import edgegen.strategies.superposed as sp
from edgegen.bench.quality import fp32_session, perplexity, until_eos
from edgegen.bench.runner import encode_prompts, load_prompts
from edgegen.bench.superposed import self_bleu

RULES = {
    "none": {"diversity": "none"},
    "lanes0": {"diversity": "lanes", "diversity_penalty": 0.0},
    "lanes1": {"diversity": "lanes", "diversity_penalty": 1.0},
    "lanes1-uniform": {"diversity": "lanes", "diversity_penalty": 1.0, "uniform": True},
    "lanes3": {"diversity": "lanes", "diversity_penalty": 3.0},
    "sample": {"diversity": "sample", "diversity_penalty": 0.0},
    "distance4": {"diversity": "distance", "min_distance": 4},
    "nucleus": None,
}


def main() -> None:
    folder, fp32 = sys.argv[1], sys.argv[2]
    prompts = load_prompts("all", int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    ids = encode_prompts(folder, prompts)
    gen = edgegen.load(folder, backend="onnxruntime", embeddings=True)
    scorer, eos = fp32_session(fp32)
    weights = sp.superposition
    for n in (16, 64):
        for name, rule in RULES.items():
            options = None if rule is None else {k: v for k, v in rule.items() if k != "uniform"}
            uniform = rule is not None and rule.get("uniform", False)  # every draft heard equally in the input
            rows = []
            for p in prompts:
                start = time.perf_counter()
                if options is None:
                    drafts = [gen.generate(ids[p.id], max_new_tokens=n, ignore_eos=True, temperature=0.6, top_p=0.9,
                                           seed=s).token_ids for s in range(3)]
                else:
                    if uniform:
                        sp.superposition = lambda s: np.full(len(s), 1 / len(s), np.float32)
                    r = gen.generate(ids[p.id], max_new_tokens=n, ignore_eos=True, strategy="superposed",
                                     rescore=False, **options)
                    sp.superposition = weights
                    drafts = [d.token_ids for d in r.drafts]
                seconds = time.perf_counter() - start
                texts = [until_eos(d, eos) for d in drafts]
                ppl = [perplexity(scorer, ids[p.id], t) for t in texts]
                rows.append((self_bleu(texts), np.mean(ppl), min(ppl), seconds))
            a = np.array(rows)
            print(f"n={n} {name:15s} Self-BLEU {a[:, 0].mean():.3f} ppl avg {a[:, 1].mean():.3f} "
                  f"best {a[:, 2].mean():.3f} time {a[:, 3].mean():.2f}s", flush=True)


if __name__ == "__main__":
    main()
