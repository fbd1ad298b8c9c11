"""A multi-turn chat bench (``edgegen bench --chat-turns 10``): time to first token on every turn.

Both engines get the same user messages (the packaged chat prompts, then short follow-ups), greedy,
answers up to EOS or ``max_new_tokens``, and keep their own answers in the history:

- edgegen: ``edgegen.load()`` and ``Generator.stream(history)`` with the whole conversation as messages
  (the API's chat path, the default strategy); TTFT = call to the first streamed text;
- openvino-genai: its chat mode (``start_chat`` .. ``finish_chat``: it keeps the history and KV cache);
  TTFT = call to the first streamed token.

The engines take turns on every chat turn (``runner.take_turns``), each after one warm-up generation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.bench.engines import EngineSpec, edgegen_spec
from edgegen.bench.report import tables_per_load
from edgegen.bench.runner import Prompt, load_prompts, median, take_turns

FOLLOW_UPS = ("Can you say that again in one short sentence?", "Thanks. What is one common mistake people make there?",
              "Give me one more example, please.")


@dataclass
class ChatTurn:
    """One engine's answer on one turn."""

    engine: str
    turn: int
    load: str
    ttft_ms: float
    new_tokens: int
    prompt_tokens: int | None  # the templated history edgegen prefilled (None: not reported by the engine)


def chat_messages(turns: int) -> list[Prompt]:
    """The user messages of a ``turns``-turn chat: the chat prompt set, then follow-ups."""
    firsts = load_prompts("chat")
    out = []
    for i in range(turns):
        text = firsts[i].prompt if i < len(firsts) else FOLLOW_UPS[(i - len(firsts)) % len(FOLLOW_UPS)]
        out.append(Prompt(f"turn-{i + 1}", text, True, "chat"))
    return out


class EdgegenChat:
    """edgegen's API chat path: the history as messages, one ``stream`` call per turn."""

    def __init__(self, folder: Path, max_new_tokens: int) -> None:
        import edgegen

        self._gen = edgegen.load(folder)
        self.backend = self._gen.backend
        self._max = max_new_tokens
        self.history: list[dict[str, str]] = []
        # warm-up, outside the conversation: raw text, so the cache holds nothing of the chat template and
        # turn 1 is the cold prefill a fresh conversation gets
        self._gen.generate("Hello!", max_new_tokens=8, chat=False)

    def turn(self, text: str) -> tuple[float, int, int | None]:
        self.history.append({"role": "user", "content": text})
        start = time.perf_counter()
        stream = self._gen.stream(self.history, max_new_tokens=self._max)
        first = None
        for _ in stream:
            first = first or time.perf_counter()
        result = stream.result
        first = first or time.perf_counter()
        self.history.append({"role": "assistant", "content": result.text})
        return (first - start) * 1e3, len(result.token_ids), result.stats.prompt_tokens


class OpenVINOGenAIChat:
    """openvino-genai's chat mode over the folder's IR (entered on construction, left by ``close``)."""

    def __init__(self, folder: Path, max_new_tokens: int) -> None:
        from edgegen.runtimes.baselines import OpenVINOGenAIBaseline

        self._pipe = OpenVINOGenAIBaseline(folder)
        self.backend = self._pipe.backend
        self._pipe.generate([1, 2, 3], 8, lambda token: None)  # warm-up, outside the conversation
        self._max = max_new_tokens
        self._stack = ExitStack()
        self._turn = self._stack.enter_context(self._pipe.chat_mode())

    def turn(self, text: str) -> tuple[float, int, int | None]:
        stamps: list[float] = []
        start = time.perf_counter()
        self._turn(text, self._max, lambda token: stamps.append(time.perf_counter()))
        first = stamps[0] if stamps else time.perf_counter()
        return (first - start) * 1e3, len(stamps), None

    def close(self) -> None:
        self._stack.close()


