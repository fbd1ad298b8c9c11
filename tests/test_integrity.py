"""A model folder is untrusted input, and an export can be killed: manifest paths stay inside the folder,
malformed values are one clear error, recorded sizes and hashes catch damaged files (`edgegen verify`),
killed exports' temp folders are cleaned by the next build, two processes build a cached model once, and the
libraries' output of an export never reaches stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgegen.cli import main
from edgegen.errors import EdgegenError
from edgegen.files import OWNER_FILE, atomic_folder, check_output_dir
from edgegen.manifest import MANIFEST_NAME, GraphInfo, KVCacheLayout, Manifest, read_manifest, verify_model
from edgegen.tokenizer import TextTokenizer

ROOT = Path(__file__).resolve().parents[1]


def make_model(folder: Path, **changes: object) -> Path:
    """A model folder with a word-level tokenizer, a chat template and a stand-in graph file."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (folder / "onnx").mkdir(exist_ok=True)
    (folder / "onnx" / "model.onnx").write_bytes(b"graph bytes " * 100)
    graph = GraphInfo(format="onnx", path="onnx/model.onnx", weights="int8", inputs={"input_ids": "input_ids"},
                      logits="logits", kv=KVCacheLayout(stateful=False, shared_buffer=True))
    Manifest(name="tiny", architecture="llama", num_layers=1, hidden_size=8, num_heads=1, num_kv_heads=1, head_dim=8,
             vocab_size=3, context_length=64, bos_token_id=None, eos_token_ids=[], add_bos=False,
             graphs={"onnx": graph}).write(folder)
    if changes:
        edit(folder, **changes)
    return folder


def edit(folder: Path, **changes: object) -> None:
    data = json.loads((folder / MANIFEST_NAME).read_text())
    for key, value in changes.items():
        target = data
        *path, last = key.split("__")
        for part in path:
            target = target[part]
        target[last] = value
    (folder / MANIFEST_NAME).write_text(json.dumps(data))


# --- paths stay inside the folder -------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [
    ("chat_template", "../../../../etc/passwd"), ("chat_template", "/etc/passwd"), ("tokenizer", "/etc/hostname"),
    ("graphs__onnx__path", "../outside.onnx"), ("graphs__onnx__path", "onnx/../../outside.onnx"),
    ("tokenizer", ""), ("chat_template", 7),
])
def test_manifest_paths_outside_the_folder_are_refused(tmp_path: Path, key: str, value: object) -> None:
    (tmp_path / "outside.onnx").write_bytes(b"x")
    folder = make_model(tmp_path / "m", **{key: value})
    with pytest.raises(EdgegenError, match="outside the model folder|invalid|must be"):
        read_manifest(folder)


def test_a_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("{{ 'not a template' }}")
    folder = make_model(tmp_path / "m")
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.jinja").symlink_to(secret)
    with pytest.raises(EdgegenError, match="links outside the model folder"):
        read_manifest(folder)


def test_the_chat_template_never_reads_a_file_outside(tmp_path: Path) -> None:
    """The reported case: "../../../../etc/passwd" as chat template put the whole file into the prompt."""
    folder = make_model(tmp_path / "m", chat_template="../../../../etc/passwd")
    with pytest.raises(EdgegenError):
        TextTokenizer(folder, read_manifest(folder))


# --- malformed values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    '"just a string"', "[]", "null", "{}", '{"graphs": []}', "\xff\xfe not utf-8", "[" * 100_000,
])
def test_malformed_manifest_is_one_error(tmp_path: Path, text: str) -> None:
    folder = make_model(tmp_path / "m")
    (folder / MANIFEST_NAME).write_bytes(text.encode("latin-1"))
    with pytest.raises(EdgegenError, match="corrupt manifest"):
        read_manifest(folder)


@pytest.mark.parametrize("key, value", [
    ("graphs", []), ("graphs", {"onnx": "x"}), ("graphs__onnx__kv", 3), ("graphs__onnx__inputs", ["input_ids"]),
    ("num_layers", "2"), ("num_layers", 0), ("vocab_size", -5), ("context_length", -1), ("head_dim", 2.5),
    ("num_kv_heads", 3), ("eos_token_ids", "2"), ("eos_token_ids", [-1]), ("bos_token_id", True),
    ("add_bos", "no"), ("extras", []), ("static_shapes", {"max_prompt_len": 0}), ("embeddings", []),
    ("embeddings", {"table": "t.npy", "dtype": "float32", "scale": "1"}), ("files", {"a": {"size": -1}}),
    ("name", None), ("schema", "1"), ("surprise", 1),
])
def test_wrong_types_and_ranges_are_one_error(tmp_path: Path, key: str, value: object) -> None:
    folder = make_model(tmp_path / "m", **{key: value})
    with pytest.raises(EdgegenError, match="corrupt manifest"):
        read_manifest(folder)


