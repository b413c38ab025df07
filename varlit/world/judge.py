"""The judge: a small CNN that varlit trains on world renders, with the generator's ground truth as labels.

It reads a 64 px image and predicts the object's class, colour and context and which subject (if any) it
shows; its penultimate features are an embedding whose cosine plays the role DINO and CLIP image features
play on DreamBench. The generative model never sees a subject before tuning; the judge sees all of them.

Training images are augmented (shifts, blur, noise, colour jitter) so the judge also reads the softer,
noisier images a small generator draws; accuracy is reported on fresh, unaugmented renders.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from varlit.pretrain.optim import lr_factor

from .pool import NO_SUBJECT, ScenePool, cached_pool
from .scenes import CLASSES, COLOUR_NAMES, CONTEXT_NAMES
from .subjects import SUBJECT_NAMES

HEADS: dict[str, int] = {
    "cls": len(CLASSES),
    "colour": len(COLOUR_NAMES),
    "context": len(CONTEXT_NAMES),
    "subject": len(SUBJECT_NAMES) + 1,  # index 0: no subject
}


@dataclass
class JudgeConfig:
    width: int = 32
    embed_dim: int = 128


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU())


class Judge(nn.Module):
    """64 px image in [-1, 1] -> embedding [B, E] and logits per head."""

    def __init__(self, cfg: JudgeConfig | None = None):
        super().__init__()
        self.cfg = cfg or JudgeConfig()
        w = self.cfg.width
        self.features = nn.Sequential(
            _conv(3, w),
            _conv(w, w, 2),  # 32
            _conv(w, 2 * w),
            _conv(2 * w, 2 * w, 2),  # 16
            _conv(2 * w, 4 * w),
            _conv(4 * w, 4 * w, 2),  # 8
            _conv(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * w, self.cfg.embed_dim),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(self.cfg.embed_dim, n) for k, n in HEADS.items()})

    def forward(self, x_B3HW: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if x_B3HW.shape[-2:] != (64, 64):
            x_B3HW = F.interpolate(x_B3HW, size=(64, 64), mode="area")
        emb = self.features(x_B3HW)
        return emb, {k: head(F.silu(emb)) for k, head in self.heads.items()}

    @torch.no_grad()
    def embed(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        """L2-normalised embedding (what subject similarity is measured on)."""
        return F.normalize(self(x_B3HW)[0], dim=-1)


def pool_labels(pool: ScenePool) -> dict[str, torch.Tensor]:
    return {
        "cls": torch.from_numpy(pool.cls),
        "colour": torch.from_numpy(pool.colour),
        "context": torch.from_numpy(pool.context),
        "subject": torch.from_numpy(pool.subject - NO_SUBJECT),  # -1 (none) -> 0
    }


def augment(x_B3HW: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shifts of up to 4 px, random blur, colour jitter and noise: what generated images look like."""
    B = x_B3HW.shape[0]
    dy, dx = (torch.randint(-4, 5, (2,), generator=g)).tolist()
    x = torch.roll(F.pad(x_B3HW, (4, 4, 4, 4), mode="replicate"), (dy, dx), (2, 3))[..., 4:-4, 4:-4]
    blur = torch.rand(B, generator=g) < 0.5
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        x = torch.where(
            blur[:, None, None, None], F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3), x
        )
    gain = 1 + 0.15 * (torch.rand(B, 3, 1, 1, generator=g) - 0.5)
    bias = 0.1 * (torch.rand(B, 3, 1, 1, generator=g) - 0.5)
    noise = 0.06 * torch.rand(B, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return (x * gain + bias + noise).clamp(-1, 1)


def _pixels(pool: ScenePool, idx: torch.Tensor) -> torch.Tensor:
    from varlit.pretrain.data import to_unit_range

    return to_unit_range(pool.pixels[idx.numpy()])


@torch.no_grad()
def judge_accuracy(
    judge: Judge, pool: ScenePool, batch_size: int = 256, images: torch.Tensor | None = None
) -> dict[str, float]:
    """Per-head accuracy on a pool (colour is scored on ordinary scenes only: subjects have their own);
    `images` replaces the pool's pixels (e.g. their VAE reconstructions), same order."""
    judge.eval()
    labels = pool_labels(pool)
    hits = {k: 0.0 for k in HEADS}
    ordinary = int((labels["subject"] == 0).sum())
    for s in range(0, len(pool), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(pool)))
        _, logits = judge(_pixels(pool, idx) if images is None else images[idx])
        for k in HEADS:
            ok = logits[k].argmax(-1) == labels[k][idx]
            if k == "colour":
                ok = ok & (labels["subject"][idx] == 0)
            hits[k] += float(ok.sum())
    return {k: hits[k] / (ordinary if k == "colour" else len(pool)) for k in HEADS}


