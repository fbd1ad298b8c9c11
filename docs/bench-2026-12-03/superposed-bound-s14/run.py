from pathlib import Path
import os
from edgegen.bench.superposed import run_superposed_bench

run_superposed_bench(prompts="all", limit=4, new_tokens=(16, 64), num_drafts=3,
                     variants=[{}, {"rescore": False}, {"diversity": "none", "rescore": False}],
                     out=Path("/work/scratch/s14/sup/out"),
                     command="run_superposed_bench(prompts='all', limit=4, new_tokens=(16, 64), num_drafts=3, "
                             "variants=[{}, {'rescore': False}, {'diversity': 'none', 'rescore': False}])  "
                             "# = edgegen bench --strategy superposed --num-drafts 3 --prompts all --limit 4 "
                             "--new-tokens 16 --new-tokens 64, plus the pass without exact scores")
