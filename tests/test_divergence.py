"""Divergence (issue 15, item 7): the first non-finite loss or gradient stops `varlit fit` with one line (step,
which loss, lr) and no adapter; `varlit sample` refuses non-finite adapters and weights by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.test_run_folder import _fails, _fit
from varlit.cli import main
from varlit.tuning.adapter import read_adapter
from varlit.tuning.divergence import DivergenceError, check_gradients, check_losses


def test_huge_lr_stops_at_the_first_nan_with_one_line_and_no_adapter(tmp_path, capsys):
    line = _fails(_fit(tmp_path, "div", 6, "--model.optim.lr", "1e30"), capsys)
    assert line.startswith("varlit fit: error: training diverged at step ")
    assert "loss is nan" in line or "loss is inf" in line or "gradient" in line
    assert "lr 1e+30" in line
    run = tmp_path / "runs" / "div"
    assert not (run / "adapter.safetensors").exists()
    assert not list(run.glob("adapter*.safetensors"))


def test_a_nan_loss_is_stopped_by_the_loss_check_before_any_backward(tmp_path, capsys):
    """The loss check's own wiring: a NaN instance loss is named as a loss (the gradient check, which would
    catch it one backward later, names a gradient)."""
    poison = ["--trainer.callbacks+=tests.helpers.PoisonTrainable", "--trainer.callbacks.step=1"]
    line = _fails(_fit(tmp_path, "nan", 3, *poison), capsys)
    assert line.startswith("varlit fit: error: training diverged at step 1: the instance loss is nan (lr "), (
        line
    )
    assert not list((tmp_path / "runs" / "nan").glob("adapter*.safetensors"))


def test_checks_name_the_loss_and_the_gradient():
    with pytest.raises(DivergenceError, match=r"at step 9: the prior loss is nan \(lr 1000\)"):
        check_losses(9, {"instance": torch.tensor(0.5), "prior": torch.tensor(float("nan"))}, 1e3)
    check_losses(9, {"instance": torch.tensor(0.5)}, 1e3)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([0.0, float("inf"), 1.0])
    with pytest.raises(DivergenceError, match=r"at step 4: the gradient of the instance \+ prior loss"):
        check_gradients(4, [p], "instance + prior", 0.1)


def _nan_adapter(tmp_path: Path, good: Path) -> Path:
    adapter = read_adapter(good)
    tensors = {f"model.{k}": v.clone() for k, v in adapter.tensors.items()}
    first = sorted(tensors)[0]
    tensors[first][0] = float("nan")
    tensors["subject_embedding.vectors"] = adapter.subject_vectors
    out = tmp_path / "nan.safetensors"
    save_file(tensors, out, metadata={"format": "varlit-adapter/1", "meta": json.dumps(adapter.meta)})
    return out


def test_sample_refuses_non_finite_adapters_and_weights_by_name(tmp_path, capsys):
    main(_fit(tmp_path, "ok", 1))
    good = tmp_path / "runs" / "ok" / "adapter.safetensors"
    bad = _nan_adapter(tmp_path, good)
    argv = ["sample", "--prompts", '["a photo of <placeholder> toy"]', "--out_dir", str(tmp_path / "s")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--adapter", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("varlit sample: error: ") and str(bad) in err and "non-finite" in err

    from varlit.pipeline import Pipeline

    state = {
        k: v.clone()
        for k, v in Pipeline.load("tiny", device="cpu", dtype="float32").model.state_dict().items()
    }
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name].fill_(float("inf"))
    weights = tmp_path / "inf.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, weights)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--weights", str(weights)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("varlit sample: error: ") and str(weights) in err and name in err
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("*.png"))
