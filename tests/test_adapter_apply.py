"""Applying subject adapters to a loaded base: strict on unknown or misshaped tensors, and a refused adapter
leaves the pipeline as the plain base model (no half-applied tensors, no stale subject vectors)."""

from __future__ import annotations

import pytest
import torch

from varlit.models.loading import CheckpointError
from varlit.pipeline import Pipeline, apply_adapter_tensors
from varlit.tuning.adapter import save_adapter


@pytest.fixture
def pipe() -> Pipeline:
    return Pipeline.load("tiny", device="cpu", dtype="float32", init_seed=0)


def _state(pipe: Pipeline) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipe.model.state_dict().items()}


def _tuned(pipe: Pipeline, part: str = ".ffn.", seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: v.detach() + 0.1 * torch.randn(v.shape, generator=g)
        for k, v in pipe.model.named_parameters()
        if part in k
    }


def _save(path, tensors, pipe: Pipeline, seed: int = 1):
    vectors = torch.randn(2, pipe.text_encoder.channels, generator=torch.Generator().manual_seed(seed))
    return save_adapter(path, tensors, vectors, {"preset": "tiny", "placeholder": "<placeholder>"})


@pytest.mark.parametrize(
    ("damage", "needle"),
    [("unknown", "unknown tensors: blocks.99.ffn.fc1.weight"), ("shape", "wrong shapes: head.weight (3, 3)")],
)
def test_an_adapter_that_does_not_fit_is_refused_and_changes_nothing(tmp_path, pipe, damage, needle):
    base = _state(pipe)
    good = _save(tmp_path / "good.safetensors", _tuned(pipe), pipe)
    pipe.load_adapter(good)
    assert pipe.subject is not None
    tensors = _tuned(pipe, ".ca.", seed=2)
    if damage == "unknown":
        tensors["blocks.99.ffn.fc1.weight"] = torch.zeros(2, 2)
    else:
        tensors["head.weight"] = torch.zeros(3, 3)
    bad = _save(tmp_path / "bad.safetensors", tensors, pipe, seed=2)
    with pytest.raises(CheckpointError) as err:
        pipe.load_adapter(bad)
    assert "bad.safetensors" in str(err.value) and needle in str(err.value)
    # nothing of the bad adapter got in, and the good one is gone as a whole: the plain base remains
    for k, v in pipe.model.state_dict().items():
        assert torch.equal(v, base[k]), k
    assert pipe.subject is None and not pipe.base_backup


def test_apply_adapter_tensors_is_all_or_nothing(pipe):
    base = _state(pipe)
    tensors = _tuned(pipe)
    tensors["not.a.tensor.of.the.model"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unknown tensors: not\.a\.tensor\.of\.the\.model"):
        apply_adapter_tensors(pipe.model, tensors, "test adapter")
    for k, v in pipe.model.state_dict().items():
        assert torch.equal(v, base[k]), k
