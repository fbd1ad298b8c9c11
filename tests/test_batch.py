"""`edgegen batch`: a worker pool's output equals the single-process run line for line, a rerun resumes after
the lines written (a torn last line cut off), bad input is one line naming its line number, and neither the
command nor a pool run imports Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgegen.batch import run_batch
from edgegen.batch_requests import BatchRequest, read_requests
from edgegen.errors import EdgegenError

NO_RAY = "import sys; sys.modules['ray'] = None; "  # importing ray raises ImportError from here on
LINES = [
    {"prompt": "Name a river.", "id": "river"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
     "max_new_tokens": 4},
    {"prompt": "def add(a, b):", "chat": False, "strategy": "ar"},
    {"prompt": [504, 4626, 338], "chat": False},  # token ids
    {"prompt": "Count to three.", "temperature": 0.8, "seed": 7},
    {"prompt": "Too long for the session.", "max_new_tokens": 100_000},  # known only at generation: error field
]
GENERATED = ("index", "id", "text", "token_ids", "finish_reason", "error")
LOAD = {"threads": 1}  # the same runtime threads everywhere: one reduction order, identical greedy tokens


def edgegen(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}import sys; from edgegen.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ))


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def records(path: Path) -> list[dict]:
    return [{k: r[k] for k in GENERATED if k in r} for r in map(json.loads, path.read_text().splitlines())]


@pytest.fixture(scope="module")
def reference(int8_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The single-process run (one worker, in this process) of LINES, 6 new tokens a line."""
    root = tmp_path_factory.mktemp("batch")
    data = write_jsonl(root / "in.jsonl", LINES)
    out = root / "single.jsonl"
    summary = run_batch(data, out, load_args=LOAD, defaults={"max_new_tokens": 6}, progress=False)
    assert (summary.lines, summary.skipped, summary.generated, summary.errors) == (6, 0, 6, 1)
    return {"root": root, "input": data, "output": out}


def test_single_process_records(reference: dict[str, Path]) -> None:
    got = records(reference["output"])
    assert [r["index"] for r in got] == list(range(6)) and got[0]["id"] == "river"
    assert [len(r.get("token_ids", [])) for r in got] == [6, 4, 6, 6, 6, 0]
    assert "exceeds" in got[5]["error"] and "text" not in got[5]
    stats = json.loads(reference["output"].read_text().splitlines()[0])["stats"]
    assert stats["new_tokens"] == 6 and stats["prompt_tokens"] > 0
    assert got[2]["text"] and got[3]["text"]


def test_pool_equals_single_process_without_ray(reference: dict[str, Path]) -> None:
    out = reference["root"] / "pool.jsonl"
    proc = edgegen("batch", "--input", str(reference["input"]), "--output", str(out), "--workers", "2",
                   "--threads", "1", "--max-new-tokens", "6", prelude=NO_RAY)
    assert proc.returncode == 0, proc.stderr
    assert "6 lines generated (0 already done) of 6" in proc.stderr and "1 with an error field" in proc.stderr
    assert records(out) == records(reference["output"])


def test_resume_skips_written_lines_and_cuts_a_torn_one(reference: dict[str, Path]) -> None:
    out = reference["root"] / "resumed.jsonl"

    class Killed(Exception):
        pass

    def kill_after_two(record: dict) -> None:
        if record["index"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_batch(reference["input"], out, load_args=LOAD, defaults={"max_new_tokens": 6}, progress=False,
                  on_record=kill_after_two)
    first_two = out.read_bytes()
    assert len(first_two.splitlines()) == 2
    with out.open("ab") as f:  # a kill in the middle of writing line 3
        f.write(b'{"index": 2, "id": null, "te')
    summary = run_batch(reference["input"], out, load_args=LOAD, defaults={"max_new_tokens": 6}, progress=False)
    assert (summary.skipped, summary.generated) == (2, 4)
    assert out.read_bytes().startswith(first_two)
    assert records(out) == records(reference["output"])
    again = run_batch(reference["input"], out, load_args=LOAD, progress=False)  # all done: nothing loads
    assert (again.skipped, again.generated) == (6, 0)


@pytest.mark.parametrize(("line", "needle"), [
    ("{not json", "line 2: not JSON"),
    ('{"prompt": "x", "max_tokens": 3}', "line 2: unknown key(s) max_tokens"),
    ('{"prompt": "x", "messages": []}', "line 2: needs exactly one of 'prompt'"),
    ('{"id": 3}', "line 2: needs exactly one of 'prompt'"),
    ('{"prompt": "x", "max_new_tokens": 0}', "line 2: max_new_tokens must be >= 1"),
    ('{"prompt": "x", "temperature": "hot"}', "line 2: temperature must be a number"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "line 2: chat message 0 has role 'robot'"),
    ('["x"]', "line 2: must be a JSON object"),
])
def test_bad_line_is_one_error_naming_it(tmp_path: Path, line: str, needle: str) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(EdgegenError, match="line 2"):
        read_requests(data)
    proc = edgegen("batch", "--input", str(data), "--output", str(tmp_path / "out.jsonl"), prelude=NO_RAY)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr
    assert not (tmp_path / "out.jsonl").exists()  # checked before anything is written or loaded


def test_output_of_another_input_is_refused(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "id": "a"}, {"prompt": "b", "id": "b"}])
    out = write_jsonl(tmp_path / "out.jsonl", [{"index": 0, "id": "zzz", "text": "..."}])
    with pytest.raises(EdgegenError, match="line 1 is not the record of input request 0"):
        run_batch(data, out, progress=False)
    write_jsonl(out, [{"index": k, "id": None} for k in range(3)])
    with pytest.raises(EdgegenError, match="has 3 lines but the input only 2"):
        run_batch(data, out, progress=False)


def test_defaults_and_line_options_merge(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "stop": "x", "max_new_tokens": 3}, {"prompt": "b"}])
    a, b = read_requests(data, {"max_new_tokens": 9, "strategy": "ar"})
    assert a.options["max_new_tokens"] == 3 and a.options["stop"] == ["x"] and a.options["strategy"] == "ar"
    assert b.options["max_new_tokens"] == 9 and b.options["stop"] == [] and b.options["chat"] is True
    assert BatchRequest.from_json(a.to_json()) == a


def test_help_does_not_import_ray() -> None:
    proc = edgegen("batch", "--help", prelude=NO_RAY)
    assert proc.returncode == 0 and "--ray ADDRESS|local" in proc.stdout, proc.stderr


def test_pool_worker_that_cannot_load_is_one_error(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    proc = edgegen("batch", "--input", str(data), "--output", str(tmp_path / "out.jsonl"), "--workers", "2",
                   "--model", str(tmp_path / "missing"), "--quiet")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert lines == [f"error: model not found: {tmp_path / 'missing'}"], proc.stderr  # not "a worker died"
    assert (tmp_path / "out.jsonl").read_text() == ""
