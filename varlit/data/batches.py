"""What the data module hands the LightningModule: a training batch and a validation batch.

Both have `.to(device)`, which Lightning's batch transfer calls directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from varlit.models.schedules import Schedule
from varlit.models.text import TextBatch


@dataclass
class SubjectBatch:
    """One training step's data; every tensor is precomputed by the frozen encoders (nothing to encode).

    All samples of a batch share one aspect template, hence one `schedule`.
    """

    pixels_B3HW: torch.Tensor  # float in [-1, 1], the preprocessed photos (for logging and metrics)
    z_BdHW: torch.Tensor  # float32 raw VAE features (input of bitwise self-correction)
    bits_BLd: torch.Tensor  # uint8 {0, 1} clean bit labels of every token of every scale
    x_BLd_wo_prefix: torch.Tensor  # float32 [B, L-1, d'] clean teacher-forcing inputs
    instance_text: TextBatch  # T5 features of the instance prompt, one row per sample
    instance_placeholder_B: torch.Tensor  # int64 row of the `<placeholder>` token per sample, -1 if none
    class_text: TextBatch  # T5 features of the class-prior prompts (prior distillation), one per sample
    instance_prompts: list[str]
    class_prompts: list[str]
    schedule: Schedule  # transformer token grids, coarse to fine
    vae_schedule: Schedule  # VAE latent grids (twice as fine per side with 2x2 patchify)
    paths: list[str] = field(default_factory=list)  # source photo of each sample

    def __len__(self) -> int:
        return self.bits_BLd.shape[0]

    def to(self, device: torch.device | str) -> SubjectBatch:
        return SubjectBatch(
            pixels_B3HW=self.pixels_B3HW.to(device),
            z_BdHW=self.z_BdHW.to(device),
            bits_BLd=self.bits_BLd.to(device),
            x_BLd_wo_prefix=self.x_BLd_wo_prefix.to(device),
            instance_text=self.instance_text.to(device),
            instance_placeholder_B=self.instance_placeholder_B.to(device),
            class_text=self.class_text.to(device),
            instance_prompts=self.instance_prompts,
            class_prompts=self.class_prompts,
            schedule=self.schedule,
            vae_schedule=self.vae_schedule,
            paths=self.paths,
        )


@dataclass
class PromptBatch:
    """Validation prompts for sample grids, with their cached T5 features and the square schedule."""

    prompts: list[str]
    text: TextBatch
    placeholder_B: torch.Tensor  # int64 row of the `<placeholder>` token per prompt, -1 if none
    schedule: Schedule
    vae_schedule: Schedule

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: torch.device | str) -> PromptBatch:
        return PromptBatch(
            self.prompts,
            self.text.to(device),
            self.placeholder_B.to(device),
            self.schedule,
            self.vae_schedule,
        )
