"""Generation over a JSONL data set: one request per line in, one record per line out, in input order.

Input: each line is a JSON object with a ``prompt`` (text, or token ids) or ``messages`` (chat), an
optional ``id`` copied to the output, and optional per-line options (``batch_requests.LINE_OPTIONS``) that override the
run's defaults. The whole file is checked before any model loads: a bad line is one EdgegenError naming
its line number (nothing generated). What only generation can tell (a prompt longer than the session
holds) is recorded on that line as ``{"index", "id", "error"}`` and the run goes on.

Output: ``{"index", "id", "text", "token_ids", "finish_reason", "stats"}`` per line, written in input
order into one JSONL file or a folder of JSONL or Parquet shards (batch_output.py). A rerun resumes: what
was written is checked against the input and skipped (by line, or by shard).

Where the work runs: in this process (one worker), a local pool of worker processes each holding one
loaded Generator, or Ray Data (batch_ray.py, imported only when asked: the base install never imports Ray).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from edgegen.batch_output import JsonlOutput, ShardOutput, check_format, open_output
from edgegen.batch_requests import BatchRequest, generate_record, load_worker, read_requests
from edgegen.errors import EdgegenError


@dataclass(frozen=True)
class BatchSummary:
    """What one run did: lines in the input, skipped (already in the output), generated now, failed, tokens."""

    lines: int
    skipped: int
    generated: int
    errors: int
    new_tokens: int
    seconds: float


# --- where the work runs ---------------------------------------------------------------------------------------

_worker_generator: Any = None  # the Generator a pool worker process loaded (one per process)
_worker_error: EdgegenError | None = None  # why it could not load (raised by every request: one clear error)


def _load(load_args: dict[str, Any]) -> Any:
    return load_worker(load_args)


def _init_worker(load_args: dict[str, Any]) -> None:
    global _worker_generator, _worker_error
    try:
        _worker_generator = _load(load_args)
    except EdgegenError as e:  # an initializer's exception would only break the pool ("a process died")
        _worker_error = e


def _worker_generate(request: BatchRequest) -> dict[str, Any]:
    if _worker_error is not None:
        raise _worker_error
    return generate_record(_worker_generator, request)


def local_records(requests: list[BatchRequest], load_args: dict[str, Any], workers: int) -> Iterator[dict[str, Any]]:
    """Records in input order: in this process (workers == 1) or from a pool of ``workers`` processes
    (spawned: the runtimes' threads do not survive a fork), each loading one Generator once."""
    if workers == 1:
        gen = _load(load_args)
        for request in requests:
            yield generate_record(gen, request)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(load_args,))
    try:
        yield from pool.map(_worker_generate, requests)  # map yields in submission order
    except BrokenProcessPool:
        raise EdgegenError("a worker process died; rerun the same command to resume after the lines written") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_batch(input_path: str | Path, output_path: str | Path, *, load_args: dict[str, Any] | None = None,
              defaults: dict[str, Any] | None = None, workers: int = 1, ray: str | None = None,
              output_format: str = "jsonl", shard_rows: int | None = None, progress: bool = True,
              on_record: Callable[[dict[str, Any]], None] | None = None) -> BatchSummary:
    """Generate every request of ``input_path`` not yet in ``output_path`` and write its record, in order.

    ``load_args``: edgegen.load() arguments each worker loads its Generator with. ``defaults``: generate()
    options for lines that do not set them. ``workers``: generators running at once. ``ray``: None (no
    Ray), "local" (a Ray instance on this machine, or the one already initialized) or a cluster address.
    ``output_format`` "jsonl" without ``shard_rows``: one JSONL file; else a folder of "jsonl" or "parquet"
    shards of ``shard_rows`` records (default 1000). ``on_record`` is called with each record once
    written (tests use it to interrupt a run).
    """
    check_format(output_format)
    requests = read_requests(input_path, defaults)
    return run_requests(requests, output_path, load_args=load_args, workers=workers, ray=ray,
                        output_format=output_format, shard_rows=shard_rows, progress=progress, on_record=on_record)


def run_requests(requests: list[BatchRequest], output_path: str | Path, *, load_args: dict[str, Any] | None = None,
                 workers: int = 1, ray: str | None = None, output_format: str = "jsonl", shard_rows: int | None = None,
                 progress: bool = True, desc: str = "batch",
                 on_record: Callable[[dict[str, Any]], None] | None = None) -> BatchSummary:
    """run_batch on requests already read (``BatchRequest`` with index 0, 1, ...): what recipes that make their
    own requests (drafter training data) call. ``desc`` names the progress bar."""
    from edgegen.arguments import check_int

    workers = check_int("workers", workers, minimum=1)
    output = open_output(output_path, requests, output_format, shard_rows)
    todo = requests[output.done:]
    summary = {"generated": 0, "errors": 0, "new_tokens": 0}
    start = time.perf_counter()
    try:
        if todo:
            if ray is None:
                records: Iterable[dict[str, Any]] = local_records(todo, load_args or {}, workers)
            else:
                from edgegen.batch_ray import ray_records

                records = ray_records(todo, load_args or {}, workers, ray)
            try:
                _drain(records, output, summary, len(requests), output.done, progress, desc, on_record)
            finally:
                records.close()  # type: ignore[attr-defined]  # stop the pool or Ray at once, also on an error
    finally:
        output.close()
    return BatchSummary(lines=len(requests), skipped=output.done, seconds=time.perf_counter() - start, **summary)


def _drain(records: Iterable[dict[str, Any]], output: JsonlOutput | ShardOutput, summary: dict[str, int],
           total: int, done: int, progress: bool, desc: str,
           on_record: Callable[[dict[str, Any]], None] | None) -> None:
    """Write the records as they come, counting them, with a progress bar (lines, tokens/s) on stderr."""
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=total, initial=done, unit="line", desc=desc, disable=not progress, file=sys.stderr,
              dynamic_ncols=True, mininterval=1.0) as bar:
        for record in records:
            output.write(record)
            summary["generated"] += 1
            if "error" in record:
                summary["errors"] += 1
            else:
                summary["new_tokens"] += len(record["token_ids"])
            bar.update(1)
            bar.set_postfix(tok_s=f"{summary['new_tokens'] / max(time.perf_counter() - start, 1e-9):.1f}",
                            refresh=False)
            if on_record is not None:
                on_record(record)
