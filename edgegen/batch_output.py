"""Where ``edgegen batch`` writes its records: one JSONL file, or a folder of JSONL or Parquet shards.

Both keep the records in input order and resume: on open they check what an earlier run wrote against
the input (same positions, same ids; the output of another input is refused) and say how many requests
are done, which a rerun skips.

- ``JsonlOutput``: one append-only file, one ``write`` per record; a torn last line (a kill mid-write)
  is cut off on open. Resumes by line.
- ``ShardOutput``: ``part-00000.jsonl`` (or ``.parquet``), ``rows`` records per shard, each shard written
  whole into a temporary file and renamed, so a shard exists complete or not at all; ``_batch.json``
  records the format and rows per shard (a rerun must use the same). Resumes by shard: a kill loses the
  shard in progress; a shard that does not read back whole (a torn file copied in, a leftover temporary
  file) is removed with every shard after it and generated again.

Parquet needs pyarrow (it comes with the ``ray`` extra); columns ``index`` (int64), ``id`` and ``stats``
(JSON text: any JSON value, any stats), ``text``, ``token_ids`` (list<int32>), ``finish_reason``, ``error``
(null unless generation refused the line). ``read_records`` reads either kind back as the JSONL records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgegen.batch_requests import BatchRequest
from edgegen.errors import EdgegenError

FORMATS = ("jsonl", "parquet")
DEFAULT_SHARD_ROWS = 1000
SHARD_INFO = "_batch.json"
_JSON_COLUMNS = ("id", "stats")  # any JSON value: stored as JSON text in Parquet
_COLUMNS = ("index", "id", "text", "token_ids", "finish_reason", "stats", "error")


def check_format(fmt: str) -> None:
    """An unknown format, or Parquet without pyarrow, is one EdgegenError (before any model loads)."""
    if fmt not in FORMATS:
        raise EdgegenError(f"unknown output format '{fmt}': choose from {', '.join(FORMATS)}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise EdgegenError("--format parquet needs pyarrow: pip install pyarrow (the ray extra has it)") from None


def _check_record(path: Path, where: str, k: int, record: object, requests: list[BatchRequest]) -> None:
    if k >= len(requests):
        raise EdgegenError(f"{path} holds more records than the input has requests ({len(requests)}): "
                           "it is the output of another input")
    if not isinstance(record, dict) or record.get("index") != k or record.get("id") != requests[k].id:
        raise EdgegenError(f"{path} {where} is not the record of input request {k}: "
                           "the output of another input (remove it or pick another --output)")


class JsonlOutput:
    """The records in one JSONL file, appended in input order, one ``write`` per line; reopening resumes."""

    def __init__(self, path: str | Path, requests: list[BatchRequest]) -> None:
        self.path = Path(path)
        self.done = self._resume(requests)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _resume(self, requests: list[BatchRequest]) -> int:
        if self.path.is_dir():
            raise EdgegenError(f"{self.path} is a folder: give a file, or --format parquet / --shard-rows for shards")
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return 0
        data = self.path.read_bytes()
        whole = data[:data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            with self.path.open("r+b") as f:
                f.truncate(len(whole))
        lines = whole.decode("utf-8", errors="replace").splitlines()
        if len(lines) > len(requests):
            raise EdgegenError(f"{self.path} has {len(lines)} lines but the input only {len(requests)} requests: "
                               "it is the output of another input")
        for k, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise EdgegenError(f"{self.path} line {k + 1} is not JSON: not an edgegen batch output") from None
            _check_record(self.path, f"line {k + 1}", k, record, requests)
        return len(lines)

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):  # a short write (disk full): never leave half a line behind
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise EdgegenError(f"could not write {self.path} (disk full?)")

    def close(self) -> None:
        os.close(self._fd)


def shard_name(index: int, fmt: str) -> str:
    return f"part-{index:05d}.{fmt}"


def _to_table(records: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    columns: dict[str, list[Any]] = {c: [] for c in _COLUMNS}
    for r in records:
        for c in _COLUMNS:
            value = r.get(c)
            columns[c].append(json.dumps(value, ensure_ascii=False) if c in _JSON_COLUMNS and c in r else value)
    schema = pa.schema([("index", pa.int64()), ("id", pa.string()), ("text", pa.string()),
                        ("token_ids", pa.list_(pa.int32())), ("finish_reason", pa.string()), ("stats", pa.string()),
                        ("error", pa.string())])
    return pa.table(columns, schema=schema)


def _from_table(table: Any) -> list[dict[str, Any]]:
    out = []
    for row in table.to_pylist():
        record = {c: (json.loads(v) if c in _JSON_COLUMNS else v) for c, v in row.items()
                  if v is not None or c == "id"}
        out.append(record)
    return out


def read_shard(path: Path) -> list[dict[str, Any]]:
    """The records of one shard (JSONL or Parquet); raises ValueError (or pyarrow's) when it is torn."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return _from_table(pq.read_table(path))
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("torn last line")
    return [json.loads(line) for line in text.splitlines()]


def _publish(path: Path, write: Any) -> None:
    """Write ``path`` through ``write(tmp_path)`` into a hidden temporary file, fsync it, rename it."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with tmp.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardOutput:
    """The records as shards of ``rows`` records each in a folder, each shard written atomically; reopening
    resumes after the last whole shard."""

    def __init__(self, folder: str | Path, requests: list[BatchRequest], fmt: str, rows: int) -> None:
        if rows < 1:
            raise EdgegenError(f"--shard-rows must be at least 1, got {rows}")
        self.path, self.fmt, self.rows, self.total = Path(folder), fmt, rows, len(requests)
        self.done = self._resume(requests)
        self._buffer: list[dict[str, Any]] = []

    def _resume(self, requests: list[BatchRequest]) -> int:
        if self.path.exists() and not self.path.is_dir():
            raise EdgegenError(f"{self.path} is a file: shards go into a folder (another --output)")
        self.path.mkdir(parents=True, exist_ok=True)
        info = {"format": self.fmt, "rows_per_shard": self.rows}
        info_path = self.path / SHARD_INFO
        if info_path.is_file():
            saved = json.loads(info_path.read_text())
            if saved != info:
                raise EdgegenError(f"{self.path} holds {saved['format']} shards of {saved['rows_per_shard']} rows: "
                                   f"resume with --format {saved['format']} --shard-rows {saved['rows_per_shard']}")
        elif any(self.path.iterdir()):
            raise EdgegenError(f"{self.path} is a non-empty folder that holds no edgegen batch shards")
        else:
            _publish(info_path, lambda tmp: tmp.write_text(json.dumps(info) + "\n"))
        for leftover in self.path.glob(".*.tmp"):  # a kill while a shard was being written
            leftover.unlink()
        done, shard = 0, 0
        while (path := self.path / shard_name(shard, self.fmt)).is_file():
            try:
                records = read_shard(path)
            except Exception:  # torn (ValueError, JSONDecodeError, pyarrow's ArrowInvalid): made again
                break
            expected = min(self.rows, self.total - done)
            for k, record in enumerate(records[:expected]):
                _check_record(path, f"row {k}", done + k, record, requests)
            if len(records) != expected:
                break
            done, shard = done + expected, shard + 1
        for stale in self.path.glob(f"part-*.{self.fmt}"):  # the torn shard and anything after it
            if int(stale.stem.split("-")[1]) >= shard:
                stale.unlink()
        return done

    def write(self, record: dict[str, Any]) -> None:
        self._buffer.append(record)
        if len(self._buffer) == self.rows or record["index"] == self.total - 1:
            path = self.path / shard_name(record["index"] // self.rows, self.fmt)
            self._write_shard(path, self._buffer)
            self._buffer = []

    def _write_shard(self, path: Path, records: list[dict[str, Any]]) -> None:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            table = _to_table(records)
            _publish(path, lambda tmp: pq.write_table(table, tmp))
        else:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            _publish(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def close(self) -> None:
        self._buffer = []  # an unfinished shard (the run stopped): generated again on resume


def open_output(path: str | Path, requests: list[BatchRequest], fmt: str = "jsonl",
                shard_rows: int | None = None) -> JsonlOutput | ShardOutput:
    """The output for ``path``: one JSONL file (format jsonl, no shard_rows), else a folder of shards."""
    check_format(fmt)
    if fmt == "jsonl" and shard_rows is None:
        return JsonlOutput(path, requests)
    return ShardOutput(path, requests, fmt, DEFAULT_SHARD_ROWS if shard_rows is None else shard_rows)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a batch output (a JSONL file or a shard folder), in input order."""
    path = Path(path)
    if not path.is_dir():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    info = json.loads((path / SHARD_INFO).read_text())
    out: list[dict[str, Any]] = []
    shard = 0
    while (p := path / shard_name(shard, info["format"])).is_file():
        out += read_shard(p)
        shard += 1
    return out
