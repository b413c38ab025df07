"""The engine of `varlit eval`: sample every subject x prompt x seed on ONE base model, then score the files.

1. Plan (no model work, so bad input fails in seconds; `plan.py`): resolve each subject (DreamBench name
   or the data config's folder), its photos, its adapter file and its prompts.
2. Generate: the base model is loaded once; each subject's adapter is copied onto it in place
   (`load_adapter`; `restore_base` undoes it), never reloaded. Per seed, the subject's prompts are sampled
   in fixed chunks of `batch_size` (KV-cached sampler). PNGs land in `images/<subject>/<slug>/s<seed>.png`
   (`store.py`) next to a `settings.json` fingerprint (model, adapter hash, sampling, batch mates,
   dtype). A rerun keeps every valid PNG whose fingerprint matches and samples only the chunks with a
   missing image; because a chunk is always the same prompts with the same seed, a resumed run produces
   the same images as an uninterrupted one.
3. Score: samples, the subject's photos (preprocessed as for training, saved to `_reference/`) and the
   class-prompt samples (`_class/`) are read back from disk and squashed to 256 px with PIL bicubic (the
   reference protocol), then `SubjectMetrics` computes DINO / CLIP-I / CLIP-T per prompt, PRES and DIV.
4. Report (`report.py`): metrics.json / .csv / .md and the sample grids.

Differences from the released ARBooth scripts (DESIGN.md §1): samples are PNG, not JPEG (quality 95);
reference photos are the training crops rather than the raw photos; PRES samples are drawn in batches
(chunk k of the class prompt uses seed k) instead of one image per seed; CLIP-T text: see `prompts`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.images import file_sha256, resize_and_crop, to_uint8_tensor
from ..io import save_png
from ..loggers import RunConfig
from ..models.sampler import to_uint8
from ..models.schedules import image_size, nearest_h_div_w
from ..pipeline import Pipeline
from .config import EvalConfig
from .judge import JUDGE_METRIC_NAMES, PROMPT_METRICS, judge_path
from .metrics import METRIC_NAMES, SubjectMetrics, SubjectSamples, SubjectScores
from .plan import BASE_ADAPTER as BASE_ADAPTER  # re-exported: `varlit eval` and tests import them here
from .plan import DEFAULT_ADAPTER as DEFAULT_ADAPTER
from .plan import ModelSource, SubjectPlan, plan_subjects
from .preprocess import load_images
from .prompts import EvalPrompt
from .report import write_reports
from .store import CLASS_DIR, REFERENCE_DIR, ImageStore, valid_png
from .tiny_backbones import TINY_NOTE, is_tiny

FINGERPRINT_FORMAT = "varlit-eval-images/1"


@dataclass
class Timing:
    generated: int = 0  # images the model sampled this run
    written: int = 0  # new PNG files (a chunk with one missing image is sampled whole)
    reused: int = 0  # PNGs kept from an earlier run (matching settings)
    generation_s: float = 0.0
    scored: int = 0  # sample images (prompt + class) the metrics encoded
    metrics_s: float = 0.0
    model_load_s: float = 0.0
    backbone_load_s: float = 0.0
    adapter_s: float = 0.0  # swapping adapters in place on the one base model

    def as_dict(self) -> dict[str, Any]:
        def rate(n: int, s: float) -> float | None:
            return round(n / s, 3) if n and s > 0 else None

        return {
            "generation": {
                "images": self.generated,
                "written": self.written,
                "reused": self.reused,
                "seconds": round(self.generation_s, 3),
                "images_per_s": rate(self.generated, self.generation_s),
            },
            "metrics": {
                "images": self.scored,
                "seconds": round(self.metrics_s, 3),
                "images_per_s": rate(self.scored, self.metrics_s),
            },
            "model_load_s": round(self.model_load_s, 3),
            "backbone_load_s": round(self.backbone_load_s, 3),
            "adapter_swap_s": round(self.adapter_s, 3),
        }


@dataclass
class EvalResult:
    out: Path
    metrics: dict[str, Any]  # the content of metrics.json
    timing: Timing
    files: dict[str, Path] = field(default_factory=dict)


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def base_fingerprint(
    pipe: Pipeline, model: ModelSource, pn: str, adapter: Path | None, cfg: EvalConfig
) -> dict:
    return {
        "format": FINGERPRINT_FORMAT,
        "preset": pipe.preset.name,
        "weights": model.weights or pipe.preset.weights or f"random-init(seed={model.init_seed})",
        "vae_weights": model.vae_weights or pipe.preset.vae_weights,
        "text_encoder": model.text_encoder or pipe.preset.text_encoder,
        "adapter_sha256": file_sha256(adapter) if adapter is not None else None,
        "sampling": asdict(cfg.sampling),
        "pn": pn,
        "h_div_w": 1.0,
        "device": pipe.device.type,
        "dtype": f"{pipe.model.block_dtype} (blocks only)",  # the rest is float32 (official policy)
    }


def save_references(plan: SubjectPlan, pipe: Pipeline, pn: str, store: ImageStore) -> list[Path]:
    """The subject photos as training sees them (resize to cover + centre crop at the training size)."""
    paths = []
    folder = store.dir(plan.name, REFERENCE_DIR)
    for old in folder.glob("r*.png"):
        old.unlink()
    for i, photo in enumerate(plan.photos):
        w, h = photo.image.size
        h_div_w = 1.0 if plan.aspect == "square" else nearest_h_div_w(h / w)
        schedule = pipe.preset.vae_schedule(pipe.preset.schedule(h_div_w, pn))
        target = image_size(schedule, pipe.vae.patch_size)
        pixels = to_uint8_tensor(resize_and_crop(photo.image, target, plan.resample))  # type: ignore[arg-type]
        paths.append(save_png(store.reference(plan.name, i), pixels.permute(1, 2, 0)))
    return paths


def generate_subject(
    pipe: Pipeline,
    plan: SubjectPlan,
    cfg: EvalConfig,
    store: ImageStore,
    fingerprint: dict[str, Any],
    pn: str,
    apply_adapter: Callable[[], None],
    timing: Timing,
) -> None:
    """Sample whatever is missing for one subject: prompt chunks per seed, then the class prompt."""
    prompts = [p.prompt for p in plan.prompts]
    chunks = _chunks(len(prompts), cfg.batch_size)
    for chunk in chunks:
        mates = [prompts[j] for j in chunk]
        for j in chunk:
            store.claim(
                store.dir(plan.name, plan.slugs[j]), {**fingerprint, "prompt": prompts[j], "batch": mates}
            )
    jobs: list[tuple[list[str], int, list[Path]]] = []
    for seed in cfg.seeds:
        for chunk in chunks:
            paths = [store.sample(plan.name, plan.slugs[j], seed) for j in chunk]
            jobs.append(([prompts[j] for j in chunk], seed, paths))
    if cfg.num_class_samples > 0 and uses_class_samples(cfg):
        class_fp = {**fingerprint, "prompt": plan.class_prompt, "num": cfg.num_class_samples}
        class_fp["batch_size"] = cfg.batch_size
        store.claim(store.dir(plan.name, CLASS_DIR), class_fp)
        for k, chunk in enumerate(_chunks(cfg.num_class_samples, cfg.batch_size)):
            jobs.append(
                ([plan.class_prompt] * len(chunk), k, [store.class_sample(plan.name, i) for i in chunk])
            )
    applied = False
    for batch, seed, paths in jobs:
        missing = [not valid_png(p) for p in paths]
        if not any(missing):
            timing.reused += len(paths)
            continue
        if not applied:
            start = time.perf_counter()
            apply_adapter()
            timing.adapter_s += time.perf_counter() - start
            applied = True
        start = time.perf_counter()
        images = to_uint8(pipe.generate(batch, cfg.sampling, seed=seed, pn=pn).images_B3HW).cpu()
        for path, img, todo in zip(paths, images, missing):
            if todo:
                save_png(path, img)
                timing.written += 1
            else:
                timing.reused += 1
        timing.generation_s += time.perf_counter() - start
        timing.generated += len(batch)


# ------------------------------------------------------------------------------------------------ scoring


def sample_paths(plan: SubjectPlan, cfg: EvalConfig, store: ImageStore) -> list[tuple[EvalPrompt, str, Path]]:
    """(prompt, slug, file) of every sample, grouped by prompt in prompt order, seeds in order."""
    return [
        (p, slug, store.sample(plan.name, slug, seed))
        for p, slug in zip(plan.prompts, plan.slugs)
        for seed in cfg.seeds
    ]


def score_subject(
    metrics: SubjectMetrics,
    plan: SubjectPlan,
    cfg: EvalConfig,
    store: ImageStore,
    references: list[Path],
    timing: Timing,
) -> SubjectScores:
    start = time.perf_counter()
    items = sample_paths(plan, cfg, store)
    device = metrics.device
    images = load_images([path for _, _, path in items], cfg.eval_size).to(device)
    reference = load_images(references, cfg.eval_size).to(device)
    class_images = None
    if cfg.num_class_samples > 0 and (metrics.dino is not None or metrics.judge is not None):
        class_paths = [store.class_sample(plan.name, i) for i in range(cfg.num_class_samples)]
        class_images = load_images(class_paths, cfg.eval_size).to(device)
    samples = SubjectSamples(
        images=images,
        prompts=[p.prompt for p, _, _ in items],
        reference=reference,
        class_images=class_images,
        texts=[p.clip_text for p, _, _ in items],
        subject=plan.name,
        class_word=plan.class_word,
    )
    scores = metrics.score(samples)
    timing.scored += len(items) + (len(class_images) if class_images is not None else 0)
    timing.metrics_s += time.perf_counter() - start
    return scores


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def uses_class_samples(cfg: EvalConfig) -> bool:
    """Bare class-prompt samples serve PRES (a DINO metric) and the judge's drift metrics."""
    return cfg.dino is not None or cfg.judge is not None


