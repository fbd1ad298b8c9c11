"""Lexical Unit Decoding data and training on a tiny in-process Llama: unit marking on a hand-checked example,
placeholder blocks, a small run of the recipe (loss falls, ordinary rows untouched), exact resume, pack/merge."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgegen.errors import EdgegenError
from edgegen.export.lud.units import block_mask, block_positions, build_blocks, mark_units, token_probs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fakes import TorchSession, tiny_llama  # noqa: E402

from edgegen.export import checkpoints as ck  # noqa: E402
from edgegen.export.drafter.config import STDLIB  # noqa: E402
from edgegen.export.lud import LudConfig, merge_lud, pack_lud, read_packed_lud, train_lud  # noqa: E402


def test_mark_units_hand_checked() -> None:
    # tokens:        def    ␣fib   onacci  (      n     ):     \n     ␣␣␣␣   return
    probs = np.array([0.0, 0.20, 0.95, 0.40, 0.90, 0.99, 0.30, 0.85, 0.10])
    # 'def' | ' fib' 'onacci' | '(' 'n' '):' | '\n' '    ' | 'return'
    assert mark_units(probs, 0.6, 4) == [(0, 1), (1, 2), (3, 3), (6, 2), (8, 1)]
    # max_len caps a unit: '(' 'n' | '):'
    assert mark_units(probs, 0.6, 2) == [(0, 1), (1, 2), (3, 2), (5, 1), (6, 2), (8, 1)]
    assert mark_units(probs, 0.99, 4) == [(i, 1) for i in range(9)]  # strict: 0.99 does not exceed 0.99
    with pytest.raises(ValueError):
        mark_units(probs, 0.5, 0)


def test_token_probs_teacher_forcing() -> None:
    logits = np.log(np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
    np.testing.assert_allclose(token_probs(logits, np.array([0, 1, 0])), [0.0, 0.7, 0.5])


def test_blocks_layout() -> None:
    ids = np.arange(100, 109)
    units = [(0, 1), (1, 2), (3, 3), (6, 2), (8, 1)]
    b = build_blocks(ids, units, 3, None, outside_weight=0.25, max_blocks=10, rng=np.random.default_rng(0))
    assert b.starts.tolist() == [1, 3, 6]  # index 0 has no predecessor; 8 has no label after it
    # unit (1, 2): P1 (at 1) predicts ids[2] inside the unit; P2, P3 predict past it
    assert b.labels[0].tolist() == [102, 103, 104] and b.weights[0].tolist() == [1.0, 0.25, 0.25]
    assert b.labels[1].tolist() == [104, 105, 106] and b.weights[1].tolist() == [1.0, 1.0, 0.25]
    assert b.labels[2].tolist() == [107, 108, 0] and b.weights[2].tolist() == [1.0, 0.25, 0.0]  # sequence end
    counts = np.array([False, False, False, False, True, True, True, True, True])  # a prompt of 4 tokens
    b = build_blocks(ids, units, 3, counts, outside_weight=0.25, max_blocks=10, rng=np.random.default_rng(0))
    assert b.starts.tolist() == [6]
    mask = block_mask(np.array([1, 3]), 2, 5)
    assert mask.tolist() == [[1, 0, 0, 0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 1, 1, 0, 0],
                             [1, 1, 1, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 1, 1]]
    assert block_positions(np.array([1, 3]), 2).tolist() == [1, 2, 3, 4]


def _tiny_target(folder: Path) -> Path:
    code = "".join(p.read_text() for p in sorted(Path(STDLIB, "json").glob("*.py")))
    return tiny_llama(folder, [code], vocab_size=300, layers=2)


def _cfg(target: Path, out: Path, **kw) -> LudConfig:
    base = dict(target=str(target), out=str(out), span=3, placeholder_ids=[290, 291, 292], unit_threshold=0.3,
                steps=24, seq_len=32, batch_size=2, lr=3e-2, warmup=2, max_blocks=8,
                code_globs=[f"{STDLIB}/json/*.py"], text_globs=[], corpus_tokens=6000, val_tokens=300,
                eval_tokens=128, gen_share=0.5, gen_prompts=4, gen_temperatures=[0.0], gen_max_new_tokens=12,
                gen_batch=4, gen_val_every=4, ckpt_every=8, ckpt_minutes=1e9, export=False, progress=False, seed=1)
    base.update(kw)
    return LudConfig(**base)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lud")
    target = _tiny_target(root / "target")
    out = root / "run-a"
    summary = train_lud(_cfg(target, out), echo=lambda m: None)
    return {"root": root, "target": target, "run": out, "summary": summary}


def test_recipe_small_run_learns(run: dict) -> None:
    evals = run["summary"]["evals"]
    first, last = evals[0]["sets"]["val_code"], evals[-1]["sets"]["val_code"]
    assert last["ce"] < first["ce"]  # the placeholders learned something about the continuation
    assert run["summary"]["tokens_seen"] == 24 * 2 * 33 or run["summary"]["tokens_seen"] > 0


def test_resume_is_exact(run: dict, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def hook(step: int) -> None:
        if step == 10:
            raise Stop

    out = tmp_path / "run-b"
    with pytest.raises(Stop):
        train_lud(_cfg(run["target"], out), echo=lambda m: None, step_hook=hook)
    assert ck.latest_checkpoint(out).name == "ckpt-00000008"
    with pytest.raises(EdgegenError, match="--resume"):
        train_lud(_cfg(run["target"], out), echo=lambda m: None)
    train_lud(_cfg(run["target"], out), resume=True, echo=lambda m: None)
    a = ck.load_checkpoint(ck.latest_checkpoint(run["run"]))[0]["placeholder_embeds"]
    b = ck.load_checkpoint(ck.latest_checkpoint(out))[0]["placeholder_embeds"]
    assert torch.equal(a, b)


def test_pack_merge_changes_only_placeholder_rows(run: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    packed = pack_lud(run["run"], tmp_path / "lud.safetensors")
    rows, info = read_packed_lud(packed)
    assert info["placeholder_ids"] == [290, 291, 292] and tuple(rows.shape) == (3, 32)
    merged = merge_lud(packed, run["target"], tmp_path / "merged")
    a = AutoModelForCausalLM.from_pretrained(str(run["target"])).get_input_embeddings().weight
    b = AutoModelForCausalLM.from_pretrained(str(merged)).get_input_embeddings().weight
    changed = torch.nonzero((a != b).any(-1)).flatten().tolist()
    assert changed == [290, 291, 292] and torch.equal(b[290:293], rows)


def test_bad_options_are_clear(tmp_path: Path) -> None:
    for kw, msg in ((dict(span=0), "span"), (dict(unit_threshold=1.5), "unit-threshold"),
                    (dict(placeholder_ids=[5, 5, 5]), "distinct"), (dict(trainable="all"), "trainable")):
        with pytest.raises(EdgegenError, match=msg):
            _cfg(tmp_path, tmp_path / "x", **kw).validate()


def test_training_blocks_equal_the_strategy_layout(run: dict) -> None:
    """A block computed on top of the whole sequence's cache under the 4-D mask gives the same logits as the
    strategy's forward of the prefix followed by P_1..P_m."""
    from edgegen.export.drafter.model import load_teacher
    from edgegen.export.lud.train import lud_batch

    model = load_teacher(run["target"])
    gen = torch.Generator().manual_seed(0)
    P = torch.randn(3, 32, generator=gen)
    ids = torch.randint(2, 280, (1, 20), generator=gen)
    cfg = _cfg(run["target"], run["root"] / "unused", unit_threshold=0.01, max_blocks=4)
    res = lud_batch(model, P, [290, 291, 292], (ids, None, torch.ones(1, 19)), cfg, np.random.default_rng(0))
    starts = res["units"][0].starts
    assert len(starts) >= 2
    E = model.get_input_embeddings().weight
    for k, s in enumerate(starts):
        emb = torch.cat([E[ids[0, :s]], P])[None]
        with torch.no_grad():
            h = model.model(inputs_embeds=emb).last_hidden_state[0, -3:]
        direct = model.lm_head(h).index_copy(-1, torch.tensor([290, 291, 292]), h @ P.T)
        torch.testing.assert_close(res["logits"][0, 3 * k:3 * k + 3], direct, atol=1e-4, rtol=1e-4)


