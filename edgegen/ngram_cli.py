"""``edgegen ngram``: build n-gram stores for superposed decoding (registered in cli.py)."""

from __future__ import annotations

import click


@click.group()
def ngram() -> None:
    """Build n-gram stores: Superposed Decoding's draft filter (docs/superposed.md)."""


@ngram.command("build")
@click.option("--corpus", multiple=True, required=True, help="Text file or folder (repeatable).")
@click.option("--tokenizer", "model", required=True, help="Exported model folder whose tokenizer counts, or 'default'.")
@click.option("--orders", default="2..6", show_default=True, help="N-gram orders: a range (2..6) or a list (2,3,5).")
@click.option("--out", required=True, help="Store file to write (.npz).")
@click.option("--min-count", type=int, default=1, show_default=True, help="Drop n-grams seen fewer times.")
@click.option("--max-tokens", type=int, default=None, help="Stop after this many corpus tokens.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ngram_build(corpus: tuple[str, ...], model: str, orders: str, out: str, min_count: int, max_tokens: int | None,
                quiet: bool) -> None:
    """Count the n-grams of a corpus (token ids of MODEL's tokenizer) into one memory-mappable file."""
    from pathlib import Path

    from edgegen.models import load_tokenizer
    from edgegen.ngram import NgramStore, parse_orders
    from edgegen.ngram_build import build_store, corpus_files

    parsed = parse_orders(orders)
    corpus_files([Path(c) for c in corpus])  # a missing path fails before the tokenizer loads
    path = build_store([Path(c) for c in corpus], load_tokenizer(model), out=Path(out), orders=parsed,
                       min_count=min_count, max_tokens=max_tokens, progress=not quiet)
    store = NgramStore.open(path)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {store.token_count:,} tokens, "
               f"orders {','.join(map(str, store.orders))}, min count {min_count})")
