"""Validation of a tuning run: the grids' images, the validation losses, and the samples the metrics callback
scores (the grid prompts, the subject photos and samples of the bare class prompt, for PRES).

`ValidationSampler` is a plain object owned by the LightningModule. It keeps what one validation produced and
works through the module it is handed, the way a callback would (its student, VAE, subject vectors, autocast,
`instance_loss`, `prior_batch`, `prior_loss`): it imports nothing of the module.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.infinity import Infinity
from ..models.sampler import SampleOutput, SamplingConfig, sample
from ..models.text import TextBatch
from .subject_embedding import PLACEHOLDER


class ValidationSampler:
    """What the current validation produced; reset when a validation epoch starts.

    Args:
        class_samples: samples of the bare class prompt per validation (drift metric PRES); 0: none.
    """

    def __init__(self, class_samples: int = 4):
        self.class_samples = class_samples
        self.outputs: list[dict[str, Any]] = []  # per validation batch: prompts and images
        self._samples = None

    def reset(self) -> None:
        self.outputs = []
        self._samples = None

    @torch.no_grad()
    def generate(
        self,
        module,
        text: TextBatch,
        placeholder_B: torch.Tensor | None,
        schedule,
        seed: int | None = None,
        sampling: SamplingConfig | None = None,
        model: Infinity | None = None,
    ) -> SampleOutput:
        """Images from the module's current student (or `model`) with the subject vectors spliced in."""
        if placeholder_B is not None:
            text = module.instance_text(text, placeholder_B)
        g = torch.Generator(device=module.device).manual_seed(module.val_seed if seed is None else seed)
        with module.autocast():
            return sample(
                model or module.student,
                module.vae,
                text,
                schedule,
                sampling or module.val_sampling,
                generator=g,
                patchify=module.preset.patchify,
            )

    def sample_grid(self, module, batch) -> None:
        """The validation grid's images of one batch of prompts (kept for the sample and metric callbacks)."""
        out = self.generate(module, batch.text, batch.placeholder_B, batch.schedule)
        self.outputs.append({"prompts": list(batch.prompts), "images": out.images_B3HW.detach()})

    def losses(self, module) -> tuple[dict[str, torch.Tensor], int] | None:
        """Instance (and prior) losses without flipping or dropout, per scale, on the first subject batch,
        with the batch size to log them under; None without a data module that has training batches."""
        dm = getattr(module.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_dataloader"):
            return None
        batch = next(iter(dm.train_dataloader())).to(module.device)
        l_inst, inst_scales = module.instance_loss(batch, None, self_correct_inputs=False)
        logs = {"val/inst_loss": l_inst}
        logs.update({f"val/inst_loss_scale{k:02d}": v for k, v in enumerate(inst_scales)})
        if module.uses_prior:
            g = torch.Generator(device=module.device).manual_seed(module.val_seed)
            pb, text = module.prior_batch(batch, g)
            l_prior, prior_scales = module.prior_loss(pb, text, batch.schedule)
            # A KL is >= 0; float rounding of two equal distributions gives about -1e-9: show 0.
            l_prior, prior_scales = l_prior.clamp_min(0), prior_scales.clamp_min(0)
            logs["val/prior_loss"] = l_prior
            logs.update({f"val/prior_kl_scale{k:02d}": v for k, v in enumerate(prior_scales)})
        return logs, len(batch)

    def samples(self, module):
        """This validation's samples for the metrics callback: the grid prompts, the subject photos and
        samples of the bare class prompt from the tuned model (for PRES); generated once per validation."""
        from ..eval.metrics import SubjectSamples

        if self._samples is not None:
            return self._samples
        if not self.outputs:
            raise RuntimeError("no validation samples yet: run a validation epoch first")
        dm = module.trainer.datamodule
        images = torch.cat([o["images"] for o in self.outputs])
        prompts = [p for o in self.outputs for p in o["prompts"]]
        texts = [
            p.replace(PLACEHOLDER, "").replace("  ", " ").strip() for p in prompts
        ]  # CLIP cannot read it
        class_images = self.class_images(module, dm) if self.class_samples > 0 else None
        reference = [r.to(module.device) for r in dm.reference_pixels()]
        self._samples = SubjectSamples(images, prompts, reference, class_images, texts)
        return self._samples

    def class_images(self, module, dm) -> torch.Tensor:
        """`class_samples` images of the bare class prompt(s) from the tuned model, seeded apart from the grids."""
        pb = dm.class_prompt_batch().to(module.device)
        reps = -(-self.class_samples // len(pb))
        text = TextBatch.cat([pb.text] * reps).index(slice(0, self.class_samples))
        return self.generate(module, text, None, pb.schedule, seed=module.val_seed + 1).images_B3HW
