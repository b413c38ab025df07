"""`SubjectDataModule`: the few subject photos and the fixed prompts, served as precomputed batches.

How it meets the frozen encoders. The VAE and T5 belong to the LightningModule (they are large and must not
be loaded twice), so the data module does not take them as constructor arguments. Instead the module lends
them once, typically in its `setup()`:

    datamodule.attach_encoders(vae=self.vae, text_encoder=self.text_encoder, preset=self.preset)

Lightning calls `datamodule.setup()` before the module's `setup()`, so `setup()` here only finds and validates
the photos (bad input fails fast, before any model work). The cache is built lazily by the first
`train_dataloader()` / `val_dataloader()` call, which Lightning makes after the model is on its device, so
the encoders run on the accelerator; `build_cache()` may also be called directly (scripts, tests).

Aspect ratios. With `aspect="square"` every photo is resized and centre-cropped to the square schedule.
With `aspect="auto"` each photo keeps the official schedule nearest to its own h/w; a batch must share one
schedule, so batches are drawn from one aspect group at a time (weighted by group size).

Epochs. One epoch is `ceil(repeats * num_photos / batch_size)` batches; training length is best set with
`trainer.max_steps`. With `augment_flip` / `augment_crop`, each photo has a fixed set of cached views
(flipped, zoom-cropped) and every sample draws one of them.

The batch order and collation are in `loaders.py`; the prompt templates and photo captions in
`templates.py`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from varlit.data import dreambench, world_subjects
from varlit.data.batches import PromptBatch, SubjectBatch
from varlit.data.cache import TensorCache
from varlit.data.images import DEFAULT_MAX_PIXELS, CropBox, uint8_to_pm1
from varlit.data.loaders import (
    Collate,
    GroupedBatchSampler,
    ResumableDataLoader,
    ViewDataset,
    identity_collate,
)
from varlit.data.precompute import (
    Aspect,
    Encoders,
    ImageView,
    PromptFeatures,
    encode_prompts,
    encode_views,
    plan_views,
    stack_prompts,
)
from varlit.data.subjects import (
    PLACEHOLDER,
    OnBadImage,
    Subject,
    SubjectError,
    SubjectPhoto,
    check_class_word,
    load_subject_photos,
)
from varlit.data.templates import (
    DEFAULT_CLASS_TEMPLATES,
    DEFAULT_INSTANCE_TEMPLATE,
    DEFAULT_VAL_PROMPTS_LIVE,
    DEFAULT_VAL_PROMPTS_OBJECT,
    describe_captions,
    filename_phrase,
    fill_template,
    read_photo_captions,
)

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path("~/.cache/varlit/tokens").expanduser()


class SubjectDataModule(LightningDataModule):
    """Few-shot subject photos + fixed prompts, precomputed by the frozen encoders and cached on disk.

    Choose the subject with `subject_dir` + `class_word` (your own photos) or `subject` (+ `dreambench_root`,
    default `$VARLIT_DREAMBENCH_DIR` or `data/dreambench`) for a DreamBench subject, or `subject="world:<name>"`
    for a subject of varlit's world (shipped photos, its class word; world prompts by default, see
    `world_subjects`). Templates put the
    class word at `{class}`; `<placeholder>` marks the learned subject token. `pn` (pixel budget: 0.06M,
    0.25M, 0.60M, 1M) defaults to the attached preset's; the resolution follows from it and the VAE stride.
    `cache_dir` defaults to `~/.cache/varlit/tokens`. `photo_captions` names a file in the subject folder
    that gives some photos their own instance prompt, one `<file name>: <template>` per line (the template
    holds `<placeholder>` and may use `{class}`); the others keep `instance_template`. ARBooth and DreamBooth
    use one prompt for every photo; naming each photo's background lets the model put what is constant (the
    subject) on the placeholder and leave the background to the words that describe it.
    `caption_from_filename` does the same from the file names (`on_the_beach.jpg` -> the instance prompt
    followed by "on the beach"). Without either, every photo trains on the one instance prompt and the fit
    prints a line saying so, with the background risk (measured on the world: docs/results.md).
    On a world preset (`world`, `world-*`) your own subject's validation prompts default to the world
    contexts its captions do not name: the world cannot draw DreamBench's backgrounds.
    `val_samples_per_prompt` draws each validation prompt
    that many times (one RNG per batch, so the copies differ): validation metrics read off one sample per
    prompt are too noisy to follow a run by.
    """

    def __init__(
        self,
        subject_dir: str | None = None,
        class_word: str | None = None,
        dreambench_root: str | None = None,
        subject: str | None = None,
        live: bool | None = None,
        pn: str | None = None,
        aspect: Aspect = "square",
        instance_template: str = DEFAULT_INSTANCE_TEMPLATE,
        instance_prompt: str | None = None,
        photo_captions: str | None = None,
        caption_from_filename: bool = False,
        class_templates: list[str] | None = None,
        val_prompts: list[str] | None = None,
        batch_size: int = 2,
        val_batch_size: int = 4,
        val_samples_per_prompt: int = 1,
        repeats: int = 100,
        on_bad_image: OnBadImage = "error",
        min_images: int = 3,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        augment_flip: bool = False,
        augment_crop: bool = False,
        crop_views: int = 4,
        resample: Literal["bilinear", "bicubic", "lanczos"] = "bilinear",
        cache_dir: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if (subject_dir is None) == (subject is None):
            raise SubjectError(
                "give exactly one subject: subject_dir + class_word (your photos) or subject (+ dreambench_root) "
                f"for DreamBench, or subject='world:<name>'; got subject_dir={subject_dir!r}, subject={subject!r} "
                "(on the `varlit` command line the subject you give replaces the config's; "
                "set the other to null: --data.subject null or --data.subject_dir null)"
            )
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if aspect not in ("square", "auto"):
            raise ValueError(f"aspect must be 'square' or 'auto', got {aspect!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("val_batch_size", val_batch_size),
            ("val_samples_per_prompt", val_samples_per_prompt),
            ("repeats", repeats),
            ("min_images", min_images),
            ("max_image_pixels", max_image_pixels),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if crop_views < 0 or num_workers < 0:
            raise ValueError(f"crop_views and num_workers must be >= 0, got {crop_views}, {num_workers}")
        if subject_dir is not None:
            check_class_word(class_word, f"subject_dir={subject_dir}")
        if photo_captions is not None and caption_from_filename:
            raise ValueError(
                f"data.photo_captions={photo_captions!r} and data.caption_from_filename=true both caption the "
                "photos; keep one (--data.photo_captions null, or --data.caption_from_filename false)"
            )
        if instance_prompt is not None and PLACEHOLDER in instance_prompt:
            raise ValueError(
                f"data.instance_prompt={instance_prompt!r} holds {PLACEHOLDER}: it is for a rare-token "
                f"identifier without learned vectors (e.g. 'a photo of sks {{class}}'); for the learned token "
                "use data.instance_template"
            )
        if instance_prompt is None and PLACEHOLDER not in instance_template:
            log.warning(
                "instance_template %r has no %s: the learned subject token is never used",
                instance_template,
                PLACEHOLDER,
            )
        self.save_hyperparameters()
        self.subject_dir = subject_dir
        self.class_word = class_word
        self.dreambench_root = dreambench_root
        self.subject_name = subject
        self.live = live
        self.pn = pn
        self.aspect = aspect
        self.instance_template = instance_template
        self.instance_prompt_given = instance_prompt
        self.photo_captions = photo_captions
        self.caption_from_filename = caption_from_filename
        self.class_templates = (
            list(class_templates) if class_templates is not None else list(DEFAULT_CLASS_TEMPLATES)
        )
        self._class_templates_given = class_templates is not None
        if not self.class_templates:
            raise ValueError("class_templates is empty; prior distillation needs at least one class prompt")
        self.val_templates = val_prompts
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.val_samples_per_prompt = val_samples_per_prompt
        self.repeats = repeats
        self.on_bad_image = on_bad_image
        self.min_images = min_images
        self.max_image_pixels = max_image_pixels
        self.augment_flip = augment_flip
        self.augment_crop = augment_crop
        self.crop_views = crop_views
        self.resample = resample
        self.cache = TensorCache(cache_dir if cache_dir is not None else default_cache_dir())
        self.num_workers = num_workers
        self.seed = seed
        self.batches_consumed = 0  # training batches used so far (drives the batch order; checkpointed)

        self.subject: Subject | None = None
        self.photos: list[SubjectPhoto] = []
        self.encoders: Encoders | None = None
        self.views: list[ImageView] = []
        self.prompt_features: dict[str, PromptFeatures] = {}

    # ------------------------------------------------------------------ subject and prompts

    def resolve_subject(self) -> Subject:
        if self.subject_dir is not None:
            folder = Path(self.subject_dir).expanduser()
            word = check_class_word(self.class_word, f"subject_dir={folder}")
            return Subject(name=folder.name, class_word=word, folder=folder, live=bool(self.live))
        if world_subjects.is_world_spec(self.subject_name):
            found = world_subjects.world_subject(self.subject_name)
        else:
            root = Path(self.dreambench_root) if self.dreambench_root else dreambench.default_root()
            found = dreambench.dreambench_subject(root, self.subject_name, live=self.live)
        if self.class_word:
            found = Subject(
                found.name, check_class_word(self.class_word, "class_word"), found.folder, found.live
            )
        return found

    def _require_subject(self) -> Subject:
        if self.subject is None:
            self.setup("fit")
        assert self.subject is not None
        return self.subject

    @property
    def instance_prompt(self) -> str:
        class_word = self._require_subject().class_word
        if self.instance_prompt_given is not None:
            return fill_template(self.instance_prompt_given, class_word)
        return fill_template(self.instance_template, class_word)

    @property
    def identifier(self) -> str | None:
        """The rare token of a DreamBooth-style `instance_prompt`: the word right before the class word
        ("a photo of sks dog" -> "sks"). It stands where `<placeholder>` stands in captions and validation
        prompts; None when the subject is the learned token."""
        if self.instance_prompt_given is None:
            return None
        class_word = self._require_subject().class_word
        words = self.instance_prompt.split()
        at = [i for i, w in enumerate(words) if w.strip(".,") == class_word]
        if not at or at[0] == 0:
            raise SubjectError(
                f"data.instance_prompt={self.instance_prompt_given!r}: put the identifier right before the "
                f"class word {class_word!r}, e.g. 'a photo of sks {{class}}'"
            )
        return words[at[0] - 1]

    def _with_identifier(self, prompt: str) -> str:
        return prompt.replace(PLACEHOLDER, self.identifier) if self.identifier else prompt

    @property
    def photo_prompts(self) -> dict[str, str]:
        """Photo file name -> its own instance prompt, from `photo_captions` or the file names
        (`caption_from_filename`); empty without either option."""
        if self.caption_from_filename:
            self._require_subject()
            out = {}
            for photo in self.photos:
                phrase = filename_phrase(photo.path.name)
                if phrase:
                    out[photo.path.name] = f"{self.instance_prompt} {phrase}"
            return out
        if self.photo_captions is None:
            return {}
        subject = self._require_subject()
        return read_photo_captions(
            subject.folder / self.photo_captions,
            {p.path.name for p in self.photos},
            subject.class_word,
            self._with_identifier,
        )

    def caption_report(self) -> str:
        """One line: how the photos are captioned, and (with one prompt for all) the risk and the fixes."""
        prompts = self.photo_prompts
        folder = self._require_subject().folder
        return describe_captions(prompts, len(self.photos), self.photo_captions, self.instance_prompt, folder)

    @property
    def class_prompts(self) -> list[str]:
        subject = self._require_subject()
        templates = self.class_templates
        on_world = self.encoders is not None and world_subjects.is_world_preset(self.encoders.preset.name)
        if not self._class_templates_given and (
            on_world or world_subjects.world_subject_name(subject.name, subject.class_word)
        ):
            templates = [world_subjects.WORLD_CLASS_TEMPLATE]  # the world's own bare class caption
        return [fill_template(t, subject.class_word) for t in templates]

    @property
    def val_prompts(self) -> list[str]:
        subject = self._require_subject()
        templates = self.val_templates
        world_name = world_subjects.world_subject_name(subject.name, subject.class_word)
        if templates is None and world_name is not None:
            templates = world_subjects.world_val_templates(world_name)
        elif (
            templates is None
            and self.encoders is not None
            and world_subjects.is_world_preset(self.encoders.preset.name)
        ):
            templates = world_subjects.own_val_templates(list(self.photo_prompts.values()))
        elif templates is None:
            templates = DEFAULT_VAL_PROMPTS_LIVE if subject.live else DEFAULT_VAL_PROMPTS_OBJECT
        return [self._with_identifier(fill_template(t, subject.class_word)) for t in templates]

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Find and validate the photos (no model work); safe to call more than once."""
        if self.subject is not None:
            return
        subject = self.resolve_subject()
        self.photos = load_subject_photos(
            subject.folder, self.on_bad_image, min_images=self.min_images, max_pixels=self.max_image_pixels
        )
        self.subject = subject
        if self.batch_size > len(self.photos):
            log.warning(
                "batch_size %d exceeds the %d photos: batches will repeat photos",
                self.batch_size,
                len(self.photos),
            )
        log.info(
            "subject %s (%s, %s): %d photo(s) from %s",
            subject.name,
            subject.class_word,
            "live" if subject.live else "object",
            len(self.photos),
            subject.folder,
        )

    def attach_encoders(
        self,
        vae: torch.nn.Module,
        text_encoder: torch.nn.Module,
        preset: object,
        vae_id: str | None = None,
        text_encoder_id: str | None = None,
    ) -> None:
        """Lend the frozen VAE and T5 (and the model preset); ids default to weight fingerprints."""
        self.encoders = Encoders.create(
            vae, text_encoder, preset, vae_id=vae_id, text_encoder_id=text_encoder_id
        )
        self.views = []
        self.prompt_features = {}

    def build_cache(self) -> None:
        """Load every view and prompt encoding from the cache, building the missing ones."""
        if self.encoders is None:
            raise RuntimeError(
                "SubjectDataModule has no encoders: call datamodule.attach_encoders(vae=..., text_encoder=..., "
                "preset=...) (the LightningModule does this in its setup()) before asking for dataloaders"
            )
        if self.views and self.prompt_features:
            return
        self.setup("fit")
        pn = self.pn or self.encoders.preset.pn
        before = (self.cache.stats.hits, self.cache.stats.misses)
        t0 = time.perf_counter()
        plans = plan_views(
            self.photos,
            self.aspect,
            self.augment_flip,
            self.crop_views if self.augment_crop else 0,
            seed=self.seed,
        )
        self.views = encode_views(plans, self.encoders, self.cache, pn, self.resample)
        prompts = list(
            dict.fromkeys(
                [self.instance_prompt, *self.photo_prompts.values(), *self.class_prompts, *self.val_prompts]
            )
        )
        self.prompt_features = encode_prompts(prompts, self.encoders, self.cache)
        print(self.caption_report())
        stack_prompts([self.prompt_features[p] for p in prompts])  # fails early on a doubled placeholder
        hits, misses = self.cache.stats.hits - before[0], self.cache.stats.misses - before[1]
        log.info(
            "token cache %s: %d hit(s), %d built, %.2fs",
            self.cache.root,
            hits,
            misses,
            time.perf_counter() - t0,
        )

    def train_dataloader(self) -> DataLoader:
        self.build_cache()
        groups: dict[tuple, list[int]] = {}
        for i, view in enumerate(self.views):
            groups.setdefault(tuple(view.schedule), []).append(i)
        num_batches = math.ceil(self.repeats * len(self.photos) / self.batch_size)
        trainer = self.trainer  # set by Lightning on fit/validate; None standalone
        sampler = GroupedBatchSampler(
            list(groups.values()),
            self.batch_size,
            num_batches,
            len(self.class_templates),
            seed=self.seed,
            step_fn=lambda: self.batches_consumed,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        collate = Collate(
            self.views,
            self.prompt_features[self.instance_prompt],
            [self.prompt_features[p] for p in self.class_prompts],
            {name: self.prompt_features[p] for name, p in self.photo_prompts.items()},
        )
        loader = ResumableDataLoader(
            ViewDataset(len(self.views)),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        loader.position_owner = self
        return loader

    def val_dataloader(self) -> DataLoader | list:
        self.build_cache()
        prompts = [p for p in self.val_prompts for _ in range(self.val_samples_per_prompt)]
        batches = self.prompt_batches(prompts, self.val_batch_size)
        if not batches:
            return []
        return DataLoader(batches, batch_size=None, collate_fn=identity_collate)

    # ------------------------------------------------------------------ resumable batch order

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Counts training batches as they are *used* (prefetched ones do not count)."""
        trainer = self.trainer  # set by Lightning on fit/validate; None standalone
        if isinstance(batch, SubjectBatch) and trainer is not None and trainer.training:
            self.batches_consumed += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Saved in Lightning checkpoints: a resumed run continues with the batch it would have drawn next."""
        return {"batches_consumed": self.batches_consumed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.batches_consumed = int(state_dict.get("batches_consumed", 0))

    # ------------------------------------------------------------------ for the module and callbacks

    def prompt_batches(self, prompts: Sequence[str], batch_size: int) -> list[PromptBatch]:
        """Cached (or freshly cached) prompts in `PromptBatch`es on the square schedule."""
        self.build_cache()
        assert self.encoders is not None
        missing = [p for p in prompts if p not in self.prompt_features]
        if missing:
            self.prompt_features.update(encode_prompts(missing, self.encoders, self.cache))
        schedule = self.encoders.preset.schedule(1.0, self.pn or self.encoders.preset.pn)
        vae_schedule = self.encoders.preset.vae_schedule(schedule)
        out = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            text, placeholder = stack_prompts([self.prompt_features[p] for p in chunk])
            out.append(PromptBatch(chunk, text, placeholder, schedule, vae_schedule))
        return out

    def class_prompt_batch(self) -> PromptBatch:
        """All class-prior prompts with their features (e.g. to pre-sample a prior bank)."""
        return self.prompt_batches(self.class_prompts, len(self.class_prompts))[0]

    def reference_pixels(self) -> list[torch.Tensor]:
        """The un-augmented preprocessed photos, [3, H, W] in [-1, 1] (for DINO / CLIP-I references)."""
        self.build_cache()
        plain = [v for v in self.views if v.box == CropBox()]
        return [uint8_to_pm1(v.pixels_3HW) for v in plain]
