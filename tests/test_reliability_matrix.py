"""Every bad input gets one line (issue 22): each case runs the real CLI, expects a non-zero exit, exactly one
`varlit <command>: error:` line naming the file, field or value, no traceback, and nothing left behind.

New failure modes get a row in CASES (argv built from a shared finished run, the expected words, and what
must not exist afterwards)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.test_run_folder import _fit
from varlit.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A finished 2-step tiny run (full adapter and last.ckpt) and a 1-step LoRA run; read, never changed."""
    root = tmp_path_factory.mktemp("matrix")
    main(_fit(root, "full", 2))
    main(_fit(root, "lora", 1, "--model.adapter.type", "lora", "--model.adapter.rank", "4"))
    return {"root": root, "full": root / "runs" / "full", "lora": root / "runs" / "lora"}


def _one_line(argv: list[str], capsys, command: str, code: int = 2) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == code, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith(f"varlit {command}: error: ")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def _rewrite_adapter(src: Path, dst: Path, tensors_fn=None, meta_fn=None) -> Path:
    with safe_open(src, framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensors_fn is not None:
        tensors = tensors_fn(tensors)
    if meta_fn is not None:
        header["meta"] = json.dumps(meta_fn(json.loads(header["meta"])))
    save_file(tensors, dst, metadata=header)
    return dst


def _flipped_checkpoint(world, tmp: Path) -> Path:
    bad = tmp / "flipped.ckpt"
    data = bytearray((world["full"] / "checkpoints" / "last.ckpt").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(b ^ 0xFF for b in data[mid : mid + 4096])
    bad.write_bytes(bytes(data))
    return bad


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/varlit-matrix-pwned",))


def _pickle_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil()}}, f)
    return path


