"""FastDraft drafter training on a tiny in-process Llama (the real 135M target is too slow for the suite):
loss goes down, resume is bit-exact, checkpoints are atomic, pack/unpack round-trips, and a drafter is
refused by a target with another vocabulary."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fakes import tiny_llama  # noqa: E402

from edgegen.errors import EdgegenError  # noqa: E402
from edgegen.export import checkpoints as ck  # noqa: E402
from edgegen.export.drafter import TrainConfig, check_drafter_compat, pack_drafter, train_drafter, unpack_drafter  # noqa: E402
from edgegen.export.drafter.config import STDLIB  # noqa: E402

TEXT = (
    "The quick brown fox jumps over the lazy dog. Rivers flow to the sea and the sea returns rain to the hills. "
    "A function takes arguments and returns a value; a class groups data with the functions that act on it. "
)


def _tiny_target(folder: Path, vocab_extra: int = 0) -> Path:
    code = "".join(p.read_text() for p in sorted(Path(STDLIB, "json").glob("*.py")))
    return tiny_llama(folder, [TEXT * 20, code], vocab_size=320, layers=4, vocab_extra=vocab_extra)


def _cfg(target: Path, out: Path, text_dir: Path, **kw) -> TrainConfig:
    base = dict(target=str(target), out=str(out), layers=1, steps=30, stage="all", pretrain_frac=0.5, seq_len=32,
                batch_size=4, lr=3e-3, warmup=3, code_globs=[f"{STDLIB}/json/*.py"], text_globs=[f"{text_dir}/*.txt"],
                corpus_tokens=20000, val_tokens=600, eval_tokens=256, gen_prompts=8, gen_max_new_tokens=16,
                gen_batch=8, gen_val_every=4, ckpt_every=5, ckpt_minutes=1e9, export=False, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("drafter")
    text_dir = root / "text"
    text_dir.mkdir()
    for i in range(6):
        (text_dir / f"doc{i}.txt").write_text((TEXT + f" Document {i}. ") * (10 + i))
    target = _tiny_target(root / "target")
    out = root / "run-a"
    train_drafter(_cfg(target, out, text_dir), echo=lambda m: None)
    return {"root": root, "text": text_dir, "target": target, "run": out}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _, meta = ck.load_checkpoint(ck.latest_checkpoint(run))
    assert meta["stage_idx"] == 2 and meta["global_step"] == 30
    return tensors


def test_loss_decreases(setup: dict[str, Path]) -> None:
    evals = [json.loads(x) for x in (setup["run"] / "metrics.jsonl").read_text().splitlines()]
    ev = {e["label"]: e["sets"] for e in evals if e["event"] == "eval"}
    assert set(ev) == {"init", "after pretrain", "after distill"}
    assert set(ev["init"]) == {"val_code", "val_text", "val_gen"}
    assert ev["after pretrain"]["val_code"]["kl"] < ev["init"]["val_code"]["kl"]
    assert ev["after distill"]["val_gen"]["kl"] < ev["init"]["val_gen"]["kl"]
    for sets in ev.values():
        for m in sets.values():
            assert 0.0 <= m["agreement"] <= 1.0 and 0.0 <= m["alpha"] <= 1.0
    train = [e for e in evals if e["event"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert sorted(p.name for p in setup["run"].glob("ckpt-*")) == ["ckpt-00000030"]


def test_resume_is_exact(setup: dict[str, Path]) -> None:
    out = setup["root"] / "run-b"

    class Stop(Exception):
        pass

    def stop_at(n: int):
        def hook(step: int) -> None:
            if step == n:
                raise Stop

        return hook

    cfg = _cfg(setup["target"], out, setup["text"])
    with pytest.raises(Stop):  # killed in stage 1, 2 steps after the checkpoint at step 10
        train_drafter(cfg, step_hook=stop_at(12), echo=lambda m: None)
    assert ck.latest_checkpoint(out).name == "ckpt-00000010"
    with pytest.raises(EdgegenError, match="--resume"):
        train_drafter(_cfg(setup["target"], out, setup["text"]), echo=lambda m: None)
    with pytest.raises(Stop):  # killed again in stage 2
        train_drafter(_cfg(setup["target"], out, setup["text"]), resume=True, step_hook=stop_at(23),
                      echo=lambda m: None)
    assert ck.latest_checkpoint(out).name == "ckpt-00000020"
    train_drafter(_cfg(setup["target"], out, setup["text"]), resume=True, echo=lambda m: None)
    a, b = _final_weights(setup["run"]), _final_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = {"w": torch.arange(6, dtype=torch.float32)}
    ck.save_checkpoint(tmp_path, 1, w, {"step": 1}, {"step": 1})
    real_save = torch.save

    def broken_save(obj, path, *a, **k):  # write half a file, then die
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path, 2, {"w": w["w"] * 2}, {"step": 2}, {"step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-00000001"]
    # a hard kill can leave the hidden build folder: never taken for a checkpoint, removed on the next run
    stale = tmp_path / ".tmp-ckpt-crashed"
    stale.mkdir()
    (stale / "trainable.safetensors").write_bytes(b"partial")
    tensors, state, meta = ck.load_checkpoint(ck.latest_checkpoint(tmp_path))
    assert torch.equal(tensors["w"], w["w"]) and state["step"] == 1 and meta["step"] == 1
    ck.clean_stale(tmp_path)
    assert not stale.exists()
    ck.save_checkpoint(tmp_path, 3, w, {"step": 3}, {"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-00000003"]


class _RunsCode:
    """Unpickling this runs a shell command: what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_crafted_pickle_checkpoint_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "code-ran"
    ckpt = ck.save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"step": 1}, {"step": 1})
    crafted = {"step": 1, "optimizer": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(crafted, ckpt / "state.pt")
    else:
        (ckpt / "state.pt").write_bytes(pickle.dumps(crafted))
    with pytest.raises(EdgegenError, match="refusing to resume .*start the run again") as e:
        ck.load_checkpoint(ck.latest_checkpoint(tmp_path))
    assert "\n" not in str(e.value)
    assert not marker.exists()  # the command never ran


def test_checkpoint_of_an_older_edgegen_still_loads(tmp_path: Path) -> None:
    # older runs saved NumPy's RNG state as pickled arrays: read safely (torch's ndarray allowlist), not refused
    ckpt = ck.save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {"step": 1}, {"step": 1})
    old = np.random.get_state()
    torch.save({"step": 1, "rng": {"numpy": old}}, ckpt / "state.pt")
    _, state, _ = ck.load_checkpoint(ckpt)
    assert np.array_equal(state["rng"]["numpy"][1], old[1]) and state["rng"]["numpy"][2:] == old[2:]


