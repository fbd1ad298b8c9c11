"""Edits edgegen makes to the ONNX model builder's graph (recorded in GraphInfo.edits).

The edited graph is saved beside the builder's (``model.edgegen.onnx``), pointing at the same external
weight file, so the builder's own graph stays untouched for onnxruntime-genai (the bench anchor).

``row_pad`` (one-row steps compute what multi-row steps compute): ONNX Runtime's attention takes
another path for a lone query row, and int8 activation quantization amplifies the ~1e-8 difference into
logit differences of 1-2, so speculative verification (several rows) would disagree with AR (one row).
MatMulNBits computes each row alike for any row count, so only attention needs a second row. Each
GroupQueryAttention gets its last query row twice; the copy is written to the next KV slot (overwritten
by the next step, so the cache needs one spare slot) and its output row is dropped::

    qkv [1,S,D] ──┬──────────── Concat ── qkv' [1,S+1,D]
                  └─ Slice(-1:) ─┘
    seqlens_k + 1, total_sequence_length + 1
    GroupQueryAttention(qkv', ...) ── out' [1,S+1,H] ── Slice(:-1) ── out [1,S,H]

Float MatMuls (an fp32/fp16 graph, an unquantized LM head) have a one-row path too and get the same
treatment; 8-bit MatMulNBits is left alone. 4-bit MatMulNBits with int8 activations (accuracy level 4, ONNX
Runtime's CPU default) also computes a lone row in another order (0.74 logits apart on SmolLM2 int4): there every
matmul would need the second row, and a pad around each costs more than the runtime's two-row call (10.5 against
9.4 ms a step, docs/performance.md), so such a graph gets no ``row_pad`` and the runtime pads one-token calls.

``logits_to_keep`` (prefill computes one row of logits): a new int64 input [1]; the LM head sees only
the last ``logits_to_keep`` rows of the final hidden state (0 keeps all)::

    hidden [1,S,H] ── Slice(-k:) ── LM head ── logits [1,k,V]

``hidden_state`` (draft heads read the target's own features): the LM head's input, after the final norm
and the ``logits_to_keep`` cut, becomes an extra output too (the same tensor: no compute, no copy of weights),
so it has exactly the rows the logits have::

    Slice(-k:) ──┬── LM head ── logits [1,k,V]
                 └── Identity ── hidden_state [1,k,H]

Left out where the LM head's input is not the logits' float type (a Cast between them: fp16 I/O graphs).
"""

from __future__ import annotations

from pathlib import Path

from edgegen.errors import EdgegenError
from edgegen.manifest import HIDDEN_STATE, LOGITS_TO_KEEP, ROW_PAD

EDITED_SUFFIX = ".edgegen.onnx"
_INT64_MAX = 2**63 - 1


def edit_onnx(graph_path: Path, logits_name: str) -> tuple[Path, list[str]]:
    """Save ``graph_path`` with the edits as ``<stem>.edgegen.onnx`` beside it; returns (path, edits)."""
    import onnx

    model = onnx.load(str(graph_path), load_external_data=False)  # weights stay in the shared data file
    graph = model.graph
    _add_logits_to_keep(graph, logits_name)  # first: the LM head's row pad then goes after the cut
    hidden = _add_hidden_output(graph, logits_name)  # the cut rows, before any row pad of the LM head
    edits = [ROW_PAD, LOGITS_TO_KEEP] if _pad_rows(graph) else [LOGITS_TO_KEEP]
    edits += [HIDDEN_STATE] if hidden else []
    out = graph_path.with_name(graph_path.stem + EDITED_SUFFIX)
    tmp = out.with_name("." + out.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)
    return out, edits


class _Builder:
    """Collects new nodes and constants for a graph, each under a unique /edgegen/ name."""

    def __init__(self, graph, prefix: str) -> None:  # onnx.GraphProto
        self.graph = graph
        self.prefix = prefix
        self.new_nodes: list = []
        self._count = 0
        self._constants: dict[tuple[str, int, bool], str] = {}

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"/edgegen/{self.prefix}/{hint}_{self._count}"

    def constant(self, value: int, dtype: str, scalar: bool = False) -> str:
        import numpy as np
        from onnx import numpy_helper

        key = (dtype, value, scalar)
        if key not in self._constants:
            name = self._name(f"const_{dtype}")
            array = np.array(value if scalar else [value], dtype=dtype)
            self.graph.initializer.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None, **attrs: object) -> str:
        from onnx import helper

        name = self._name(hint)
        output = output or name + "/out"
        self.new_nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def rows(self, x: str, start: int, end: int, output: str | None = None) -> str:
        """x[:, start:end] along the sequence axis."""
        return self.node("Slice", [x, self.constant(start, "int64"), self.constant(end, "int64"),
                                   self.constant(1, "int64")], "rows", output)

    def last_row_twice(self, x: str) -> str:
        return self.node("Concat", [x, self.rows(x, -1, _INT64_MAX)], "pad", axis=1)


