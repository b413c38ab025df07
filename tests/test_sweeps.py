"""Ablation sweeps: variant tables, planning, resumable execution, the collector, the launcher, wandb YAMLs,
and the real runner end to end on the tiny config."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from varlit.sweeps import SWEEPS, get_sweep
from varlit.sweeps import chart as chart_mod
from varlit.sweeps import cli as sweeps_cli
from varlit.sweeps.collect import (
    RUN_COLUMNS,
    SUMMARY_COLUMNS,
    CollectError,
    collect,
    find_runs,
)
from varlit.sweeps.definitions import scale_ramp
from varlit.sweeps.launch import Job, jobs_for, parse_gpus, print_commands, run_local, slurm_script
from varlit.sweeps.runner import (
    MARKER,
    SweepOptions,
    execute,
    plan,
    split_extra,
)
from varlit.sweeps.subjects import (
    DREAMBENCH_SUBJECTS,
    config_subject,
    read_config_values,
    resolve_subjects,
    split_names,
)
from varlit.sweeps.wandb_sweep import render

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "tiny.yaml")
DREAMBENCH = str(REPO / "experiments" / "dreambench.yaml")
# A cheap evaluation for CPU tests: offline random backbones, one short prompt, one seed.
TINY_EVAL = [
    "--eval.dino=tiny-dino",
    "--eval.clip=tiny-clip",
    '--eval.prompts=["a {} on the beach"]',
    "--eval.seeds=[0]",
    "--eval.num_class_samples=1",
]


# ------------------------------------------------------------------ definitions


def test_sweeps_have_the_required_variants():
    assert set(SWEEPS) == {
        "ablate-layers",
        "ablate-scales",
        "ablate-distill",
        "ablate-adapter",
        "ablate-identifier",
        "ablate-captions",
    }
    assert SWEEPS["ablate-identifier"].names == ["learned", "rare-token"]
    assert SWEEPS["ablate-captions"].names == ["captions", "single-prompt"]
    assert SWEEPS["ablate-adapter"].names == ["full", "lora-r4", "lora-r16", "lora-r64"]
    assert {"all", "sa", "ca", "ffn", "ca+ffn", "early-half", "late-half"} <= set(
        SWEEPS["ablate-layers"].names
    )
    assert {"uniform", "arbooth", "inverse_sqrt_area", "explicit-ramp"} <= set(SWEEPS["ablate-scales"].names)
    distill = SWEEPS["ablate-distill"]
    assert set(distill.names) == {"none", "soft-0.1", "soft-0.5", "soft-1", "hard", "soft-0.5-bank"}
    soft_weights = {
        float(o.split("=")[1])
        for v in distill.variants
        if "--model.prior.loss=soft" in v.overrides and "--model.prior.source=online" in v.overrides
        for o in v.overrides
        if o.startswith("--model.prior.weight=")
    }
    assert soft_weights == {0.1, 0.5, 1.0}
    for sweep in SWEEPS.values():
        assert len(set(sweep.names)) == len(sweep.names)
        for v in sweep.variants:
            assert all(o.startswith("--") and "=" in o for o in v.overrides), v


def test_scale_ramp_is_a_falling_list_of_the_right_length():
    for k in (1, 7, 13):
        values = json.loads(scale_ramp(k))
        assert len(values) == k
        assert values[0] == 1.0
        assert all(a > b for a, b in zip(values, values[1:]))
    assert json.loads(scale_ramp(13))[-1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="at least one scale"):
        scale_ramp(0)


class _Parsed(Exception):
    pass


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_every_variant_makes_a_valid_fit_config(tmp_path):
    """Each rendered variant goes through the real `varlit fit` parser and the config checks of its section."""
    from varlit.lightning_cli import VarlitCLI
    from varlit.module import PRIOR_LOSSES, PRIOR_SOURCES
    from varlit.tuning.freeze import FreezeConfig, validate
    from varlit.tuning.prior_bank import PriorBankConfig
    from varlit.tuning.scale_weights import ScaleWeights

    class ParseOnly(VarlitCLI):
        def before_instantiate_classes(self) -> None:
            raise _Parsed(self.config)

    seen, identifier_prompts = {}, {}
    for sweep in SWEEPS.values():
        for spec in plan(sweep, SweepOptions(configs=[TINY], steps=3, root=str(tmp_path))):
            with pytest.raises(_Parsed) as info:
                ParseOnly(args=list(spec.fit_args))
            cfg = info.value.args[0].fit
            assert cfg.run.name == spec.name and cfg.run.group == sweep.name
            assert cfg.run.tags == [spec.variant.name] and cfg.run.job_type == "sweep"
            assert cfg.trainer.max_steps == 3
            model = cfg.model
            validate(FreezeConfig(**model.freeze.as_dict()), 4, "freeze")  # tiny depth 4
            ScaleWeights(**model.scale_weights.as_dict()).validate(num_scales=7)  # tiny: 7 scales
            assert model.prior.loss in PRIOR_LOSSES and model.prior.source in PRIOR_SOURCES
            PriorBankConfig(**model.prior.bank.as_dict()).validate()
            seen[spec.name] = model
            identifier_prompts[spec.name] = cfg.data.instance_prompt
    layers = "ablate-layers/toy"
    assert seen[f"{layers}/ca+ffn"].freeze.preset == "arbooth"
    assert seen[f"{layers}/all"].freeze.preset == "all-layers"  # the paper's all layers: SA+CA+FFN
    assert seen[f"{layers}/every-tensor"].freeze.preset == "every-tensor"
    assert seen[f"{layers}/early-half"].freeze.preset == "early-half"
    ramp = seen["ablate-scales/toy/explicit-ramp"].scale_weights
    assert ramp.kind == "explicit" and len(ramp["values"]) == 7 and ramp["values"][0] == 1.0
    assert seen["ablate-scales/toy/uniform"].scale_weights["values"] is None
    bank = seen["ablate-distill/toy/soft-0.5-bank"].prior
    assert bank.source == "bank"
    assert Path(bank.bank.root) == tmp_path / "ablate-distill" / "toy" / "soft-0.5-bank" / "prior_bank"
    hard = seen["ablate-distill/toy/hard"].prior
    assert (hard.loss, hard.weight, hard.source) == ("hard", 0.5, "online")
    learned, rare = seen["ablate-identifier/toy/learned"], seen["ablate-identifier/toy/rare-token"]
    assert learned.freeze.subject_embedding and not rare.freeze.subject_embedding
    assert identifier_prompts["ablate-identifier/toy/rare-token"] == "a photo of a sks {class}"
    assert identifier_prompts["ablate-identifier/toy/learned"] is None


# ------------------------------------------------------------------ subjects and config values


def test_config_values_layer_files_then_overrides(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  preset: infinity-2b\ndata:\n  pn: 0.25M\n")
    values = read_config_values([TINY, extra], ["--data.subject_dir=null", "--model.init_seed", "3"])
    assert values["model.preset"] == "infinity-2b"
    assert values["data.pn"] == "0.25M"
    assert values["data.subject_dir"] is None
    assert values["model.init_seed"] == 3
    assert values["data.class_word"] == "toy"
    values = read_config_values([TINY], ["--model.freeze=null"])
    assert values["model.freeze"] is None and "model.freeze.preset" not in values


def test_config_value_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        read_config_values([bad])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        read_config_values([tmp_path / "nope.yaml"])


def test_subjects_default_to_the_configs_own():
    (toy,) = resolve_subjects([], read_config_values([TINY]), "tiny.yaml")
    assert toy.label == "toy" and toy.overrides == () and toy.dreambench is None
    (dog,) = resolve_subjects([], read_config_values([DREAMBENCH]), "dreambench.yaml")
    assert dog.label == "dog" and dog.overrides == ()


def test_named_subjects_replace_the_configs_subject():
    cat, dog = resolve_subjects(["cat", "dog", "cat"], read_config_values([TINY]), "tiny.yaml")
    assert (cat.label, dog.label) == ("cat", "dog")
    assert cat.overrides == ("--data.subject=cat", "--data.subject_dir=null", "--data.class_word=null")
    assert cat.dreambench == "cat"
    every = resolve_subjects(["all"], {}, "x", dreambench_root=None)
    assert len(every) == 30 and {s.label for s in every} == set(DREAMBENCH_SUBJECTS)
    with pytest.raises(ValueError, match="not a plain name"):
        resolve_subjects(["../etc"], {}, "x")
    with pytest.raises(ValueError, match="names no subject"):
        config_subject({}, "empty.yaml")
    assert split_names(["dog cat", "teapot,vase"]) == ["dog", "cat", "teapot", "vase"]


# ------------------------------------------------------------------ planning


def test_plan_builds_fit_and_eval_commands(tmp_path):
    opts = SweepOptions(
        configs=[TINY],
        subjects=["dog"],
        steps=5,
        root=str(tmp_path),
        variants=["ca", "late-half"],
        extra=["--trainer.log_every_n_steps=1", "--data.cache_dir", "/c", "--eval.seeds=[0]"],
    )
    specs = plan(get_sweep("ablate-layers"), opts)
    assert [s.name for s in specs] == ["ablate-layers/dog/ca", "ablate-layers/dog/late-half"]
    fit, ev = specs[0].fit_args, specs[0].eval_args
    assert fit[:3] == ("fit", "--config", TINY)
    for arg in (
        "--run.name=ablate-layers/dog/ca",
        f"--run.root={tmp_path}",
        "--run.group=ablate-layers",
        '--run.tags=["ca"]',
        "--run.job_type=sweep",
        "--data.subject=dog",
        "--trainer.max_steps=5",
        "--model.freeze.preset=ca",
        "--trainer.log_every_n_steps=1",
    ):
        assert arg in fit
    assert fit[fit.index("--data.cache_dir") + 1] == "/c"
    assert "--eval.seeds=[0]" not in fit
    assert ev[0] == "eval" and "--run.name=ablate-layers/dog/ca" in ev and "--data.subject=dog" in ev
    assert "--eval.seeds=[0]" in ev and "--data.cache_dir" in ev
    assert not any(a.startswith("--trainer") or a.startswith("--model.freeze") for a in ev)
    assert ev[-1] == f"--out={tmp_path / 'ablate-layers' / 'dog' / 'ca' / 'eval'}"
    assert specs[0].dir == tmp_path / "ablate-layers" / "dog" / "ca"
    with pytest.raises(ValueError, match="no variant 'attn'"):
        plan(get_sweep("ablate-layers"), SweepOptions(configs=[TINY], variants=["attn"]))


def test_explicit_scale_list_follows_the_schedule_length(tmp_path):
    def ramp_len(configs, extra=()):
        opts = SweepOptions(
            configs=configs, root=str(tmp_path), variants=["explicit-ramp"], extra=list(extra)
        )
        (spec,) = plan(get_sweep("ablate-scales"), opts)
        (arg,) = [a for a in spec.fit_args if a.startswith("--model.scale_weights.values=")]
        return len(json.loads(arg.split("=", 1)[1]))

    assert ramp_len([TINY]) == 7
    assert ramp_len([DREAMBENCH]) == 13
    assert ramp_len([DREAMBENCH], ["--data.pn=0.25M"]) == 10


def test_split_extra_routes_by_section():
    fit, ev = split_extra(
        ["--trainer.max_steps", "3", "--eval.seeds=[0]", "--data.pn=0.06M", "--ckpt_path=x"]
    )
    assert fit == ["--trainer.max_steps", "3", "--data.pn=0.06M", "--ckpt_path=x"]
    assert ev == ["--eval.seeds=[0]", "--data.pn=0.06M"]


# ------------------------------------------------------------------ execution (fake subprocesses)


class FakeVarlit:
    """Stands in for the `varlit` subprocess: writes what fit / eval write, records every call."""

    def __init__(self, eval_available: bool = True, fail_fit: bool = False):
        self.calls: list[list[str]] = []
        self.eval_available = eval_available
        self.fail_fit = fail_fit

    def __call__(self, argv: list[str], log: Path, env: dict[str, str]) -> int:
        args = argv[3:]  # after python -m varlit.cli
        self.calls.append(args)
        if args[0] == "fit":
            if self.fail_fit:
                log.write_text("Traceback: boom\n")
                return 1
            root = next(a.split("=", 1)[1] for a in args if a.startswith("--run.root="))
            name = next(a.split("=", 1)[1] for a in args if a.startswith("--run.name="))
            run = Path(root) / name
            (run / "summary.json").write_text(json.dumps({"trainable_params": 10, "total_params": 100}))
            (run / "adapter.safetensors").write_bytes(b"x")
            return 0
        if not self.eval_available:
            log.write_text("varlit: error: unknown command 'eval'\n")
            return 2
        out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--out=")))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"overall": {"dino": 0.5, "clip_i": 0.6}}))
        return 0

    def commands(self) -> list[str]:
        return [c[0] for c in self.calls]


def _one_spec(tmp_path, steps=2):
    opts = SweepOptions(
        configs=[TINY], steps=steps, root=str(tmp_path), variants=["ca"], extra=["--run.wandb=false"]
    )
    (spec,) = plan(get_sweep("ablate-layers"), opts)
    return spec


def test_execute_is_resumable(tmp_path):
    fake = FakeVarlit()
    spec = _one_spec(tmp_path)
    assert spec.wandb_project is None  # --run.wandb=false also keeps the eval out of wandb
    r = execute(spec, runner=fake, echo=lambda s: None)
    assert (r.fit, r.eval) == ("done", "done") and fake.commands() == ["fit", "eval"]
    marker = json.loads((spec.dir / MARKER).read_text())
    assert marker["fit_args"] == list(spec.fit_args) and marker["eval_status"] == "done"

    r = execute(spec, runner=fake, echo=lambda s: None)
    assert (r.fit, r.eval) == ("skipped", "skipped") and fake.commands() == ["fit", "eval"]

    (spec.metrics_path).unlink()  # only the evaluation is redone
    r = execute(spec, runner=fake, echo=lambda s: None)
    assert (r.fit, r.eval) == ("skipped", "done") and fake.commands() == ["fit", "eval", "eval"]

    changed = _one_spec(tmp_path, steps=3)  # other arguments: the fit is stale
    r = execute(changed, runner=fake, echo=lambda s: None)
    assert (r.fit, r.eval) == ("done", "done") and fake.commands()[-2:] == ["fit", "eval"]
    assert "--trainer.max_steps=3" in fake.calls[-2]


def test_execute_resumes_a_killed_fit_from_its_last_checkpoint(tmp_path):
    fake = FakeVarlit()
    spec = _one_spec(tmp_path)
    spec.dir.mkdir(parents=True)
    (spec.dir / MARKER).write_text(json.dumps({"fit_args": list(spec.fit_args), "fit_status": "started"}))
    (spec.dir / "checkpoints").mkdir()
    (spec.dir / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    execute(spec, runner=fake, echo=lambda s: None)
    assert fake.calls[0][-1] == "--ckpt_path=last"


def test_execute_records_missing_eval_and_failed_fit(tmp_path):
    spec = _one_spec(tmp_path)
    r = execute(spec, runner=FakeVarlit(eval_available=False), echo=lambda s: None)
    assert (r.fit, r.eval) == ("done", "missing")
    assert json.loads((spec.dir / MARKER).read_text())["eval_status"] == "missing"
    messages = []
    other = _one_spec(tmp_path / "b")
    r = execute(other, runner=FakeVarlit(fail_fit=True), echo=messages.append)
    assert (r.fit, r.eval) == ("failed", "not run")
    assert "fit FAILED" in messages[0] and "boom" in messages[0]


# ------------------------------------------------------------------ collector


def _write_run(root: Path, subject: str, variant: str, summary: dict | None, metrics: dict | None) -> None:
    d = root / subject / variant
    d.mkdir(parents=True)
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (d / "eval").mkdir()
        (d / "eval" / "metrics.json").write_text(json.dumps(metrics))


def _summary(trainable: int, sec: float, loss: float) -> dict:
    return {
        "steps": 5,
        "trainable_params": trainable,
        "total_params": 1000,
        "sec_per_step": sec,
        "peak_memory_bytes": None,
        "final": {"train/loss": loss},
    }


def _metrics(dino: float, clip_i: float, clip_t: float, pres: float) -> dict:
    overall = {"dino": dino, "clip_i": clip_i, "clip_t": clip_t, "pres": pres, "div": None}
    return {"overall": overall, "subjects": {}, "notes": ["random backbones"]}


@pytest.fixture()
def sweep_dir(tmp_path) -> Path:
    root = tmp_path / "ablate-layers"
    _write_run(root, "dog", "sa", _summary(100, 0.5, 0.7), _metrics(0.2, 0.6, 0.20, 0.5))
    _write_run(root, "dog", "all", _summary(1000, 1.0, 0.6), _metrics(0.8, 0.9, 0.30, 0.7))
    _write_run(root, "cat", "all", _summary(1000, 3.0, 0.4), _metrics(0.6, 0.7, 0.10, 0.5))
    _write_run(root, "cat", "ca", _summary(300, 0.25, 0.8), None)  # not evaluated yet
    (root / "cat" / "empty").mkdir()  # neither file: not a run
    return root


def test_collector_merges_runs(sweep_dir):
    paths = collect(sweep_dir)
    assert {p.name for p in paths.values()} == {"summary.md", "summary.csv", "runs.csv", "summary.png"}

    with open(sweep_dir / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == SUMMARY_COLUMNS
    assert [r["variant"] for r in rows] == ["all", "sa", "ca"]  # the sweep's own order
    by = {r["variant"]: r for r in rows}
    assert by["all"]["subjects"] == "2"
    assert float(by["all"]["dino"]) == pytest.approx(0.7)
    assert float(by["all"]["clip_t"]) == pytest.approx(0.2)
    assert float(by["all"]["sec_per_step"]) == pytest.approx(2.0)
    assert float(by["all"]["trainable_pct"]) == pytest.approx(100.0)
    assert by["all"]["trainable_params"] == "1000"
    assert by["ca"]["dino"] == "" and by["ca"]["trainable_params"] == "300"
    assert by["sa"]["div"] == ""

    with open(sweep_dir / "runs.csv") as fh:
        runs = list(csv.DictReader(fh))
    assert tuple(runs[0].keys()) == RUN_COLUMNS
    assert sorted((r["subject"], r["variant"]) for r in runs) == [
        ("cat", "all"),
        ("cat", "ca"),
        ("dog", "all"),
        ("dog", "sa"),
    ]
    assert next(r for r in runs if r["variant"] == "ca")["status"] == "no metrics"

    md = (sweep_dir / "summary.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:7] == ["variant", "runs", "DINO ↑", "CLIP-I ↑", "CLIP-T ↑", "PRES ↓", "DIV ↑"]
    assert "trainable params" in header and "s / step" in header
    assert not any("subject ↑" == h for h in header)  # no run has judge metrics: no judge columns
    all_row = next(line for line in table if line.startswith("| all | 2 |"))
    # DINO 0.8 and 0.6: mean 0.7, std 0.1414, 95 % half-width t(1) 12.706 * 0.1414 / sqrt(2) = 1.271
    assert "0.700 ± 1.271" in all_row and "1.00K" in all_row and "2.000" in all_row
    assert float(by["all"]["dino_std"]) == pytest.approx(0.02**0.5)
    assert float(by["all"]["dino_ci95"]) == pytest.approx(12.706 * 0.02**0.5 / 2**0.5)
    assert by["all"]["dino_n"] == "2" and by["sa"]["dino_n"] == "1" and by["sa"]["dino_ci95"] == ""
    assert "| cat | ca |" in md and "no metrics" in md  # the per-run table: several subjects
    assert "- random backbones" in md


def _column_height(img: Image.Image, color: tuple[int, int, int], x_lo: int, x_hi: int) -> int:
    px = img.load()
    best = 0
    for x in range(x_lo, x_hi):
        best = max(best, sum(1 for y in range(img.height) if px[x, y] == color))
    return best


def test_collector_chart_draws_the_metric_bars(sweep_dir):
    collect(sweep_dir)
    img = Image.open(sweep_dir / "summary.png").convert("RGB")
    assert img.width >= 640 and img.height > 300
    left, group = 64, (img.width - 64 - 24) // 3  # three variants, in order all, sa, ca, over the plot
    dino = chart_mod.COLORS[0]
    all_h, sa_h, ca_h = (
        _column_height(img, dino, left + g * group, left + (g + 1) * group) for g in range(3)
    )
    assert all_h > 0 and sa_h > 0
    assert all_h == pytest.approx(3.5 * sa_h, rel=0.05)  # 0.7 vs 0.2
    assert ca_h == 0  # no metrics for ca
    for color in chart_mod.COLORS[:4]:  # DINO, CLIP-I, CLIP-T, PRES all drawn
        assert _column_height(img, color, 64, img.width) > 20


def test_collector_errors_name_the_file(tmp_path):
    root = tmp_path / "ablate-layers"
    _write_run(root, "dog", "sa", _summary(1, 1.0, 1.0), None)
    (root / "dog" / "sa" / "summary.json").write_text("{not json")
    with pytest.raises(CollectError, match=r"dog/sa/summary.json: not valid JSON"):
        find_runs(root)
    (root / "dog" / "sa" / "summary.json").write_text(json.dumps({"trainable_params": "many"}))
    with pytest.raises(CollectError, match="trainable_params"):
        find_runs(root)
    (root / "dog" / "sa" / "summary.json").unlink()
    (root / "dog" / "sa" / "eval").mkdir()
    (root / "dog" / "sa" / "eval" / "metrics.json").write_text(json.dumps({"subjects": {}}))
    with pytest.raises(CollectError, match="'overall'"):
        find_runs(root)
    with pytest.raises(FileNotFoundError, match="no runs under"):
        collect(tmp_path)


def test_nice_ticks():
    assert chart_mod.nice_ticks(0, 0.93) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert chart_mod.nice_ticks(-0.1, 0.5) == pytest.approx([-0.2, 0, 0.2, 0.4, 0.6])
    assert chart_mod.nice_ticks(0, 37) == pytest.approx([0, 10, 20, 30, 40])
    assert chart_mod.nice_ticks(0, 0) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])


# ------------------------------------------------------------------ wandb sweep YAMLs


def _wandb_args(params: dict, subject: str, variant: str) -> list[str]:
    """What `wandb agent` passes for ${args}: --key=value for every parameter (see its sweep utils)."""
    values = {k: (v["value"] if "value" in v else None) for k, v in params.items()}
    values.update(subject=subject, variant=variant)
    return [f"--{k}={v}" for k, v in values.items()]


@pytest.mark.parametrize("name", list(SWEEPS))
def test_wandb_yaml_is_generated_and_matches_the_make_sweep(name, monkeypatch):
    monkeypatch.chdir(REPO)  # the YAML names the config relative to the checkout, as `make` does
    path = REPO / "sweeps" / "wandb" / f"{name}.yaml"
    assert path.read_text() == render(SWEEPS[name]), "regenerate with `python -m varlit.sweeps wandb all`"
    cfg = yaml.safe_load(path.read_text())
    assert cfg["method"] == "grid" and cfg["name"] == name
    assert cfg["parameters"]["variant"]["values"] == SWEEPS[name].names
    command = cfg["command"]
    assert command[-1] == "${args}" and command[1:6] == ["python", "-m", "varlit.sweeps", "job", name]
    # The agent's job plans exactly the run `make` plans for the same (subject, variant).
    variant = SWEEPS[name].names[-1]
    argv = [*command[4:-1], *_wandb_args(cfg["parameters"], "dog", variant)]
    ns = sweeps_cli.build_parser().parse_args(argv)
    job_opts = SweepOptions(configs=ns.config, subjects=[ns.subject], root=ns.root, variants=[ns.variant])
    make_opts = SweepOptions(configs=["experiments/dreambench.yaml"], subjects=["dog"], root="runs")
    (job,) = plan(SWEEPS[name], job_opts)
    make_specs = {s.name: s for s in plan(SWEEPS[name], make_opts)}
    assert job.fit_args == make_specs[job.name].fit_args
    assert job.eval_args == make_specs[job.name].eval_args


# ------------------------------------------------------------------ launcher


def test_launcher_fans_subjects_out(tmp_path):
    sweep = get_sweep("ablate-distill")
    opts = SweepOptions(
        configs=[DREAMBENCH],
        subjects=["dog", "cat", "teapot"],
        steps=50,
        root=str(tmp_path),
        extra=["--x.y=1"],
    )
    jobs = jobs_for(sweep, opts)
    assert [j.name for j in jobs] == ["dog", "cat", "teapot"]
    args = jobs[1].args
    assert args[:2] == ("run", "ablate-distill") and args[args.index("--subjects") + 1] == "cat"
    assert (
        args[args.index("--steps") + 1] == "50" and "--no-collect" in args and args[-2:] == ("--", "--x.y=1")
    )
    per_run = jobs_for(sweep, opts, per="run")
    assert len(per_run) == 3 * len(sweep.variants) and per_run[0].name == "dog--none"

    text = print_commands(sweep, opts, jobs, parse_gpus("0,1"))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0].startswith("CUDA_VISIBLE_DEVICES=0 python -m varlit.sweeps run ablate-distill")
    assert lines[1].startswith("CUDA_VISIBLE_DEVICES=1 ") and lines[2].startswith("CUDA_VISIBLE_DEVICES=0 ")
    assert shlex.split(lines[-1]) == [
        "python",
        "-m",
        "varlit.sweeps",
        "collect",
        str(tmp_path / "ablate-distill"),
    ]

    script = slurm_script(sweep, opts, jobs, partition="gpu", max_parallel=2)
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --partition=gpu" in script
    assert script.count(") ARGS=(") == 3
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr
    # Task 1 of the array runs the cat job.
    probe = script.replace('exec python -m varlit.sweeps "${ARGS[@]}"', 'printf "%s\\n" "${ARGS[@]}"')
    out = subprocess.run(
        ["bash", "-c", probe], env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"}, text=True, capture_output=True
    )
    assert tuple(out.stdout.splitlines()) == jobs[1].args


def test_parse_gpus():
    assert parse_gpus("0,2") == ["0", "2"]
    assert parse_gpus("0") == ["0"]  # an id (docs/multi-gpu.md's `--gpus 0 --print`), not a count of zero
    assert parse_gpus("3") == ["3"]
    assert parse_gpus("count:3") == ["0", "1", "2"]
    assert parse_gpus("cpu:2") == ["", ""]
    for bad in ("0,x", "count:0", "cpu:0", "1,1"):
        with pytest.raises(ValueError, match="--gpus"):
            parse_gpus(bad)


def test_local_launcher_gives_each_job_its_own_gpu(tmp_path):
    jobs = [Job(f"j{i}", ()) for i in range(5)]
    out = tmp_path / "seen"
    out.mkdir()

    def command(job: Job) -> list[str]:
        code = (
            "import os, pathlib, time; time.sleep(0.3); "
            f"pathlib.Path({str(out / job.name)!r}).write_text(os.environ['CUDA_VISIBLE_DEVICES'])"
        )
        if job.name == "j3":
            code += "; raise SystemExit(4)"
        return [sys.executable, "-c", code]

    status = run_local(jobs, ["0", "1"], tmp_path / "logs", command=command, echo=lambda s: None, poll_s=0.05)
    assert status == {"j0": 0, "j1": 0, "j2": 0, "j3": 4, "j4": 0}
    assert {(out / j.name).read_text() for j in jobs} == {"0", "1"}
    assert (out / "j0").read_text() == "0" and (out / "j1").read_text() == "1"
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [f"j{i}.log" for i in range(5)]


# ------------------------------------------------------------------ wandb logging of evaluations


def test_eval_scores_are_logged_to_an_offline_wandb_run(tmp_path, monkeypatch):
    from varlit.sweeps.wandb_log import log_eval_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    folder = log_eval_run(
        tmp_path,
        "ablate-layers/dog/ca",
        "varlit",
        "ablate-layers",
        "ca",
        "dog",
        {"dino": 0.5, "div": None},
        {},
    )
    assert folder == tmp_path / "eval" / "wandb"
    (run,) = [p for p in folder.iterdir() if p.name.startswith("offline-run-")]
    assert list(run.glob("run-*.wandb"))
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc")  # under an agent: the agent's run is the fit
    assert log_eval_run(tmp_path / "b", "n", "varlit", "g", "v", "s", {"dino": 0.5}, {}) is None


# ------------------------------------------------------------------ the real runner on the tiny config


def _run_sweep_cli(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "varlit.sweeps", *args], cwd=cwd, text=True, capture_output=True, timeout=900
    )


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_tiny_sweep_two_variants_end_to_end(tmp_path):
    """`make ablate-layers CONFIG=experiments/tiny.yaml STEPS=2`, restricted to two variants."""
    root = tmp_path / "runs"
    args = [
        "run",
        "ablate-layers",
        "--config",
        TINY,
        "--steps",
        "2",
        "--root",
        str(root),
        "--variants",
        "ca,ffn",
    ]
    extra = ["--", f"--data.cache_dir={tmp_path / 'cache'}", "--run.wandb=false", *TINY_EVAL]
    proc = _run_sweep_cli(args + extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = root / "ablate-layers"
    for variant in ("ca", "ffn"):
        run = sweep / "toy" / variant
        assert (run / "adapter.safetensors").is_file() and (run / "config.yaml").is_file()
        assert json.loads((run / "summary.json").read_text())["steps"] == 2
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert metrics["overall"]["dino"] is not None
    rows = _read_csv(sweep / "summary.csv")
    assert [r["variant"] for r in rows] == ["ca", "ffn"]
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    for r in rows:
        for col in ("dino", "clip_i", "clip_t", "pres", "trainable_params", "sec_per_step"):
            assert r[col] != "", (r["variant"], col)
    # ffn (fc1 + fc2) has twice the parameters of ca (q, kv, proj) at width w, mlp ratio 4: 16w^2 vs 4w^2 + ...
    assert int(rows[1]["trainable_params"]) > int(rows[0]["trainable_params"])
    md = (sweep / "summary.md").read_text()
    assert "| ca | 1 |" in md and "| ffn | 1 |" in md and "not results" in md
    assert Image.open(sweep / "summary.png").size[0] >= 640

    again = _run_sweep_cli(args + extra)  # resumable: nothing is redone
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("fit skipped, eval skipped") == 2


@pytest.mark.slow
def test_tiny_ablate_layers_full_sweep(tmp_path):
    """The whole layer sweep on the tiny config with STEPS=5, wandb offline, as `make ablate-layers` runs it."""
    root = tmp_path / "runs"
    args = ["run", "ablate-layers", "--config", TINY, "--steps", "5", "--root", str(root)]
    proc = _run_sweep_cli([*args, "--", f"--data.cache_dir={tmp_path / 'cache'}", *TINY_EVAL])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = root / "ablate-layers"
    rows = _read_csv(sweep / "summary.csv")
    assert [r["variant"] for r in rows] == SWEEPS["ablate-layers"].names
    assert all(r["dino"] != "" and r["trainable_params"] != "" for r in rows)
    params = {r["variant"]: int(r["trainable_params"]) for r in rows}
    assert params["all"] > params["ca+ffn"] > params["ffn"] > params["ca"]
    assert params["early-half"] == params["late-half"] < params["ca+ffn"]
    for variant in SWEEPS["ablate-layers"].names:
        run = sweep / "toy" / variant
        assert list((run / "wandb").glob("offline-run-*")), variant  # the fit's run, group ablate-layers
        assert list((run / "eval" / "wandb").glob("offline-run-*")), variant  # its scores


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    code = sweeps_cli.main(
        ["run", "ablate-layers", "--config", TINY, "--variants", "attn", "--root", str(tmp_path)]
    )
    assert code == 2 and "no variant 'attn'" in capsys.readouterr().err
    code = sweeps_cli.main(["run", "ablate-layers", "--config", str(tmp_path / "missing.yaml")])
    assert code == 2 and "missing.yaml does not exist" in capsys.readouterr().err
    (tmp_path / "ablate-layers").mkdir()
    code = sweeps_cli.main(["collect", str(tmp_path / "ablate-layers")])
    assert code == 2 and "no runs under" in capsys.readouterr().err
    assert sweeps_cli.main(["collect", str(tmp_path), "--", "--x=1"]) == 2
