"""The world: a deterministic generator, held-out combinations, shipped subjects, the world T5, the judge,
the pretraining modules and CLI, and the shipped `world` preset (strict, offline, above measured floors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from varlit.models.presets import WORLD_DIR, get_preset
from varlit.world.pool import render_pool
from varlit.world.scenes import (
    CLASSES,
    COLOUR_NAMES,
    CONTEXT_NAMES,
    SceneSpec,
    all_captions,
    held_out_triples,
    pretraining_sample,
    random_spec,
    render_spec,
    scene_rng,
)
from varlit.world.subjects import SUBJECT_NAMES, get_subject, subject_photos

SHIPPED = (WORLD_DIR / "infinity.safetensors").exists()
needs_world = pytest.mark.skipif(not SHIPPED, reason="the world preset has not been built (make world)")

# Floors a little below what `varlit world report` measured on the shipped world v2 (varlit/world/weights/
# report.json); a regression of the shipped files or of the code that reads them fails these.
# Measured: judge 100 % on every head (192 fresh renders of this test); VAE 26.2 dB on the 64 renders of
# this test; base model on this test's 32 prompts: class 75 %, colour 100 %, context 100 % (world v1: class
# 19 %, near the 12.5 % of chance); red ball on the beach: see FLOOR_RED_BALL_OF_8.
FLOOR_JUDGE_FRESH = {"cls": 0.97, "colour": 0.97, "context": 0.97, "subject": 0.97}
FLOOR_VAE_PSNR = 25.0
FLOOR_BASE = {"cls": 0.6, "colour": 0.9, "context": 0.9}
FLOOR_RED_BALL_OF_8 = 5


def test_generator_is_deterministic_and_seeded():
    a = [pretraining_sample(3, i) for i in range(6)]
    b = [pretraining_sample(3, i) for i in range(6)]
    for (sa, ca, pa), (sb, cb, pb) in zip(a, b):
        assert sa == sb and ca == cb and np.array_equal(pa, pb)
    other = [pretraining_sample(4, i)[2] for i in range(6)]
    assert not all(np.array_equal(x[2], y) for x, y in zip(a, other))
    assert a[0][2].shape == (64, 64, 3) and a[0][2].dtype == np.uint8


def test_pretraining_never_renders_held_out_combinations_but_covers_every_word():
    held = held_out_triples()
    assert 0 < len(held) < 0.1 * len(CLASSES) * len(COLOUR_NAMES) * len(CONTEXT_NAMES)
    specs = [random_spec(scene_rng(11, i)) for i in range(3000)]
    triples = {(s.cls, s.colour, s.context) for s in specs}
    assert not triples & held
    assert {s.cls for s in specs} == set(CLASSES)
    assert {s.colour for s in specs} == set(COLOUR_NAMES)
    assert {s.context for s in specs} == set(CONTEXT_NAMES)
    # each held-out triple is still made of words that occur in pretraining in other combinations
    for cls, colour, context in held:
        assert any(t[0] == cls and t[1] == colour for t in triples)
        assert any(t[0] == cls and t[2] == context for t in triples)


def test_contexts_differ_by_structure_not_only_by_colour():
    """Every context has texture: its background is not one flat colour (many distinct pixel values)."""
    for context in CONTEXT_NAMES:
        img = render_spec(SceneSpec("ball", "red", context, size=0.1, cx=0.15, cy=0.85))
        top = img[:24].reshape(-1, 3)
        assert len(np.unique(top, axis=0)) > 20, context


def test_shipped_subject_folders_match_the_generator():
    from PIL import Image

    root = Path("varlit/world/subject_photos")
    assert sorted(p.name for p in root.iterdir()) == sorted(SUBJECT_NAMES)
    assert len(SUBJECT_NAMES) >= 6
    for name in SUBJECT_NAMES:
        sub = get_subject(name)
        assert (root / name / "class.txt").read_text().strip() == sub.cls
        photos = subject_photos(name)
        assert 4 <= len(photos) <= 6
        for i, (spec, pixels) in enumerate(photos):
            shipped = np.asarray(Image.open(root / name / f"{i:02d}.png").convert("RGB"))
            assert np.abs(shipped.astype(int) - pixels.astype(int)).mean() < 0.5
            assert spec.context in sub.photo_contexts
        assert len(sub.unseen_contexts) >= 4  # contexts to test the subject in


def test_world_tokenizer_knows_every_caption_word(tmp_path):
    from varlit.world.text import build_world_text_encoder, save_text_encoder

    te = build_world_text_encoder(seed=0)
    unk = te.tokenizer.unk_token_id
    ids = te.tokenize(all_captions())["input_ids"]
    assert not (ids == unk).any()
    te.add_token("<placeholder>")
    toks = te.tokenizer.tokenize("a photo of <placeholder> ball in the snow")
    assert toks == ["a", "photo", "of", "<placeholder>", "ball", "in", "the", "snow"]
    from varlit.models.text import TextEncoder

    loaded = TextEncoder.from_pretrained(str(save_text_encoder(build_world_text_encoder(0), tmp_path)))
    a = build_world_text_encoder(0).encode(["a red ball at night"]).features_BTC
    assert torch.equal(a, loaded.encode(["a red ball at night"]).features_BTC)


def test_pool_labels_match_the_specs():
    pool = render_pool(24, seed=5, subject_share=0.5, workers=1)
    assert pool.pixels.shape == (24, 64, 64, 3)
    assert (pool.subject >= 0).any() and (pool.subject < 0).any()
    for i in range(len(pool)):
        spec = pool.spec(i)
        if spec.subject is not None:
            assert get_subject(spec.subject).cls == spec.cls


# ----------------------------------------------------------------------------------------------------
# Pretraining modules: a few steps lower the loss


def _fixed_batch(n: int = 8) -> dict:
    from varlit.pretrain.data import to_unit_range

    samples = [pretraining_sample(7, i) for i in range(n)]
    return {"pixels": to_unit_range(np.stack([s[2] for s in samples])), "captions": [s[1] for s in samples]}


def _few_steps(module, params, batch: dict, steps: int, lr: float) -> list[float]:
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_vae_pretraining_lowers_the_loss(monkeypatch):
    from varlit.pretrain.vae_module import VAEPretrainModule

    module = VAEPretrainModule(preset="world")
    monkeypatch.setattr(module, "log_dict", lambda *a, **k: None)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    losses = _few_steps(module, module.vae.parameters(), _fixed_batch(4), 20, 2e-3)
    assert losses[-1] < 0.8 * losses[0]


@needs_world
def test_transformer_pretraining_lowers_the_loss(monkeypatch):
    from varlit.pretrain.infinity_module import InfinityPretrainModule

    module = InfinityPretrainModule(
        preset="world",
        vae_weights=str(WORLD_DIR / "vae.safetensors"),
        text_encoder=str(WORLD_DIR / "text_encoder"),
    )
    module.sc_cfg.enabled = False  # a fixed batch: the same labels every step
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module.model.cfg.cond_drop_rate = 0.0
    losses = _few_steps(module, module.model.parameters(), _fixed_batch(8), 40, 2e-3)
    assert losses[0] == pytest.approx(np.log(2), abs=0.02)  # from-scratch init: every bit at 1/2
    # world v2 (width 256, 64 bits per token) learns a fixed batch more slowly than v1: 0.693 -> 0.607 in
    # 20 steps (v1: 0.546), so it gets 40
    assert losses[-1] < losses[0] - 0.1, losses[-1]


def test_folder_source_reads_images_with_captions(tmp_path):
    from PIL import Image

    from varlit.pretrain.data import PretrainDataModule

    for i in range(5):
        Image.fromarray(pretraining_sample(0, i)[2]).resize((96, 80)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(pretraining_sample(0, i)[1])
    dm = PretrainDataModule(source=str(tmp_path), image_size=64, batch_size=2, val_images=1)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixels"].shape == (2, 3, 64, 64) and len(batch["captions"]) == 2
    assert -1 <= float(batch["pixels"].min()) and float(batch["pixels"].max()) <= 1
    (tmp_path / "3.txt").unlink()
    with pytest.raises(ValueError, match=r"3\.png: no caption file 3\.txt"):
        PretrainDataModule(source=str(tmp_path)).setup()


@needs_world
def test_pretrain_cli_continues_the_shipped_world_and_writes_loadable_weights(tmp_path):
    from varlit.cli import main
    from varlit.models.loading import load_checkpoint

    main(
        [
            "pretrain",
            "infinity",
            "--config",
            "experiments/world/infinity.yaml",
            "--model.weights",
            str(WORLD_DIR / "infinity.safetensors"),
            "--model.vae_weights",
            str(WORLD_DIR / "vae.safetensors"),
            "--model.text_encoder",
            str(WORLD_DIR / "text_encoder"),
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--data.num_images",
            "32",
            "--data.val_images",
            "16",
            "--data.batch_size",
            "8",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--run.root",
            str(tmp_path),
            "--run.name",
            "cont",
        ]
    )
    out = tmp_path / "cont" / "infinity.safetensors"
    model, _ = get_preset("world").build("meta")
    load_checkpoint(model, str(out), "unused")  # strict
    ckpt = torch.load(tmp_path / "cont" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    # the exported weights are the trained ones: they moved away from the shipped start, and finitely
    from varlit.models.loading import read_state_dict

    start, trained = read_state_dict(WORLD_DIR / "infinity.safetensors"), read_state_dict(out)
    moved = [k for k in start if not torch.equal(start[k].float(), trained[k].float())]
    assert len(moved) >= len(start) // 2, f"only {len(moved)} of {len(start)} tensors changed"
    assert all(bool(torch.isfinite(t.float()).all()) for t in trained.values())


# ----------------------------------------------------------------------------------------------------
# The shipped world


@needs_world
def test_world_preset_loads_strictly_and_offline(monkeypatch):
    from varlit.models.loading import read_state_dict
    from varlit.pipeline import Pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = Pipeline.load("world", device="cpu", dtype="float32")
    state = read_state_dict(WORLD_DIR / "infinity.safetensors")
    own = pipe.model.state_dict()
    assert set(state) <= set(own)
    assert all(torch.equal(state[k].float(), own[k].float()) for k in state)
    manifest = json.loads((WORLD_DIR / "manifest.json").read_text())
    assert manifest["size_bytes"] <= 40 * 10**6  # the world's budget: 40 MB shipped


@needs_world
def test_shipped_judge_reads_fresh_renders():
    from varlit.world.judge import judge_accuracy, load_judge

    judge = load_judge(WORLD_DIR / "judge.safetensors")
    acc = judge_accuracy(judge, render_pool(192, seed=777, subject_share=0.35))
    for head, floor in FLOOR_JUDGE_FRESH.items():
        assert acc[head] >= floor, (head, acc)


@needs_world
def test_shipped_vae_reconstructs_fresh_renders():
    from varlit.pipeline import Pipeline
    from varlit.world.report import vae_psnr

    pipe = Pipeline.load("world", device="cpu", dtype="float32")
    assert vae_psnr(pipe, 64, cache_dir=None, seed=4321) >= FLOOR_VAE_PSNR


@needs_world
def test_shipped_base_model_draws_the_prompt():
    """CFG samples of 32 prompts: the judge finds the prompt's class, colour and context in most of them."""
    from varlit.pipeline import Pipeline
    from varlit.world.judge import load_judge
    from varlit.world.report import WORLD_SAMPLING, prompt_set, recognition

    pipe = Pipeline.load("world", device="cpu", dtype="float32")
    judge = load_judge(WORLD_DIR / "judge.safetensors")
    rates, images = recognition(pipe, judge, prompt_set(32, seed=31, held_out=False), WORLD_SAMPLING, seed=5)
    assert images.shape == (32, 3, 64, 64)
    for attr, floor in FLOOR_BASE.items():
        assert rates[attr] >= floor, (attr, rates)