def metric_names(cfg: EvalConfig) -> tuple[str, ...]:
    """The overall metrics of a report: the DreamBench five, plus the judge's when it is on."""
    return METRIC_NAMES + (JUDGE_METRIC_NAMES if cfg.judge is not None else ())


def subject_entry(
    plan: SubjectPlan, scores: SubjectScores, cfg: EvalConfig, store: ImageStore
) -> dict[str, Any]:
    raw = scores.to_dict()
    overall = {k: raw["overall"].get(k) for k in metric_names(cfg)}
    per_prompt = ("dino", "clip_i", "clip_t", "div") + (PROMPT_METRICS if cfg.judge is not None else ())
    prompts = {}
    for p, slug in zip(plan.prompts, plan.slugs):
        row = raw["prompts"][p.prompt]
        prompts[p.prompt] = {
            "template": p.template,
            "clip_t_text": p.clip_text,
            **{k: row[k] for k in per_prompt},
            "n": row["num_images"],
            "dir": store.dir(plan.name, slug).relative_to(store.out).as_posix(),
        }
    return {
        "class_word": plan.class_word,
        "live": plan.live,
        "adapter": str(plan.adapter) if plan.adapter is not None else None,
        "num_reference": len(plan.photos),
        "class_prompt": plan.class_prompt,
        "num_class_samples": cfg.num_class_samples if uses_class_samples(cfg) else 0,
        "overall": overall,
        "pres": overall["pres"],
        **({"judge_subject": raw.get("judge_subject")} if cfg.judge is not None else {}),
        "div_skipped": raw["div_skipped"],
        "prompts": prompts,
    }


