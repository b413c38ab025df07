"""`varlit world report`: the measured quality of the shipped world, as numbers and one picture.

- VAE: reconstruction PSNR through the multi-scale quantiser, on fresh renders (a stream no run used).
- Judge: accuracy per head on fresh renders.
- Base model: CFG samples for prompts "a photo of a {colour} {class} {context}"; the judge checks that the
  class, the colour and the context are the prompt's, on seen and on held-out combinations.
- Speed: one batch of 64 prompts on this machine.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write_json, atomic_write_text
from ..models.presets import WORLD_DIR, get_preset
from ..models.sampler import SamplingConfig, to_uint8
from .judge import judge_accuracy, judge_images, load_judge
from .pool import cached_pool, render_pool
from .scenes import CLASSES, COLOUR_NAMES, CONTEXT_NAMES, SceneSpec, full_caption, held_out_triples

WORLD_SAMPLING = get_preset("world").default_sampling()


def prompt_set(num: int, seed: int, held_out: bool) -> list[SceneSpec]:
    """`num` (class, colour, context) specs: seen combinations drawn at random, or the held-out ones in turn."""
    rng = np.random.default_rng([seed, 7])
    hold = sorted(held_out_triples())
    if held_out:
        return [SceneSpec(*hold[i % len(hold)]) for i in range(num)]
    out = []
    while len(out) < num:
        t = (CLASSES[rng.integers(8)], COLOUR_NAMES[rng.integers(8)], CONTEXT_NAMES[rng.integers(8)])
        if t not in held_out_triples():
            out.append(SceneSpec(*t))
    return out


@torch.no_grad()
def reconstruct(pipe, pool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, VAE reconstructions through the multi-scale quantiser), both [N, 3, 64, 64] in [-1, 1]."""
    from ..models.quantizer import encode_code
    from ..pretrain.data import to_unit_range

    x = to_unit_range(pool.pixels)
    sched = pipe.preset.vae_schedule(pipe.schedule())
    recon = [
        pipe.vae.decode(encode_code(pipe.vae.encode_raw(x[s : s + 64]), sched)) for s in range(0, len(x), 64)
    ]
    return x, torch.cat(recon)


def vae_psnr(pipe, num: int, cache_dir: str | None, seed: int = 4000) -> float:
    """Mean PSNR of VAE reconstructions (through the quantiser) of `num` fresh renders of stream `seed`."""
    from ..pretrain.vae_module import psnr

    pool = cached_pool(cache_dir, num, seed) if cache_dir else render_pool(num, seed)
    x, recon = reconstruct(pipe, pool)
    return float(psnr(recon, x).mean())


def judge_on_reconstructions(
    pipe, judge, num: int, cache_dir: str | None, seed: int = 4000
) -> dict[str, float]:
    """The judge's accuracy on VAE reconstructions of fresh renders: the most a sample of the world can score."""
    pool = cached_pool(cache_dir, num, seed) if cache_dir else render_pool(num, seed)
    verdict = judge_images(judge, reconstruct(pipe, pool)[1])
    return {
        k: float((verdict.top(k) == torch.from_numpy(getattr(pool, k))).float().mean())
        for k in ("cls", "colour", "context")
    }


@torch.no_grad()
def recognition(pipe, judge, specs: list[SceneSpec], sampling: SamplingConfig, seed: int, batch: int = 64):
    """Samples for the specs' full captions and the judge's agreement with each attribute."""
    images, hits = [], {"cls": 0, "colour": 0, "context": 0, "all": 0}
    for s in range(0, len(specs), batch):
        chunk = specs[s : s + batch]
        out = pipe.generate([full_caption(sp) for sp in chunk], sampling, seed=seed + s)
        verdict = judge_images(judge, out.images_B3HW)
        ok = {
            "cls": verdict.top("cls") == torch.tensor([CLASSES.index(sp.cls) for sp in chunk]),
            "colour": verdict.top("colour") == torch.tensor([COLOUR_NAMES.index(sp.colour) for sp in chunk]),
            "context": verdict.top("context")
            == torch.tensor([CONTEXT_NAMES.index(sp.context) for sp in chunk]),
        }
        ok["all"] = ok["cls"] & ok["colour"] & ok["context"]
        for k in hits:
            hits[k] += int(ok[k].sum())
        images.append(out.images_B3HW)
    return {k: v / len(specs) for k, v in hits.items()}, torch.cat(images)


