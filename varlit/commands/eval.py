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
from ..eval.runner import BASE_ADAPTER, DEFAULT_ADAPTER, EvalResult, ModelSource, run_evaluation
from ..io import check_writable_dir
from ..loggers import RunConfig
from ..tuning.adapter_source import AdapterBase, merge_base

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


def single_adapter(cfg: EvalConfig, run: RunConfig) -> Path | None:
    """The one adapter every subject is scored with (the run's, or one `eval.adapters` path), if it exists:
    the file whose header gives the base model and subject that flags leave out."""
    spec = cfg.adapters
    pattern = spec[0] if isinstance(spec, list) and len(spec) == 1 else spec
    if pattern is None:
        pattern = DEFAULT_ADAPTER
    if not isinstance(pattern, str) or "{subject}" in pattern or pattern.strip().lower() == BASE_ADAPTER:
        return None
    path = Path(pattern.format_map({"run": run.name, "root": run.root})).expanduser()
    return path if path.is_file() else None


def model_and_data(
    model: dict[str, Any], defaults: dict[str, Any], data: dict[str, Any], adapter: Path | None
) -> tuple[ModelSource, dict[str, Any]]:
    """The base model and subject to evaluate: what the config and flags say, and for what they leave at
    its default, the adapter's record (a contradicting setting is refused by name)."""
    fields = {k: model.get(k) for k in MODEL_FIELDS}
    if adapter is None:
        return ModelSource(**{k: v for k, v in fields.items() if v is not None}), data
    given = {k: (None if v == defaults.get(k) else v) for k, v in fields.items()}
    recorded = AdapterBase.read(adapter)  # the header, read once for the base model and the subject
    default_preset = str(defaults.get("preset") or "tiny")
    base = merge_base(adapter, given, flag="--model.{}", default_preset=default_preset, recorded=recorded)
    data = dict(data)
    if not data.get("subject") and not data.get("subject_dir"):
        data.update(subject=recorded.subject, subject_dir=recorded.subject_dir)
        if recorded.subject_dir and not data.get("class_word"):
            data["class_word"] = recorded.class_word
    return ModelSource(**base), data


def main(argv: list[str]) -> EvalResult:
    parser = build_parser()
    cfg = parser.parse_args(argv)
    init = parser.instantiate_classes(cfg)
    model = _plain(init.model)
    defaults = _plain(parser.get_defaults().get("model"))
    source, data = model_and_data(model, defaults, _plain(init.data), single_adapter(init.eval, init.run))
    try:
        return evaluate(
            eval=init.eval,
            model=source,
            data=data,
            run=init.run,
            out=init.out,
        )
    except BackboneLoadError as err:  # a backbone that is not there is bad input: one line, no traceback
        raise ValueError(
            f"{err} (set eval.dino / eval.clip / eval.judge; tiny-dino / tiny-clip run offline)"
        ) from None