def backbone_entry(backbone_id: str | None) -> dict[str, Any] | None:
    if backbone_id is None:
        return None
    entry: dict[str, Any] = {"id": backbone_id, "random_init": is_tiny(backbone_id)}
    if is_tiny(backbone_id):
        entry["note"] = TINY_NOTE
    return entry


def build_metrics(
    plans: list[SubjectPlan],
    entries: dict[str, dict[str, Any]],
    cfg: EvalConfig,
    model: ModelSource,
    pipe: Pipeline,
    pn: str,
    div_skipped: str | None,
    timing: Timing,
) -> dict[str, Any]:
    overall = {k: _mean([e["overall"][k] for e in entries.values()]) for k in metric_names(cfg)}
    notes = []
    if model.random_init:
        notes.append(
            f"model: random-initialised {model.preset!r} preset (init_seed={model.init_seed}); "
            "samples are not meaningful images"
        )
    tiny = [b for b in (cfg.dino, cfg.clip) if is_tiny(b)]
    if tiny:
        notes.append(f"backbones {', '.join(tiny)}: {TINY_NOTE}")
    if div_skipped:
        notes.append(div_skipped)
    return {
        "format": "varlit-eval/1",
        "overall": overall,
        "num_subjects": len(plans),
        "subjects": entries,
        "notes": notes,
        "backbones": {
            "dino": backbone_entry(cfg.dino),
            "clip": backbone_entry(cfg.clip),
            "judge": {"id": cfg.judge, "path": str(judge_path(cfg.judge))} if cfg.judge is not None else None,
            "dino_protocol": cfg.dino_protocol,
            "lpips": div_skipped is None,
        },
        "model": {
            "preset": model.preset,
            "weights": model.weights or pipe.preset.weights,
            "vae_weights": model.vae_weights or pipe.preset.vae_weights,
            "text_encoder": model.text_encoder or pipe.preset.text_encoder,
            "init_seed": model.init_seed,
            "random_init": model.random_init,
            "device": str(pipe.device),
            "dtype": str(pipe.model.block_dtype).removeprefix("torch."),  # of the blocks; the rest float32
        },
        "settings": {
            "seeds": list(cfg.seeds),
            "prompts": list(cfg.prompts)
            if cfg.prompts is not None
            else "default (the unseen world contexts for a world subject, else DreamBench object or live by class)",
            "num_class_samples": cfg.num_class_samples,
            "sampling": asdict(cfg.sampling),
            "batch_size": cfg.batch_size,
            "clip_t_text": cfg.clip_t_text,
            "eval_size": cfg.eval_size,
            "pn": pn,
            "h_div_w": 1.0,
        },
        "timing": timing.as_dict(),
    }