def _pad_rows(graph) -> bool:
    """Give every GroupQueryAttention and float MatMul one extra row (see the module docstring).

    False (graph untouched) without GroupQueryAttention, or with 4-bit MatMulNBits on int8 activations: the
    runtime then pads one-token calls itself.
    """
    if not any(n.op_type == "GroupQueryAttention" for n in graph.node) or any(map(_one_row_kernel, graph.node)):
        return False
    b = _Builder(graph, "row_pad")
    initializers = {init.name for init in graph.initializer}
    plus_one: dict[str, str] = {}  # seqlens_k / total_sequence_length -> the same + 1 (shared by layers)
    padded = []
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            for i in (0, 1, 2):  # packed qkv, or separate query / key / value
                if i < len(node.input) and node.input[i]:
                    node.input[i] = b.last_row_twice(node.input[i])
            for i in (5, 6):  # seqlens_k (int32 [batch]) and total_sequence_length (int32 []); a scalar 1 fits both
                src = node.input[i]
                if src not in plus_one:
                    plus_one[src] = b.node("Add", [src, b.constant(1, "int32", scalar=True)], "plus_one")
                node.input[i] = plus_one[src]
            padded.append(node)
        elif node.op_type == "MatMul" and node.input[0] not in initializers:
            node.input[0] = b.last_row_twice(node.input[0])
            padded.append(node)
    for node in padded:
        out = node.output[0]
        node.output[0] = out + "/edgegen_padded"
        b.rows(node.output[0], 0, -1, output=out)
    _insert_sorted(graph, b.new_nodes)
    return True


def _one_row_kernel(node) -> bool:
    """A MatMulNBits whose lone row is summed another way than a row of several: 4-bit weights on int8
    activations."""
    if node.op_type != "MatMulNBits":
        return False
    attrs = {a.name: a.i for a in node.attribute}
    return attrs.get("bits", 4) == 4 and attrs.get("accuracy_level", 0) == 4


def _lm_head(graph, logits_name: str) -> tuple:
    """(the LM head MatMul node, the op types between it and the logits output)."""
    producers = {o: n for n in graph.node for o in n.output}
    node = producers.get(logits_name)
    between = []
    # The builder may follow the LM head with a Cast (fp16 I/O) or a softcap: walk back to the MatMul.
    while node is not None and node.op_type not in ("MatMul", "MatMulNBits"):
        between.append(node.op_type)
        node = producers.get(node.input[0])
    if node is None:
        raise EdgegenError(f"cannot find the LM head that produces '{logits_name}' in the built ONNX graph")
    return node, between


def _add_hidden_output(graph, logits_name: str) -> bool:
    """Expose the LM head's input as the output ``hidden_state`` (see the module docstring); False: left out."""
    from onnx import helper

    node, between = _lm_head(graph, logits_name)
    logits = next(o for o in graph.output if o.name == logits_name)
    if "Cast" in between:
        return False
    b = _Builder(graph, "hidden_state")
    b.node("Identity", [node.input[0]], "out", output=HIDDEN_STATE)
    graph.output.append(helper.make_tensor_value_info(HIDDEN_STATE, logits.type.tensor_type.elem_type,
                                                      ["batch_size", "sequence_length", "hidden_size"]))
    _insert_sorted(graph, b.new_nodes)
    return True


def _add_logits_to_keep(graph, logits_name: str) -> None:
    from onnx import TensorProto, helper

    node, _ = _lm_head(graph, logits_name)
    b = _Builder(graph, "logits_to_keep")
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    start = b.node("Neg", [LOGITS_TO_KEEP], "start")  # rows -k: (0 keeps all)
    node.input[0] = b.node("Slice", [node.input[0], start, b.constant(_INT64_MAX, "int64"), b.constant(1, "int64")],
                           "rows")
    _insert_sorted(graph, b.new_nodes)


def _insert_sorted(graph, new_nodes: list) -> None:
    """Add ``new_nodes`` and re-sort the graph topologically (ONNX requires producers first)."""
    nodes = list(graph.node) + list(new_nodes)
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise EdgegenError("graph edit left a cycle or a dangling input")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for n in ready:
            ordered.append(n)
            available.update(n.output)
    del graph.node[:]
    graph.node.extend(ordered)
