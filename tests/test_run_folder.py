"""Run-folder safety through the real `varlit fit` (issue 15, items 1, 2, 3, 5, 6 and bad `--ckpt_path` files):
nothing a run wrote is lost by the next command, checkpoints are written atomically, one fit per folder,
last.ckpt is written often and on SIGTERM, and a checkpoint never overrides the command line."""

from __future__ import annotations

import csv
import os
import pickle
import signal
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.helpers import make_subject_photos
from varlit.callbacks.last_checkpoint import AtomicCheckpointIO, save_is_due, steps_between_saves
from varlit.cli import main
from varlit.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "experiments" / "tiny.yaml")
SUBJECT = str(REPO / "experiments" / "assets" / "toy")


def _fit(root: Path, name: str, steps: int, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        TINY,
        "--run.root",
        str(root / "runs"),
        "--run.name",
        name,
        "--run.wandb",
        "false",
        "--data.subject_dir",
        SUBJECT,
        "--data.cache_dir",
        str(root / "cache"),
        "--trainer.max_steps",
        str(steps),
        "--trainer.limit_val_batches",
        "0",
        "--trainer.log_every_n_steps",
        "1",
        *extra,
    ]


def _fails(argv: list[str], capsys) -> str:
    """Run varlit, expect exit 2 with one `varlit fit: error:` line; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("varlit fit: error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def _steps(metrics: Path) -> list[int]:
    with open(metrics, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """A finished 2-step tiny run (its folder is read, never changed, by the tests using it)."""
    root = tmp_path_factory.mktemp("done")
    main(_fit(root, "r", 2))
    return root / "runs" / "r"


# ---------------------------------------------------------------------------------------------- item 1


def test_resume_appends_to_the_history_and_a_rerun_is_refused_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "runs" / "t"
    main(_fit(tmp_path, "t", 2))
    config = (run / "config.yaml").read_bytes()
    before = _steps(run / "csv" / "metrics.csv")
    assert before == [0, 1]

    main(_fit(tmp_path, "t", 4, "--ckpt_path", "last"))
    assert _steps(run / "csv" / "metrics.csv") == [0, 1, 2, 3]  # the first run's rows are still there
    assert (run / "config.yaml").read_bytes() == config
    assert (run / "config-resume-step000002.yaml").is_file()

    line = _fails(_fit(tmp_path, "t", 1), capsys)  # a fresh run on a finished one
    assert str(run) in line and "already holds a run" in line and "--run.overwrite" in line
    assert _steps(run / "csv" / "metrics.csv") == [0, 1, 2, 3]

    main(_fit(tmp_path, "t", 1, "--run.overwrite", "true"))
    assert _steps(run / "csv" / "metrics.csv") == [0]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1


def test_a_fit_that_fails_before_training_writes_nothing(tmp_path, done, capsys):
    bad_photos = make_subject_photos(tmp_path / "bad", n=3)
    (bad_photos / "03.png").write_bytes(b"not a png at all")
    line = _fails(_fit(tmp_path, "new", 2, "--data.subject_dir", str(bad_photos)), capsys)
    assert "03.png" in line or "unusable photo" in line
    assert not (tmp_path / "runs").exists()  # not even the runs root it would have created

    # a resume of an existing run that fails at once leaves its files as they were
    run = tmp_path / "runs" / "old"
    run.parent.mkdir(parents=True, exist_ok=True)
    os.system(f"cp -r {done} {run}")
    snapshot = {
        p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"
    }
    _fails(_fit(tmp_path, "old", 4, "--ckpt_path", "last", "--model.scale_weights.num_coarse", "-3"), capsys)
    _fails(_fit(tmp_path, "old", 4, "--ckpt_path", "last", "--data.subject_dir", str(bad_photos)), capsys)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert {
        k: v for k, v in after.items() if k.name != ".lock"
    } == snapshot  # the lock only says who holds it


# ---------------------------------------------------------------------------------------------- item 2


def test_checkpoints_are_written_next_to_their_name_and_the_old_one_survives_a_kill(tmp_path, monkeypatch):
    from varlit.lightning_cli import VarlitCLI

    cli = VarlitCLI(args=_fit(tmp_path, "a", 2)[1:], run=False)
    io = cli.trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO)
    last = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(4)}, last)

    monkeypatch.setenv("TMPDIR", "/dev/shm" if Path("/dev/shm").is_dir() else str(tmp_path / "elsewhere"))
    real_save, seen = torch.save, {}

    def killed_mid_write(obj, f, *args, **kwargs):
        seen["target"] = Path(f)
        assert Path(f).parent == last.parent and Path(f) != last  # a temp file beside the final name
        real_save({"global_step": 2, "w": torch.zeros(1 << 16)}, f)
        with open(f, "r+b") as fh:
            fh.truncate(100)  # half written when the kill comes
        assert torch.load(last, weights_only=True)["global_step"] == 1  # the previous one is untouched
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, last)
    monkeypatch.setattr(torch, "save", real_save)
    assert "target" in seen and not seen["target"].exists()
    assert torch.load(last, weights_only=True)["global_step"] == 1

    # a SIGKILL leaves the temp file behind: the next fit on the folder removes it once it holds the lock
    stale = tmp_path / "runs" / "k" / "checkpoints" / ".last.ckpt.x1y2z3.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 1000)
    folder = RunFolder(tmp_path / "runs" / "k", resume=True, overwrite=False)
    folder.acquire()
    assert not stale.exists()
    folder.finish(failed=False)


# ---------------------------------------------------------------------------------------------- item 3


def test_a_second_fit_on_a_folder_in_use_is_refused(tmp_path, capsys):
    holder = RunFolder(tmp_path / "runs" / "busy", resume=False, overwrite=False)
    holder.acquire()  # another fit holds the folder
    try:
        line = _fails(_fit(tmp_path, "busy", 2), capsys)
        assert "in use by another varlit fit" in line and f"pid {os.getpid()}" in line
        assert not (tmp_path / "runs" / "busy" / "csv").exists()
    finally:
        holder.finish(failed=False)


# ---------------------------------------------------------------------------------------------- item 5


def test_checkpoint_interval_fits_the_run_and_respects_the_write_cost():
    assert steps_between_saves(None, 40) == 2  # tiny: a kill loses at most 2 of 40 steps
    assert steps_between_saves(None, 500) == 25
    assert steps_between_saves(7, 500) == 7
    due = dict(every_n_steps=2, every_seconds=600.0, last_write_seconds=0.01, max_overhead=0.05)
    assert save_is_due(2, 0, 1.0, **due) and not save_is_due(1, 0, 1.0, **due)
    assert save_is_due(1, 0, 601.0, **due)  # the time interval alone
    # a checkpoint that took 60 s to write is not written again within 20 minutes
    slow = dict(due, last_write_seconds=60.0)
    assert not save_is_due(50, 0, 1199.0, **slow) and save_is_due(50, 0, 1201.0, **slow)


class SigtermAtStep(pl.Callback):
    """Sends this process SIGTERM after a given step (a cluster preemption)."""

    def __init__(self, step: int = 3):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_writes_last_ckpt_at_that_step_and_the_run_resumes(tmp_path):
    run = tmp_path / "runs" / "p"
    cb = '[{"class_path": "tests.test_run_folder.SigtermAtStep", "init_args": {"step": 3}}]'
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exc:
            main(_fit(tmp_path, "p", 40, "--trainer.callbacks", cb, "--run.checkpoint_every_n_steps", "100"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exc.value.code == 143
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run / "adapter.safetensors").exists()  # a preempted run is not a finished one
    main(_fit(tmp_path, "p", 5, "--ckpt_path", "last"))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert _steps(run / "csv" / "metrics.csv") == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------- item 6


def test_explicit_flags_that_contradict_the_checkpoint_stop_the_resume(tmp_path, done, capsys):
    ckpt = done / "checkpoints" / "last.ckpt"
    line = _fails(
        _fit(
            tmp_path,
            "x",
            4,
            "--ckpt_path",
            str(ckpt),
            "--model.optim.lr",
            "0.5",
            "--model.freeze.preset",
            "all-layers",
        ),
        capsys,
    )
    assert (
        "trained with other settings" in line and "model.optim.lr is 0.001 in the checkpoint, 0.5 now" in line
    )
    assert "model.freeze.preset is 'arbooth' in the checkpoint, 'all-layers' now" in line

    # a crafted checkpoint pointing `weights` elsewhere: the path is never followed, the mismatch is named
    crafted = torch.load(ckpt, weights_only=True)
    crafted["hyper_parameters"]["weights"] = "/etc/passwd"
    torch.save(crafted, tmp_path / "crafted.ckpt")
    line = _fails(_fit(tmp_path, "y", 4, "--ckpt_path", str(tmp_path / "crafted.ckpt")), capsys)
    assert "model.weights is '/etc/passwd' in the checkpoint, None now" in line


# ---------------------------------------------------------------------------------------------- bad --ckpt_path


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir()
    data = good.read_bytes()
    out = {
        "truncated": folder / "truncated.ckpt",
        "random": folder / "random.ckpt",
        "empty": folder / "empty.ckpt",
    }
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["random"].write_bytes(os.urandom(4096))
    out["empty"].write_bytes(b"")
    out["directory"] = folder / "dir.ckpt"
    out["directory"].mkdir()
    ckpt = torch.load(good, weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.startswith("student."))
    ckpt["state_dict"][name] = torch.zeros(3, 5)
    out["wrong_shape"] = folder / "wrong_shape.ckpt"
    torch.save(ckpt, out["wrong_shape"])
    out["plain_state_dict"] = folder / "plain.ckpt"
    torch.save({k: v for k, v in ckpt["state_dict"].items()}, out["plain_state_dict"])
    out["malicious_pickle"] = folder / "evil.ckpt"
    with open(out["malicious_pickle"], "wb") as f:
        pickle.dump({"state_dict": {}, "global_step": _Payload(folder / "PWNED")}, f)
    assert zipfile.is_zipfile(out["wrong_shape"])
    return out


def test_bad_ckpt_path_files_give_one_line_naming_the_file(tmp_path, done, capsys):
    bad = _bad_checkpoints(tmp_path / "bad", done / "checkpoints" / "last.ckpt")
    expect = {
        "truncated": "cannot read it",
        "random": "cannot read it",
        "empty": "is empty",
        "directory": "is a folder",
        "wrong_shape": "wrong shapes",
        "plain_state_dict": "plain state dict",
        "malicious_pickle": "cannot read it",
    }
    for kind, path in bad.items():
        line = _fails(_fit(tmp_path, f"bad-{kind}", 2, "--ckpt_path", str(path)), capsys)
        assert str(path) in line and expect[kind] in line, (kind, line)
        assert not (tmp_path / "runs" / f"bad-{kind}").exists(), kind
    assert not (tmp_path / "bad" / "PWNED").exists()  # the pickle's payload never ran