def test_cli_bad_options_are_one_line(tmp_path: Path) -> None:
    from edgegen.lud_cli import lud

    for args, msg in ((["--span", "0"], "span"), (["--unit-threshold", "1"], "unit-threshold"),
                      (["--tokens", "5", "--steps", "5"], "not both")):
        with pytest.raises(EdgegenError, match=msg):
            lud.main(["train", "--out", str(tmp_path / "x"), *args], standalone_mode=False)
    with pytest.raises(EdgegenError, match="nothing to resume"):
        lud.main(["train", "--out", str(tmp_path / "y"), "--resume"], standalone_mode=False)
    with pytest.raises(EdgegenError, match="not a LUD checkpoint"):
        lud.main(["pack", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "p.safetensors")],
                 standalone_mode=False)


# --- trainable="lora": placeholder rows + LoRA adapters, KL guard on ordinary rows ------------------------------

LORA_KW = dict(trainable="lora", lora_rank=4, lora_alpha=8.0, lora_layers=1, lora_lr=1e-2, kl_weight=1.0)


@pytest.fixture(scope="module")
def lora_run(run: dict) -> dict:
    out = run["root"] / "lora-a"
    summary = train_lud(_cfg(run["target"], out, **LORA_KW), echo=lambda m: None)
    return {**run, "lora": out, "lora_summary": summary}


