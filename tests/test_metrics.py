"""Subject metrics on tiny random DINO/CLIP models: hand computations, torchmetrics cross-checks, loading."""

from __future__ import annotations

import importlib.util
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer, ViTModel
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from varlit.callbacks.metrics import SubjectMetricsCallback
from varlit.eval import (
    BackboneLoadError,
    ClipBackbone,
    DinoBackbone,
    SubjectMetrics,
    SubjectSamples,
    build_lpips,
    clip_score_metric,
    load_image,
    make_fid,
    make_kid,
    mean_pairwise_distance,
    squash,
)
from varlit.eval.backbones import preprocess_from_processor
from varlit.eval.preprocess import DINO_REFERENCE, ImagePreprocess
from varlit.eval.tiny_backbones import build_tiny_clip, build_tiny_vit

LEVEL = 1 / 127.5  # one 8-bit level in [-1, 1] units


# ---- tiny models (the offline `tiny-clip` / `tiny-dino` builders) -----------------------------------------
@pytest.fixture(scope="module")
def tiny_clip() -> tuple[CLIPModel, CLIPTokenizer]:
    return build_tiny_clip(seed=0)


@pytest.fixture(scope="module")
def tok(tiny_clip) -> CLIPTokenizer:
    return tiny_clip[1]


@pytest.fixture(scope="module")
def clip(tiny_clip) -> ClipBackbone:
    return ClipBackbone(*tiny_clip)


@pytest.fixture(scope="module")
def dino() -> DinoBackbone:
    return DinoBackbone(build_tiny_vit(seed=1))


def level_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Images on exact 8-bit levels (a saved sample), so squashing at their own size changes nothing."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 5, 5, generator=g)
    x = 0.7 * F.interpolate(coarse, size=(size, size), mode="bilinear") + 0.3 * torch.rand(
        n, 3, size, size, generator=g
    )
    return (x * 255).round() / 127.5 - 1


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def hand_dino(vit: ViTModel, img_3HW: torch.Tensor) -> torch.Tensor:
    """Reference DINO: the [-1, 1] image straight into the ViT, CLS token of the last hidden state."""
    with torch.no_grad():
        return vit(pixel_values=img_3HW[None], interpolate_pos_encoding=True).last_hidden_state[0, 0]


