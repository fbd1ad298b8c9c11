"""The ``edgegen`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from edgegen.batch_cli import batch
from edgegen.cli_common import command_line, given
from edgegen.draft_cli import draft
from edgegen.errors import EdgegenError
from edgegen.heads_cli import heads
from edgegen.lud_cli import lud
from edgegen.ngram_cli import ngram
from edgegen.serve.command import serve

_WEIGHTS = ["fp32", "fp16", "int8", "int4"]


def _model_options(f: Any) -> Any:
    f = click.option("--model", default=None, help="Exported folder, HF folder or .gguf (default: SmolLM2-135M).")(f)
    f = click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "torch"]), default=None,
                     help="Runtime (default: the faster for the device, measured once).")(f)
    f = click.option("--device", default=None, help="CPU (default), GPU, NPU, CUDA, DML.")(f)
    f = click.option("--profile", default=None, help="Device profile (default: the device's).")(f)
    return f


def _sampling_options(f: Any) -> Any:
    f = click.option("--max-new-tokens", type=int, default=256, show_default=True)(f)
    f = click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")(f)
    f = click.option("--top-k", type=int, default=0, help="0 = off.")(f)
    f = click.option("--top-p", type=float, default=1.0, help="1.0 = off.")(f)
    f = click.option("--repetition-penalty", type=float, default=1.0)(f)
    f = click.option("--seed", type=int, default=None)(f)
    f = click.option("--stop", multiple=True, help="Stop string (repeatable).")(f)
    return f


def _load(model: str | None, backend: str | None, device: str | None, profile: str | None,
          draft: str | None = None, embeddings: bool = False, draft_device: str | None = None) -> Any:
    import edgegen

    return edgegen.load(model=model, backend=backend, device=device, profile=profile, draft=draft,
                        embeddings=embeddings, draft_device=draft_device)


def _stats_line(stats: Any) -> str:
    drafts = (f", {stats.acceptance_rate:.0%} of {stats.draft_proposed} drafts accepted, "
              f"{stats.tokens_per_step:.2f} tokens/step") if stats.draft_proposed else ""
    return (f"[{stats.new_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, first token {stats.ttft_ms:.0f} ms, "
            f"{stats.strategy} on {stats.backend}/{stats.device}{drafts}]")


def _response_format(json_schema: str | None, json_object: bool) -> dict[str, Any] | None:
    """The ``response_format`` of ``--json-schema FILE`` / ``--json-object``, its grammar checked before loading."""
    from pathlib import Path

    from edgegen.grammar import grammar_from_response_format

    if json_schema is not None and json_object:
        raise EdgegenError("give --json-schema or --json-object, not both")
    if json_object:
        response_format: dict[str, Any] = {"type": "json_object"}
    elif json_schema is not None:
        try:
            schema = json.loads(Path(json_schema).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise EdgegenError(f"--json-schema {json_schema}: cannot read it ({e})") from None
        except json.JSONDecodeError as e:
            raise EdgegenError(f"--json-schema {json_schema} is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise EdgegenError(f"--json-schema {json_schema} must hold a JSON schema object, "
                               f"not {type(schema).__name__}")
        response_format = {"type": "json_schema", "json_schema": {"name": Path(json_schema).stem, "schema": schema}}
    else:
        return None
    grammar_from_response_format(response_format)  # a bad schema fails before a model loads
    return response_format


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgegen")
def cli() -> None:
    """edgegen: fast on-device generation with ONNX Runtime and OpenVINO."""


@cli.command()
@click.argument("prompt")
@_model_options
@_sampling_options
@click.option("--strategy", default="auto", show_default=True,
              help="Decode strategy: auto (speculative with --draft, else prompt-lookup when greedy, else ar), ar, "
                   "speculative, prompt-lookup, superposed, lexical.")
@click.option("--draft", default=None,
              help="Exported draft model for --strategy speculative ('default': the drafter shipped with the "
                   "default model, used by --strategy speculative when none is given).")
@click.option("--draft-device", default=None,
              help="Where the draft model runs (default: the profile's; core-ultra-npu: CPU beside the NPU target).")
@click.option("--num-draft-tokens", type=int, default=None, help="Initial draft length (speculative strategies).")
@click.option("--num-drafts", type=int, default=None, help="Drafts to return (superposed; default 3).")
@click.option("--heads", default=None, type=click.Path(dir_okay=False),
              help="Hydra heads file (--strategy hydra; default: the default model's shipped heads).")
@click.option("--alpha", type=float, default=None,
              help="N-gram weight in [0, 1] (superposed; default 0.54 with --ngram, else 0: none).")
@click.option("--ngram", default=None, type=click.Path(dir_okay=False),
              help="N-gram store file (superposed; default: the model's, built on first use).")
@click.option("--diversity", type=click.Choice(["lanes", "sample", "distance", "none"]), default=None,
              help="How superposed drafts are kept apart (default lanes; none: the paper's beam bookkeeping).")
@click.option("--adaptive", is_flag=True, default=None,
              help="Superposed: count the prompt and the drafts' own tokens as an n-gram store (with --ngram: on top).")
@click.option("--threshold", type=float, default=None,
              help="Confidence a placeholder's token needs to join the unit (lexical; default: the model's).")
@click.option("--span", type=int, default=None, help="Placeholders per step (lexical; default: all trained).")
@click.option("--verified", is_flag=True, help="Check each unit in the next step (lexical; output = AR).")
@click.option("--raw", is_flag=True, help="Do not apply the chat template.")
@click.option("--json-schema", "json_schema", default=None, type=click.Path(dir_okay=False),
              help="JSON schema file: the output is JSON following it (constrained decoding; the serve extra).")
@click.option("--json-object", is_flag=True, help="The output is a JSON object (constrained decoding).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming.")
def run(prompt: str, model: str | None, backend: str | None, device: str | None, profile: str | None,
        max_new_tokens: int, temperature: float, top_k: int, top_p: float, repetition_penalty: float,
        seed: int | None, stop: tuple[str, ...], strategy: str, draft: str | None, draft_device: str | None,
        num_draft_tokens: int | None, num_drafts: int | None, heads: str | None, alpha: float | None,
        ngram: str | None, diversity: str | None, adaptive: bool | None,
        threshold: float | None, span: int | None, verified: bool, raw: bool, json_schema: str | None,
        json_object: bool, as_json: bool) -> None:
    """Generate a completion of PROMPT, streaming it to the terminal (superposed: its drafts, ranked)."""
    from edgegen.arguments import check_generation, prompt_kind
    from edgegen.strategies import Strategy, strategy_type

    prompt_kind(prompt)  # bad input fails before a model loads (or exports)
    check_generation(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    response_format = _response_format(json_schema, json_object)
    needs = Strategy if strategy == "auto" else strategy_type(strategy)  # its needs (auto: the defaults, none)
    gen = _load(model if model is not None else needs.default_model, backend, device, profile, draft,
                embeddings=needs.needs_embeddings, draft_device=draft_device)
    kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, chat=not raw, strategy=strategy,
                  top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop,
                  **given(response_format=response_format, num_draft_tokens=num_draft_tokens, num_drafts=num_drafts,
                          heads=heads, alpha=alpha, ngram=ngram, diversity=diversity, adaptive=adaptive,
                          threshold=threshold, span=span, verified=verified or None))
    if as_json:
        click.echo(json.dumps(gen.generate(prompt, **kwargs).to_dict()))
        return
    if needs.multi_draft:
        result = gen.generate(prompt, **kwargs)
        for i, d in enumerate(result.drafts, 1):
            click.echo(f"--- draft {i} (score {d.score:.3f}, {len(d.token_ids)} tokens, {d.finish_reason})")
            click.echo(d.text)
        click.echo(_stats_line(result.stats), err=True)
        return
    stream = gen.stream(prompt, **kwargs)
    for piece in stream:
        click.echo(piece, nl=False)
    click.echo()
    click.echo(_stats_line(stream.result.stats), err=True)


@cli.command()
@_model_options
@_sampling_options
@click.option("--system", default=None, help="System message.")
def chat(model: str | None, backend: str | None, device: str | None, profile: str | None, max_new_tokens: int,
         temperature: float, top_k: int, top_p: float, repetition_penalty: float, seed: int | None,
         stop: tuple[str, ...], system: str | None) -> None:
    """Interactive chat that keeps the conversation (/reset clears it, /exit or Ctrl-D leaves)."""
    from edgegen.arguments import check_generation, check_text

    check_generation(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop)
    if system is not None:
        check_text("--system", system)
    gen = _load(model, backend, device, profile)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    click.echo(f"chatting with {gen.manifest.name} on {gen.backend} ({'/reset, /exit'})", err=True)
    while True:
        try:
            line = check_text("your message", input("you> ")).strip()
        except EOFError:
            click.echo()
            return
        except (UnicodeDecodeError, EdgegenError):
            click.echo("error: that line is not valid UTF-8 text; type it again", err=True)
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            history = history[:1] if system else []
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        stream = gen.stream(history, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop)
        click.echo("bot> ", nl=False)
        for piece in stream:
            click.echo(piece, nl=False)
        click.echo()
        history.append({"role": "assistant", "content": stream.result.text})


@cli.command()
@click.option("--model", default="default", show_default=True, help="'default', an HF folder or a .gguf file.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino", "both", "torch"]), default=None,
              help="Graphs to build (default: the profile's, else both).")
@click.option("--weights", type=click.Choice(_WEIGHTS), default=None, help="Weight precision (default: profile's).")
@click.option("--sym", is_flag=True, default=None, help="Symmetric int4/int8 weights.")
@click.option("--group-size", type=int, default=None, help="Quantization group size (-1: per channel).")
@click.option("--device-profile", "profile", default=None, help="Shape the export for a device profile (default: cpu).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--no-quality-gate", is_flag=True, help="Skip the perplexity check.")
@click.option("--embeddings", is_flag=True, default=None,
              help="Also build input-embedding graphs (needed by --strategy superposed).")
def export(model: str, fmt: str | None, weights: str | None, sym: bool | None, group_size: int | None,
           profile: str | None, out: str, no_quality_gate: bool, embeddings: bool | None) -> None:
    """Export a model to ONNX and/or OpenVINO at a precision and shape for a device."""
    from pathlib import Path

    from edgegen.models import export as run_export
    from edgegen.profiles import load_profile

    if profile:
        load_profile(profile)  # unknown profile: clear error before importing the exporters
    formats = None if fmt is None else (("onnx", "openvino") if fmt == "both" else (fmt,))
    path = run_export(None if model == "default" else model, Path(out), profile=profile or "cpu",
                      quality_gate=not no_quality_gate,
                      **given(formats=formats, weights=weights, sym=sym, group_size=group_size, embeddings=embeddings))
    click.echo(f"exported to {path}")


@cli.command()
@click.argument("model", type=click.Path())
def verify(model: str) -> None:
    """Check every file of an exported MODEL folder against the sha256 its export recorded."""
    from edgegen.manifest import verify_model

    manifest, problems = verify_model(model)
    if problems:
        raise EdgegenError(f"{model} is damaged: " + "; ".join(problems) + " (re-export it)")
    if not manifest.files:
        click.echo(f"{model}: no hashes recorded (exported before edgegen recorded them); re-export to add them")
    else:
        click.echo(f"{model}: ok, {len(manifest.files)} files match the sha256 their export recorded")


@cli.command()
def devices() -> None:
    """List runtimes, execution providers, devices present and the profile that applies."""
    from edgegen import runtimes
    from edgegen.api import DEVICE_PROFILES
    from edgegen.profiles import available_profiles

    for name, version in runtimes.runtime_versions().items():
        click.echo(f"{name} {version}")
    for backend, found in runtimes.available_devices().items():
        for device in found:
            click.echo(f"  {backend:12s} {device:10s} profile: {DEVICE_PROFILES.get(device, 'cpu')}")
    click.echo(f"profiles: {', '.join(available_profiles())}")


@cli.command()
@click.option("--model", default="default", show_default=True,
              help="'default' (exported per precision into the cache), an exported folder, an HF folder or .gguf.")
@click.option("--weights", "weights", type=click.Choice(_WEIGHTS), multiple=True,
              help="Precision to benchmark (repeatable; default int8). Ignored for an exported folder.")
@click.option("--prompts", type=click.Choice(["code", "chat", "all"]), default="all", show_default=True)
@click.option("--new-tokens", type=int, multiple=True, help="Tokens per run (EOS ignored; default 128). "
              "--strategy superposed: repeatable, each length measured in the same run (default 16 and 64).")
@click.option("--repeats", type=int, default=1, show_default=True, help="Timed runs per prompt.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Warm-up runs per engine.")
@click.option("--limit", type=int, default=None, help="Only the first N prompts of each set (quick runs).")
@click.option("--no-baselines", is_flag=True, help="Skip openvino-genai and onnxruntime-genai.")
@click.option("--out", default="bench-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--strategy", type=click.Choice(["ar", "speculative", "prompt-lookup", "hydra", "superposed",
                                               "lexical"]),
              default="ar", show_default=True, help="Also run this speculative strategy (edgegen's and "
              "openvino-genai's); hydra: the heads beside speculative (shipped drafter) and prompt lookup "
              "(docs/hydra.md); superposed: k drafts against k nucleus samples, speed and quality "
              "(docs/superposed.md); lexical: the LUD-tuned model (--model default: the shipped one) against AR of "
              "the base and tuned models on both backends, speed and quality (docs/lud.md; sweeps: edgegen lud bench).")
@click.option("--draft", default=None,
              help="Exported draft model folder (--strategy speculative; default: the default model's shipped one).")
@click.option("--num-draft-tokens", type=int, default=None, help="Initial draft length of edgegen's strategy.")
@click.option("--heads", default=None, type=click.Path(dir_okay=False),
              help="Hydra heads file (--strategy hydra; default: the default model's shipped heads).")
@click.option("--num-drafts", type=int, default=3, show_default=True, help="Drafts (--strategy superposed).")
@click.option("--alpha", type=float, default=None,
              help="N-gram weight (--strategy superposed; default 0.54 with --ngram, else 0).")
@click.option("--ngram", default=None, type=click.Path(dir_okay=False), help="N-gram store (--strategy superposed).")
@click.option("--diversity", type=click.Choice(["lanes", "sample", "distance", "none"]), multiple=True,
              help="Superposed diversity rule (--strategy superposed; repeatable: each one compared in the same run).")
@click.option("--adaptive", is_flag=True, default=None, help="Adaptive n-gram store (--strategy superposed).")
@click.option("--load", "loads", type=click.Choice(["none", "busy"]), multiple=True,
              help="Background load to measure under (repeatable; default none): busy = a spinning process pinned "
                   "to one core, started and stopped by the bench. --load none --load busy runs both.")
@click.option("--no-rss", is_flag=True, help="Skip the peak-RSS measurement (one child process per engine).")
@click.option("--prompt-tokens", type=int, multiple=True,
              help="Also measure TTFT at prompts of this many tokens (repeatable, e.g. 128 and 1000).")
@click.option("--chat-turns", type=int, default=0, help="Also run a chat of N turns: TTFT per turn, edgegen's API "
              "against openvino-genai's chat mode.")
@click.option("--chat-new-tokens", type=int, default=64, show_default=True, help="Longest answer per chat turn.")
@click.option("--device", default="CPU", show_default=True,
              help="CPU or NPU (EDGEGEN_NPUW_DEVICES=CPU: the NPU path on the CPU): edgegen and openvino-genai's "
                   "NPU pipelines on the NPU export, with the drafter placement table (docs/npu.md).")
def bench(model: str, weights: tuple[str, ...], prompts: str, new_tokens: tuple[int, ...], repeats: int,
          warmup: int, limit: int | None, no_baselines: bool, out: str, strategy: str, draft: str | None,
          num_draft_tokens: int | None, heads: str | None, num_drafts: int, alpha: float | None, ngram: str | None,
          diversity: tuple[str, ...], adaptive: bool | None, loads: tuple[str, ...], no_rss: bool,
          prompt_tokens: tuple[int, ...], chat_turns: int, chat_new_tokens: int, device: str) -> None:
    """Benchmark edgegen's decode on both backends against openvino-genai and onnxruntime-genai."""
    from pathlib import Path

    from edgegen.bench import run_bench

    if strategy == "superposed":
        from edgegen.bench.superposed import run_superposed_bench

        run_superposed_bench(model=model, weights=weights, prompts=prompts, new_tokens=new_tokens or (16, 64),
                             num_drafts=num_drafts, limit=limit, out=Path(out), warmup=warmup,
                             command=command_line(), echo=click.echo, loads=loads or ("none",),
                             variants=[{"diversity": d} for d in diversity] or [{}],
                             **given(alpha=alpha, ngram=ngram, adaptive=adaptive))
        return
    if len(new_tokens) > 1:
        raise EdgegenError("--new-tokens takes one value except with --strategy superposed")
    new_tokens = new_tokens[0] if new_tokens else 128
    if strategy == "lexical":
        from edgegen.bench.lud import run_lud_bench
        from edgegen.strategies import strategy_type

        tuned = strategy_type(strategy).default_model if model == "default" else model  # the model it needs
        for backend in ("onnxruntime", "openvino"):
            run_lud_bench(tuned, prompts=prompts, limit=limit,
                          new_tokens=new_tokens, warmup=warmup, backend=backend, out=Path(out) / f"lexical-{backend}",
                          command=command_line(), echo=click.echo)
        return
    options = given(num_draft_tokens=num_draft_tokens, heads=heads)
    run_bench(model=model, weights=weights, prompts=prompts, new_tokens=new_tokens, repeats=repeats,
              warmup=warmup, baselines=not no_baselines, out=Path(out), limit=limit,
              command=command_line(), echo=click.echo, strategy=strategy, draft=draft,
              loads=loads or ("none",), peak_rss=not no_rss, prompt_tokens=prompt_tokens, chat_turns=chat_turns,
              chat_new_tokens=chat_new_tokens, device=device, **options)


@cli.command()
def models() -> None:
    """The model families edgegen exports and runs, with what the tests check for each."""
    from edgegen.export.families import models_table

    click.echo(models_table())


cli.add_command(draft)
cli.add_command(heads)
cli.add_command(ngram)
cli.add_command(lud)
cli.add_command(serve)
cli.add_command(batch)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        cli.main(args=argv, prog_name="edgegen", standalone_mode=False)
    except EdgegenError as e:
        click.echo(f"error: {e}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    """Console-script wrapper: exit with main()'s status."""
    sys.exit(main())
