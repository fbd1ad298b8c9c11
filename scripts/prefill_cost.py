"""Where ONNX Runtime's prefill time goes, and what other kernels would give (issue 14, docs/performance.md).

    python scripts/prefill_cost.py profile FOLDER [--tokens 128 --tokens 1000]
    python scripts/prefill_cost.py compare FOLDER [--tokens 128] [--rounds 4] [--variant fp32 ...]

``profile``: ONNX Runtime's per-op-type kernel time of edgegen's prefill (512-token chunks, last row's logits).
``compare``: prefill time of the shipped session against prefill sessions that share its KV buffers (bound
by IO binding, as the session binds its own) and run another graph or other session options, alternated per
round on a fresh random prompt; the first round is a warm-up. Variants:

- ``spin``: the shipped graph with pool threads spinning; ``latency``: ``session.kernel_dispatch_policy``;
- ``acc1``: the same int8 weights, MatMulNBits ``accuracy_level`` 1 (fp32 compute: ONNX Runtime dequantizes
  every weight matrix per call, then runs SGEMM);
- ``fp32``: every MatMulNBits but the LM head replaced by a MatMul over the weights dequantized to fp32
  (ONNX Runtime prepacks them for SGEMM), what a prefill over fp32 weights costs.

The variant graphs are written under a temporary folder, removed at the end (acc1 hard-links the weights; fp32
writes ~570 MB).
Measurements on a shared machine are noisy: quote the ratios, with the load average printed at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import edgegen
from edgegen.runtimes.onnxruntime_session import OnnxRuntimeSession
from edgegen.strategies.base import PREFILL_CHUNK as CHUNK

OPTIONS = {"spin": {"session.intra_op.allow_spinning": "1"}, "latency": {"session.kernel_dispatch_policy": "latency"}}


def prefill(session: OnnxRuntimeSession, ids: np.ndarray) -> float:
    session.reset()
    start = time.perf_counter()
    for i in range(0, len(ids), CHUNK):
        session.forward(ids[i:i + CHUNK], last_only=True)
    return time.perf_counter() - start


def profile(folder: Path, lengths: list[int], tmp: Path) -> None:
    make = ort.InferenceSession

    def profiled(path: str, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
        options.enable_profiling = True
        options.profile_file_prefix = f"{tmp}/prefill"
        return make(path, options, providers=providers)

    rng = np.random.default_rng(0)
    for n in lengths:
        ort.InferenceSession = profiled
        session = edgegen.load(folder, backend="onnxruntime").session
        ort.InferenceSession = make
        walls = [prefill(session, rng.integers(100, 40000, n)) for _ in range(2)]
        events = json.load(open(session._session.end_profiling()))
        by_op: dict[str, float] = collections.defaultdict(float)
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by_op[e["args"]["op_name"]] += e["dur"] / 1e3
        total = sum(by_op.values())
        print(f"{n} tokens: {min(walls) * 1e3:.0f} ms per prefill (best of 2), kernel time by op type:")
        for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:6]:
            print(f"  {op:34s} {100 * ms / total:5.1f}%")


def _variant_graph(src: Path, kind: str, out: Path) -> Path:
    """``kind`` (acc1 / fp32) version of the ONNX graph ``src``, written under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src), load_external_data=False)
    for data in {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}:
        if not (out / data).exists():  # the weights stay where they are (a hard link)
            os.link(src.parent / data, out / data)
    if kind == "acc1":
        for node in model.graph.node:
            for a in node.attribute:
                if node.op_type == "MatMulNBits" and a.name == "accuracy_level":
                    a.i = 1
        onnx.save(model, str(out / src.name))
        return out / src.name
    inits = {t.name: t for t in model.graph.initializer}
    nodes, dropped, vocab = [], set(), model_vocab(model)  # the LM head (last row only) stays int8
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "MatMulNBits" or attrs["N"] == vocab:
            nodes.append(node)
            continue
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        q, scales = (_external_array(inits[name], src.parent) for name in node.input[1:3])
        blocks = q.shape[1]
        w = (q.reshape(n, blocks * block).astype(np.float32) - 2 ** (attrs["bits"] - 1)) \
            * np.repeat(scales.reshape(n, blocks), block, axis=1)
        name = node.input[1] + "_f32"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w[:, :k].T), name))
        dropped |= set(node.input[1:3])
        nodes.append(helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name))
    keep = [t for t in model.graph.initializer if t.name not in dropped]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out / src.name), save_as_external_data=True, location="fp32.data")
    return out / src.name


