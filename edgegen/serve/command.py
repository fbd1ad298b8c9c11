"""The ``edgegen serve`` command (registered in edgegen/cli.py)."""

from __future__ import annotations

import click

from edgegen.errors import EdgegenError

_NEEDS = "edgegen serve needs the serve extra: pip install 'edgegen[serve]'"


@click.command()
@click.option("--model", default=None, help="Exported folder, HF folder or .gguf (default: SmolLM2-135M).")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino", "torch"]), default=None,
              help="Runtime (default: the faster for the device, measured once).")
@click.option("--device", default=None, help="CPU (default), GPU, NPU, CUDA, DML.")
@click.option("--profile", default=None, help="Device profile (default: the device's).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the server to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--max-queue", type=click.IntRange(min=0), default=8, show_default=True,
              help="Requests that may wait behind the running one; more get 503 with Retry-After.")
@click.option("--served-model-name", default=None, help="The model id clients use (default: the model's name).")
@click.option("--prompt-cache-mb", type=click.IntRange(min=0), default=256, show_default=True,
              help="Memory for other conversations' KV caches, so each conversation's next turn reuses its prefix "
                   "(0: only the latest conversation's).")
def serve(model: str | None, backend: str | None, device: str | None, profile: str | None, host: str, port: int,
          max_queue: int, served_model_name: str | None, prompt_cache_mb: int) -> None:
    """Serve the model over an OpenAI-compatible HTTP API (chat completions, completions, models, health)."""
    try:
        import uvicorn

        from edgegen.serve.app import create_app
    except ImportError:
        raise EdgegenError(_NEEDS) from None
    import edgegen

    generator = edgegen.load(model=model, backend=backend, device=device, profile=profile,
                             prompt_cache_mb=prompt_cache_mb)
    app = create_app(generator, max_queue=max_queue, model_id=served_model_name)
    click.echo(f"edgegen serve: {app.state.model_id} on {generator.backend}, http://{host}:{port}/v1", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
