"""hydra confidence sweep vs AR and prompt lookup: 8 bench prompts x 128 tokens, engines alternate per prompt."""
import statistics, sys, time
import edgegen
from edgegen.bench.runner import encode_prompts, load_prompts

gen = edgegen.load(sys.argv[1], backend="onnxruntime")
prompts = load_prompts("all", 4)
ids = encode_prompts(gen.folder, prompts)
engines = {"ar": dict(strategy="ar"), "pl": dict(strategy="prompt-lookup")}
for c in [float(x) for x in sys.argv[3].split(",")]:
    engines[f"hydra c{c}"] = dict(strategy="hydra", confidence=c)
for name, kw in engines.items():  # warm-up
    gen.generate(ids[prompts[0].id][:20], max_new_tokens=16, chat=False, ignore_eos=True, **kw)
rates = {n: {"code": [], "chat": []} for n in engines}
ref = {}
for rnd in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
    for p in prompts:
        for name, kw in (list(engines.items()) if rnd % 2 == 0 else list(engines.items())[::-1]):
            t = time.perf_counter()
            out = gen.generate(ids[p.id], max_new_tokens=128, chat=False, ignore_eos=True, **kw)
            dt = time.perf_counter() - t
            ref.setdefault(p.id, out.token_ids)
            assert out.token_ids == ref[p.id], (name, p.id)
            rates[name][p.category].append(128 / dt)
for name, r in rates.items():
    ar = rates["ar"]
    print(f"{name:12s} " + "  ".join(
        f"{cat} {statistics.mean(v):6.1f} tok/s ({statistics.mean(v) / statistics.mean(ar[cat]):.3f}x AR)"
        for cat, v in r.items()))