def _external_array(tensor: onnx.TensorProto, base: Path) -> np.ndarray:
    if not tensor.external_data:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    count = int(info["length"]) // dtype.itemsize
    data = np.fromfile(base / info["location"], dtype, count, offset=int(info.get("offset", 0)))
    return data.reshape(tuple(tensor.dims))


def model_vocab(model: onnx.ModelProto) -> int:
    return max(helper.get_attribute_value(a) for node in model.graph.node if node.op_type == "MatMulNBits"
               for a in node.attribute if a.name == "N")


def attach_prefill(session: OnnxRuntimeSession, graph: Path, entries: dict[str, str]) -> None:
    """Run ``session``'s last-row (prefill) forwards on ``graph``, bound to the same KV buffers."""
    options = ort.SessionOptions()
    for key, value in {"session.intra_op.allow_spinning": "0", **entries}.items():  # the shipped session's setting
        options.add_session_config_entry(key, value)
    other = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    binding = other.io_binding()
    kv = session._graph.kv
    values = []
    for layer, pair in enumerate(session._cache):
        for which, buf in enumerate(pair):
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            values.append(value)
            binding.bind_ortvalue_input((kv.past_key, kv.past_value)[which] % layer, value)
            binding.bind_ortvalue_output((kv.present_key, kv.present_value)[which] % layer, value)
    run = session._run

    def routed(x: np.ndarray, last_only: bool) -> np.ndarray:
        if not last_only:
            return run(x, last_only)
        own = session._session, session._binding
        session._session, session._binding = other, binding
        try:
            return run(x, last_only)
        finally:
            session._session, session._binding = own

    session._run = routed  # type: ignore[method-assign]
    session._pinned = other, binding, values  # keep them alive


def compare(folder: Path, lengths: list[int], rounds: int, variants: list[str], tmp: Path) -> None:
    sessions: dict[str, OnnxRuntimeSession] = {}
    for name in ["shipped", *variants]:
        session = edgegen.load(folder, backend="onnxruntime").session
        session.reset()
        session._allocate(max(lengths) + 2)  # the prefill session binds these buffers once
        if name in OPTIONS:
            attach_prefill(session, folder / session._graph.path, OPTIONS[name])
        elif name != "shipped":
            attach_prefill(session, _variant_graph(folder / session._graph.path, name, tmp / name), {})
        sessions[name] = session
    rng = np.random.default_rng()
    for n in lengths:
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for r in range(rounds + 1):
            ids = rng.integers(100, 40000, n)
            for name in (list(sessions) if r % 2 else list(sessions)[::-1]):
                seconds = prefill(sessions[name], ids)
                if r:
                    times[name].append(seconds)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"{n} tokens, median of {rounds} rounds: "
              + ", ".join(f"{name} {v:.0f} ms ({v / ms['shipped']:.2f}x)" for name, v in ms.items()))
    print("load average", " ".join(open("/proc/loadavg").read().split()[:3]),
          f"; peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["profile", "compare"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--tokens", type=int, action="append")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--variant", action="append", choices=["spin", "latency", "acc1", "fp32"])
    args = parser.parse_args()
    lengths = args.tokens or [128, 1000]
    with tempfile.TemporaryDirectory() as tmp:  # profiles and variant graphs (~570 MB for fp32) go away after
        if args.command == "profile":
            profile(args.folder, lengths, Path(tmp))
        else:
            compare(args.folder, lengths, args.rounds, args.variant or ["acc1", "fp32"], Path(tmp))


if __name__ == "__main__":
    main()