def test_pack_unpack_roundtrip(setup: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ckpt_w = _final_weights(setup["run"])
    assert all(not k.startswith(("model.embed_tokens", "lm_head")) for k in ckpt_w)  # shared weights not stored
    target = AutoModelForCausalLM.from_pretrained(str(setup["target"]))
    for dtype, cast in (("float32", torch.float32), ("float16", torch.float16)):
        packed = pack_drafter(setup["run"], tmp_path / f"d-{dtype}.safetensors", dtype=dtype)
        hf = unpack_drafter(packed, setup["target"], tmp_path / f"hf-{dtype}")
        sd = load_file(str(hf / "model.safetensors"))
        for k, v in ckpt_w.items():
            assert torch.equal(sd[k], v.to(cast).to(torch.float32)), k
    packed = pack_drafter(setup["run"], tmp_path / "d-int8.safetensors", dtype="int8")  # what ships
    assert {t.dtype for t in load_file(str(packed)).values()} == {torch.int8, torch.float16}
    sd = load_file(str(unpack_drafter(packed, setup["target"], tmp_path / "hf-int8") / "model.safetensors"))
    for k, v in ckpt_w.items():
        if v.ndim == 1:
            assert torch.equal(sd[k], v.to(torch.float16).to(torch.float32)), k
        else:  # int8 blocks of 32: within half a step of the block's scale (its max / 127), fp16 scale included
            step = v.reshape(v.shape[0], -1, 32).abs().amax(-1, keepdim=True) / 127
            err = (sd[k] - v).reshape(v.shape[0], -1, 32).abs()
            assert (err <= 0.5 * step * 1.01 + 1e-7).all(), k
            assert not torch.equal(sd[k], v)  # really quantized
        assert torch.equal(sd["model.embed_tokens.weight"], target.model.embed_tokens.weight)
        assert (hf / "tokenizer.json").read_bytes() == (setup["target"] / "tokenizer.json").read_bytes()
        model = AutoModelForCausalLM.from_pretrained(str(hf))
        assert model.config.num_hidden_layers == 1
        with torch.no_grad():
            assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


def test_reduced_head_keeps_the_full_heads_logits(setup: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from edgegen.export.drafter.pack import frequent_tokens

    kept = frequent_tokens(setup["run"], 320, 64, setup["target"] / "tokenizer.json")
    assert len(set(kept.tolist())) == 64 and {0, 1} <= set(kept.tolist())  # special tokens always kept
    packed = pack_drafter(setup["run"], tmp_path / "d.safetensors", head_vocab=64)
    full = AutoModelForCausalLM.from_pretrained(str(unpack_drafter(pack_drafter(setup["run"], tmp_path / "f.st"),
                                                                   setup["target"], tmp_path / "full")))
    small = AutoModelForCausalLM.from_pretrained(str(unpack_drafter(packed, setup["target"], tmp_path / "small")))
    assert small.config.vocab_size == 64
    assert small.lm_head.weight.data_ptr() == small.model.embed_tokens.weight.data_ptr()  # still tied
    ids = torch.tensor([kept[[3, 10, 5, 0, 40]].tolist()])
    with torch.no_grad():
        want = full(ids).logits[..., torch.as_tensor(kept)]
        got = small(torch.tensor([[3, 10, 5, 0, 40]])).logits  # the same tokens, renumbered
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(EdgegenError, match="head vocabulary"):
        pack_drafter(setup["run"], tmp_path / "x.safetensors", head_vocab=0)


def test_mismatched_vocab_is_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    from edgegen.cli import main
    from edgegen.manifest import Manifest

    other = _tiny_target(tmp_path / "other", vocab_extra=8)
    packed = pack_drafter(setup["run"], tmp_path / "d.safetensors")
    with pytest.raises(EdgegenError, match="vocabulary"):
        unpack_drafter(packed, other, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert main(["draft", "export", "--checkpoint", str(packed), "--target", str(other),
                 "--out", str(tmp_path / "m")]) == 1
    assert not (tmp_path / "m").exists()
    base = dict(architecture="llama", num_layers=1, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8,
                context_length=256, bos_token_id=None, eos_token_ids=[0], add_bos=False)
    drafter = Manifest(name="d", vocab_size=320, extras={"drafter": {"target_vocab_size": 320}}, **base)
    with pytest.raises(EdgegenError, match="vocabulary"):
        check_drafter_compat(drafter, Manifest(name="t", vocab_size=328, **base))
    check_drafter_compat(drafter, Manifest(name="t", vocab_size=320, **base))
    with pytest.raises(EdgegenError, match="not a drafter"):
        check_drafter_compat(Manifest(name="x", vocab_size=320, **base), Manifest(name="t", vocab_size=320, **base))
    shutil.rmtree(other)


def _tiny_gemma3(folder: Path, tokenizer: Path) -> Path:
    """A tiny Gemma 3 (scaled embedding, a sliding layer with a window shorter than the training rows, then a
    full one) sharing the tiny Llama's tokenizer: what the recipe must handle beside Llama."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder.mkdir(parents=True)
    shutil.copy2(tokenizer, folder / "tokenizer.json")
    cfg = Gemma3TextConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                           sliding_window=16, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           max_position_embeddings=256, tie_word_embeddings=True, eos_token_id=0, pad_token_id=1,
                           bos_token_id=None, initializer_range=0.3)
    torch.manual_seed(0)
    Gemma3ForCausalLM(cfg).save_pretrained(str(folder))
    return folder


def test_gemma3_drafter_trains_and_ships_a_reduced_head(setup: dict[str, Path], tmp_path: Path) -> None:
    """A Gemma 3 target, a head of 48 tokens trained (not only cut at packing): the evaluation scores the
    drafter against the target's whole distribution (alpha <= the target's mass on the head), the pack keeps
    the trained head, and the rebuilt drafter's logits are the trained model's on those columns (Gemma's
    embedding scale kept when the rows are cut)."""
    from transformers import AutoModelForCausalLM

    from edgegen.export.drafter.model import build_student, head_logits, load_teacher, load_trainable
    from edgegen.export.drafter.pack import frequent_tokens
    from edgegen.export.drafter.ship import HEAD_VOCAB_KEY, _decode, read_packed

    target = _tiny_gemma3(tmp_path / "gemma", setup["target"] / "tokenizer.json")
    out = tmp_path / "run"
    train_drafter(_cfg(target, out, setup["text"], stage="pretrain", steps=12, layers=2, head_vocab=48),
                  echo=lambda m: None)
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["label"] for e in evals] == ["init", "after pretrain"]
    for sets in (e["sets"] for e in evals):
        for m in sets.values():
            assert 0.0 < m["head_mass"] <= 1.0 + 1e-6 and 0.0 <= m["alpha"] <= m["head_mass"] + 1e-6
    assert evals[1]["sets"]["val_code"]["kl"] < evals[0]["sets"]["val_code"]["kl"]

    kept = frequent_tokens(out, 320, 48, target / "tokenizer.json")
    tensors, info = read_packed(pack_drafter(out, tmp_path / "d.safetensors"))  # the trained head by default
    assert tensors[HEAD_VOCAB_KEY].tolist() == kept.tolist() and info["recipe"]["head_vocab"] == 48
    small = AutoModelForCausalLM.from_pretrained(str(unpack_drafter(tmp_path / "d.safetensors", target,
                                                                    tmp_path / "small")))
    assert small.config.model_type == "gemma3_text" and small.config.vocab_size == 48
    trained, _ = build_student(load_teacher(target), 2, "first")
    load_trainable(trained, _decode(tensors))
    trained.eval()
    pos = torch.tensor([[3, 10, 5, 0, 40, 7] * 4])  # 24 positions: past the 16-token window
    with torch.no_grad():
        want = head_logits(trained, torch.as_tensor(kept)[pos], None, torch.as_tensor(kept))
        got = small(pos).logits
    assert torch.allclose(got, want, atol=1e-4)