def test_a_malformed_manifest_is_one_cli_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_model(tmp_path / "m", graphs=[])
    code = main(["run", "hello", "--model", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:") and "graphs" in err[0]


# --- sizes and hashes ---------------------------------------------------------------------------------


def test_the_manifest_records_size_and_sha256_of_every_file(tmp_path: Path) -> None:
    import hashlib

    folder = make_model(tmp_path / "m")
    files = read_manifest(folder).files
    assert set(files) == {"tokenizer.json", "chat_template.jinja", "onnx/model.onnx"}
    for rel, rec in files.items():
        data = (folder / rel).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_truncated_file_fails_the_load(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    with open(folder / "onnx" / "model.onnx", "r+b") as f:
        f.truncate(100)
    with pytest.raises(EdgegenError, match="damaged: onnx/model.onnx has 100 bytes"):
        read_manifest(folder)


def test_verify_finds_a_flipped_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_model(tmp_path / "m")
    assert main(["verify", str(folder)]) == 0 and "ok, 3 files" in capsys.readouterr().out
    data = bytearray((folder / "onnx" / "model.onnx").read_bytes())
    data[50] ^= 0xFF
    (folder / "onnx" / "model.onnx").write_bytes(bytes(data))
    read_manifest(folder)  # same size: the cheap check on load passes
    assert verify_model(folder)[1] == ["onnx/model.onnx: sha256 differs from the export's "
                                       "(the file was changed or corrupted)"]
    code = main(["verify", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "onnx/model.onnx" in err[0]


def test_an_old_manifest_without_hashes_loads_and_verify_says_so(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    folder = make_model(tmp_path / "m")
    data = json.loads((folder / MANIFEST_NAME).read_text())
    del data["files"]
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    assert read_manifest(folder).files == {}
    assert main(["verify", str(folder)]) == 0 and "no hashes recorded" in capsys.readouterr().out


# --- crash safety ---------------------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp_folder(out: Path, suffix: str, owner: str | None) -> Path:
    tmp = out.parent / f".{out.name}.tmp-{suffix}"
    tmp.mkdir(parents=True)
    (tmp / "model.bin").write_bytes(b"\0" * 1000)
    if owner is not None:
        (tmp / OWNER_FILE).write_text(owner)
    return tmp


def test_next_export_removes_a_killed_exports_temp_folder_and_keeps_a_live_ones(tmp_path: Path) -> None:
    out = tmp_path / "cache" / "model"
    dead = _temp_folder(out, "dead", f"{_dead_pid()} {os.uname().nodename}")
    live = _temp_folder(out, "live", f"{os.getppid()} {os.uname().nodename}")
    foreign = tmp_path / "cache" / ".model.notes-keep"  # not an export temp folder: never touched
    foreign.mkdir()
    with atomic_folder(out) as tmp:
        (tmp / MANIFEST_NAME).write_text("{}")
    assert not dead.exists() and live.is_dir() and foreign.is_dir()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME]  # the owner file is not published


def test_a_sigkilled_export_is_cleaned_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "model"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from edgegen.files import atomic_folder
        with atomic_folder(Path({str(out)!r})) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 4096)
            print("building", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "building"
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".model.tmp-")]
    with atomic_folder(out) as tmp:  # the builder is alive: its folder stays
        (tmp / MANIFEST_NAME).write_text("{}")
    assert all(p.is_dir() for p in left) and len(left) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert left[0].is_dir()  # SIGKILL runs no cleanup
    with atomic_folder(out) as tmp:
        (tmp / MANIFEST_NAME).write_text("{}")
    assert not left[0].exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.")] == []


_CONCURRENT = """
import os, sys, time
from pathlib import Path
from edgegen import models
from edgegen.files import atomic_folder
from edgegen.profiles import load_profile

root = Path(sys.argv[1])

def fake_export(source, out, **options):
    with open(root / "builds.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    (root / f"building-{os.getpid()}").touch()
    while not (root / "go").exists():
        time.sleep(0.02)
    with atomic_folder(out) as tmp:
        (tmp / "edgegen.json").write_text("{}")
    return out

models.export = fake_export
print(models.resolve_model(None, load_profile("cpu")), flush=True)
"""


def test_two_processes_exporting_one_cached_model_export_once(tmp_path: Path) -> None:
    env = {**os.environ, "EDGEGEN_CACHE": str(tmp_path / "cache")}
    run = [sys.executable, "-c", _CONCURRENT, str(tmp_path)]
    first = subprocess.Popen(run, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    while not list(tmp_path.glob("building-*")):  # the first one holds the lock and builds
        assert first.poll() is None
        time.sleep(0.02)
    second = subprocess.Popen(run, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    time.sleep(1.0)  # let the second reach the lock (if it is later, it finds the model built: same outcome)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120)[0].strip() for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0
    assert outs[0] == outs[1] and Path(outs[0]).is_dir()
    assert len((tmp_path / "builds.log").read_text().split()) == 1


# --- impossible targets and library output ------------------------------------------------------------------


def test_impossible_export_targets_are_one_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "model", tmp_path / "file" / "deep" / "model"):
        with pytest.raises(EdgegenError, match="not a folder|is a file"):
            check_output_dir(out)
        with pytest.raises(EdgegenError):
            with atomic_folder(out, check=False):
                pass


def test_export_cli_into_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    code = main(["export", "--out", str(tmp_path / "file" / "model"), "--no-quality-gate"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("error:") and "is a file" in err[-1], err
    assert not any(line.startswith("Traceback") for line in err)


def test_library_output_goes_to_the_log_not_stdout(tmp_path: Path) -> None:
    """Python prints, warnings, logging and native writes to fd 1/2 during an export land in export.log;
    edgegen's own stage lines still reach stderr; stdout gets nothing."""
    script = textwrap.dedent(f"""
        import logging, os, sys, warnings
        from pathlib import Path
        from edgegen.export.progress import Stages, library_output, warn
        logging.basicConfig(level=logging.INFO)
        stages = Stages(True, ["build"])
        with library_output(Path({str(tmp_path / "export.log")!r})):
            with stages.stage("build"):
                print("python print")
                os.write(1, b"native stdout\\n")
                os.write(2, b"native stderr\\n")
                warnings.warn("a library warning")
                logging.getLogger("nncf").info("a library log line")
                warn("edgegen's own warning")
        print("after", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "after\n"
    log = (tmp_path / "export.log").read_text()
    for line in ("python print", "native stdout", "native stderr", "a library warning", "a library log line"):
        assert line in log and line not in proc.stderr
    assert "(1/1) build ..." in proc.stderr and "edgegen's own warning" in proc.stderr


def test_a_killed_ngram_build_is_cleaned_by_the_next(tmp_path: Path) -> None:
    from edgegen.models import load_tokenizer
    from edgegen.ngram_build import build_store

    tok = load_tokenizer(make_model(tmp_path / "m"))
    out = tmp_path / "stores" / "s.npz"
    dead = _temp_folder(out, "dead", f"{_dead_pid()} {os.uname().nodename}")
    build_store(["a b a b"], tok, out=out, orders="2..3", progress=False, memory_mb=0)
    assert not dead.exists() and sorted(p.name for p in out.parent.iterdir()) == ["s.npz"]


def test_a_run_on_a_cached_model_removes_a_killed_reexports_temp_folder(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from edgegen.artifacts import DEFAULT_MODEL_NAME
    from edgegen.models import resolve_model
    from edgegen.profiles import load_profile

    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path))
    out = make_model(tmp_path / "models" / DEFAULT_MODEL_NAME / "cpu")
    dead = _temp_folder(out, "dead", f"{_dead_pid()} {os.uname().nodename}")
    assert resolve_model(None, load_profile("cpu")) == out
    assert not dead.exists()


def test_a_real_export_records_hashes_logs_the_libraries_and_prints_nothing_on_stdout(
        hf_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from edgegen.export import export_model

    out = export_model(hf_dir, tmp_path / "m", formats=("onnx",), weights="int8", quality_gate=True)
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "(1/2) build ONNX (int8)" in captured.err and "quality gate" in captured.err
    assert (out / "export.log").stat().st_size > 0  # what the builder printed
    manifest, problems = verify_model(out)
    assert problems == [] and manifest.graphs["onnx"].path in manifest.files
    assert manifest.graphs["onnx"].quality["ratio"] < 1.05  # the gate ran through the runtime's session
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folder or lock left


def test_a_link_to_an_unnamed_file_outside_is_refused(tmp_path: Path) -> None:
    """ONNX external data and OpenVINO .bin files are opened by the runtime without being named."""
    (tmp_path / "secret.bin").write_bytes(b"x" * 10)
    folder = make_model(tmp_path / "m")
    (folder / "onnx" / "model.onnx.data").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(EdgegenError, match="link leading outside"):
        read_manifest(folder)
    (folder / "onnx" / "model.onnx.data").unlink()
    (folder / "onnx" / "model.onnx.data").symlink_to(folder / "tokenizer.json")  # inside: fine
    read_manifest(folder)
