from pathlib import Path

from edgegen.bench.superposed import run_superposed_bench

run_superposed_bench(prompts="all", limit=4, new_tokens=(16, 64), num_drafts=3,
                     variants=[{}, {"continuation": "own"}], out=Path("/work/scratch/sup18/r3/out"),
                     command="run_superposed_bench(prompts='all', limit=4, new_tokens=(16, 64), num_drafts=3, "
                             "variants=[{}, {'continuation': 'own'}])  # = edgegen bench --strategy superposed "
                             "--num-drafts 3 --prompts all --limit 4 --new-tokens 16 --new-tokens 64, "
                             "plus the own variant")
