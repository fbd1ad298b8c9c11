"""Each bench engine in a process of its own.

An engine opened later in a process decodes faster than one opened before it, whatever the runtime (2-7% per
step, two sessions of one export, either backend; edgegen-ov against openvino-genai 0.92-0.94x opened first,
0.97-0.99x opened second: docs/bench-core.md), so engines sharing the bench process were ranked partly by the order
they were opened in. A user's process holds one engine: here each runs in a spawned child that opens it from its
``EngineSpec`` and times every trial with the one timing loop (``runner.measure``) there; the parent only hands out
the prompts, so the take-turns loop still alternates the engines prompt by prompt.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from edgegen.bench.engines import EngineSpec
from edgegen.errors import EdgegenError


class IsolatedEngine:
    """An engine running in a spawned child process; ``timed`` runs one measured generation there."""

    def __init__(self, spec: EngineSpec, device: str = "CPU") -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(spec, device, child), daemon=True,
                                        name=f"bench-{spec.label}")
        self._process.start()
        child.close()
        self.name, self.backend, self.strategy = self._reply()

    def timed(self, prompt_ids: list[int], new_tokens: int) -> Any:
        """``runner.measure`` of this engine on ``prompt_ids``, run in its process (a Timing)."""
        self._conn.send((list(prompt_ids), new_tokens))
        return self._reply()

    def peak_rss_mb(self) -> float:
        """Peak resident set of the engine's process so far (bench/memory.py)."""
        self._conn.send("peak_rss")
        return self._reply()

    def generate(self, prompt_ids: list[int], new_tokens: int, on_token: Any) -> dict[str, float]:
        raise EdgegenError(f"{self.name} runs in a process of its own: time it with runner.measure")

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.terminate()
        self._conn.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _reply(self) -> Any:
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise EdgegenError(f"the bench process of {self._process.name} ended "
                               f"(exit code {self._process.exitcode})") from None
        if status == "ok":
            return payload
        kind, message = payload
        if kind == "EdgegenError":
            raise EdgegenError(message)
        if kind in ("ImportError", "ModuleNotFoundError"):
            raise ImportError(message)
        raise RuntimeError(f"{kind}: {message}")


def _serve(spec: EngineSpec, device: str, conn: Any) -> None:
    """The child: open the engine, then answer timing requests until told to stop."""
    from edgegen.bench.engines import open_engine
    from edgegen.bench.memory import process_peak_rss_mb
    from edgegen.bench.runner import measure

    try:
        engine = open_engine(spec, device)
        conn.send(("ok", (engine.name, engine.backend, getattr(engine, "strategy", spec.strategy))))
    except Exception as e:
        conn.send(("error", (type(e).__name__, str(e))))
        return
    while (request := conn.recv()) is not None:
        try:
            conn.send(("ok", process_peak_rss_mb() if request == "peak_rss" else measure(engine, *request)))
        except Exception as e:
            conn.send(("error", (type(e).__name__, str(e))))
