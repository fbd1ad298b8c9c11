"""Give an ONNX export made before the ``hidden_state`` edit that output, without re-exporting (issue 16).

    python scripts/add_hidden_output.py MODEL_FOLDER

Re-runs edgegen's graph edits (export/graph_edits.py) on the builder's own graph (``onnx/model.onnx``, kept
untouched by every export), which rewrites ``onnx/model.edgegen.onnx`` (and the input-embedding graph's, if
any) atomically, then records the new edits and file sizes in edgegen.json. The weights file is not touched.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from edgegen.export.graph_edits import EDITED_SUFFIX, edit_onnx
from edgegen.manifest import GraphInfo, read_manifest


def upgraded(folder: Path, graph: GraphInfo) -> GraphInfo:
    builder = folder / graph.path.replace(EDITED_SUFFIX, ".onnx")
    _, edits = edit_onnx(builder, graph.logits)
    return replace(graph, edits=edits)


def main() -> None:
    folder = Path(sys.argv[1])
    manifest = read_manifest(folder)
    graphs = {fmt: upgraded(folder, g) if fmt == "onnx" else g for fmt, g in manifest.graphs.items()}
    embeddings = manifest.embeddings
    if embeddings is not None and "onnx" in embeddings.graphs:
        embeddings = replace(embeddings, graphs={**embeddings.graphs,
                                                 "onnx": upgraded(folder, embeddings.graphs["onnx"])})
    replace(manifest, graphs=graphs, embeddings=embeddings).write(folder)
    print(f"{folder}: onnx edits {graphs['onnx'].edits}" if "onnx" in graphs else f"{folder}: no onnx graph")


if __name__ == "__main__":
    main()
