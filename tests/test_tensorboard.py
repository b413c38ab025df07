"""TensorBoard as an alternative to wandb (`--run.tensorboard true`), the CSV metrics kept beside it."""

from __future__ import annotations

from pathlib import Path

from varlit.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_tensorboard_logs_scalars_and_the_grid_and_csv_stays(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    main(
        [
            "fit",
            "--config",
            str(REPO / "experiments" / "tiny.yaml"),
            "--data.subject_dir",
            str(REPO / "experiments" / "assets" / "toy"),
            "--run.root",
            str(tmp_path),
            "--run.wandb",
            "false",
            "--run.tensorboard",
            "true",
            "--data.cache_dir",
            str(tmp_path / "cache"),
            "--trainer.max_steps",
            "2",
            "--trainer.log_every_n_steps",
            "1",
        ]
    )
    run = tmp_path / "tiny"
    assert "train/loss" in (run / "csv" / "metrics.csv").read_text().splitlines()[0]  # CSV kept
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    assert "train/loss" in tags["scalars"] and "val/inst_loss" in tags["scalars"]
    assert "val/samples" in tags["images"]  # the validation grid, at the last step
    assert not list(run.glob("wandb"))