def train_judge(
    out: str = "runs/world/judge",
    num_images: int = 12288,
    subject_share: float = 0.35,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 32,
    seed: int = 0,
    eval_images: int = 1024,
    cache_dir: str = "runs/.cache/world",
    vae_weights: str | None = None,
    recon_share: float = 0.5,
    init: str | None = None,
    bf16: bool = False,
) -> dict[str, float]:
    """Train the judge on a pool of renders (ordinary scenes and subjects), report accuracy on fresh ones.

    With `vae_weights` (the world VAE), a `recon_share` of the training images are the VAE's
    reconstructions of the pool (computed once): the judge then reads what the generator can draw,
    not only sharp renders. With `init` (a judge.safetensors) training continues from that judge: the
    shipped judge is the clean-render judge fine-tuned this way, since every image the generator draws is
    a VAE decode, and a judge trained only on sharp renders misses subjects in them (measured: it names
    0 to 47 % of subject reconstructions, 15 % on average, against 100 % of clean renders).
    Writes `out/judge.safetensors` and `out/judge.json` (config and accuracy per head on `eval_images`
    renders of a stream the judge never trained on, and on their VAE reconstructions when `vae_weights`
    is given). `bf16` runs the forward under bf16 autocast (the CPU's bf16 convolutions are 2-3x faster;
    the losses stay float32); accuracy is always measured in float32.
    """
    from safetensors.torch import save_file

    from varlit.io import atomic_write, atomic_write_json

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    pool = cached_pool(cache_dir, num_images, seed + 2000, subject_share)
    labels = pool_labels(pool)
    recon = vae_reconstructions(vae_weights, pool) if vae_weights else None
    judge = load_judge(init).train().requires_grad_(True) if init else Judge(JudgeConfig(width=width))
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup, 0.02))
    t0 = time.time()
    judge.train()
    for step in range(steps):
        idx = torch.randint(0, len(pool), (batch_size,), generator=g)
        x = _pixels(pool, idx)
        if recon is not None:
            use = torch.rand(batch_size, generator=g) < recon_share
            x = torch.where(use[:, None, None, None], recon[idx], x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _, logits = judge(augment(x, g))
        loss = sum(F.cross_entropy(logits[k].float(), labels[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"judge step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True
            )
    fresh = cached_pool(cache_dir, eval_images, seed + 3000, subject_share)
    acc = judge_accuracy(judge, fresh)
    print("judge accuracy on fresh renders: " + ", ".join(f"{k} {v:.2%}" for k, v in acc.items()))
    acc_recon = None
    if vae_weights:
        acc_recon = judge_accuracy(judge, fresh, images=vae_reconstructions(vae_weights, fresh))
        print(
            "judge accuracy on their VAE reconstructions: "
            + ", ".join(f"{k} {v:.2%}" for k, v in acc_recon.items())
        )
    out_dir = Path(out)
    state = {k: v.detach().contiguous() for k, v in judge.state_dict().items()}
    atomic_write(out_dir / "judge.safetensors", lambda tmp: save_file(state, tmp))
    meta = {
        "config": asdict(judge.cfg),
        "accuracy_fresh": acc,
        "accuracy_fresh_reconstructions": acc_recon,
        "trained_on_vae_reconstructions": recon_share if vae_weights else 0.0,
        "init": init,
        "eval_images": eval_images,
        "train_seconds": round(time.time() - t0, 1),
        "steps": steps,
        "bf16": bf16,
    }
    atomic_write_json(out_dir / "judge.json", meta)
    return acc


@torch.no_grad()
def vae_reconstructions(vae_weights: str, pool: ScenePool, batch: int = 128) -> torch.Tensor:
    """The world VAE's reconstructions (through the multi-scale quantiser) of every pool image."""
    from varlit.models.loading import load_checkpoint
    from varlit.models.presets import get_preset
    from varlit.models.quantizer import encode_code
    from varlit.models.vae import BSQVAE

    p = get_preset("world")
    vae = load_checkpoint(BSQVAE(p.vae), vae_weights, p.hf_repo, subkey="vae", dtype=torch.float32).eval()
    sched = p.vae_schedule(p.schedule())
    out = []
    for s in range(0, len(pool), batch):
        x = _pixels(pool, torch.arange(s, min(s + batch, len(pool))))
        out.append(vae.decode(encode_code(vae.encode_raw(x), sched)))
    return torch.cat(out)


def load_judge(path: str | Path) -> Judge:
    """The judge from `judge.safetensors` with its `judge.json` beside it (strict, safe loading)."""
    from varlit.models.loading import load_into, read_state_dict

    path = Path(path)
    meta_path = path.with_suffix(".json")
    cfg = JudgeConfig(**json.loads(meta_path.read_text())["config"]) if meta_path.exists() else JudgeConfig()
    judge = Judge(cfg)
    load_into(judge, read_state_dict(path), str(path))
    return judge.eval().requires_grad_(False)


@dataclass
class JudgeVerdict:
    """The judge's reading of a batch of images."""

    embedding: torch.Tensor  # [B, E], L2-normalised
    probs: dict[str, torch.Tensor] = field(default_factory=dict)  # head -> [B, n] softmax

    def top(self, head: str) -> torch.Tensor:
        return self.probs[head].argmax(-1)


@torch.no_grad()
def judge_images(judge: Judge, images_B3HW: torch.Tensor, batch_size: int = 256) -> JudgeVerdict:
    embs, probs = [], {k: [] for k in HEADS}
    for s in range(0, len(images_B3HW), batch_size):
        emb, logits = judge(images_B3HW[s : s + batch_size].float())
        embs.append(F.normalize(emb, dim=-1))
        for k in HEADS:
            probs[k].append(logits[k].softmax(-1))
    return JudgeVerdict(torch.cat(embs), {k: torch.cat(v) for k, v in probs.items()})


def subject_index(name: str | None) -> int:
    """The subject head's index of a subject (0: none)."""
    return 0 if name is None else SUBJECT_NAMES.index(name) + 1


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
