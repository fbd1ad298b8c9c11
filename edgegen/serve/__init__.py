"""``edgegen serve``: an OpenAI-compatible local HTTP server (the ``serve`` extra: Starlette, uvicorn, llguidance).

    from edgegen.serve import create_app
    app = create_app(edgegen.load(), max_queue=8)   # any ASGI server can run it

Importing this package needs none of the extra's packages; ``create_app`` and ``run`` do.
"""

from __future__ import annotations

from typing import Any


def create_app(generator: Any, max_queue: int = 8, model_id: str | None = None) -> Any:
    """The Starlette app serving ``generator`` (see edgegen/serve/app.py)."""
    from edgegen.serve.app import create_app as create

    return create(generator, max_queue=max_queue, model_id=model_id)


__all__ = ["create_app"]
