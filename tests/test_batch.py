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


# --- shards: JSONL or Parquet, resumable by shard (a fake Generator in this process: no export) -------------------

SHARD_LINES = [{"prompt": f"Line {k}.", "id": f"l{k}", "max_new_tokens": 3 + k % 3} for k in range(7)]
SHARD_LINES[4] = {"prompt": "Too long.", "id": "l4", "max_new_tokens": 100_000}  # an error record in a shard


@pytest.fixture
def fake_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_batch's in-process worker loads a fake Generator (tests/fake_generator.py) instead of a model."""
    from fake_generator import fake_generator

    import edgegen.batch

    generator = fake_generator(tmp_path / "fake")
    monkeypatch.setattr(edgegen.batch, "_load", lambda load_args: generator)


def untimed(records: list[dict]) -> list[dict]:
    """Records without their measured times (a rerun generates the same tokens in other times)."""
    return [{**r, "stats": {k: v for k, v in r["stats"].items() if not k.endswith(("_ms", "_s"))}} if "stats" in r
            else r for r in records]


def test_jsonl_and_parquet_shards_read_back_equal_the_jsonl_file(tmp_path: Path, fake_load: None) -> None:
    import pyarrow.parquet as pq

    from edgegen.batch_output import ShardOutput, read_records

    data = write_jsonl(tmp_path / "in.jsonl", SHARD_LINES)
    run_batch(data, tmp_path / "one.jsonl", progress=False)
    expected = read_records(tmp_path / "one.jsonl")
    assert len(expected) == 7 and "error" in expected[4] and expected[0]["token_ids"]
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / f"shards-{fmt}"
        summary = run_batch(data, out, output_format=fmt, shard_rows=3, progress=False)
        assert (summary.generated, summary.errors) == (7, 1)
        assert sorted(p.name for p in out.glob("part-*")) == [f"part-0000{k}.{fmt}" for k in range(3)]
        assert untimed(read_records(out)) == untimed(expected)  # ids, texts, token ids, the error record
    # the same records through Parquet and back: equal in every field, stats and id values included
    shards = ShardOutput(tmp_path / "copy", read_requests(data), "parquet", 3)
    for record in expected:
        shards.write(record)
    assert read_records(tmp_path / "copy") == expected
    table = pq.read_table(tmp_path / "shards-parquet" / "part-00001.parquet")
    assert table.num_rows == 3 and str(table.schema.field("token_ids").type.value_type) == "int32"


