"""Layers that hold: no import cycle between edgegen modules, the low layers import without the API, and
backend libraries stay behind runtimes/. Static (ast) checks of the source tree plus one import in a subprocess."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pyproject's package-dir: module prefix -> folder
PACKAGE_DIRS = {"edgegen.export": "export", "edgegen.runtimes": "runtimes",
                "edgegen.device_profiles": "device_profiles", "edgegen": "edgegen"}
# The graph-building libraries the exporters need (not sessions): the ONNX builder of onnxruntime-genai and
# OpenVINO's model API (read, convert, compress, save IR). Running a graph is runtimes/' job alone.
# the graph-writing libraries of the two exporters: the ONNX builder and ONNX Runtime's weight quantizer (not its
# sessions), OpenVINO's model API
BUILDER_IMPORTS = {"export/onnx.py": {"onnxruntime_genai", "onnxruntime.quantization"},
                   "export/openvino.py": {"openvino"}}
BACKEND_LIBRARIES = {"onnxruntime", "openvino", "openvino_genai", "onnxruntime_genai", "openvino_tokenizers"}
SESSION_CALLS = {"InferenceSession", "compile_model", "create_infer_request", "LLMPipeline"}


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found: dict[str, Path] = {}
    for prefix, folder in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.setdefault(".".join([prefix, *parts]), path)
    return found


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that executes (imports inside functions included), without ``if TYPE_CHECKING:`` blocks."""
    nodes: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # "import a.b.c" of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_module_names_follow_the_package_dirs() -> None:
    modules = _modules()
    assert {"edgegen.api", "edgegen.export.pipeline", "edgegen.runtimes.base", "edgegen.strategies.base",
            "edgegen.bench", "edgegen.export.lud.ship", "edgegen.artifacts"} <= set(modules)


def test_no_import_cycle_between_modules() -> None:
    """Imports go one way (export -> runtimes -> strategies -> API/CLI), deferred ones included. A package's
    __init__ re-exporting its own submodules is not a cycle (Python runs it before any of them), and
    edgegen/__init__ re-exports lazily (PEP 562), so edges into packages from their own members are left out."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {t for t in _imports(name, path, modules) if not name.startswith(t + ".")}
    assert "edgegen.export.drafter.ship" in graph["edgegen.artifacts"]  # imports inside functions are edges too
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_reports_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_runtimes_and_export_import_without_the_api() -> None:
    code = ("import sys; sys.modules['edgegen.api'] = None\n"
            "import edgegen.runtimes, edgegen.export, edgegen.manifest, edgegen.errors\n"
            "heavy = [m for m in ('edgegen.api', 'edgegen.strategies', 'jinja2', 'torch') if sys.modules.get(m)]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_backend_libraries_only_in_runtimes() -> None:
    """Only runtimes/ imports onnxruntime / openvino (and their GenAI packages) or opens a session; the two
    exporters may import the graph-building library they write with (BUILDER_IMPORTS), and nothing else."""
    offenders = []
    for path in sorted([*(ROOT / "edgegen").rglob("*.py"), *(ROOT / "export").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        allowed = BUILDER_IMPORTS.get(rel, set())
        for node in _runtime_nodes(ast.parse(path.read_text(), rel)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in BACKEND_LIBRARIES and not any(name == a or name.startswith(a + ".") for a in allowed):
                    offenders.append(f"{rel}:{node.lineno} imports {name}")
            if isinstance(node, ast.Attribute) and node.attr in SESSION_CALLS:
                offenders.append(f"{rel}:{node.lineno} calls {node.attr}")
    assert offenders == []


def test_lower_layers_never_import_higher_ones() -> None:
    """runtimes/ builds on the manifest alone; export/ never reaches up into model resolution, strategies,
    the API or the CLI (what would make `import edgegen.export` pull the whole runtime in)."""
    modules = _modules()
    leaves = {"edgegen.errors", "edgegen.manifest", "edgegen.integrity"}
    higher = ("edgegen.api", "edgegen.strategies", "edgegen.cli", "edgegen.models", "edgegen.artifacts",
              "edgegen.bench", "edgegen.loading", "edgegen.generator", "edgegen.serve")
    wrong = []
    for name, path in modules.items():
        imported = _imports(name, path, modules)
        if name.startswith("edgegen.runtimes"):
            wrong += [f"{name} -> {t}" for t in imported if t not in leaves and not t.startswith("edgegen.runtimes")]
        if name.startswith("edgegen.export"):
            wrong += [f"{name} -> {t}" for t in imported if t.startswith(higher)]
    assert wrong == []
