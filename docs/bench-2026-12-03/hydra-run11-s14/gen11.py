"""Run 11's data: the target's greedy generations of ~2000 prompts, HF generate batched (torch, fp32),
written as the recipe's torch-generated (legacy) shards of 16 prompts. Resumable by shard."""
import itertools, os, sys, time
from pathlib import Path
import numpy as np, torch
from transformers import AutoModelForCausalLM
from tokenizers import Tokenizer
from edgegen.export.hydra.config import HydraConfig
from edgegen.export.drafter.corpus import build_corpus
from edgegen.export.drafter.gendata import code_prefixes, instruction_prompts, _chat_renderer

RUN = Path("/work/hydra-run11"); HF = Path("/work/testcache/hf/model")
N_CODE = int(os.environ.get("N_CODE", 1100)); BATCH = 48; SHARD = 16; NEW = 128; MAXP = 128
torch.set_num_threads(int(os.environ.get("THREADS", 1)))
cfg = HydraConfig(out=str(RUN))
corpus = build_corpus(RUN, HF / "tokenizer.json", 2, code_globs=cfg.code_globs, text_globs=cfg.text_globs,
                      tokens=cfg.corpus_tokens, code_share=cfg.code_share, val_tokens=cfg.val_tokens,
                      max_file_chars=cfg.max_file_chars, seed=cfg.seed, echo=print)
tok = Tokenizer.from_file(str(HF / "tokenizer.json"))
rng = np.random.default_rng(11)
from edgegen.export.drafter.corpus import code_files
held = set(corpus["files"]["val_code"])
files = [f for f in code_files(cfg.code_globs) if f not in held]
code = code_prefixes(files, N_CODE, rng)
code += code_prefixes(files, N_CODE - len(code), np.random.default_rng(13))
people = ["my landlord", "a coworker", "my teacher", "a new customer", "my neighbour", "my manager"]
acts = ["learning a new language", "saving money", "staying focused while studying", "running a first marathon",
        "keeping houseplants alive", "cooking for a large group", "writing a cover letter", "starting a vegetable garden",
        "traveling on a budget", "public speaking", "sleeping better", "organizing a small office"]
acts2 = ["buying a used car", "adopting a dog", "moving to a new city", "starting a small business",
         "changing careers", "renting an apartment", "planning a wedding", "choosing a laptop"]
things = ["a thunderstorm", "a busy train station", "an old library", "the desert at noon", "a mountain lake",
          "a crowded market", "autumn leaves", "a snowy village", "a lighthouse", "a city at dawn"]
pairs = [("a virus", "a bacterium"), ("weather", "climate"), ("a loan", "a grant"), ("speed", "velocity"),
         ("a lake", "a sea"), ("RAM", "storage"), ("a tuple", "a list in Python"), ("HTTP", "HTTPS"),
         ("an alligator", "a crocodile"), ("baking soda", "baking powder"), ("a comet", "an asteroid"),
         ("a for loop", "a while loop"), ("stocks", "bonds"), ("a democracy", "a monarchy")]
prods = ["a reusable water bottle", "a pair of running shoes", "a desk lamp", "a backpack", "a coffee grinder"]
occ = ["a friend's birthday", "a retirement party", "a team's first day", "a school graduation"]
whys = ["the sky blue", "the sea salty", "ice slippery", "bread rising in the oven", "the moon changing shape"]
extra = []
extra += [f"Write a short, friendly note to {p} about {a}." for p in people for a in ["a noisy evening", "a schedule change", "a shared parking spot", "a thank-you for their help"]]
extra += [f"Give me {n} tips for {a}." for a in acts for n in ("three", "five")]
extra += [f"What should I consider before {a}?" for a in acts2]
extra += [f"Make a simple to-do list for {a}." for a in acts2]
extra += [f"Describe {t} in a few vivid sentences." for t in things]
extra += [f"Write a short poem about {t}." for t in things]
extra += [f"What is the difference between {a} and {b}?" for a, b in pairs]
extra += [f"Write a short product description for {p}." for p in prods]
extra += [f"Write a short toast for {o}." for o in occ]
extra += [f"Why is {w}? Answer briefly." for w in whys]
extra += [f"Write a four-sentence story about {t}." for t in things]
extra += [f"List the steps of {a} in order." for a in ["making a cup of tea", "changing a bicycle tire", "planting a tree", "doing laundry", "setting up a new phone", "writing a unit test", "making pancakes", "backing up a computer"]]
render = _chat_renderer(HF)
chats = [render(q) for q in instruction_prompts() + extra]
prompts = [("code", t) for t in code] + [("chat", t) for t in chats]
order = np.random.default_rng(12).permutation(len(prompts))
prompts = [prompts[i] for i in order]
ids = [tok.encode(t).ids[-MAXP:] for _, t in prompts]
print(f"{len(prompts)} prompts: {len(code)} code, {len(chats)} chat ({len(extra)} new forms)", flush=True)
(RUN / "gen").mkdir(parents=True, exist_ok=True)
(RUN / "gen11_prompts.txt").write_text(f"{len(prompts)}\n")
model = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
nshard = -(-len(prompts) // SHARD)
def shard_path(s): return RUN / "gen" / f"shard-{s:05d}.npz"
t0 = time.time(); done_tok = 0
for b0 in range(0, len(prompts), BATCH):
    shards = list(range(b0 // SHARD, min(nshard, -(-(b0 + BATCH) // SHARD))))
    if all(shard_path(s).exists() for s in shards):
        continue
    rows = list(range(b0, min(b0 + BATCH, len(prompts))))
    L = max(len(ids[i]) for i in rows)
    inp = torch.full((len(rows), L), 2, dtype=torch.long); att = torch.zeros_like(inp)
    for r, i in enumerate(rows):
        inp[r, L - len(ids[i]):] = torch.tensor(ids[i]); att[r, L - len(ids[i]):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=inp, attention_mask=att, max_new_tokens=NEW, do_sample=False, pad_token_id=2,
                             eos_token_id=2)
    gens = {}
    for r, i in enumerate(rows):
        g = out[r, L:].tolist()
        if 2 in g:
            g = g[:g.index(2) + 1]
        gens[i] = g; done_tok += len(g)
    for s in shards:
        idx = [i for i in range(s * SHARD, min((s + 1) * SHARD, len(prompts)))]
        tmp = shard_path(s).with_suffix(".tmp.npz")
        np.savez(tmp, prompt_index=np.array(idx), prompt_len=np.array([len(ids[i]) for i in idx]),
                 gen_len=np.array([len(gens[i]) for i in idx]),
                 prompt_ids=np.array(list(itertools.chain(*(ids[i] for i in idx))), dtype=np.int64),
                 gen_ids=np.array(list(itertools.chain(*(gens[i] for i in idx))), dtype=np.int64))
        os.replace(tmp, shard_path(s))
    el = time.time() - t0
    print(f"{time.strftime('%H:%M:%S')} batch {b0 // BATCH + 1}/{-(-len(prompts) // BATCH)}: {done_tok} tokens, "
          f"{done_tok / el:.0f} tok/s", flush=True)
print("done", flush=True)