def test_lora_recipe_learns_and_keeps_ordinary_rows_close(lora_run: dict) -> None:
    evals = lora_run["lora_summary"]["evals"]
    first, last = evals[0]["sets"]["val_code"], evals[-1]["sets"]["val_code"]
    assert last["ce"] < first["ce"]
    assert 0 <= last["kl_ordinary"] < 0.5  # the KL term holds the ordinary rows near the base
    tensors, _, meta = ck.load_checkpoint(ck.latest_checkpoint(lora_run["lora"]))
    lora = [k for k in tensors if k.startswith("lora::")]
    # rank 4 on q/k/v/o/gate/up/down of the top layer only (layer 1 of 2): 7 modules x (A, B)
    assert len(lora) == 14 and all(".layers.1." in k for k in lora)
    assert meta["trainable"] == "lora" and meta["lora"]["layers"] == [1] and meta["lora"]["scale"] == 2.0
    assert any(float(tensors[k].abs().max()) > 0 for k in lora if "lora_B" in k)  # B left its zero init


def test_lora_resume_is_exact(lora_run: dict, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def hook(step: int) -> None:
        if step == 10:
            raise Stop

    out = tmp_path / "lora-b"
    with pytest.raises(Stop):
        train_lud(_cfg(lora_run["target"], out, **LORA_KW), echo=lambda m: None, step_hook=hook)
    assert ck.latest_checkpoint(out).name == "ckpt-00000008"
    train_lud(_cfg(lora_run["target"], out, **LORA_KW), resume=True, echo=lambda m: None)
    a = ck.load_checkpoint(ck.latest_checkpoint(lora_run["lora"]))[0]
    b = ck.load_checkpoint(ck.latest_checkpoint(out))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _peft_tuned(lora_run: dict):
    """The tuned model as training sees it: target + peft adapters loaded from the checkpoint + trained rows."""
    from edgegen.export.drafter.model import load_teacher
    from edgegen.export.lud.train import add_lora

    tensors = ck.load_checkpoint(ck.latest_checkpoint(lora_run["lora"]))[0]
    model = load_teacher(lora_run["target"])
    peft_model, params = add_lora(model, _cfg(lora_run["target"], lora_run["lora"], **LORA_KW))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors["lora::" + n])
        model.get_input_embeddings().weight[290:293] = tensors["placeholder_embeds"]
    return peft_model


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-3)])
def test_lora_merge_by_arithmetic_equals_peft(lora_run: dict, tmp_path: Path, dtype: str, tol: float) -> None:
    from transformers import AutoModelForCausalLM

    from edgegen.export.lud import read_packed_lora

    packed = pack_lud(lora_run["lora"], tmp_path / "lud.safetensors", dtype=dtype)
    rows, info = read_packed_lud(packed)
    assert info["format"] == "edgegen-lud/2" and info["trainable"] == "lora" and info["lora"]["dtype"] == dtype
    assert len(read_packed_lora(packed)) == 7
    merged = AutoModelForCausalLM.from_pretrained(str(merge_lud(packed, lora_run["target"], tmp_path / "m")))
    peft_model = _peft_tuned(lora_run)
    ids = torch.randint(2, 280, (2, 24), generator=torch.Generator().manual_seed(0))
    ids[:, 10:13] = torch.tensor([290, 291, 292])  # placeholder rows in the input too
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        peft_merged = peft_model.merge_and_unload()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    torch.testing.assert_close(got, peft_merged, atol=tol, rtol=tol)
    base = AutoModelForCausalLM.from_pretrained(str(lora_run["target"]))
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, got, atol=1e-3)  # the adapters did change it


