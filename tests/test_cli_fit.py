"""`varlit fit` through the real CLI on experiments/tiny.yaml: run folder contents, resume, DDP, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varlit.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "tiny.yaml")
SUBJECT = str(REPO / "experiments" / "assets" / "toy")


def _args(tmp_path: Path, name: str, steps: int, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        TINY,
        "--run.root",
        str(tmp_path / "runs"),
        "--run.name",
        name,
        "--data.subject_dir",
        SUBJECT,
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        str(steps),
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]


def test_fit_writes_the_run_folder_and_resumes(tmp_path, capsys):
    main(_args(tmp_path, "t", 3))
    run = tmp_path / "runs" / "t"
    for name in (
        "config.yaml",
        "adapter.safetensors",
        "summary.json",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
    ):
        assert (run / name).exists(), name
    assert list((run / "samples").glob("step*.png"))
    assert list((run / "wandb").glob("offline-run-*"))  # no API key: wandb went offline by itself
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and 0 < summary["trainable_params"] < summary["total_params"]
    config = (run / "config.yaml").read_text()
    assert "preset: tiny" in config and "max_steps: 3" in config
    metrics = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/inst_loss_scale00" in metrics and "train/prior_kl_scale06" in metrics

    # the adapter drives `varlit sample` on top of the base model
    out = tmp_path / "samples"
    main(
        [
            "sample",
            "--adapter",
            str(run / "adapter.safetensors"),
            "--prompts",
            '["a photo of <placeholder> toy"]',
            "--out_dir",
            str(out),
        ]
    )
    assert len(list(out.glob("*.png"))) == 1
    assert json.loads((out / "samples.json").read_text())["adapter"].endswith("adapter.safetensors")

    # resume: continue the same run to 5 steps from its last checkpoint
    main(_args(tmp_path, "t", 5, "--ckpt_path", "last"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    assert json.loads((run / "summary.json").read_text())["steps"] == 5


def test_print_config_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", TINY, "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "freeze:" in out and "prior:" in out and "subject_dir: experiments/assets/toy" in out

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", TINY, "--model.no_such_key", "1"])
    assert exc.value.code != 0
    assert "no_such_key" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        main(
            _args(
                tmp_path,
                "bad",
                1,
                "--model.freeze.preset",
                "null",
                "--model.freeze.trainable",
                '[{"modules": ["ca"], "blocks": "7"}]',
            )
        )
    assert exc.value.code != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("varlit fit: error: freeze.trainable[0].blocks: block 7 is out of range")


def test_two_process_ddp_fit_on_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "varlit.cli",
        *_args(
            tmp_path, "ddp", 2, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--run.wandb", "false"
        ),
        "--trainer.callbacks+=tests.helpers.BatchPathRecorder",
        f"--trainer.callbacks.folder={tmp_path / 'batches'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each rank draws its own photos: same steps, different batches
    drawn = {r: (tmp_path / "batches" / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)}
    assert [ln.split()[0] for ln in drawn[0]] == [ln.split()[0] for ln in drawn[1]] == ["0", "1"]
    assert all(len(ln.split()) == 3 for r in (0, 1) for ln in drawn[r])  # batch size 2
    for step in range(2):
        assert set(drawn[0][step].split()[1:]) != set(drawn[1][step].split()[1:]), drawn
    run = tmp_path / "runs" / "ddp"
    assert (run / "adapter.safetensors").exists()
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert "process group" in proc.stderr.lower() or "distributed" in proc.stderr.lower()