def test_shards_resume_after_a_torn_shard(tmp_path: Path, fake_load: None) -> None:
    from edgegen.batch_output import read_records

    data = write_jsonl(tmp_path / "in.jsonl", SHARD_LINES)
    run_batch(data, tmp_path / "one.jsonl", progress=False)
    out = tmp_path / "shards"

    class Killed(Exception):
        pass

    def kill_at(record: dict) -> None:
        if record["index"] == 4:
            raise Killed

    with pytest.raises(Killed):  # shards 0 and 1 (records 0-3) written, record 4 waiting for shard 2
        run_batch(data, out, output_format="parquet", shard_rows=2, progress=False, on_record=kill_at)
    assert sorted(p.name for p in out.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    whole = (out / "part-00001.parquet").read_bytes()
    (out / "part-00001.parquet").write_bytes(whole[: len(whole) // 2])  # torn (copied half, disk trouble)
    (out / ".part-00002.parquet.tmp").write_bytes(b"PAR1")  # a kill while shard 2 was being written
    with pytest.raises(EdgegenError, match="resume with --format parquet --shard-rows 2"):
        run_batch(data, out, output_format="parquet", shard_rows=3, progress=False)
    summary = run_batch(data, out, output_format="parquet", shard_rows=2, progress=False)
    assert (summary.skipped, summary.generated) == (2, 5)  # shard 0 kept, the torn shard 1 made again
    assert not list(out.glob(".*.tmp"))
    assert untimed(read_records(out)) == untimed(read_records(tmp_path / "one.jsonl"))
    again = run_batch(data, out, output_format="parquet", shard_rows=2, progress=False)
    assert (again.skipped, again.generated) == (7, 0)


def test_parquet_without_pyarrow_is_one_line(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    no_pyarrow = NO_RAY + "sys.modules['pyarrow'] = None; "
    for args in (["batch", "--input", str(data), "--output", str(tmp_path / "out"), "--format", "parquet"],
                 ["draft", "gendata", "--out", str(tmp_path / "run"), "--format", "parquet"]):
        proc = edgegen(*args, prelude=no_pyarrow)
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert proc.returncode != 0 and lines == ["error: --format parquet needs pyarrow: pip install pyarrow "
                                                  "(the ray extra has it)"], proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()  # nothing begun


# --- drafter training data: the target's generations as a batch job --------------------------------------------

GEN_PROMPTS = [[40, 41, 42, 43], [100, 7, 9], [250, 251], [12, 13, 14, 15, 16]]
GEN_TEMPERATURES = [0.0, 0.9]


@pytest.fixture(scope="module")
def gen_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny training target, its fp32 teacher export and its generations made in this process."""
    from test_drafter_train import _tiny_target

    from edgegen.export.drafter.gendata import generate_targets, teacher_model

    root = tmp_path_factory.mktemp("gendata")
    target = _tiny_target(root / "target")
    teacher = teacher_model(target, progress=False)
    summary = generate_targets(GEN_PROMPTS, root / "one", teacher=teacher, temperatures=GEN_TEMPERATURES,
                               max_new_tokens=12, seed=5, shard_rows=3, progress=False)
    assert (summary.generated, summary.errors) == (8, 0)
    return {"root": root, "target": target, "teacher": teacher, "one": root / "one"}


def test_gendata_is_the_targets_greedy_output(gen_reference: dict[str, Path]) -> None:
    """The greedy lines are what the fp32 torch target generates, token for token (EOS kept)."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgegen.export.drafter.gendata import read_sequences

    model = AutoModelForCausalLM.from_pretrained(gen_reference["target"], dtype=torch.float32).eval()
    seqs = read_sequences(gen_reference["one"], eos_id=0)
    greedy = [s for s in seqs if s["temperature"] == 0.0]
    assert [s["prompt"] for s in greedy] == [0, 1, 2, 3] and len(seqs) == 8
    for s in greedy:
        prompt = GEN_PROMPTS[s["prompt"]]
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=[0],
                             pad_token_id=1)[0, len(prompt):].tolist()
        assert s["ids"] == prompt + out[: out.index(0) + 1 if 0 in out else None], s


def test_gendata_pool_equals_in_process_line_for_line(gen_reference: dict[str, Path]) -> None:
    from edgegen.export.drafter.gendata import GenWorkers, generate_targets, read_sequences

    out = gen_reference["root"] / "pool"
    generate_targets(GEN_PROMPTS, out, teacher=gen_reference["teacher"], temperatures=GEN_TEMPERATURES,
                     max_new_tokens=12, seed=5, shard_rows=3, run=GenWorkers(workers=2, output_format="parquet"),
                     progress=False)
    assert sorted(p.name for p in (out / "records").glob("part-*")) == [f"part-0000{k}.parquet" for k in range(3)]
    assert read_sequences(out, eos_id=0) == read_sequences(gen_reference["one"], eos_id=0)
    with pytest.raises(EdgegenError, match="other prompts or settings"):  # a folder of other generations
        generate_targets(GEN_PROMPTS, out, teacher=gen_reference["teacher"], temperatures=[0.0], max_new_tokens=12,
                         seed=5, progress=False)


def test_runs_begun_with_torch_made_generations_keep_them(tmp_path: Path) -> None:
    """A run folder whose gen/ holds the earlier torch-made shards (NumPy .npz) reads and keeps them."""
    import numpy as np

    from edgegen.export.drafter.gendata import build_generations, load_generations

    gen = tmp_path / "gen"
    gen.mkdir()
    np.savez(gen / "shard-00000.npz", prompt_index=np.int32([0, 1]), temperature=np.float32([0, 0]),
             prompt_len=np.int32([2, 1]), gen_len=np.int32([3, 2]), prompt_ids=np.int32([5, 6, 7]),
             gen_ids=np.int32([8, 9, 0, 10, 0]))
    cfg = type("Cfg", (), {"gen_temperatures": [0.0], "gen_batch": 2})()
    assert build_generations(tmp_path, tmp_path / "no-target", [{"ids": [5, 6]}, {"ids": [7]}], cfg) == gen
    train, val, stats = load_generations(gen, val_every=2)
    assert val == [([5, 6, 8, 9, 0], 2)] and train == [([7, 10, 0], 1)]
    assert stats["generated_tokens"] == 5 and not (gen / "requests.jsonl").exists()