def test_lora_verified_mode_is_tuned_ar(lora_run: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from edgegen.sampling import Sampler, SamplingConfig
    from edgegen.strategies.autoregressive import Autoregressive
    from edgegen.strategies.base import DecodeRequest
    from edgegen.strategies.lexical import Lexical

    merged = AutoModelForCausalLM.from_pretrained(
        str(merge_lud(pack_lud(lora_run["lora"], tmp_path / "l.safetensors"), lora_run["target"], tmp_path / "m")))
    merged.eval()
    pids = [290, 291, 292]
    manifest = SimpleNamespace(name="tiny-lud-lora",
                               extras={"lud": {"placeholder_ids": pids, "span": len(pids), "default_threshold": 0.5}})

    def decode(strategy, prompt: list[int], n: int = 20):
        request = DecodeRequest(TorchSession(merged, manifest), prompt, Sampler(SamplingConfig()), n)
        out: list[int] = []
        steps = strategy.decode(request)
        for new in steps:
            out.extend(new)
            if len(out) >= n:
                break
        steps.close()
        return out[:n], request.counters

    proposed = 0
    for prompt in ([5, 40, 77], [120, 3], [9, 9, 200, 31, 17]):
        ar, _ = decode(Autoregressive(), prompt)
        for threshold in (0.0, 0.3):
            lud, c = decode(Lexical(threshold=threshold, span=3, verified=True, adaptive=False), prompt)
            assert lud == ar
            proposed += c.draft_proposed
        assert decode(Lexical(threshold=1.0), prompt)[0] == ar
    assert proposed > 0


def test_lora_bad_options_are_clear(tmp_path: Path) -> None:
    for kw, msg in ((dict(trainable="full"), "trainable"), (dict(lora_rank=0), "lora-rank"),
                    (dict(lora_layers=0), "lora-layers"), (dict(kl_weight=-1.0), "kl-weight"),
                    (dict(lora_alpha=0.0), "lora-alpha"), (dict(lora_modules=["embed_tokens"]), "lora modules")):
        with pytest.raises(EdgegenError, match=msg):
            _cfg(tmp_path, tmp_path / "x", **LORA_KW | kw).validate()
    from edgegen.lud_cli import lud

    for args, msg in ((["--trainable", "full"], "trainable"), (["--lora-rank", "0"], "lora-rank"),
                      (["--kl-weight", "-1"], "kl-weight"), (["--lora-lr", "0"], "lora-lr")):
        with pytest.raises(EdgegenError, match=msg) as e:
            lud.main(["train", "--out", str(tmp_path / "c"), "--trainable", "lora", *args], standalone_mode=False)
        assert "\n" not in str(e.value)


def test_lora_deeper_than_the_target_is_refused(run: dict, tmp_path: Path) -> None:
    with pytest.raises(EdgegenError, match="lora-layers 5 exceeds the target's 2 decoder layers"):
        train_lud(_cfg(run["target"], tmp_path / "y", **LORA_KW | {"lora_layers": 5}), echo=lambda m: None)
