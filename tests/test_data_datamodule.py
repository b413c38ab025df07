"""SubjectDataModule end to end with the `tiny` preset's random VAE and a tiny random T5.

Checks what the module hands the training step (every tensor precomputed, shapes, values equal to what the
encoders produce), that a second run builds nothing, that corrupt entries are rebuilt, that bad input never
loses what is cached, aspect grouping, augmentation views, and the Lightning hook order.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from varlit.data import PLACEHOLDER, PromptBatch, SubjectBatch, SubjectDataModule, SubjectError
from varlit.data.datamodule import GroupedBatchSampler
from varlit.data.dreambench import DREAMBENCH_ENV
from varlit.data.images import BadImageError
from varlit.models.presets import get_preset
from varlit.models.quantizer import multiscale_quantize
from varlit.models.schedules import get_schedule, image_size, num_tokens
from varlit.models.text import build_tiny_text_encoder
from varlit.models.vae import BSQVAE

REAL_DREAMBENCH = Path(
    os.environ.get(DREAMBENCH_ENV, Path(__file__).resolve().parents[1] / "../shared/dreambench")
)


@pytest.fixture(scope="module")
def preset():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def vae(preset):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BSQVAE(preset.vae).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def text_encoder(preset):
    te = build_tiny_text_encoder(channels=preset.infinity.text_channels)
    te.tokenizer.add_special_tokens({"additional_special_tokens": [PLACEHOLDER]})
    return te


def make_photos(folder: Path, sizes=((300, 300), (320, 280), (280, 320)), seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def make_dm(folder: Path, cache: Path, vae, text_encoder, preset, **kw) -> SubjectDataModule:
    dm = SubjectDataModule(subject_dir=str(folder), class_word="teapot", cache_dir=str(cache), **kw)
    dm.setup("fit")
    dm.attach_encoders(vae=vae, text_encoder=text_encoder, preset=preset)
    return dm


def test_batches_hold_exactly_what_the_encoders_produce(tmp_path, vae, text_encoder, preset):
    make_photos(tmp_path / "subj")
    dm = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset, batch_size=2, repeats=2)
    loader = dm.train_dataloader()
    assert len(loader) == 3  # ceil(2 repeats * 3 photos / batch 2)
    batch = next(iter(loader))
    assert isinstance(batch, SubjectBatch) and len(batch) == 2

    schedule = get_schedule(1.0, preset.pn)
    H, W = image_size(schedule, vae.patch_size)
    L, d = num_tokens(schedule), vae.codebook_dim
    assert batch.schedule == schedule and batch.vae_schedule == schedule
    assert batch.pixels_B3HW.shape == (2, 3, H, W) and batch.pixels_B3HW.dtype == torch.float32
    assert -1.0 <= batch.pixels_B3HW.min() and batch.pixels_B3HW.max() <= 1.0
    assert batch.z_BdHW.shape == (2, d, *schedule[-1])
    assert batch.bits_BLd.shape == (2, L, d) and batch.bits_BLd.dtype == torch.uint8
    assert batch.x_BLd_wo_prefix.shape == (2, L - 1, d)

    # The cached tensors are the encoders' real outputs for these pixels.
    with torch.no_grad():
        z = vae.encode_raw(batch.pixels_B3HW)
    torch.testing.assert_close(batch.z_BdHW, z, rtol=1e-5, atol=1e-5)
    q = multiscale_quantize(batch.z_BdHW, schedule)
    assert torch.equal(batch.bits_BLd, q.bits_BLd)
    torch.testing.assert_close(batch.x_BLd_wo_prefix, q.x_BLd_wo_prefix)

    instance = "a photo of <placeholder> teapot"
    assert batch.instance_prompts == [instance] * 2 and batch.class_prompts == ["a photo of teapot"] * 2
    ref = text_encoder.encode([instance])
    n = int(ref.lengths_B[0])
    assert batch.instance_text.lengths_B.tolist() == [n, n]
    torch.testing.assert_close(batch.instance_text.features_BTC[0, :n], ref.features_BTC[0, :n])
    ids = text_encoder.tokenize([instance])["input_ids"][0].tolist()
    position = ids.index(text_encoder.tokenizer.convert_tokens_to_ids(PLACEHOLDER))
    assert batch.instance_placeholder_B.tolist() == [position, position]
    ref_cls = text_encoder.encode(["a photo of teapot"])
    torch.testing.assert_close(batch.class_text.features_BTC[1], ref_cls.features_BTC[0])

    moved = batch.to("cpu")
    assert isinstance(moved, SubjectBatch) and moved.paths == batch.paths


def test_second_run_builds_nothing_and_training_never_encodes(
    tmp_path, vae, text_encoder, preset, monkeypatch
):
    make_photos(tmp_path / "subj")
    first = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset)
    first.build_cache()
    n_prompts = 1 + 1 + 4  # instance, class, default val prompts
    assert (first.cache.stats.hits, first.cache.stats.misses) == (0, 3 + n_prompts)

    def forbidden(*args, **kwargs):
        raise AssertionError("a frozen encoder ran on fixed data")

    monkeypatch.setattr(vae, "encode_raw", forbidden)
    monkeypatch.setattr(text_encoder, "encode", forbidden)
    second = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset, repeats=3)
    batches = list(second.train_dataloader())
    val = list(second.val_dataloader())
    assert (second.cache.stats.hits, second.cache.stats.misses) == (3 + n_prompts, 0)
    assert len(batches) == 5 and all(isinstance(b, SubjectBatch) for b in batches)
    seen = {p for b in batches for p in b.paths}
    assert seen == {str(tmp_path / "subj" / f"{i:02d}.png") for i in range(3)}
    assert len(val) == 1 and isinstance(val[0], PromptBatch)
    assert val[0].prompts == [
        "a <placeholder> teapot on the beach",
        "a <placeholder> teapot on top of a wooden floor",
        "a <placeholder> teapot with a city in the background",
        "a red <placeholder> teapot",
    ]
    assert (val[0].placeholder_B >= 1).all()  # "a <placeholder> ...": right after the first token(s)


def test_new_vae_weights_miss_images_but_reuse_text(tmp_path, vae, text_encoder, preset):
    make_photos(tmp_path / "subj")
    make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset).build_cache()
    torch.manual_seed(1)
    other = BSQVAE(preset.vae).eval()  # different random weights: a different checkpoint
    dm = make_dm(tmp_path / "subj", tmp_path / "cache", other, text_encoder, preset)
    dm.build_cache()
    assert (dm.cache.stats.hits, dm.cache.stats.misses) == (6, 3)
    # An explicit checkpoint id replaces the fingerprint.
    dm2 = SubjectDataModule(
        subject_dir=str(tmp_path / "subj"), class_word="teapot", cache_dir=str(tmp_path / "c2")
    )
    dm2.attach_encoders(vae, text_encoder, preset, vae_id="infinity_vae_d32reg", text_encoder_id="flan-t5-xl")
    assert dm2.encoders.vae_id == "infinity_vae_d32reg"


def test_corrupt_cache_entry_is_rebuilt(tmp_path, vae, text_encoder, preset, caplog):
    make_photos(tmp_path / "subj")
    dm = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset)
    dm.build_cache()
    original = {str(v.path): v.bits_Ld.clone() for v in dm.views}
    files = sorted((tmp_path / "cache" / "image").rglob("*.safetensors"))
    assert len(files) == 3
    files[0].write_bytes(files[0].read_bytes()[:1000])  # truncated, e.g. by a crash of another tool
    with caplog.at_level(logging.WARNING, logger="varlit.data"):
        again = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset)
        again.build_cache()
    assert (again.cache.stats.corrupt, again.cache.stats.misses) == (1, 1)
    assert any(str(files[0]) in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    assert files[0].exists()
    assert all(torch.equal(v.bits_Ld, original[str(v.path)]) for v in again.views)


def test_bad_photo_loses_nothing_already_cached(tmp_path, vae, text_encoder, preset, caplog):
    make_photos(tmp_path / "subj")
    make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset).build_cache()
    before = {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*.safetensors")}
    (tmp_path / "subj" / "03.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(BadImageError, match="03.jpg"):
        make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset)
    assert {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*.safetensors")} == before
    with caplog.at_level(logging.WARNING, logger="varlit.data"):
        dm = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset, on_bad_image="skip")
        dm.build_cache()
    assert dm.cache.stats.misses == 0 and len(dm.photos) == 3
    assert any("skipping bad image" in r.getMessage() and "03.jpg" in r.getMessage() for r in caplog.records)


def test_small_photo_is_upscaled_with_a_warning(tmp_path, vae, text_encoder, preset, caplog):
    make_photos(tmp_path / "subj", sizes=((300, 300), (300, 300), (100, 80)))
    with caplog.at_level(logging.WARNING, logger="varlit.data"):
        dm = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset)
        dm.build_cache()
    msgs = [r.getMessage() for r in caplog.records if "upscaling" in r.getMessage()]
    assert len(msgs) == 1 and "02.png is 100x80, smaller than the 256x256" in msgs[0]
    assert all(v.pixels_3HW.shape == (3, 256, 256) for v in dm.views)


def test_aspect_auto_groups_batches_by_official_schedule(tmp_path, vae, text_encoder, preset):
    make_photos(tmp_path / "subj", sizes=((300, 300), (310, 290), (200, 400), (210, 400)))
    dm = make_dm(
        tmp_path / "subj",
        tmp_path / "cache",
        vae,
        text_encoder,
        preset,
        aspect="auto",
        batch_size=2,
        repeats=5,
    )
    batches = list(dm.train_dataloader())
    by_path = {Path(v.path).name: v for v in dm.views}
    assert by_path["00.png"].h_div_w == 1.0 and by_path["01.png"].h_div_w == 1.0
    assert by_path["02.png"].h_div_w == 2.0 and by_path["03.png"].h_div_w == 2.0
    tall = get_schedule(2.0, preset.pn)
    assert by_path["02.png"].pixels_3HW.shape == (3, *image_size(tall, vae.patch_size))
    assert {tuple(b.schedule) for b in batches} == {tuple(get_schedule(1.0, preset.pn)), tuple(tall)}
    for b in batches:
        assert b.bits_BLd.shape[1] == num_tokens(b.schedule)
        assert {by_path[Path(p).name].h_div_w for p in b.paths} == {
            1.0 if b.schedule[-1][0] == b.schedule[-1][1] else 2.0
        }


def test_flip_and_crop_augmentations_are_cached_views(tmp_path, vae, text_encoder, preset):
    make_photos(tmp_path / "subj", sizes=((300, 280), (280, 300)))
    kw = dict(min_images=2)
    plain = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset, **kw)
    plain.build_cache()
    aug = make_dm(
        tmp_path / "subj",
        tmp_path / "cache",
        vae,
        text_encoder,
        preset,
        augment_flip=True,
        augment_crop=True,
        crop_views=1,
        repeats=4,
        **kw,
    )
    aug.build_cache()
    assert len(aug.views) == 2 * (1 + 1) * 2
    assert aug.cache.stats.misses == 2 * 4 - 2  # the un-augmented views are reused
    for base in (v for v in aug.views if v.box.zoom == 1.0 and not v.box.flip):
        flipped = next(v for v in aug.views if v.path == base.path and v.box.flip and v.box.zoom == 1.0)
        assert torch.equal(flipped.pixels_3HW, base.pixels_3HW.flip(-1))
        crop = next(v for v in aug.views if v.path == base.path and v.box.zoom > 1.0 and not v.box.flip)
        assert crop.pixels_3HW.shape == base.pixels_3HW.shape and not torch.equal(
            crop.pixels_3HW, base.pixels_3HW
        )
    refs = aug.reference_pixels()
    assert len(refs) == 2 and all(torch.equal(r, p) for r, p in zip(refs, plain.reference_pixels()))
    # One epoch (4 batches of 2) is one shuffled pass over the 8 views: every view is served once.
    served = [
        ((px + 1) * 127.5).round().to(torch.uint8) for b in aug.train_dataloader() for px in b.pixels_B3HW
    ]
    assert sorted(hash(t.numpy().tobytes()) for t in served) == sorted(
        hash(v.pixels_3HW.numpy().tobytes()) for v in aug.views
    )


def _mini_dreambench(folder: Path) -> Path:
    """Two subjects in the official layout and prompts-file format, for machines without DreamBench."""
    rng = np.random.default_rng(3)
    for subject in ("dog", "teapot"):
        (folder / subject).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(
                folder / subject / f"{i:02d}.jpg"
            )
    lists = "\n".join(
        f"{title}\n\nprompt_list = [\n'a {{0}} {{1}} in the snow'.format(unique_token, class_token)\n]\n"
        for title in ("Object Prompts", "Live Subject Prompts")
    )
    (folder / "prompts_and_classes.txt").write_text(
        f"Classes\n\nsubject_name,class\ndog,dog\nteapot,teapot\n\n{lists}"
    )
    return folder


@pytest.mark.parametrize("source", ["shared", "synthesised"])
def test_dreambench_subject_end_to_end(tmp_path, vae, text_encoder, preset, source):
    if source == "shared":
        root = REAL_DREAMBENCH
        if not (root / "prompts_and_classes.txt").is_file():
            pytest.skip(f"no DreamBench at {root} (set {DREAMBENCH_ENV})")
    else:
        root = _mini_dreambench(tmp_path / "db")
    dm = SubjectDataModule(
        subject="dog", dreambench_root=str(root), cache_dir=str(tmp_path / "cache"), batch_size=2
    )
    dm.setup("fit")
    assert dm.subject.class_word == "dog" and dm.subject.live
    assert dm.val_prompts[-1] == "a <placeholder> dog wearing a santa hat"
    dm.attach_encoders(vae, text_encoder, preset)
    batch = next(iter(dm.train_dataloader()))
    assert batch.bits_BLd.shape == (2, num_tokens(get_schedule(1.0, preset.pn)), vae.codebook_dim)
    assert all(Path(p).parent == root / "dog" for p in batch.paths)
    assert dm.cache.stats.misses == len(dm.photos) + 6 and len(dm.photos) >= 3
    prior = dm.class_prompt_batch()
    assert prior.prompts == ["a photo of dog"] and prior.text.features_BTC.shape[-1] == text_encoder.channels
    with pytest.raises(ValueError, match="unknown DreamBench subject 'dragon'.*valid names: .*dog"):
        SubjectDataModule(subject="dragon", dreambench_root=str(root)).setup("fit")


def test_arguments_are_readable_by_the_cli_parser(tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SubjectDataModule, "data")
    cfg = parser.parse_args(
        [
            "--data.subject_dir",
            str(tmp_path),
            "--data.class_word",
            "teapot",
            "--data.aspect",
            "auto",
            "--data.on_bad_image",
            "skip",
            "--data.class_templates",
            '["a photo of {class}", "a {class}"]',
            "--data.augment_flip",
            "true",
            "--data.batch_size",
            "4",
        ]
    )
    dm = SubjectDataModule(**cfg.data.as_dict())
    assert (dm.aspect, dm.on_bad_image, dm.augment_flip, dm.batch_size) == ("auto", "skip", True, 4)
    assert dm.class_templates == ["a photo of {class}", "a {class}"]
    with pytest.raises(argparse.ArgumentError, match="aspect"):
        parser.parse_args(["--data.subject", "dog", "--data.aspect", "wide"])


def test_constructor_and_order_errors(tmp_path, vae, text_encoder, preset):
    make_photos(tmp_path / "subj")
    with pytest.raises(SubjectError, match="give exactly one subject"):
        SubjectDataModule()
    with pytest.raises(SubjectError, match="give exactly one subject"):
        SubjectDataModule(subject_dir=str(tmp_path / "subj"), class_word="dog", subject="dog")
    for word in (None, "", "   "):
        with pytest.raises(SubjectError, match="no class word given"):
            SubjectDataModule(subject_dir=str(tmp_path / "subj"), class_word=word)
    with pytest.raises(ValueError, match="aspect must be 'square' or 'auto'"):
        SubjectDataModule(subject_dir=str(tmp_path / "subj"), class_word="dog", aspect="wide")  # type: ignore[arg-type]
    dm = SubjectDataModule(
        subject_dir=str(tmp_path / "subj"), class_word="dog", cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(RuntimeError, match="call datamodule.attach_encoders"):
        dm.train_dataloader()
    with pytest.raises(SubjectError, match="fewer than min_images=4"):
        SubjectDataModule(subject_dir=str(tmp_path / "subj"), class_word="dog", min_images=4).setup("fit")
    missing = SubjectDataModule(subject_dir=str(tmp_path / "gone"), class_word="dog")
    with pytest.raises(SubjectError, match="gone does not exist"):
        missing.setup("fit")


def test_tokenizer_change_misses_only_the_prompts_it_tokenizes_differently(
    tmp_path, vae, text_encoder, preset
):
    make_photos(tmp_path / "subj")
    make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset).build_cache()
    plain = build_tiny_text_encoder(channels=preset.infinity.text_channels)  # same weights, no <placeholder>
    dm = make_dm(tmp_path / "subj", tmp_path / "cache", vae, plain, preset)
    batch = next(iter(dm.train_dataloader()))
    # Images and the class prompt are reused; the instance and 4 validation prompts hold the placeholder.
    assert (dm.cache.stats.hits, dm.cache.stats.misses) == (3 + 1, 1 + 4)
    assert batch.instance_placeholder_B.tolist() == [-1, -1]


def test_grouped_batch_sampler_is_balanced_and_reproducible():
    sampler = GroupedBatchSampler([[0, 1, 2], [3]], batch_size=2, num_batches=40, num_class_prompts=3, seed=7)
    first = list(sampler)
    second = list(sampler)  # a new epoch: a new order
    assert len(first) == 40 and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    for batch in first:
        assert len({v in (0, 1, 2) for v, _ in batch}) == 1  # one group per batch
        assert all(0 <= c < 3 for _, c in batch)
    counts = np.bincount([v for b in first for v, _ in b if v < 3], minlength=3)
    assert counts.max() - counts.min() <= 1  # shuffled passes per group: every view equally often


@pytest.mark.parametrize("sizes,batch_size", [([5], 2), ([3], 2), ([5], 3), ([4], 4), ([7], 4), ([5, 3], 2)])
def test_grouped_batch_sampler_never_repeats_a_photo_within_a_batch(sizes, batch_size):
    """Batches that straddle two shuffled passes draw no photo twice (issue: 12 of 250 batches with 5
    photos and batch 2 did); every pass of a group visits each of its photos once; batch k stays a pure
    function of (seed, k)."""
    groups, first = [], 0
    for size in sizes:
        groups.append(list(range(first, first + size)))
        first += size
    n = 250
    sampler = GroupedBatchSampler(groups, batch_size, n, num_class_prompts=2, seed=3)
    batches = list(sampler)
    assert all(len({v for v, _ in b}) == batch_size for b in batches)
    for group in groups:
        flat = [v for b in batches for v, _ in b if v in group]
        for p in range(len(flat) // len(group)):  # each complete pass visits every photo exactly once
            assert sorted(flat[p * len(group) : (p + 1) * len(group)]) == group
    fresh = GroupedBatchSampler(groups, batch_size, n, num_class_prompts=2, seed=3)
    assert [fresh.batch(k) for k in (200, 7, 123)] == [batches[200], batches[7], batches[123]]


class _ProbeModule(pl.LightningModule):
    """Lends the encoders in setup(), as the real module does, and checks what training receives."""

    def __init__(self, vae, text_encoder, preset):
        super().__init__()
        self.vae, self.text_encoder, self.preset = vae, text_encoder, preset
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[SubjectBatch] = []
        self.val_seen: list[PromptBatch] = []

    def setup(self, stage: str) -> None:
        self.trainer.datamodule.attach_encoders(self.vae, self.text_encoder, self.preset)

    def training_step(self, batch, batch_idx):
        assert isinstance(batch, SubjectBatch)
        self.seen.append(batch)
        return (self.weight - batch.bits_BLd.float().mean()) ** 2

    def validation_step(self, batch, batch_idx):
        assert isinstance(batch, PromptBatch)
        self.val_seen.append(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_with_encoders_attached_in_module_setup(tmp_path, vae, text_encoder, preset):
    make_photos(tmp_path / "subj")
    dm = SubjectDataModule(
        subject_dir=str(tmp_path / "subj"),
        class_word="teapot",
        cache_dir=str(tmp_path / "cache"),
        batch_size=2,
        repeats=1,
    )
    module = _ProbeModule(vae, text_encoder, preset)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=dm)
    assert len(module.seen) == 3 and len(module.val_seen) == 1  # 2 batches per epoch, validation after each
    assert module.seen[0].instance_text.features_BTC.shape[-1] == text_encoder.channels


def test_tiny_vae_is_the_presets(preset, vae):
    # Guard against the preset drifting away from what these tests assume (256 px, 7 scales).
    assert vae.patch_size == preset.vae.patch_size and len(get_schedule(1.0, preset.pn)) == 7


def test_cache_folder_is_shared_between_subjects_for_text(tmp_path, vae, text_encoder, preset):
    make_photos(tmp_path / "a", seed=1)
    make_photos(tmp_path / "b", seed=2)
    make_dm(tmp_path / "a", tmp_path / "cache", vae, text_encoder, preset).build_cache()
    other = make_dm(tmp_path / "b", tmp_path / "cache", vae, text_encoder, preset)
    other.build_cache()
    assert (other.cache.stats.hits, other.cache.stats.misses) == (6, 3)  # same class: prompts reused


def test_another_preset_with_the_same_vae_misses_the_image_cache(tmp_path, vae, text_encoder, preset):
    """Image entries are keyed by the preset: two presets never share token maps, even when they share
    a VAE checkpoint (the bit layout of a token can differ, e.g. with 2x2 patchify)."""
    import dataclasses

    make_photos(tmp_path / "subj")
    make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset).build_cache()
    twin = dataclasses.replace(preset, name="tiny-twin")  # identical in everything but the name
    dm = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, twin)
    dm.build_cache()
    assert (dm.cache.stats.hits, dm.cache.stats.misses) == (6, 3)  # text reused, every image re-encoded
    again = make_dm(tmp_path / "subj", tmp_path / "cache", vae, text_encoder, preset)
    again.build_cache()
    assert again.cache.stats.misses == 0  # the first preset's entries are still there, untouched


def test_photo_captions_give_each_photo_its_own_instance_prompt(tmp_path, vae, text_encoder, preset):
    paths = make_photos(tmp_path / "subj")
    (tmp_path / "subj" / "captions.txt").write_text(
        "# one prompt per photo\n00.png: a photo of a <placeholder> {class} at night\n"
        "02.png: a photo of a <placeholder> {class} in the snow\n"
    )
    dm = make_dm(
        tmp_path / "subj",
        tmp_path / "cache",
        vae,
        text_encoder,
        preset,
        batch_size=3,
        repeats=4,
        photo_captions="captions.txt",
    )
    expected = {
        "00.png": "a photo of a <placeholder> teapot at night",
        "01.png": "a photo of <placeholder> teapot",  # not listed: the instance template
        "02.png": "a photo of a <placeholder> teapot in the snow",
    }
    seen = set()
    for batch in dm.train_dataloader():
        for path, prompt, i in zip(batch.paths, batch.instance_prompts, range(len(batch))):
            assert prompt == expected[Path(path).name]
            seen.add(Path(path).name)
            # The features are that prompt's own encoding, placeholder position included.
            ref = text_encoder.encode([prompt])
            n = int(ref.lengths_B[0])
            assert int(batch.instance_text.lengths_B[i]) == n
            torch.testing.assert_close(batch.instance_text.features_BTC[i, :n], ref.features_BTC[0, :n])
            ids = text_encoder.tokenize([prompt])["input_ids"][0].tolist()
            assert int(batch.instance_placeholder_B[i]) == ids.index(
                text_encoder.tokenizer.convert_tokens_to_ids(PLACEHOLDER)
            )
    assert seen == {p.name for p in paths}


@pytest.mark.parametrize(
    "text, message",
    [
        ("00.png a photo of <placeholder> {class}\n", "expected '<photo file>: <prompt template>'"),
        ("07.png: a photo of <placeholder> {class}\n", "'07.png' is not one of the subject's photos"),
        ("00.png: a photo of a {class}\n", "the prompt 'a photo of a {class}' has no <placeholder>"),
    ],
)
def test_photo_captions_errors_name_the_file_and_line(tmp_path, text, message):
    make_photos(tmp_path / "subj")
    (tmp_path / "subj" / "captions.txt").write_text("01.png: a <placeholder> {class}\n" + text)
    dm = SubjectDataModule(
        subject_dir=str(tmp_path / "subj"),
        class_word="teapot",
        cache_dir=str(tmp_path),
        photo_captions="captions.txt",
    )
    dm.setup("fit")
    with pytest.raises(SubjectError, match=r"captions.txt, line 2: " + re.escape(message)):
        _ = dm.photo_prompts
    missing = SubjectDataModule(
        subject_dir=str(tmp_path / "subj"),
        class_word="teapot",
        cache_dir=str(tmp_path),
        photo_captions="nope.txt",
    )
    missing.setup("fit")
    with pytest.raises(SubjectError, match=r"data.photo_captions: .*nope.txt does not exist"):
        _ = missing.photo_prompts


def test_validation_draws_each_prompt_several_times(tmp_path, vae, text_encoder, preset):
    make_photos(tmp_path / "subj")
    prompts = ["a <placeholder> {class} on the beach", "a red <placeholder> {class}"]
    dm = make_dm(
        tmp_path / "subj",
        tmp_path / "cache",
        vae,
        text_encoder,
        preset,
        val_prompts=prompts,
        val_samples_per_prompt=3,
        val_batch_size=4,
    )
    batches = list(dm.val_dataloader())
    got = [p for b in batches for p in b.prompts]
    assert got == [p.replace("{class}", "teapot") for p in prompts for _ in range(3)]
    assert [len(b) for b in batches] == [4, 2]
    with pytest.raises(ValueError, match="val_samples_per_prompt must be at least 1"):
        SubjectDataModule(subject_dir=str(tmp_path / "subj"), class_word="teapot", val_samples_per_prompt=0)
