"""One engine per process over the bench's 8 prompts (token ids), 128 tokens, tokens/s from per-token stamps
(first token to last, like the bench). argv[1]: an exported folder (int4 in its name: int4); argv[2]: edgegen-ov | raw (constant slice, unpinned) | raw-pin | genai-sdpa | genai-pa."""
import statistics, sys, time
from pathlib import Path
import numpy as np
folder, which = Path(sys.argv[1]), sys.argv[2]; W = "int4" if "int4" in sys.argv[1] else "int8"
from edgegen.bench.runner import encode_prompts, load_prompts, measure
from edgegen.bench.engines import edgegen_spec, open_engine, EngineSpec
prompts = load_prompts("all", 4); ids = encode_prompts(folder, prompts)

class Raw:
    name = "raw"
    def __init__(self, pin):
        import openvino as ov
        from openvino import opset13 as ops
        import edgegen.runtimes.openvino_session as s
        core = ov.Core(); m = core.read_model(str(folder / "openvino/openvino_model.xml")); node = s._lm_head(m)
        rows = ops.slice(node.input_value(0), np.array([-1]), np.array([2**63 - 1]), np.array([1]), np.array([1]))
        node.input(0).replace_source_output(rows.output(0)); m.validate_nodes_and_infer_types()
        cfg = {"PERFORMANCE_HINT": "LATENCY"}
        if not pin: cfg["ENABLE_CPU_PINNING"] = False
        self.r = core.compile_model(m, "CPU", cfg).create_infer_request()
        self.mask = np.ones((1, 4096), np.int64); self.pos = np.arange(4096, dtype=np.int64)[None]; self.beam = np.zeros(1, np.int32)
    def generate(self, prompt_ids, new_tokens, on_token):
        r, P = self.r, len(prompt_ids); r.reset_state()
        out = r.infer({"input_ids": np.array([prompt_ids], np.int64), "attention_mask": self.mask[:, :P], "position_ids": self.pos[:, :P], "beam_idx": self.beam}, share_inputs=True, share_outputs=True)
        tok = int(np.argmax(out[0][0, -1])); on_token(tok)
        for i in range(new_tokens - 1):
            q = P + i
            out = r.infer({"input_ids": np.array([[tok]], np.int64), "attention_mask": self.mask[:, :q + 1], "position_ids": self.pos[:, q:q + 1], "beam_idx": self.beam}, share_inputs=True, share_outputs=True)
            tok = int(np.argmax(out[0][0, -1])); on_token(tok)
        return {}

if which == "edgegen-ov":  # as shipped: PagedAttention on the CPU
    eng = open_engine(edgegen_spec(folder, "openvino", W))
    assert eng._gen.session._paged is not None
elif which.startswith("raw"):
    eng = Raw("pin" in which)
else:
    if which == "genai-sdpa":
        import openvino_genai as ovg
        orig = ovg.LLMPipeline
        ovg.LLMPipeline = lambda *a, **k: orig(*a, ATTENTION_BACKEND="SDPA", **k)
    eng = open_engine(EngineSpec("openvino-genai", "anchor", "openvino", W, folder))
measure(eng, ids[prompts[0].id], 16)
res = {"code": [], "chat": []}
for r in range(2):
    for p in prompts:
        res[p.category].append(measure(eng, ids[p.id], 128).tokens_per_s)
print(which, {k: round(statistics.median(v), 1) for k, v in res.items()}, round(statistics.median(res["code"] + res["chat"]), 1), flush=True)
