"""The `edgegen` command line: a real run on the default model, and bad input handled in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def edgegen(*args: str, env: dict[str, str] | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}import sys; from edgegen.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert needle in lines[0], lines[0]


def test_run_default_model_json(int8_model: Path) -> None:
    # --model omitted: the default model, found in EDGEGEN_CACHE where the fixture exported it.
    proc = edgegen("run", "--json", "--max-new-tokens", "16", "--raw", "def add(a, b):")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert len(out["token_ids"]) == 16 and out["text"].strip()
    assert out["stats"]["new_tokens"] == 16 and out["prompt_token_ids"]


def test_run_streams_text_and_stats(int8_model: Path) -> None:
    proc = edgegen("run", "--model", str(int8_model), "--max-new-tokens", "12", "Say hello.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "tokens/s" in proc.stderr


def test_runtime_path_needs_no_torch(int8_model: Path) -> None:
    block = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
    proc = edgegen("run", "--model", str(int8_model), "--max-new-tokens", "8", "Hi!", prelude=block)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def bad_folders(tmp_path: Path, int8_model: Path) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "edgegen.json").write_text("{not json")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "edgegen.json").write_text((int8_model / "edgegen.json").read_text())
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"corrupt": corrupt, "incomplete": incomplete, "fake": fake, "empty": empty}


@pytest.mark.parametrize(("case", "needle"), [
    ("missing", "model not found"),
    ("corrupt", "corrupt manifest"),
    ("incomplete", "is missing"),
    ("fake", "gguf"),
    ("empty", "not a model folder"),
])
def test_bad_model_is_one_clear_line(case: str, needle: str, bad_folders: dict[str, Path], tmp_path: Path) -> None:
    model = bad_folders.get(case, tmp_path / "does-not-exist")
    assert_one_line_error(edgegen("run", "--model", str(model), "hello"), needle)


@pytest.mark.parametrize(("args", "needle"), [
    (["--device", "NPU"], "not present"),
    (["--device", "TPU"], "TPU"),
    (["--profile", "toaster"], "unknown device profile"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--max-new-tokens", "100000"], "exceeds"),
    (["--strategy", "telepathy"], "unknown strategy"),
])
def test_bad_options_are_one_clear_line(args: list[str], needle: str, int8_model: Path) -> None:
    assert_one_line_error(edgegen("run", "--model", str(int8_model), *args, "hello"), needle)


def test_bench_lexical_needs_a_lud_model(int8_model: Path, tmp_path: Path) -> None:
    proc = edgegen("bench", "--strategy", "lexical", "--model", str(int8_model), "--out", str(tmp_path / "b"))
    assert_one_line_error(proc, "is not an exported LUD-tuned model")


def test_empty_prompt(int8_model: Path) -> None:
    assert_one_line_error(edgegen("run", "--model", str(int8_model), "   "), "prompt is empty")


def test_export_bad_inputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(edgegen("export", "--model", str(tmp_path / "nope.gguf"), "--out", str(out)), "not found")
    assert_one_line_error(edgegen("export", "--device-profile", "toaster", "--out", str(out)), "unknown device profile")
    assert not out.exists()


def test_devices_lists_cpu() -> None:
    proc = edgegen("devices")
    assert proc.returncode == 0 and "CPU" in proc.stdout and "cpu" in proc.stdout


def test_chat_keeps_history(int8_model: Path) -> None:
    code = "import sys; from edgegen.cli import main; sys.exit(main(sys.argv[1:]))"

    def chat(lines: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", code, "chat", "--model", str(int8_model), "--max-new-tokens",
                               "24"], input=lines, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return [a.split("you>")[0].strip() for a in proc.stdout.split("bot> ")[1:]]

    two_turns = chat("My name is Ada and I love sailing.\nWhat do I love?\n/exit\n")
    one_turn = chat("What do I love?\n")  # Ctrl-D (end of input) also leaves
    assert len(two_turns) == 2 and len(one_turn) == 1 and all(two_turns + one_turn)
    # greedy decoding: the same question answers differently only because the first turn is in the history
    assert two_turns[1] != one_turn[0]


@pytest.mark.parametrize(("args", "needle"), [
    (["--seed", "-1"], "seed must be >= 0"),
    (["--stop", ""], "must not be empty"),
    (["--temperature", "nan"], "temperature must be finite"),
    (["--strategy", "telepathy"], "unknown strategy"),
    (["--device", "GPU"], "device 'GPU' is not present"),
])
def test_bad_run_input_fails_before_any_model_work(args: list[str], needle: str, tmp_path: Path) -> None:
    # An empty cache: a default-model run would export first; the checks must come before that.
    cache = tmp_path / "cache"
    assert_one_line_error(edgegen("run", *args, "hello", env={"EDGEGEN_CACHE": str(cache)}), needle)
    assert not cache.exists()


def test_non_utf8_argv_is_one_clear_line(tmp_path: Path) -> None:
    code = "import sys; from edgegen.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "run", b"caf\xe9 au lait"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "EDGEGEN_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(proc, "prompt is not valid text")