def run_chat(folder: Path, weights: str, turns: int, max_new_tokens: int = 64, loads: Sequence[str] = ("none",),
             note: Callable[[str], None] = print, anchor: bool = True) -> list[ChatTurn]:
    """``turns`` chat turns on each engine (a fresh conversation per load); one ChatTurn per engine and turn.
    anchor: also openvino-genai's chat mode."""
    messages = chat_messages(turns)
    number = {m.id: i + 1 for i, m in enumerate(messages)}
    results: list[ChatTurn] = []
    for load in loads:
        with _chat_engines(folder, weights, max_new_tokens, note, anchor) as engines:
            for t in take_turns(engines, messages, lambda engine, prompt: engine.turn(prompt.prompt), warmup=0,
                                loads=[load], desc=f"chat bench ({load})"):
                ttft, n, prompt_tokens = t.result
                results.append(ChatTurn(t.engine.label, number[t.prompt.id], load, ttft, n, prompt_tokens))
    return results


@contextmanager
def _chat_engines(folder: Path, weights: str, max_new_tokens: int, note: Callable[[str], None],
                  anchor: bool) -> Iterator[list[tuple[EngineSpec, Any]]]:
    """The chat engines, opened; openvino-genai's chat mode is left on exit."""
    opened: list[tuple[EngineSpec, Any]] = [(edgegen_spec(folder, None, weights, "auto", label="edgegen (API chat)"),
                                             EdgegenChat(folder, max_new_tokens))]
    if anchor:
        try:
            spec = EngineSpec("openvino-genai (chat mode)", "anchor", "openvino", weights, Path(folder))
            opened.append((spec, OpenVINOGenAIChat(folder, max_new_tokens)))
        except Exception as e:  # not installed, or the folder has no openvino_tokenizer.xml
            note(f"openvino-genai chat mode: {type(e).__name__}: {e}".splitlines()[0] + ", skipped")
    try:
        yield opened
    finally:
        for _, engine in opened:
            if isinstance(engine, OpenVINOGenAIChat):
                engine.close()


def chat_table(turns: Sequence[ChatTurn]) -> str:
    """turn | prompt tokens | TTFT ms per engine | x openvino-genai; per load when there are several."""
    if len({t.load for t in turns}) > 1:
        return tables_per_load(turns, chat_table)
    engines = list(dict.fromkeys(t.engine for t in turns))
    by = {(t.engine, t.turn): t for t in turns}
    head = "| turn | prompt tokens | " + " | ".join(f"{e} TTFT ms" for e in engines) + " |"
    ratio = len(engines) > 1
    lines = [head + (f" {engines[0]} / {engines[1]} |" if ratio else ""),
             "|---:|---:|" + "---:|" * (len(engines) + ratio)]
    for n in sorted({t.turn for t in turns}):
        mine = by.get((engines[0], n))
        cells = [f"{by[e, n].ttft_ms:.1f}" if (e, n) in by else "—" for e in engines]
        x = ""
        if ratio and (engines[0], n) in by and (engines[1], n) in by and by[engines[1], n].ttft_ms > 0:
            x = f" {by[engines[0], n].ttft_ms / by[engines[1], n].ttft_ms:.2f}x |"
        elif ratio:
            x = " — |"
        tokens = mine.prompt_tokens if mine and mine.prompt_tokens is not None else "—"
        lines.append(f"| {n} | {tokens} | " + " | ".join(cells) + " |" + x)
    return "\n".join(lines)


def chat_lines(turns: Sequence[ChatTurn]) -> list[str]:
    """Per engine and load: last-turn TTFT over first-turn TTFT (a cache kept between turns keeps it near 1)."""
    lines = []
    for engine, load in dict.fromkeys((t.engine, t.load) for t in turns):
        mine = sorted((t for t in turns if (t.engine, t.load) == (engine, load)), key=lambda t: t.turn)
        if len(mine) > 1 and mine[0].ttft_ms > 0:
            lines.append(f"{engine} ({load}): turn {mine[-1].turn} TTFT {mine[-1].ttft_ms:.0f} ms = "
                         f"{mine[-1].ttft_ms / mine[0].ttft_ms:.2f}x turn 1 ({mine[0].ttft_ms:.0f} ms); median "
                         f"{median([t.ttft_ms for t in mine]):.0f} ms")
    return lines