def mean_pairwise_distance(emb_GSE: torch.Tensor) -> float:
    """Mean cosine distance 1 - cos between the S embeddings of each group, averaged over the G groups."""
    S = emb_GSE.shape[1]
    cos_GSS = emb_GSE @ emb_GSE.transpose(1, 2)
    off_diagonal = ~torch.eye(S, dtype=torch.bool)
    return float((1 - cos_GSS[:, off_diagonal]).mean())


def mean_pairwise_rms(images_GS3HW: torch.Tensor) -> float:
    """Mean RMS pixel difference (images in [-1, 1]) between the S images of each group, over the G groups."""
    G, S = images_GS3HW.shape[:2]
    x = images_GS3HW.float().flatten(2)
    d_GSS = (x[:, :, None] - x[:, None]).pow(2).mean(-1).sqrt()
    return float(d_GSS[:, ~torch.eye(S, dtype=torch.bool)].mean())


@torch.no_grad()
def diversity(pipe, judge, specs: list[SceneSpec], sampling: SamplingConfig, seeds: int, seed: int) -> dict:
    """How different the samples of one prompt are across seeds, against renders of the same spec.

    Mean pairwise judge-embedding distance (1 - cosine) among `seeds` samples of each prompt, and the same
    figure for `seeds` fresh renders of each spec (other placements and context details): a model that
    ignores its noise scores near 0, one as varied as the world itself scores near the renders' figure.
    Returns the two figures and the samples [len(specs), seeds, 3, H, W].
    """
    from ..pretrain.data import to_unit_range
    from .scenes import random_placement, render

    samples = torch.stack(
        [
            pipe.generate([full_caption(sp)] * seeds, sampling, seed=seed + i).images_B3HW
            for i, sp in enumerate(specs)
        ]
    )
    renders = []
    for i, sp in enumerate(specs):
        rng = np.random.default_rng([seed, 11, i])
        specs_i = [SceneSpec(sp.cls, sp.colour, sp.context, *random_placement(rng)) for _ in range(seeds)]
        renders.append(to_unit_range(np.stack([render(x, rng) for x in specs_i])))
    renders_NS = torch.stack(renders)
    n, e = len(specs), judge.cfg.embed_dim
    return {
        "samples": mean_pairwise_distance(judge.embed(samples.flatten(0, 1)).view(n, seeds, e)),
        "renders": mean_pairwise_distance(judge.embed(renders_NS.flatten(0, 1)).view(n, seeds, e)),
        # the judge is trained to ignore where an object is: pixels show position and size
        "samples_pixel_rms": mean_pairwise_rms(samples),
        "renders_pixel_rms": mean_pairwise_rms(renders_NS),
        "prompts": n,
        "seeds": seeds,
    }, samples


