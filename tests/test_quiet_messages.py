"""Short fits still validate, sweeps never report nothing in silence, messages name flags that exist."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from varlit.captions import caption_band
from varlit.cli import USAGE, main
from varlit.lightning_cli import EpochProgressBar
from varlit.sweeps import cli as sweeps_cli

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "tiny.yaml")
SUBJECT = str(REPO / "experiments" / "assets" / "toy")


def _fit(tmp_path: Path, name: str, steps: int, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        TINY,
        "--data.subject_dir",
        SUBJECT,
        "--run.root",
        str(tmp_path / "runs"),
        "--run.name",
        name,
        "--run.wandb",
        "false",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        "20",
        *extra,
    ]


@pytest.fixture(scope="module")
def short_fit(tmp_path_factory):
    """A fit of 2 steps, shorter than its validation interval of 20, with Lightning's log captured."""
    tmp = tmp_path_factory.mktemp("short")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep(level=logging.INFO)
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    try:
        main(_fit(tmp, "short", 2))
    finally:
        logger.removeHandler(handler)
    return tmp, records


def test_a_fit_shorter_than_its_validation_interval_validates_at_its_last_step(short_fit):
    tmp, _ = short_fit
    with open(tmp / "runs" / "short" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    validated = [r for r in rows if r.get("val/inst_loss")]
    assert len(validated) == 1  # once, at the last step
    assert list((tmp / "runs" / "short" / "samples").glob("step*.png"))


def test_checkpoints_are_saved_without_the_weights_only_notice(short_fit):
    _, records = short_fit
    assert records  # the handler saw Lightning's log
    assert not [m for m in records if "weights_only" in m]


def test_resume_with_a_wrong_run_name_fails_by_name(short_fit, capsys):
    tmp, _ = short_fit
    with pytest.raises(SystemExit):
        main(_fit(tmp, "shrot", 3, "--ckpt_path", "last"))
    err = capsys.readouterr().err
    assert "--ckpt_path last" in err and "shrot" in err and "short" in err and "--run.name" in err
    assert not (tmp / "runs" / "shrot").exists()  # nothing trained from scratch


def test_progress_bar_total_after_a_resume():
    bar = EpochProgressBar()
    resumed = SimpleNamespace(
        lightning_module=None,
        max_epochs=-1,
        max_steps=150,
        global_step=35,
        num_training_batches=250,
        fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=SimpleNamespace(ready=35)))
        ),
    )
    bar._trainer = resumed
    assert bar.total_train_batches == 150  # the bar counts the epoch's batches: 35 done + 115 left


def test_errors_name_flags_that_exist(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(_fit(tmp_path, "w", 1, "--model.weights", str(tmp_path / "nope.pth")))
    assert "(check --model.weights)" in capsys.readouterr().err
    world = str(REPO / "experiments" / "world.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", world, "--run.root", str(tmp_path), "--model.weights", "mine.pth"])
    err = capsys.readouterr().err
    assert "mine.pth not found (check --model.weights)" in err and "ships with varlit" not in err


def test_help_shows_only_syntax_that_parses():
    assert "compare B A" not in USAGE and "varlit compare --before B --after A" in USAGE


def test_grid_captions_are_wrapped_whole():
    prompt = "a photo of a <placeholder> cup on a red carpet | seed 3"
    band = caption_band(prompt, 64)
    chars_per_line = (64 - 4) // 6
    assert band.shape[0] >= 11 * -(-len(prompt) // chars_per_line)  # every line of it, none cut


def test_a_sweep_whose_runs_have_no_metrics_exits_non_zero_naming_them(tmp_path, capsys):
    run = tmp_path / "ablate-layers" / "toy" / "ca"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"steps": 20, "trainable_params": 1, "total_params": 2}))
    assert sweeps_cli._check_scored(tmp_path / "ablate-layers", [run]) == 1
    err = capsys.readouterr().err
    assert "1 run(s) produced no metrics: ablate-layers/toy/ca" in err
    other = tmp_path / "ablate-layers" / "toy" / "sa"
    assert sweeps_cli._check_scored(tmp_path / "ablate-layers", [other]) == 0  # only the runs it ran
