"""`edgegen batch` throughput: lines/s and tokens/s with 1 and 2 workers, in a local process pool and on a local
Ray instance, and Ray's overhead per line (docs/scale-out.md).

    python scripts/batch_figures.py [--lines 16] [--new-tokens 32] [--out bench-out/batch.json]
    python scripts/batch_figures.py --gendata TEACHER --hf HF_DIR [--lines 16] [--new-tokens 32]

--gendata measures a drafter's training-data generation instead (gendata.generate_targets, the recipe's own
prompts: code prefixes and chat-templated instructions as token ids, half greedy and half sampled at 0.6,
EOS honoured), with TEACHER an fp32 export of the target and HF_DIR its Hugging Face folder (tokenizer,
chat template).

Every run generates the same greedy lines (EOS ignored: each line makes exactly --new-tokens tokens), one
runtime thread per worker, into a fresh output file. Rates are over the run's wall time, loading the model
in every worker included (a data set of hundreds of thousands of lines amortizes it; these few lines do
not); the Ray instance is started before the clock and its start timed apart. gen_s is the time the
workers spent generating (the records' TTFT + decode); wall_s - gen_s is everything else (loading the
model, starting workers or actors, moving requests and records). Ray's overhead per line is that
remainder of the 1-worker Ray run minus the 1-worker local run's, per line: it does not depend on how fast
the (shared, loaded) cores generated during either run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgegen.batch import run_batch
from edgegen.ray_cluster import connect

PROMPTS = ["Name a river.", "Say hi.", "What is two plus two?", "Name a colour.", "Write a haiku about rain.",
           "What is the capital of France?", "Give me a word that rhymes with cat.", "Count to three."]


def measure(data: Path, out: Path, workers: int, ray: str | None) -> dict[str, float]:
    gen_ms: list[float] = []
    start = time.perf_counter()
    s = run_batch(data, out, load_args={"threads": 1}, workers=workers, ray=ray, progress=False)
    wall = time.perf_counter() - start
    for line in out.read_text().splitlines():
        stats = json.loads(line)["stats"]
        gen_ms.append(stats["ttft_ms"] + stats["decode_ms"])
    return {"workers": workers, "ray": ray is not None, "lines": s.generated, "wall_s": round(wall, 2),
            "lines_per_s": round(s.generated / wall, 3), "tokens_per_s": round(s.new_tokens / wall, 2),
            "gen_s": round(sum(gen_ms) / 1e3, 2)}


def measure_gendata(prompts: list[list[int]], teacher: Path, out: Path, new_tokens: int, workers: int,
                    ray: str | None) -> dict[str, float]:
    from edgegen.export.drafter.gendata import GenWorkers, generate_targets

    start = time.perf_counter()
    s = generate_targets(prompts, out, teacher=teacher, temperatures=[0.0, 0.6], max_new_tokens=new_tokens, seed=0,
                         shard_rows=4, run=GenWorkers(workers=workers, ray=ray), progress=False)
    wall = time.perf_counter() - start
    return {"gendata": True, "workers": workers, "ray": ray is not None, "lines": s.generated,
            "new_tokens": s.new_tokens, "wall_s": round(wall, 2), "lines_per_s": round(s.generated / wall, 3),
            "tokens_per_s": round(s.new_tokens / wall, 2)}


def gendata_figures(args: argparse.Namespace, root: Path) -> None:
    import sysconfig

    from edgegen.export.drafter.gendata import build_prompts

    hf = Path(args.hf)
    code = sorted(str(p) for p in Path(sysconfig.get_paths()["stdlib"], "json").glob("*.py"))
    prompts = [p["ids"] for p in build_prompts(hf / "tokenizer.json", hf, code, args.lines // 2, seed=0,
                                               max_prompt_tokens=128)]
    rows = [measure_gendata(prompts, Path(args.gendata), root / f"gen-{w}", args.new_tokens, w, None) for w in (1, 2)]
    connect("local")
    rows += [measure_gendata(prompts, Path(args.gendata), root / f"gen-ray-{w}", args.new_tokens, w, "local")
             for w in (1, 2)]
    for row in rows:
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": rows}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default="bench-out/batch.json")
    ap.add_argument("--gendata", default=None, metavar="TEACHER", help="Measure training-data generation with it.")
    ap.add_argument("--hf", default=None, help="The target's HF folder (with --gendata).")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="batch-figures-"))
    if args.gendata:
        return gendata_figures(args, root)
    data = root / "in.jsonl"
    data.write_text("".join(json.dumps({"prompt": PROMPTS[k % len(PROMPTS)] + f" ({k})", "strategy": "ar",
                                        "max_new_tokens": args.new_tokens, "ignore_eos": True}) + "\n"
                            for k in range(args.lines)))
    rows = [measure(data, root / f"out-{workers}.jsonl", workers, None) for workers in (1, 2)]
    start = time.perf_counter()
    connect("local")  # run_batch uses this instance and leaves it running
    ray_start = time.perf_counter() - start
    rows += [measure(data, root / f"out-ray-{workers}.jsonl", workers, "local") for workers in (1, 2)]
    for row in rows:
        print(json.dumps(row), flush=True)
    local1, ray1 = rows[0], rows[2]
    per_line_ms = ((ray1["wall_s"] - ray1["gen_s"]) - (local1["wall_s"] - local1["gen_s"])) / ray1["lines"] * 1e3
    overhead = {"ray_start_s": round(ray_start, 2), "ray_overhead_ms_per_line_1_worker": round(per_line_ms, 1)}
    print(json.dumps(overhead))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": rows, **overhead}, indent=1) + "\n")


if __name__ == "__main__":
    main()