def world_report(
    out: str = str(WORLD_DIR),
    figure: str = "docs/world_samples.png",
    num_prompts: int = 200,
    num_held_out: int = 62,
    psnr_images: int = 256,
    judge_images_fresh: int = 1024,
    seed: int = 0,
    cache_dir: str = "runs/.cache/world",
    cfg: float | list[float] = WORLD_SAMPLING.cfg,
    tau: float | list[float] = WORLD_SAMPLING.tau,
    diversity_prompts: int = 32,
) -> dict:
    """Measure the shipped world and write `report.json` and `report.md` beside it, plus a labelled grid."""
    from ..pipeline import Pipeline
    from .figures import labelled_grid, save_grid

    torch.manual_seed(seed)
    sampling = SamplingConfig(cfg=cfg, tau=tau, top_k=WORLD_SAMPLING.top_k, top_p=WORLD_SAMPLING.top_p)
    pipe = Pipeline.load("world", device="cpu", dtype="float32")
    judge = load_judge(Path(out) / "judge.safetensors")
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()}",
        "sampling": asdict(sampling),
    }
    report["vae_psnr_db"] = vae_psnr(pipe, psnr_images, cache_dir)
    report["judge_accuracy_vae_recon"] = judge_on_reconstructions(pipe, judge, psnr_images, cache_dir)
    report["judge_accuracy_fresh"] = judge_accuracy(
        judge, cached_pool(cache_dir, judge_images_fresh, 5000, 0.35)
    )
    seen_specs = prompt_set(num_prompts, seed, held_out=False)
    report["base_seen"], seen_imgs = recognition(pipe, judge, seen_specs, sampling, seed)
    held_specs = prompt_set(num_held_out, seed, held_out=True)
    report["base_held_out"], held_imgs = recognition(pipe, judge, held_specs, sampling, seed + 10_000)
    report["diversity"], div_imgs = diversity(
        pipe, judge, seen_specs[:diversity_prompts], sampling, 4, seed + 20_000
    )
    prompts64 = [full_caption(sp) for sp in seen_specs[:64]]
    t = time.perf_counter()
    pipe.generate(prompts64, sampling, seed=1)
    report["seconds_64_prompts"] = time.perf_counter() - t
    report["counts"] = {
        "seen_prompts": num_prompts,
        "held_out_prompts": num_held_out,
        "psnr_images": psnr_images,
        "judge_images": judge_images_fresh,
    }
    atomic_write_json(Path(out) / "report.json", report)
    atomic_write_text(Path(out) / "report.md", report_markdown(report))
    rows, labels, caps = [], [], []
    for name, specs, imgs in (("seen", seen_specs, seen_imgs), ("held-out", held_specs, held_imgs)):
        for r in range(2):
            idx = range(r * 6, r * 6 + 6)
            rows.append([to_uint8(imgs[i : i + 1])[0].numpy() for i in idx])
            labels.append(f"world base model, {name} combinations")
            caps.append([full_caption(specs[i]).replace("a photo of a ", "") for i in idx])
    for r in range(2):  # two prompts, a row of their 4 seeds each
        rows.append([to_uint8(div_imgs[r, k : k + 1])[0].numpy() for k in range(4)])
        labels.append("world base model, one prompt, 4 seeds")
        caps.append(
            [full_caption(seen_specs[r]).replace("a photo of a ", "") + f" (seed {k})" for k in range(4)]
        )
    save_grid(figure, labelled_grid(rows, labels, caps, scale=2))
    print(report_markdown(report))
    return report


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report_markdown(r: dict) -> str:
    s, h = r["base_seen"], r["base_held_out"]
    j = r["judge_accuracy_fresh"]
    v = r["judge_accuracy_vae_recon"]
    n = r["counts"]
    d = r["diversity"]
    return "\n".join(
        [
            "| measure | value |",
            "|---|---|",
            f"| VAE reconstruction PSNR ({n['psnr_images']} fresh renders) | {r['vae_psnr_db']:.2f} dB |",
            f"| judge accuracy, {n['judge_images']} fresh renders (class / colour / context / subject) | "
            f"{_pct(j['cls'])} / {_pct(j['colour'])} / {_pct(j['context'])} / {_pct(j['subject'])} |",
            f"| judge accuracy on VAE reconstructions of {n['psnr_images']} fresh renders (class / colour / context) | "
            f"{_pct(v['cls'])} / {_pct(v['colour'])} / {_pct(v['context'])} |",
            f"| base model, {n['seen_prompts']} prompts: class / colour / context / all three | "
            f"{_pct(s['cls'])} / {_pct(s['colour'])} / {_pct(s['context'])} / {_pct(s['all'])} |",
            f"| base model, {n['held_out_prompts']} held-out prompts: class / colour / context / all three | "
            f"{_pct(h['cls'])} / {_pct(h['colour'])} / {_pct(h['context'])} / {_pct(h['all'])} |",
            f"| diversity: mean pairwise judge-embedding distance, {d['seeds']} seeds x {d['prompts']} prompts "
            f"(samples / fresh renders of the same specs) | {d['samples']:.3f} / {d['renders']:.3f} |",
            f"| diversity: mean pairwise RMS pixel difference, same images (samples / renders) | "
            f"{d['samples_pixel_rms']:.3f} / {d['renders_pixel_rms']:.3f} |",
            f"| sampling 64 prompts at once ({r['machine']}) | {r['seconds_64_prompts']:.2f} s |",
            f"| sampling | cfg {r['sampling']['cfg']}, tau {r['sampling']['tau']} |",
            "",
        ]
    )