def _text_encoder_with_pickle(tmp: Path) -> Path:
    from varlit.models.text import build_tiny_text_encoder

    te = build_tiny_text_encoder(max_length=32)
    folder = tmp / "t5"
    te.encoder.save_pretrained(folder)
    te.tokenizer.save_pretrained(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    _pickle_file(folder / "pytorch_model.bin")
    return folder


def _drop_half_and_the_list(world, tmp: Path) -> Path:
    def half(t):
        model = sorted(k for k in t if k.startswith("model."))
        return {k: v for k, v in t.items() if k not in model[: len(model) // 2]}

    def strip(meta):
        return {k: v for k, v in meta.items() if k not in ("tensors", "base_fingerprint")}

    return _rewrite_adapter(world["full"] / "adapter.safetensors", tmp / "half.safetensors", half, strip)


def _int32_zeros(world, tmp: Path) -> Path:
    def zeros(t):
        return {
            k: torch.zeros(v.shape, dtype=torch.int32) if k.startswith("model.") else v for k, v in t.items()
        }

    return _rewrite_adapter(world["full"] / "adapter.safetensors", tmp / "int.safetensors", zeros)


def _lora_alphas(world, tmp: Path) -> Path:
    def huge(meta):
        meta["adapter"]["alphas"] = {t: 1e38 for t in meta["adapter"]["alphas"]}
        return meta

    return _rewrite_adapter(world["lora"] / "adapter.safetensors", tmp / "alpha.safetensors", meta_fn=huge)


def _lora_huge_tensors(world, tmp: Path) -> Path:
    def huge(t):
        return {k: torch.full_like(v, 1e30) if ".lora_" in k else v for k, v in t.items()}

    return _rewrite_adapter(world["lora"] / "adapter.safetensors", tmp / "huge.safetensors", huge)


def _sample(adapter: Path, tmp: Path) -> list[str]:
    return [
        "sample",
        "--adapter",
        str(adapter),
        "--prompts",
        '["a photo of <placeholder> toy"]',
        "--out_dir",
        str(tmp / "out"),
    ]


# (id, command, argv builder (world, tmp) -> argv, words the error line must hold (may use {tmp}), leftovers)
Case = tuple[str, str, Callable[[dict, Path], list[str]], tuple[str, ...], tuple[str, ...]]
CASES: list[Case] = [
    (
        "ckpt-flipped-bytes",
        "fit",
        lambda w, t: _fit(t, "new", 3, "--ckpt_path", str(_flipped_checkpoint(w, t))),
        ("--ckpt_path", "flipped.ckpt", "cannot read"),
        ("runs",),
    ),
    (
        "scale-weights-kind",
        "fit",
        lambda w, t: _fit(t, "new", 1, "--model.scale_weights.kind", "nope"),
        ("scale_weights.kind", "'nope'"),
        ("runs",),
    ),
    (
        "scale-weights-explicit-without-values",
        "fit",
        lambda w, t: _fit(t, "new", 1, "--model.scale_weights.kind", "explicit"),
        ("scale_weights.values", "explicit"),
        ("runs",),
    ),
    (
        "max-steps-negative",
        "fit",
        lambda w, t: _fit(t, "new", 1, "--trainer.max_steps", "-5"),
        ("max_steps", "-5", "--trainer.max_steps"),
        ("runs",),
    ),
    (
        "pretrain-pickle-ckpt",
        "pretrain",
        lambda w, t: [
            "pretrain",
            "vae",
            "--run.root",
            str(t / "runs"),
            "--ckpt_path",
            str(_pickle_file(t / "evil.ckpt")),
        ],
        ("--ckpt_path", "evil.ckpt", "cannot read"),
        ("runs",),
    ),
    (
        "text-encoder-pickle",
        "fit",
        lambda w, t: _fit(t, "new", 1, "--model.text_encoder", str(_text_encoder_with_pickle(t))),
        ("text encoder", "t5", "UnpicklingError"),
        ("runs",),
    ),
    (
        "adapter-half-without-list",
        "sample",
        lambda w, t: _sample(_drop_half_and_the_list(w, t), t),
        ("half.safetensors", "missing"),
        ("out",),
    ),
    (
        "adapter-int32-zeros",
        "sample",
        lambda w, t: _sample(_int32_zeros(w, t), t),
        ("int.safetensors", "floating point", "int32"),
        ("out",),
    ),
    (
        "lora-alpha-1e38",
        "sample",
        lambda w, t: _sample(_lora_alphas(w, t), t),
        ("alpha.safetensors", "alpha", "1e+38"),
        ("out",),
    ),
    (
        "lora-tensors-1e30",
        "sample",
        lambda w, t: _sample(_lora_huge_tensors(w, t), t),
        ("huge.safetensors", "merg"),
        ("out",),
    ),
]


@pytest.mark.parametrize(("name", "command", "argv", "words", "leftovers"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_leaves_nothing(
    world, tmp_path, capsys, name, command, argv, words, leftovers
):
    line = _one_line(argv(world, tmp_path), capsys, command)
    for word in words:
        assert word in line, line
    for left in leftovers:
        assert not (tmp_path / left).exists(), f"{name} left {left} behind"
    assert not Path("/tmp/varlit-matrix-pwned").exists()


def _refuses_writes(folder: Path) -> bool:
    try:
        (folder / ".varlit-matrix-probe").write_text("")
    except OSError:
        return True
    (folder / ".varlit-matrix-probe").unlink()
    return False


@pytest.mark.skipif(not Path("/sys").is_dir() or not _refuses_writes(Path("/sys")), reason="needs /sys")
@pytest.mark.parametrize("command", ["fit", "sample", "eval"])
def test_an_output_folder_that_refuses_writes_is_one_line(tmp_path, capsys, command):
    """/sys passes os.access for root but refuses new files: each command names the folder."""
    target = Path("/sys/varlit-matrix/out")
    argv = {
        "fit": _fit(tmp_path, "new", 1, "--run.root", str(target)),
        "sample": ["sample", "--prompts", '["a toy"]', "--out_dir", str(target)],
        "eval": ["eval", "--config", "experiments/tiny.yaml", "--out", str(target)],
    }[command]
    line = _one_line(argv, capsys, command)
    assert str(target) in line and "not writable" in line, line
    assert not (tmp_path / "runs").exists()


def test_an_old_format_pth_loads_safely(tmp_path):
    """torch's legacy (non-zip) format cannot be memory-mapped, but weights_only reads it all the same."""
    from varlit.models.loading import read_state_dict

    state = {"w": torch.randn(3, 4), "b": torch.arange(4, dtype=torch.float32)}
    old = tmp_path / "old.pth"
    torch.save(state, old, _use_new_zipfile_serialization=False)
    loaded = read_state_dict(old)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    evil = _pickle_file(tmp_path / "evil.pth")  # a legacy-looking pickle is still refused
    from varlit.models.loading import CheckpointError

    with pytest.raises(CheckpointError, match="evil.pth: cannot read checkpoint"):
        read_state_dict(evil)


def test_validate_labels_the_checkpoint_step_and_keeps_hparams_whole(world, tmp_path, capsys):
    run = tmp_path / "runs" / "full"
    shutil.copytree(world["full"], run)
    main(["validate", *_fit(tmp_path, "full", 2, "--trainer.limit_val_batches", "1")[1:]])
    assert (run / "samples" / "step000002.png").is_file()
    assert not (run / "samples" / "step000000.png").exists()
    import csv

    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if any(k.startswith("val/") and r[k] for k in r)]
    assert rows and {int(r["step"]) for r in rows} == {2}
    hparams = (run / "csv" / "hparams.yaml").read_text()
    assert "freeze/source" in hparams and "preset: tiny" in hparams


def test_ctrl_c_saves_and_exits_130(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            _fit(
                tmp_path, "c", 6, "--trainer.callbacks+=tests.helpers.SigintAt", "--trainer.callbacks.step=1"
            )
        )
    assert exc.value.code == 130
    ckpt = torch.load(tmp_path / "runs" / "c" / "checkpoints" / "last.ckpt", weights_only=True)
    assert 1 <= ckpt["global_step"] < 6
    assert "resume with --ckpt_path last" in capsys.readouterr().out
