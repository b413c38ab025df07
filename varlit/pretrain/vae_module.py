"""`VAEPretrainModule`: trains the BSQ-VAE tokenizer on images, through its multi-scale bitwise quantiser.

Loss (per batch of images x in [-1, 1], latents z = E(x), code = multi-scale BSQ of z with the
straight-through estimator, reconstruction x' = D(code)):

    L = w1 |x - x'|_1 + w2 |x - x'|^2 + beta |z - sg(code)|^2 + gamma (H_token - H_batch)

The commitment term keeps the encoder near its codes; the BSQ entropy term (per-bit estimate with soft
bits sigmoid(k u)) makes each token's bits confident (low H_token) while the batch uses both values of
every bit (high H_batch). Infinity's tokenizer also uses perceptual (LPIPS) and adversarial losses; both
need pretrained networks or long, unstable training and are left out so the world converges on a CPU.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from varlit.models.loading import load_checkpoint
from varlit.models.presets import get_preset
from varlit.models.quantizer import encode_code
from varlit.models.vae import BSQVAE

from .optim import PretrainOptimConfig, build_optimizer


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


def bit_entropies(u_BdHW: torch.Tensor, sharpness: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean per-token bit entropy, mean entropy of the batch-average bit) in nats, from soft bits."""
    # float32: in bf16, 1 - 1e-6 rounds to 1 and the clamp below no longer keeps log(1 - q) finite
    p = torch.sigmoid(sharpness * u_BdHW.float() * u_BdHW.shape[1] ** 0.5)

    def h(q: torch.Tensor) -> torch.Tensor:
        q = q.clamp(1e-6, 1 - 1e-6)
        return -(q * q.log() + (1 - q) * (1 - q).log())

    return h(p).mean(), h(p.mean((0, 2, 3))).mean()


class VAEPretrainModule(pl.LightningModule):
    """Train (or continue training) a preset's BSQ-VAE.

    Args:
        preset: whose VAE architecture and scale schedule to use.
        vae_weights: start from these weights (file or hub name); None: seeded random init.
        l1_weight, l2_weight: reconstruction terms.
        commit_weight: beta of the commitment term.
        entropy_weight: gamma of the BSQ entropy term (0 switches it off).
        entropy_sharpness: k of the soft bits.
    """

    def __init__(
        self,
        preset: str = "world",
        vae_weights: str | None = None,
        init_seed: int = 0,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        commit_weight: float = 0.25,
        entropy_weight: float = 0.01,
        entropy_sharpness: float = 2.0,
        optim: PretrainOptimConfig | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.preset = get_preset(preset)
        self.optim_cfg = optim or PretrainOptimConfig(lr=1e-3, weight_decay=0.0, grad_clip=1.0)
        self.optim_cfg.validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.vae = BSQVAE(self.preset.vae)
        if vae_weights is not None:
            self.vae = load_checkpoint(
                self.vae, vae_weights, self.preset.hf_repo, subkey="vae", dtype=torch.float32
            )
        self.vae.train().requires_grad_(True)
        self.vae_schedule = self.preset.vae_schedule(self.preset.schedule())

    def reconstruct(self, x_B3HW: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.vae.encode_raw(x_B3HW)
        code = encode_code(z, self.vae_schedule)  # straight-through: quantize_scale passes gradients
        # losses in float32 whatever the autocast dtype of the convolutions
        return (
            self.vae.decoder(code).float(),
            z.float(),
            code.float(),
            F.normalize(z.float(), dim=1, eps=1e-12),
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["pixels"]
        recon, z, code, u = self.reconstruct(x)
        hp = self.hparams
        l1 = (recon - x).abs().mean()
        l2 = (recon - x).pow(2).mean()
        commit = (z - code.detach()).pow(2).mean()
        h_token, h_batch = bit_entropies(u, hp.entropy_sharpness)
        loss = hp.l1_weight * l1 + hp.l2_weight * l2 + hp.commit_weight * commit
        if hp.entropy_weight:
            loss = loss + hp.entropy_weight * (h_token - h_batch)
        self.log_dict(
            {
                "train/loss": loss,
                "train/l1": l1,
                "train/commit": commit,
                "train/h_token": h_token,
                "train/h_batch": h_batch,
                "train/psnr": psnr(recon.detach().clamp(-1, 1), x).mean(),
            },
            prog_bar=False,
        )
        self.log("psnr", psnr(recon.detach().clamp(-1, 1), x).mean(), prog_bar=True, logger=False)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["pixels"]
        recon = self.reconstruct(x)[0].clamp(-1, 1)
        self.log("val/psnr", psnr(recon, x).mean(), prog_bar=True, batch_size=len(x))
        self.log("val/l1", (recon - x).abs().mean(), batch_size=len(x))

    def configure_optimizers(self) -> dict:
        return build_optimizer(
            self.vae.parameters(), self.optim_cfg, int(self.trainer.estimated_stepping_batches)
        )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.optim_cfg.grad_clip:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.optim_cfg.grad_clip, gradient_clip_algorithm="norm"
            )

    def export_state(self) -> dict[str, torch.Tensor]:
        """The VAE's state dict under its checkpoint names (what `load_checkpoint(..., subkey='vae')` reads)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.vae.state_dict().items()}
