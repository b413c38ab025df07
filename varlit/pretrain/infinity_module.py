"""`InfinityPretrainModule`: trains the Infinity transformer from scratch (or continues / fully fine-tunes it).

Per batch of captioned images: the frozen VAE gives latents z; bitwise self-correction quantises them
into clean bit labels and (flipped) teacher-forcing inputs of every scale; the frozen T5 encodes the
captions (cached per caption: a caption set is small and fixed); the transformer is teacher-forced with
text-condition dropout (its `cond_drop_rate`, which is what makes classifier-free guidance possible) and
trained with the bitwise cross-entropy averaged over all tokens of all scales, as Infinity does.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import nn

from varlit.models.infinity import Infinity
from varlit.models.loading import load_checkpoint
from varlit.models.presets import get_preset
from varlit.models.text import TextBatch, TextEncoder
from varlit.models.vae import BSQVAE
from varlit.tuning.losses import bitwise_ce, per_scale_mean
from varlit.tuning.self_correction import SelfCorrectionConfig, self_correct

from .optim import PretrainOptimConfig, build_optimizer


def init_from_scratch(model: Infinity, std: float = 0.02) -> None:
    """Initialisation for training from scratch (PyTorch's defaults are tuned for other nets).

    Linear and embedding weights ~ N(0, std), biases 0; residual output projections scaled by
    1/sqrt(2 depth) so the residual stream does not grow with depth; the shared AdaLN starts near
    identity; the head starts small so initial logits are near 0 (every bit at probability 1/2).
    """
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
    depth_scale = 1 / math.sqrt(2 * model.cfg.depth)
    for block in model.blocks:
        for proj in (block.sa.proj, block.ca.proj, block.ffn.fc2):
            proj.weight.data.mul_(depth_scale)
    model.shared_ada_lin[1].weight.data.mul_(0.1)
    model.head_nm.ada_lin[1].weight.data.mul_(0.1)
    model.head.weight.data.mul_(0.1)


class InfinityPretrainModule(pl.LightningModule):
    """Train a preset's transformer on captioned images.

    Args:
        preset: architecture and scale schedule.
        weights: start from these transformer weights (None: `init_from_scratch`, seeded).
        vae_weights: the frozen tokenizer (required: a random VAE gives meaningless labels).
        text_encoder: the frozen T5 (folder or hub id; default: the preset's).
        self_correction: bit flipping on the inputs (Infinity's bitwise self-correction).
        cond_drop_rate: text-condition dropout (None: the preset's).
    """

    def __init__(
        self,
        preset: str = "world",
        weights: str | None = None,
        vae_weights: str | None = None,
        text_encoder: str | None = None,
        init_seed: int = 0,
        init_std: float = 0.02,
        cond_drop_rate: float | None = None,
        self_correction: SelfCorrectionConfig | None = None,
        optim: PretrainOptimConfig | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.preset = get_preset(preset)
        if cond_drop_rate is not None:
            self.preset.infinity.cond_drop_rate = cond_drop_rate
        self.optim_cfg = optim or PretrainOptimConfig()
        self.optim_cfg.validate()
        self.sc_cfg = self_correction or SelfCorrectionConfig()
        self.sc_cfg.validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.model = Infinity(self.preset.infinity)
            if weights is None:
                init_from_scratch(self.model, init_std)
        if weights is not None:
            load_checkpoint(
                self.model, weights, self.preset.hf_repo, dtype=torch.float32
            )  # float32 master weights
        vae_weights = vae_weights or self.preset.vae_weights
        if vae_weights is None:
            raise ValueError("model.vae_weights: pretraining the transformer needs a trained VAE")
        # Frozen helpers are plain attributes: not in the optimizer, checkpoints or .train().
        vae = BSQVAE(self.preset.vae)
        self._frozen = {
            "vae": load_checkpoint(vae, vae_weights, self.preset.hf_repo, subkey="vae", dtype=torch.float32)
            .eval()
            .requires_grad_(False),
            "text": TextEncoder.from_pretrained(
                text_encoder or self.preset.text_encoder, max_length=self.preset.infinity.text_maxlen
            ),
        }
        self._text_cache: dict[str, torch.Tensor] = {}
        # Latents z of the fixed image sets, filled as images are first seen (train and val apart).
        self._latent_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.schedule = self.preset.schedule()
        self.vae_schedule = self.preset.vae_schedule(self.schedule)

    @property
    def vae(self) -> BSQVAE:
        return self._frozen["vae"]

    @property
    def text_encoder(self) -> TextEncoder:
        return self._frozen["text"]

    def on_fit_start(self) -> None:
        self.vae.to(self.device)

    def encode_captions(self, captions: list[str]) -> TextBatch:
        """T5 features, computed once per distinct caption and kept on the CPU."""
        missing = sorted({c for c in captions if c not in self._text_cache})
        if missing:
            feats = self.text_encoder.encode(missing)
            for c, f, n in zip(missing, feats.features_BTC, feats.lengths_B):
                self._text_cache[c] = f[: int(n)].clone()
        rows = [self._text_cache[c] for c in captions]
        T = max(len(r) for r in rows)
        out = torch.zeros(len(rows), T, rows[0].shape[-1])
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return TextBatch(out, torch.tensor([len(r) for r in rows])).to(self.device)

    @torch.no_grad()
    def latents(self, batch: dict, split: str) -> torch.Tensor:
        """Float32 VAE latents z of the batch's images, encoded once per image of the split.

        The encoder is frozen and the image sets are fixed, so every epoch after the first reads z from
        memory. It always runs in float32, outside any autocast, so the bit labels are the ones the
        tuning pipeline computes for the same image.
        """
        pixels, index = batch["pixels"], batch.get("index")
        with torch.autocast(pixels.device.type, enabled=False):
            if index is None:
                return self.vae.encode_raw(pixels.float())
            size = len(
                self.trainer.datamodule.train_set if split == "train" else self.trainer.datamodule.val_set
            )
            if split not in self._latent_cache:
                d, (H, W) = self.vae.codebook_dim, self.vae_schedule[-1]
                self._latent_cache[split] = (torch.zeros(size, d, H, W), torch.zeros(size, dtype=torch.bool))
            z_cache, seen = self._latent_cache[split]
            index = index.cpu()
            new = ~seen[index]
            if new.any():
                z_cache[index[new]] = self.vae.encode_raw(pixels[new.to(pixels.device)].float()).cpu()
                seen[index[new]] = True
            return z_cache[index].to(pixels.device)

    def tokens(self, z_BdHW: torch.Tensor, flip: bool):
        with torch.no_grad():
            cfg = self.sc_cfg if flip else SelfCorrectionConfig(enabled=False)
            return self_correct(z_BdHW, self.vae_schedule, cfg, patchify=self.preset.patchify)

    def _step(self, batch: dict, train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        toks = self.tokens(self.latents(batch, "train" if train else "val"), flip=train)
        text = self.encode_captions(batch["captions"])
        logits = self.model(text, toks.x_BLd_wo_prefix, self.schedule, drop_condition=train)
        per_token = bitwise_ce(logits, toks.bits_BLd)
        pairs = logits.detach().float().view(*logits.shape[:2], -1, 2)
        correct = (pairs.argmax(-1) == toks.bits_BLd.long()).float().mean(-1)
        return per_token.mean(), per_token, correct

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, per_token, correct = self._step(batch, train=True)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bit_acc", correct.mean())
        if batch_idx % 50 == 0:
            for s, v in enumerate(per_scale_mean(per_token.detach(), self.schedule).tolist()):
                self.log(f"train_scale/loss_s{s}", v)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, per_token, correct = self._step(batch, train=False)
        n = len(batch["captions"])
        self.log("val/loss", loss, prog_bar=True, batch_size=n)
        self.log("val/bit_acc", correct.mean(), batch_size=n)
        for s, v in enumerate(per_scale_mean(per_token, self.schedule).tolist()):
            self.log(f"val_scale/loss_s{s}", v, batch_size=n)

    def configure_optimizers(self) -> dict:
        return build_optimizer(
            self.model.parameters(), self.optim_cfg, int(self.trainer.estimated_stepping_batches)
        )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.optim_cfg.grad_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm"
            )

    def export_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