@needs_world
def test_sample_command_draws_a_red_ball_on_the_beach(tmp_path):
    """The issue's check, through the CLI: the judge reads the written PNGs as a red ball on the beach."""
    from PIL import Image

    from varlit.cli import main
    from varlit.pretrain.data import to_unit_range
    from varlit.world.judge import judge_images, load_judge

    main(
        [
            "sample",
            "--preset",
            "world",
            "--prompts",
            '["a photo of a red ball on the beach"]',
            "--seeds",
            "[0, 1, 2, 3, 4, 5, 6, 7]",
            "--out_dir",
            str(tmp_path),
            "--device",
            "cpu",
        ]
    )
    files = sorted(tmp_path.glob("*.png"))
    assert len(files) == 8
    pixels = to_unit_range(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    verdict = judge_images(load_judge(WORLD_DIR / "judge.safetensors"), pixels)
    hits = (
        (verdict.top("cls") == CLASSES.index("ball"))
        & (verdict.top("colour") == COLOUR_NAMES.index("red"))
        & (verdict.top("context") == CONTEXT_NAMES.index("beach"))
    )
    assert int(hits.sum()) >= FLOOR_RED_BALL_OF_8


def test_export_refuses_weights_of_another_architecture(tmp_path):
    from safetensors.torch import save_file

    from varlit.models.loading import CheckpointError
    from varlit.world.export import export_world

    tiny, _ = get_preset("tiny").build("cpu")
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="does not fit Infinity"):
        export_world(infinity=str(tmp_path / "tiny.safetensors"), out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
