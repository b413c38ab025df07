"""The sweep collector's statistics on synthetic run folders: seeds as a folder level, means with their
standard deviation and 95 % interval over subjects x seeds, the judge's metrics, the per-step validation
curve, and the fallback to the last validation for runs without an evaluation."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from PIL import Image

from varlit.sweeps import chart as chart_mod
from varlit.sweeps.collect import Spread, collect, find_runs, t95
from varlit.sweeps.runner import SweepOptions, plan
from varlit.sweeps.subjects import read_config_values, resolve_subjects
from varlit.world.subjects import SUBJECT_NAMES

REPO = Path(__file__).resolve().parents[1]
WORLD = str(REPO / "experiments" / "world.yaml")


def _judge(rate: float, context: float, leakage: float) -> dict:
    return {
        "judge_subject_rate": rate,
        "judge_subject_sim": 0.5 + rate / 2,
        "judge_context_acc": context,
        "judge_class_acc": 0.5,
        "judge_leakage": leakage,
        "judge_class_prior_acc": 0.25,
    }


def _seeded_run(
    root: Path, subject: str, variant: str, seed: int, judge: dict | None, val: list | None
) -> Path:
    d = root / subject / variant / f"seed{seed}"
    d.mkdir(parents=True)
    summary = {
        "steps": 10,
        "trainable_params": 50,
        "total_params": 100,
        "sec_per_step": 0.2,
        "peak_memory_bytes": None,
        "adapter_bytes": 4000,
        "final": {"train/loss": 0.1},
    }
    (d / "summary.json").write_text(json.dumps(summary))
    if judge is not None:
        (d / "eval").mkdir()
        overall = {"dino": None, "clip_i": None, "clip_t": None, "pres": None, "div": None, **judge}
        (d / "eval" / "metrics.json").write_text(json.dumps({"overall": overall, "subjects": {}}))
    if val is not None:  # rows as the CSV logger writes them: val metrics at their (0-based) step
        (d / "csv").mkdir()
        with open(d / "csv" / "metrics.csv", "w", newline="") as fh:
            names = ["step", "train/loss", *[f"val/{k}" for k in _judge(0, 0, 0)]]
            w = csv.DictWriter(fh, fieldnames=names)
            w.writeheader()
            for step, rate in val:
                w.writerow({"step": step - 1, "train/loss": 0.5})
                w.writerow({"step": step - 1, **{f"val/{k}": v for k, v in _judge(rate, 1.0, 0.0).items()}})
    return d


def test_t_quantiles_and_spread_by_hand():
    assert t95(1) == 12.706 and t95(2) == 4.303 and t95(9) == 2.262
    assert t95(11) == 2.228 and t95(23) == 2.086 and t95(500) == 1.980  # next lower listed df
    with pytest.raises(ValueError, match="at least 1 degree"):
        t95(0)
    values = [0.25, 0.5, 1.0, None, 0.75]
    sp = Spread.of(values)
    have = [v for v in values if v is not None]
    assert sp.n == 4 and sp.mean == pytest.approx(statistics.mean(have))
    assert sp.std == pytest.approx(statistics.stdev(have))
    assert sp.ci95 == pytest.approx(3.182 * statistics.stdev(have) / 2)
    assert Spread.of([0.3]) == Spread(1, 0.3, None, None)
    assert Spread.of([None]) == Spread(0, None, None, None)


@pytest.fixture()
def seeded_sweep(tmp_path) -> Path:
    root = tmp_path / "ablate-distill"
    rates = {
        ("a", "none"): [0.2, 0.4, 0.3],
        ("b", "none"): [0.6, 0.5, 0.7],
        ("a", "soft-0.5"): [0.5, 0.5, 0.6],
        ("b", "soft-0.5"): [0.9, 0.8, None],
    }
    for (subject, variant), per_seed in rates.items():
        for seed, rate in enumerate(per_seed):
            judge = None if rate is None else _judge(rate, 0.75, 0.1 * seed)
            val = [(5, 0.1 + seed / 10), (10, 0.3 + seed / 10)] if variant == "none" else None
            _seeded_run(root, subject, variant, seed, judge, val)
    return root


def test_collector_gives_mean_std_and_interval_over_subjects_and_seeds(seeded_sweep):
    rows = find_runs(seeded_sweep)
    assert len(rows) == 12 and {r.seed for r in rows} == {"0", "1", "2"}
    no_metrics = [r for r in rows if r.status != "ok"]
    assert [(r.subject, r.variant, r.seed, r.status) for r in no_metrics] == [
        ("b", "soft-0.5", "2", "no metrics")
    ]
    collect(seeded_sweep)
    with open(seeded_sweep / "summary.csv") as fh:
        by = {r["variant"]: r for r in csv.DictReader(fh)}
    assert [*by] == ["none", "soft-0.5"]  # the sweep's own order
    none = [0.2, 0.4, 0.3, 0.6, 0.5, 0.7]
    assert by["none"]["runs"] == "6" and by["none"]["subjects"] == "2" and by["none"]["seeds"] == "3"
    assert float(by["none"]["judge_subject_rate"]) == pytest.approx(statistics.mean(none))
    assert float(by["none"]["judge_subject_rate_std"]) == pytest.approx(statistics.stdev(none))
    half = 2.571 * statistics.stdev(none) / math.sqrt(6)  # t(5)
    assert float(by["none"]["judge_subject_rate_ci95"]) == pytest.approx(half)
    soft = [0.5, 0.5, 0.6, 0.9, 0.8]  # the run without metrics does not count
    assert by["soft-0.5"]["judge_subject_rate_n"] == "5"
    assert float(by["soft-0.5"]["judge_subject_rate"]) == pytest.approx(statistics.mean(soft))
    assert float(by["soft-0.5"]["judge_leakage"]) == pytest.approx(statistics.mean([0, 0.1, 0.2, 0, 0.1]))
    assert float(by["none"]["adapter_bytes"]) == 4000
    md = (seeded_sweep / "summary.md").read_text()
    header = [c.strip() for c in md.split("\n| variant")[1].split("\n")[0].strip("|").split("|")]
    assert header[1:4] == ["runs", "subject ↑", "subj. sim ↑"] and "DINO ↑" not in header
    assert f"{statistics.mean(none):.3f} ± {half:.3f}" in md
    assert "| b | soft-0.5 | 2 |" in md and "seeds 0, 1, 2" in md
    with open(seeded_sweep / "runs.csv") as fh:
        runs = list(csv.DictReader(fh))
    assert {(r["subject"], r["seed"]) for r in runs if r["variant"] == "none"} == {
        (s, k) for s in "ab" for k in "012"
    }


def test_summary_chart_draws_intervals(seeded_sweep):
    collect(seeded_sweep)
    img = Image.open(seeded_sweep / "summary.png").convert("RGB")
    px = img.load()
    subject = chart_mod.COLORS[0]
    plot = range(80, img.height)  # below the title and the legend
    xs = [x for x in range(img.width) if any(px[x, y] == subject for y in plot)]
    bar = xs[: chart_mod.BAR_W - 3]  # the first variant's subject-rate bar
    mid = bar[0] - 1 + chart_mod.BAR_W // 2  # the bar is drawn from bx + 1; its interval at bx + BAR_W // 2
    top = min(y for y in plot if px[bar[0], y] == subject)  # the mean (the bar's edge column has no ink)
    ink = chart_mod.INK
    # an interval: one unbroken vertical ink line through the mean, symmetric about it, capped at both ends
    up = next(k for k in range(1, top) if px[mid, top - k] != ink) - 1
    down = next(k for k in range(1, img.height - top) if px[mid, top + k] != ink) - 1
    assert up >= 5 and abs(up - down) <= 1, (up, down)
    for y in (top - up, top + down):
        assert all(px[x, y] == ink for x in range(mid - 3, mid + 4)), f"no cap at y={y}"
        assert px[mid - 4, y] != ink and px[mid + 4, y] != ink
    assert all(px[x, top - up // 2] != ink for x in (mid - 2, mid + 2))  # a line, not a block of ink


def test_validation_curve_and_last_validation_fallback(seeded_sweep):
    paths = collect(seeded_sweep)
    assert {"curve_csv", "curve_png"} <= set(paths)
    with open(seeded_sweep / "curve.csv") as fh:
        curve = [r for r in csv.DictReader(fh) if r["metric"] == "judge_subject_rate"]
    assert {(r["variant"], r["step"]) for r in curve} == {("none", "5"), ("none", "10")}
    at10 = next(r for r in curve if r["step"] == "10")
    values = [0.3, 0.4, 0.5] * 2  # seeds 0..2 of both subjects
    assert int(at10["n"]) == 6 and float(at10["mean"]) == pytest.approx(statistics.mean(values))
    assert float(at10["ci95"]) == pytest.approx(2.571 * statistics.stdev(values) / math.sqrt(6))
    assert Image.open(seeded_sweep / "curve.png").width > 600
    # A run without an evaluation is scored by its last validation.
    d = seeded_sweep / "a" / "none" / "seed0"
    (d / "eval" / "metrics.json").unlink()
    row = next(r for r in find_runs(seeded_sweep) if r.dir == d)
    assert row.status == "ok" and row.values["judge_subject_rate"] == pytest.approx(0.3)
    assert "last validation" in row.notes[0]


def test_world_sweeps_plan_seeded_runs_on_every_world_subject(tmp_path):
    values = read_config_values([WORLD])
    subjects = resolve_subjects(["all"], values, WORLD)
    assert [s.label for s in subjects] == list(SUBJECT_NAMES)
    assert subjects[0].overrides[0] == f"--data.subject=world:{SUBJECT_NAMES[0]}"
    assert (
        resolve_subjects(
            ["world:candy_ring"], read_config_values([str(REPO / "experiments/tiny.yaml")]), "t"
        )[0].chosen
        == "world:candy_ring"
    )
    with pytest.raises(ValueError, match="not a world subject"):
        resolve_subjects(["dog"], values, WORLD)
    from varlit.sweeps import get_sweep

    specs = plan(
        get_sweep("ablate-scales"),
        SweepOptions(configs=[WORLD], subjects=["polka_ball"], seeds=[0, 2], root=str(tmp_path)),
    )
    assert len(specs) == 2 * len(get_sweep("ablate-scales").variants)
    arbooth = [s for s in specs if s.variant.name == "arbooth"]
    assert [s.dir.name for s in arbooth] == ["seed0", "seed2"]
    assert arbooth[1].dir == tmp_path / "ablate-scales" / "polka_ball" / "arbooth" / "seed2"
    fit = arbooth[1].fit_args
    assert "--model.scale_weights.num_coarse=3" in fit  # 8 of 13 scales -> 3 of the world's 5
    assert {"--seed_everything=2", "--model.seed=2", "--data.seed=2"} <= set(fit)
    assert "--run.name=ablate-scales/polka_ball/arbooth/seed2" in fit
    (bank,) = plan(
        get_sweep("ablate-layers"),
        SweepOptions(
            configs=[WORLD],
            subjects=["candy_ring"],
            seeds=[1],
            variants=["all"],
            root=str(tmp_path),
            extra=["--model.prior.source=bank", "--model.prior.bank.root={run_dir}/prior_bank"],
        ),
    )
    assert (
        bank.fit_args[-1]
        == f"--model.prior.bank.root={tmp_path}/ablate-layers/candy_ring/all/seed1/prior_bank"
    )
    with pytest.raises(ValueError, match="distinct non-negative"):
        plan(get_sweep("ablate-scales"), SweepOptions(configs=[WORLD], seeds=[1, 1]))


@pytest.mark.parametrize("name", ["ablate-layers", "ablate-scales", "ablate-distill"])
def test_world_wandb_yaml_runs_the_make_grid(name, monkeypatch):
    import yaml

    from varlit.sweeps import cli as sweeps_cli
    from varlit.sweeps import get_sweep
    from varlit.sweeps.wandb_sweep import WORLD_GRID, render, world_sweeps

    monkeypatch.chdir(REPO)
    path = REPO / "sweeps" / "wandb" / "world" / f"{name}.yaml"
    sweep, kw = next((s, k) for s, k in world_sweeps() if s.name == name)
    assert path.read_text() == render(sweep, **kw), "regenerate with `python -m varlit.sweeps wandb world`"
    cfg = yaml.safe_load(path.read_text())
    params = cfg["parameters"]
    assert params["subject"]["values"] == list(SUBJECT_NAMES) and params["seed"]["values"] == [0, 1, 2]
    variants, extra, steps = WORLD_GRID[name]
    assert params["variant"]["values"] == list(variants)
    # What `wandb agent` runs for one grid point: --key=value for every parameter, then the fixed tail.
    point = {k: v.get("value") for k, v in params.items()} | {
        "subject": "candy_ring",
        "variant": variants[-1],
        "seed": 2,
    }
    argv = [
        *cfg["command"][4 : -1 - (len(extra) + 1 if extra else 0)],
        *[f"--{k}={v}" for k, v in point.items()],
    ]
    argv += cfg["command"][len(cfg["command"]) - (len(extra) + 1) :] if extra else []
    own, tail = sweeps_cli._split_extra(argv)
    ns = sweeps_cli.build_parser().parse_args(own)
    assert ns.no_eval is True and ns.seed == 2 and tail == list(extra)
    assert ns.steps == steps
    job = SweepOptions(
        steps=ns.steps,
        configs=ns.config,
        subjects=[ns.subject],
        root=ns.root,
        variants=[ns.variant],
        seeds=[ns.seed],
        extra=tail,
        evaluate=not ns.no_eval,
    )
    make = SweepOptions(
        steps=steps,
        configs=["experiments/world.yaml"],
        subjects=["all"],
        seeds=[0, 1, 2],
        variants=list(variants),
        extra=list(extra),
        evaluate=False,
    )
    (spec,) = plan(get_sweep(name), job)
    same = {s.name: s for s in plan(get_sweep(name), make)}[spec.name]
    assert spec.fit_args == same.fit_args and spec.dir.name == "seed2"


def test_paired_differences_use_only_runs_both_arms_have(seeded_sweep):
    from varlit.sweeps.collect import paired_differences

    rows = find_runs(seeded_sweep)
    (diff,) = paired_differences(rows, ["none", "soft-0.5"], ["judge_subject_rate"])
    # soft-0.5 minus none, per (subject, seed); b/soft-0.5/seed2 has no metrics and drops out.
    deltas = [0.5 - 0.2, 0.5 - 0.4, 0.6 - 0.3, 0.9 - 0.6, 0.8 - 0.5]
    sp = diff["judge_subject_rate"]
    assert diff["pairs"] == 6 and sp.n == 5
    assert sp.mean == pytest.approx(statistics.mean(deltas))
    assert sp.ci95 == pytest.approx(2.776 * statistics.stdev(deltas) / math.sqrt(5))
    collect(seeded_sweep)
    md = (seeded_sweep / "summary.md").read_text()
    assert "## Paired differences against `none`" in md
    assert f"| soft-0.5 | 6 | {statistics.mean(deltas):+.3f} ± {sp.ci95:.3f} |" in md
    assert paired_differences(rows, ["none"], ["judge_subject_rate"]) == []
