"""Issue 12: a Generator shared by threads, streams that are closed or dropped, bad arguments at the edge."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_generator import fake_generator
from fakes import AllowedSet

import edgegen
from edgegen import EdgegenError
from edgegen.generator import Generator

PROMPTS = ("Tell me about the quick brown fox.", "def add(a, b):")


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Generator:
    return fake_generator(tmp_path_factory.mktemp("fake"))


def _outputs(gen: Generator, prompt: str, streamed: bool, **kwargs: object) -> tuple[str, list[int]]:
    if not streamed:
        r = gen.generate(prompt, **kwargs)
        return r.text, r.token_ids
    stream = gen.stream(prompt, **kwargs)
    text = "".join(stream)
    assert stream.result is not None and stream.result.text == text
    return text, stream.result.token_ids


def _in_threads(jobs: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _check_threads_match_sequential(gen: Generator, rounds: int, **kwargs: object) -> None:
    want = {(p, s): _outputs(gen, p, s, **kwargs) for p in PROMPTS for s in (False, True)}
    got: dict[tuple[str, bool], list[tuple[str, list[int]]]] = {key: [] for key in want}

    def job(prompt: str) -> Callable[[], None]:
        def run() -> None:
            for i in range(rounds):
                streamed = i % 2 == 1
                got[(prompt, streamed)].append(_outputs(gen, prompt, streamed, **kwargs))
        return run

    _in_threads([job(p) for p in PROMPTS])
    for key, outputs in got.items():
        assert outputs and all(o == want[key] for o in outputs), key


def test_threads_sharing_a_generator_get_the_sequential_outputs(fake: Generator) -> None:
    _check_threads_match_sequential(fake, rounds=6, max_new_tokens=24, strategy="ar")
    _check_threads_match_sequential(fake, rounds=4, max_new_tokens=24)  # prompt lookup: drafts and trims
    _check_threads_match_sequential(fake, rounds=4, max_new_tokens=24, temperature=0.8, seed=3)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_threads_on_the_real_model(int8_model: Path, backend: str) -> None:
    gen = edgegen.load(int8_model, backend=backend)
    _check_threads_match_sequential(gen, rounds=2, max_new_tokens=12)


def test_two_open_streams_in_one_thread_are_refused(fake: Generator) -> None:
    want = fake.generate(PROMPTS[0], max_new_tokens=16).text
    first = fake.stream(PROMPTS[0], max_new_tokens=16)
    second = fake.stream(PROMPTS[1], max_new_tokens=16)
    pieces = [next(first)]
    with pytest.raises(EdgegenError, match="open stream"):
        next(second)
    with pytest.raises(EdgegenError, match="open stream"):
        fake.generate(PROMPTS[1], max_new_tokens=4)
    pieces += list(first)  # the first stream is unharmed
    assert "".join(pieces) == want


def test_a_stream_created_early_runs_after_the_first_ends(fake: Generator) -> None:
    want = [fake.generate(p, max_new_tokens=16).text for p in PROMPTS]
    streams = [fake.stream(p, max_new_tokens=16) for p in PROMPTS]  # the session is taken at the first piece
    assert ["".join(s) for s in streams] == want


def test_closed_stream_releases_the_session(fake: Generator) -> None:
    want = fake.generate(PROMPTS[1], max_new_tokens=16)
    with fake.stream(PROMPTS[0], max_new_tokens=64) as stream:
        next(stream)
    assert stream.result is None  # stopped early: no result
    assert list(stream) == []
    stream.close()  # twice is fine
    assert fake.generate(PROMPTS[1], max_new_tokens=16).token_ids == want.token_ids


def test_dropped_stream_releases_the_session_without_the_cycle_collector(fake: Generator) -> None:
    want = fake.generate(PROMPTS[1], max_new_tokens=16)
    gc.disable()
    try:
        stream = fake.stream(PROMPTS[0], max_new_tokens=64)
        next(stream)
        alive = weakref.ref(stream)
        del stream
        assert alive() is None  # no reference cycle: freed by reference counting
        assert fake.generate(PROMPTS[1], max_new_tokens=16).token_ids == want.token_ids
    finally:
        gc.enable()


def test_a_waiting_thread_runs_once_the_stream_is_closed(fake: Generator) -> None:
    want = fake.generate(PROMPTS[1], max_new_tokens=8).text
    stream = fake.stream(PROMPTS[0], max_new_tokens=64)
    next(stream)
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(fake.generate(PROMPTS[1], max_new_tokens=8).text))
    waiter.start()
    rest = list(stream)  # the other thread waits for the stream; it never cuts in
    waiter.join()
    assert got == [want] and rest


# ---- arguments checked at the edge: one EdgegenError each, never a traceback or a silent wrong result


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"temperature": "0.5"}, "temperature must be a number"),
    ({"temperature": float("nan")}, "temperature"),
    ({"max_new_tokens": 4.5}, "max_new_tokens must be an integer"),
    ({"max_new_tokens": True}, "max_new_tokens must be an integer"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"top_k": "5"}, "top_k"),
    ({"top_p": None}, "top_p"),
    ({"repetition_penalty": float("inf")}, "repetition_penalty"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"stop": [None]}, "stop string must be a string"),
    ({"stop": ""}, "must not be empty"),
    ({"stop": ["ok", ""]}, "must not be empty"),
    ({"stop": 5}, "stop must be"),
    ({"stop": b"x"}, "stop must be"),
    ({"chat": "yes"}, "chat must be True or False"),
    ({"ignore_eos": 1}, "ignore_eos"),
    ({"strategy": None}, "strategy must be a string"),
    ({"strategy": "telepathy"}, "unknown strategy"),
    ({"strategy": "superposed", "lm_temperature": float("inf")}, "lm_temperature must be a finite number"),
    ({"strategy": "superposed", "lm_temperature": 0.0}, "lm_temperature must be a finite number"),
])
def test_bad_generate_arguments(fake: Generator, kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(EdgegenError, match=needle):
        fake.generate("Hello", **kwargs)
    with pytest.raises(EdgegenError, match=needle):
        fake.stream("Hello", **kwargs)  # before any text: the error is never in the middle of a stream


@pytest.mark.parametrize(("prompt", "needle"), [
    (b"hello", "prompt must be"),
    ([True, False], "ints, not bools"),
    ([], "prompt is empty"),
    ("   ", "prompt is empty"),
    (None, "prompt must be"),
    (42, "prompt must be"),
    ([1, "a"], "prompt must be"),
    ([10**9], "token ids"),
    ([-1], "token ids"),
    ("caf\udce9", "not valid text"),  # a lone surrogate: what Python makes of non-UTF-8 argv
    ([{"role": "wizard", "content": "hi"}], "known roles"),
    ([{"role": "user", "content": None}], "content must be a string"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user"}], "content must be a string"),
    ([{"content": "hi"}], "role None"),
    ([{"role": "user", "content": "hi"}, "hi"], "prompt must be"),
    ([{"role": "user", "content": "\ud800"}], "not valid text"),
])
def test_bad_prompts(fake: Generator, prompt: object, needle: str) -> None:
    with pytest.raises(EdgegenError, match=needle):
        fake.generate(prompt, max_new_tokens=4)  # type: ignore[arg-type]


def test_a_str_stop_is_one_stop_string(fake: Generator) -> None:
    full = fake.generate("Hello", max_new_tokens=40, strategy="ar")
    stop = full.text[10:13]
    assert len(stop) == 3 and full.text.find(stop) == 10 and stop[0] in full.text[:10]  # split, it would cut earlier
    r = fake.generate("Hello", max_new_tokens=40, strategy="ar", stop=stop)
    assert r.finish_reason == "stop" and r.text == full.text[:10]


def test_numpy_token_ids_are_a_prompt(fake: Generator) -> None:

    ids = [5, 6, 7]
    assert fake.generate(np.array(ids), max_new_tokens=4).token_ids == fake.generate(ids, max_new_tokens=4).token_ids


def test_a_constraint_reaches_the_sampler_and_only_strategies_that_take_one_run(fake: Generator) -> None:
    allowed = [40, 41, 42]
    chosen = {}
    for strategy in ("auto", "ar", "prompt-lookup"):
        constraint = AllowedSet(fake.manifest.vocab_size, allowed)
        r = fake.generate("Hello", max_new_tokens=6, strategy=strategy, constraint=constraint)
        assert r.token_ids == constraint.seen and set(r.token_ids) <= set(allowed), strategy
        chosen[strategy] = r.stats.strategy
    assert chosen["auto"] == "prompt-lookup"  # greedy and constrained: auto still drafts from the context
    for strategy in ("superposed", "lexical"):
        with pytest.raises(EdgegenError, match="cannot follow a constraint"):
            fake.generate("Hello", max_new_tokens=4, strategy=strategy,
                          constraint=AllowedSet(fake.manifest.vocab_size, allowed))


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"model": 123}, "model must be a string"),
    ({"model": b"folder"}, "model must be a string"),
    ({"draft": 1.5}, "draft must be a string"),
    ({"backend": "tensorflow"}, "unknown backend"),
    ({"backend": 3}, "backend must be a string"),
    ({"device": "TPU"}, "unknown device"),
    ({"device": ["CPU"]}, "device must be a string"),
    ({"profile": "toaster"}, "unknown device profile"),
    ({"max_length": 0}, "max_length must be >= 1"),
    ({"max_length": "512"}, "max_length must be an integer"),
    ({"threads": -2}, "threads must be >= 1"),
    ({"draft_confidence": 2.0}, "draft_confidence must be in"),
    ({"embeddings": "no"}, "embeddings must be True or False"),
    ({"model": "caf\udce9"}, "not valid text"),
])
def test_bad_load_arguments_fail_before_any_work(kwargs: dict[str, object], needle: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import edgegen.loading

    def no_export(*args: object, **kw: object) -> None:
        raise AssertionError("resolve_model ran before the arguments were checked")

    monkeypatch.setattr(edgegen.loading, "resolve_model", no_export)
    with pytest.raises(EdgegenError, match=needle):
        edgegen.load(**kwargs)  # type: ignore[arg-type]


def test_absent_device_is_refused_before_any_export(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgegen.loading
    from edgegen import runtimes
    from edgegen.runtimes.openvino_session import NPUW_ENV

    def no_export(*args: object, **kw: object) -> None:
        raise AssertionError("resolve_model ran for a device that is not present")

    monkeypatch.setattr(edgegen.loading, "resolve_model", no_export)
    monkeypatch.setattr(runtimes, "available_devices", lambda: {"onnxruntime": ["CPU"], "openvino": ["CPU", "GPU.0"]})
    monkeypatch.delenv(NPUW_ENV, raising=False)
    for device, backend in (("GPU", "onnxruntime"), ("NPU", None), ("CUDA", None), ("DML", "openvino")):
        with pytest.raises(EdgegenError, match=f"device '{device}' is not present"):
            edgegen.load(device=device, backend=backend)
    with pytest.raises(AssertionError, match="resolve_model ran"):  # GPU.0 is a GPU: on to the model
        edgegen.load(device="GPU", backend="openvino")
