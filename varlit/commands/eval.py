"""`varlit eval`: the DreamBench protocol on trained subject adapters, from the same YAML as `varlit fit`.

    varlit eval --config experiments/tiny.yaml --out runs/tiny/eval
    varlit eval --config experiments/dreambench.yaml --eval.subjects '[dog, cat]' \\
        --eval.adapters 'runs/sweep/{subject}/adapter.safetensors' --out runs/sweep/eval

The parser reads a whole experiment config: `model` takes SubjectTuningModule's arguments (eval uses preset,
weights, vae_weights, text_encoder and init_seed), `data` takes SubjectDataModule's (the subject, its photos,
dreambench_root, pn, aspect, resample), `run` the run naming (default adapter path), `trainer` and
`seed_everything` are accepted and ignored, and `eval` is an `EvalConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from ..eval.backbones import BackboneLoadError
from ..eval.config import EvalConfig
from ..eval.runner import EvalResult, ModelSource, run_evaluation
from ..io import check_writable_dir
from ..loggers import RunConfig

MODEL_FIELDS = ("preset", "weights", "vae_weights", "text_encoder", "init_seed")


def evaluate(
    eval: EvalConfig | None = None,
    model: ModelSource | None = None,
    data: dict[str, Any] | None = None,
    run: RunConfig | None = None,
    out: str | None = None,
) -> EvalResult:
    """Generate and score subject x prompt x seed; writes metrics.json/csv/md, grids/ and images/ to `out`.

    Args:
        eval: the protocol (subjects, adapters, prompts, seeds, sampling, backbones, ...).
        model: the base model (preset, weights, vae_weights, text_encoder, init_seed).
        data: SubjectDataModule arguments: the default subject, dreambench_root, pn, aspect, resample and
            the photo policy (on_bad_image, min_images, max_image_pixels).
        run: run naming; the default adapter is <run.root>/<run.name>/adapter.safetensors.
        out: output folder (wins over eval.out); default <run.root>/<run.name>/eval.
    """
    cfg = eval or EvalConfig()
    run = run or RunConfig()
    data = dict(data or {})
    target = Path(out or cfg.out or run.dir / "eval")
    check_writable_dir(target, "out")  # before any model loads or image is generated
    result = run_evaluation(cfg, model or ModelSource(), data, run, target, pn=data.get("pn"))
    t = result.timing.as_dict()
    gen, met = t["generation"], t["metrics"]
    print(
        f"generation: {gen['images']} images sampled in {gen['seconds']:.2f}s"
        + (f" ({gen['images_per_s']:.2f} images/s)" if gen["images_per_s"] else "")
        + f"; {gen['written']} new files, {gen['reused']} kept from an earlier run"
    )
    print(
        f"metrics: {met['images']} images in {met['seconds']:.2f}s"
        + (f" ({met['images_per_s']:.2f} images/s)" if met["images_per_s"] else "")
    )
    for note in result.metrics["notes"]:
        print(f"note: {note}")
    files = result.files
    print(
        f"wrote {files['json']}, {files['csv'].name}, {files['md'].name}, {files['grids']}/ and {target / 'images'}/"
    )
    return result


def build_parser() -> ArgumentParser:
    """The experiment-config parser: same sections as `varlit fit`, plus `eval` and `--out`."""
    from ..data.datamodule import SubjectDataModule
    from ..module import SubjectTuningModule

    parser = ArgumentParser(
        prog="varlit eval",
        description="DreamBench-style evaluation (DINO, CLIP-I, CLIP-T, PRES, DIV) of subject adapters.",
        exit_on_error=True,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s), repeatable")
    parser.add_argument("--out", type=str | None, default=None, help="output folder (default: eval.out)")
    parser.add_argument(
        "--seed_everything", type=bool | int | None, default=None, help="accepted from fit configs; unused"
    )
    parser.add_argument("--trainer", type=dict | None, default=None, help="accepted from fit configs; unused")
    parser.add_class_arguments(RunConfig, "run")
    parser.add_class_arguments(SubjectTuningModule, "model", instantiate=False)
    parser.add_class_arguments(SubjectDataModule, "data", instantiate=False)
    parser.add_class_arguments(EvalConfig, "eval")
    return parser


def _plain(ns: Any) -> dict[str, Any]:
    return ns.as_dict() if isinstance(ns, Namespace) else dict(ns or {})


def main(argv: list[str]) -> EvalResult:
    parser = build_parser()
    cfg = parser.parse_args(argv)
    init = parser.instantiate_classes(cfg)
    model = _plain(init.model)
    try:
        return evaluate(
            eval=init.eval,
            model=ModelSource(**{k: model[k] for k in MODEL_FIELDS if k in model}),
            data=_plain(init.data),
            run=init.run,
            out=init.out,
        )
    except BackboneLoadError as err:  # a backbone that is not there is bad input: one line, no traceback
        raise ValueError(
            f"{err} (set eval.dino / eval.clip / eval.judge; tiny-dino / tiny-clip run offline)"
        ) from None