def hand_clip_image(model: CLIPModel, img_3HW: torch.Tensor) -> torch.Tensor:
    """Reference CLIP image path: [0, 1], bicubic antialiased resize to 32, CLIP mean/std, projected embed."""
    x = (img_3HW[None] + 1) / 2
    x = F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
    x = (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.get_image_features(pixel_values=x).pooler_output[0]


def hand_clip_text(model: CLIPModel, tok: CLIPTokenizer, text: str) -> torch.Tensor:
    enc = tok([text], return_tensors="pt")
    with torch.no_grad():
        return model.get_text_features(**enc).pooler_output[0]


# ---- preprocessing -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(96, 96), (50, 70), (20, 24)])
def test_squash_matches_pil_bicubic_within_one_level(hw):
    img = level_images(1, max(hw), seed=3)[..., : hw[0], : hw[1]]
    u8 = ((img[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(u8).resize((40, 40), resample=Image.Resampling.BICUBIC)
    ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 127.5 - 1
    out = squash(img, 40)[0]
    assert out.shape == (3, 40, 40)
    assert (out - ref).abs().max() <= LEVEL + 1e-5
    assert torch.allclose(((out + 1) * 127.5), ((out + 1) * 127.5).round(), atol=1e-3)  # on 8-bit levels


def test_load_image_squashes_with_pil_and_names_bad_files(tmp_path):
    arr = ((level_images(1, 60, seed=4)[0, :, :, :45] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(tmp_path / "photo.png")
    x = load_image(tmp_path / "photo.png", size=32)
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    in_memory = squash(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1, 32)[0]
    assert (x - in_memory).abs().max() <= LEVEL + 1e-5
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png")


def test_image_preprocess_follows_torchvision_resize_and_center_crop():
    pre = ImagePreprocess(resize=16, crop=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    img = level_images(1, 60, seed=5)[
        ..., :30, :
    ]  # 30 x 60: shorter side -> 16, longer -> int(16*60/30) = 32
    out = pre(img)
    x = F.interpolate((img + 1) / 2, size=(16, 32), mode="bicubic", antialias=True, align_corners=False)
    x = x[..., :, 8:24]  # centre crop: round((32 - 16) / 2) = 8
    expect = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(
        1, 3, 1, 1
    )
    assert out.shape == (1, 3, 16, 16)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


# ---- DINO / CLIP-I / CLIP-T / PRES against hand loops -------------------------------------------------------
def make_samples(size: int) -> SubjectSamples:
    return SubjectSamples(
        images=level_images(6, size, seed=10),
        prompts=["a dog on the beach"] * 3 + ["a dog in the snow"] * 3,
        reference=level_images(3, size, seed=11),
        class_images=level_images(4, size, seed=12),
        texts=["a dog on the beach"] * 3 + ["a photo of a dog in the snow"] * 3,
    )


def test_dino_and_pres_match_a_pairwise_hand_loop(dino):
    samples = make_samples(48)  # 48 px on a 32 px / patch-8 ViT: position embeddings are interpolated
    scores = SubjectMetrics(dino=dino, eval_size=48, batch_size=4).score(samples)
    vit = dino.model
    ref = [hand_dino(vit, r) for r in samples.reference]
    per_prompt = []
    for rows in ([0, 1, 2], [3, 4, 5]):
        per_prompt.append(np.mean([cos(r, hand_dino(vit, samples.images[j])) for r in ref for j in rows]))
    pres = np.mean([cos(r, hand_dino(vit, c)) for r in ref for c in samples.class_images])
    assert [p.dino.item() for p in scores.prompts] == pytest.approx(per_prompt, abs=1e-5)
    assert scores.dino.item() == pytest.approx(np.mean(per_prompt), abs=1e-5)
    assert scores.pres.item() == pytest.approx(pres, abs=1e-5)
    assert scores.clip_i is None and scores.clip_t is None


def test_clip_i_and_clip_t_match_a_pairwise_hand_loop(clip, tok):
    samples = make_samples(40)  # 40 px squash, CLIP resizes to its 32 px input
    scores = SubjectMetrics(clip=clip, eval_size=40, batch_size=4).score(samples)
    model = clip.model
    ref = [hand_clip_image(model, r) for r in samples.reference]
    for p, rows, text in zip(
        scores.prompts, ([0, 1, 2], [3, 4, 5]), ("a dog on the beach", "a photo of a dog in the snow")
    ):
        gen = [hand_clip_image(model, samples.images[j]) for j in rows]
        t = hand_clip_text(model, tok, text)
        assert p.text == text and p.num_images == 3
        assert p.clip_i.item() == pytest.approx(np.mean([cos(r, g) for r in ref for g in gen]), abs=1e-5)
        assert p.clip_t.item() == pytest.approx(np.mean([cos(t, g) for g in gen]), abs=1e-5)
    assert scores.clip_t.item() == pytest.approx(np.mean([p.clip_t.item() for p in scores.prompts]), abs=1e-6)
    assert scores.dino is None and scores.pres is None


def test_clip_t_equals_torchmetrics_clipscore_over_100(clip, tok):
    """Same tiny model, torchmetrics fed through its callable form with an independent HF processor."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    class TensorOutputs(torch.nn.Module):  # transformers 5 returns output objects; torchmetrics wants tensors
        def __init__(self, m):
            super().__init__()
            self.m, self.config = m, m.config

        def get_image_features(self, pixel_values):
            return self.m.get_image_features(pixel_values=pixel_values).pooler_output

        def get_text_features(self, input_ids, attention_mask=None):
            return self.m.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    image_processor = CLIPImageProcessorPil(
        do_resize=False,
        do_center_crop=False,
        rescale_factor=1 / 255,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    images = level_images(5, 32, seed=20)  # at CLIP's input size: no resize on either side
    prompts = ["a photo of a red teapot"] * 5
    ours = SubjectMetrics(clip=clip, eval_size=32).score(SubjectSamples(images, prompts, images[:2]))

    tm = CLIPScore(model_name_or_path=lambda: (TensorOutputs(clip.model), processor))
    tm.update(list((images + 1) * 127.5), prompts)  # the HF processor rescales 0..255 by 1/255
    unclamped = tm.score / tm.n_samples
    assert unclamped.item() == pytest.approx(100 * ours.clip_t.item(), abs=1e-3)
    assert tm.compute().item() == pytest.approx(max(100 * ours.clip_t.item(), 0.0), abs=1e-3)

    ours_tm = clip_score_metric(clip, eval_size=32)
    ours_tm.update(list(images), prompts)
    assert (ours_tm.score / ours_tm.n_samples).item() == pytest.approx(100 * ours.clip_t.item(), abs=1e-3)


def test_bf16_autocast_path_stays_close_to_fp32(dino, clip):
    samples = make_samples(32)
    fp32 = SubjectMetrics(dino, clip, eval_size=32, bf16=False).score(samples).to_dict()["overall"]
    bf16 = SubjectMetrics(dino, clip, eval_size=32, bf16=True).score(samples).to_dict()["overall"]
    assert fp32.keys() == bf16.keys() == {"dino", "clip_i", "clip_t", "pres"}
    for k in fp32:
        assert bf16[k] == pytest.approx(fp32[k], abs=3e-2), k


def test_report_dict_and_sample_validation(dino):
    scores = SubjectMetrics(dino=dino, eval_size=32).score(make_samples(32))
    d = scores.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert list(d["prompts"]) == ["a dog on the beach", "a dog in the snow"]
    assert d["prompts"]["a dog in the snow"]["dino"] == pytest.approx(scores.prompts[1].dino.item())
    assert d["overall"]["dino"] == pytest.approx(scores.dino.item()) and d["div_skipped"].startswith(
        "DIV skipped"
    )
    imgs = level_images(2, 32, seed=1)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        SubjectSamples(imgs, ["a"], imgs)
    with pytest.raises(ValueError, match="two texts"):
        SubjectSamples(imgs, ["a", "a"], imgs, texts=["x", "y"]).groups()
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        SubjectSamples(imgs[:, :1], ["a", "b"], imgs)


def test_reference_photos_of_different_sizes_are_squashed(dino):
    metrics = SubjectMetrics(dino=dino, eval_size=32)
    photos = [level_images(1, 48, seed=2)[0, :, :40], level_images(1, 32, seed=3)[0]]
    feats = metrics.dino_features(photos)
    expect = torch.stack([hand_dino(dino.model, squash(p[None], 32)[0]) for p in photos])
    torch.testing.assert_close(feats, expect, atol=1e-5, rtol=1e-5)


# ---- DIV -----------------------------------------------------------------------------------------------------
def test_mean_pairwise_distance_matches_a_loop_over_pairs():
    images = level_images(5, 8, seed=30)

    def l1(a, b):
        return (a - b).abs().mean(dim=(1, 2, 3))

    loop = np.mean(
        [l1(images[i : i + 1], images[j : j + 1]).item() for i in range(5) for j in range(i + 1, 5)]
    )
    assert mean_pairwise_distance(images, l1, batch_size=3).item() == pytest.approx(loop, rel=1e-6)
    assert mean_pairwise_distance(images[:1], l1) is None


def test_div_uses_the_given_distance_per_prompt(dino):
    samples = make_samples(32)

    def l1(a, b):
        return (a - b).abs().mean(dim=(1, 2, 3))

    scores = SubjectMetrics(dino=dino, diversity=l1, eval_size=32, batch_size=2).score(samples)
    for p, rows in zip(scores.prompts, ([0, 1, 2], [3, 4, 5])):
        pairs = [(rows[a], rows[b]) for a in range(3) for b in range(a + 1, 3)]
        expect = np.mean([l1(samples.images[i : i + 1], samples.images[j : j + 1]).item() for i, j in pairs])
        assert p.div.item() == pytest.approx(expect, rel=1e-6)
    assert scores.div_skipped is None and scores.div is not None


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision present here")
def test_lpips_is_skipped_cleanly_without_torchvision(dino):
    distance, reason = build_lpips()
    assert distance is None and reason.startswith("DIV skipped:") and "torchvision" in reason
    scores = SubjectMetrics(dino=dino, diversity=distance, div_skipped=reason, eval_size=32).score(
        make_samples(32)
    )
    assert scores.div is None and scores.div_skipped == reason and "div" not in scores.scalars()


# ---- FID / KID -----------------------------------------------------------------------------------------------
def test_fid_and_kid_with_a_dino_feature(dino):
    real = level_images(12, 32, seed=40)
    fid = make_fid(dino, eval_size=32)
    fid.update(real, real=True)
    fid.update(real, real=False)
    assert abs(fid.compute().item()) < 1e-3  # identical sets
    fid.reset()  # real features survive
    fid.update(level_images(12, 32, seed=41).flip(-1) * 0.5, real=False)
    other = fid.compute().item()
    assert np.isfinite(other) and other > 1e-2
    kid = make_kid(dino, subset_size=6, subsets=10, eval_size=32)
    kid.update(real, real=True)
    kid.update(level_images(12, 32, seed=42), real=False)
    mean, std = kid.compute()
    assert torch.isfinite(mean) and torch.isfinite(std)


# ---- loading -------------------------------------------------------------------------------------------------
def test_backbones_load_from_local_folders(tmp_path, dino, clip, tok):
    dino.model.save_pretrained(tmp_path / "dino")
    clip.model.save_pretrained(tmp_path / "clip")
    tok.save_pretrained(tmp_path / "clip")
    proc = {
        "do_resize": True,
        "size": {"shortest_edge": 32},
        "do_center_crop": True,
        "crop_size": {"height": 32, "width": 32},
    }
    proc |= {"resample": 3, "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD)}
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps(proc))

    vit_proc = {
        "do_resize": True,
        "size": {"height": 24, "width": 24},
        "resample": 2,
        "image_mean": [0.4] * 3,
    }
    (tmp_path / "dino" / "preprocessor_config.json").write_text(
        json.dumps(vit_proc | {"image_std": [0.2] * 3})
    )
    d3 = DinoBackbone.from_pretrained(str(tmp_path / "dino"), protocol="processor")
    assert d3.preprocess == ImagePreprocess((24, 24), None, (0.4,) * 3, (0.2,) * 3, interpolation="bilinear")
    d2 = DinoBackbone.from_pretrained(str(tmp_path / "dino"))
    assert d2.preprocess == DINO_REFERENCE
    c2 = ClipBackbone.from_pretrained(str(tmp_path / "clip"))
    assert c2.preprocess == clip.preprocess
    x = level_images(2, 32, seed=50)
    with torch.no_grad():
        torch.testing.assert_close(d2(x), dino(x))
        torch.testing.assert_close(c2.encode_images(x), clip.encode_images(x))
        torch.testing.assert_close(c2.encode_text(["a dog"]), clip.encode_text(["a dog"]))


def test_old_style_int_sizes_in_processor_configs():
    cfg = {
        "size": 224,
        "crop_size": 224,
        "do_center_crop": True,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    assert preprocess_from_processor(cfg, "vit", int_is_square=True).resize == (224, 224)
    clip_pre = preprocess_from_processor(cfg, "clip", int_is_square=False)
    assert clip_pre.resize == 224 and clip_pre.crop == (224, 224) and clip_pre.interpolation == "bicubic"
    with pytest.raises(BackboneLoadError, match="image_std"):
        preprocess_from_processor(cfg | {"image_std": [1.0]}, "clip", int_is_square=False)


def test_missing_backbones_fail_with_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneLoadError, match="no-such-org/no-such-dino.*offline"):
        DinoBackbone.from_pretrained("no-such-org/no-such-dino")
    with pytest.raises(BackboneLoadError, match="no-such-org/no-such-clip"):
        ClipBackbone.from_pretrained("no-such-org/no-such-clip")
    with pytest.raises(BackboneLoadError, match="not a folder"):
        DinoBackbone.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneLoadError, match="local folder"):
        ClipBackbone.from_pretrained(str(tmp_path / "empty"))


# ---- Lightning callback --------------------------------------------------------------------------------------
class SampleSource(pl.LightningModule):
    """The smallest module with the interface the callback assumes."""

    def __init__(self, samples: SubjectSamples):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.samples = samples
        self.generated = 0

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(2, 1)), batch_size=1)

    def generate_validation_samples(self) -> SubjectSamples:
        self.generated += 1
        return self.samples


def test_callback_logs_the_subject_metrics_and_fid(tmp_path, dino, clip):
    for i, img in enumerate(level_images(4, 32, seed=60)):
        arr = ((img + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(tmp_path / f"real_{i}.png")
    metrics = SubjectMetrics(dino, clip, eval_size=32, batch_size=4)
    cb = SubjectMetricsCallback(
        metrics=metrics, every_n_validations=2, fid_reference_dir=str(tmp_path), kid_subset_size=3
    )
    module = SampleSource(make_samples(32))
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[cb],
    )
    trainer.fit(module)
    assert module.generated == 1  # not in the sanity check, then every 2nd of 2 validations
    expect = metrics.score(make_samples(32))
    logged = trainer.callback_metrics
    for name in ("dino", "clip_i", "clip_t", "pres"):
        assert logged[f"val/{name}"].item() == pytest.approx(getattr(expect, name).item(), abs=1e-6), name
    assert "val/div" not in logged and cb.last_scores.div_skipped.startswith("DIV skipped")
    assert (
        cb.num_fid_reference == 4 and np.isfinite(logged["val/fid"].item()) and logged["val/fid"].item() > 0
    )
    assert np.isfinite(logged["val/kid"].item())
    assert cb.state_dict() == {"validations_seen": 2}


def test_callback_names_the_missing_module_method(dino):
    cb = SubjectMetricsCallback(metrics=SubjectMetrics(dino=dino, eval_size=32))
    with pytest.raises(TypeError, match="LightningModule.generate_validation_samples"):
        cb.setup(None, pl.LightningModule(), "fit")