# ------------------------------------------------------------------------------------------------ the run


def run_evaluation(
    cfg: EvalConfig,
    model: ModelSource,
    data: dict[str, Any],
    run: RunConfig,
    out: Path,
    pn: str | None = None,
) -> EvalResult:
    """Plan, generate (resumable), score and report; see the module docstring."""
    plans = plan_subjects(cfg, data, run, model.preset)
    timing = Timing()

    start = time.perf_counter()
    metrics = SubjectMetrics.from_pretrained(
        dino=cfg.dino,
        clip=cfg.clip,
        dino_protocol=cfg.dino_protocol,
        lpips=cfg.lpips,
        eval_size=cfg.eval_size,
        batch_size=cfg.metrics_batch_size,
        judge=cfg.judge,
    )
    timing.backbone_load_s = time.perf_counter() - start

    start = time.perf_counter()
    pipe = Pipeline.load(
        model.preset,
        model.weights,
        model.vae_weights,
        model.text_encoder,
        device=cfg.device,
        dtype=cfg.dtype,
        init_seed=model.init_seed,
    )
    timing.model_load_s = time.perf_counter() - start
    pn = pn or pipe.preset.pn
    metrics.to(pipe.device)
    store = ImageStore(out)

    references: dict[str, list[Path]] = {}
    try:
        for plan in plans:
            references[plan.name] = save_references(plan, pipe, pn, store)
            fingerprint = base_fingerprint(pipe, model, pn, plan.adapter, cfg)

            def apply(plan: SubjectPlan = plan) -> None:
                if plan.adapter is None:
                    pipe.restore_base()
                else:
                    pipe.load_adapter(plan.adapter)

            generate_subject(pipe, plan, cfg, store, fingerprint, pn, apply, timing)
    finally:
        pipe.restore_base()

    entries = {}
    for plan in plans:
        scores = score_subject(metrics, plan, cfg, store, references[plan.name], timing)
        entries[plan.name] = subject_entry(plan, scores, cfg, store)
    doc = build_metrics(plans, entries, cfg, model, pipe, pn, metrics.div_skipped, timing)
    files = write_reports(doc, plans, cfg, store)
    return EvalResult(out, doc, timing, files)
