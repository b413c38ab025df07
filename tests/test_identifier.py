"""DreamBooth's identifier (`--data.instance_prompt "a photo of sks {class}"`, no learned vectors) and the
planning of the two design-choice sweeps it and the caption choice come with."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from varlit.cli import main
from varlit.data.datamodule import SubjectDataModule
from varlit.data.subjects import SubjectError
from varlit.eval.prompts import make_prompt
from varlit.sweeps.definitions import SWEEPS
from varlit.sweeps.runner import SweepOptions, plan
from varlit.tuning.adapter import read_adapter

REPO = Path(__file__).resolve().parents[1]
WORLD = str(REPO / "experiments" / "world.yaml")


def test_the_identifier_stands_where_the_placeholder_stands():
    dm = SubjectDataModule(
        subject="world:twotone_cup", instance_prompt="a photo of a sks {class}", photo_captions="captions.txt"
    )
    dm.setup()
    assert dm.instance_prompt == "a photo of a sks cup" and dm.identifier == "sks"
    assert set(dm.photo_prompts.values()) >= {"a photo of a sks cup at night"}  # captions name it too
    assert all("sks cup" in p and "<placeholder>" not in p for p in dm.val_prompts)
    assert make_prompt("a photo of a {} in the snow", "cup", identifier="sks").prompt == (
        "a photo of a sks cup in the snow"
    )


def test_identifier_errors_name_the_fix():
    with pytest.raises(ValueError, match="data.instance_template"):
        SubjectDataModule(subject="world:twotone_cup", instance_prompt="a photo of <placeholder> {class}")
    dm = SubjectDataModule(subject="world:twotone_cup", instance_prompt="sks things")
    dm.setup()
    with pytest.raises(SubjectError, match="right before the class word"):
        dm.identifier  # noqa: B018


def test_a_world_fit_with_the_identifier_learns_no_vectors(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(
            [
                "fit",
                "--config",
                WORLD,
                "--data.instance_prompt",
                "a photo of a sks {class}",
                "--run.root",
                str(tmp_path),
                "--run.wandb",
                "false",
                "--data.cache_dir",
                str(tmp_path / "cache"),
                "--trainer.max_steps",
                "2",
            ]
        )
    assert "no learned subject vectors" in out.getvalue()
    adapter = read_adapter(tmp_path / "world" / "adapter.safetensors")
    assert adapter.subject_vectors is None and adapter.tensors
    assert adapter.meta["data"]["identifier"] == "sks"
    assert adapter.meta["data"]["instance_prompt"] == "a photo of a sks cup"


def test_ablate_identifier_plans_learned_against_rare_token_on_every_world_subject(tmp_path):
    opts = SweepOptions(configs=[WORLD], subjects=["all"], seeds=[0, 1, 2], root=str(tmp_path))
    specs = plan(SWEEPS["ablate-identifier"], opts)
    assert len(specs) == 8 * 2 * 3
    rare = [s for s in specs if s.variant.name == "rare-token"]
    assert all("--data.instance_prompt=a photo of a sks {class}" in s.fit_args for s in rare)
    assert all("--model.freeze.subject_embedding=false" in s.fit_args for s in rare)
    learned = [s for s in specs if s.variant.name == "learned"]
    assert all("--model.freeze.subject_embedding=true" in s.fit_args for s in learned)
    assert {s.dir.parent.parent.name for s in specs} == {
        "polka_ball",
        "emblem_box",
        "twotone_cup",
        "smiley_star",
        "candy_ring",
        "tiered_tree",
        "dome_house",
        "banded_fish",
    }


def test_ablate_captions_plans_captions_against_one_prompt_on_every_world_subject(tmp_path):
    opts = SweepOptions(configs=[WORLD], subjects=["all"], seeds=[0, 1, 2], root=str(tmp_path))
    specs = plan(SWEEPS["ablate-captions"], opts)
    assert len(specs) == 8 * 2 * 3
    single = [s for s in specs if s.variant.name == "single-prompt"]
    assert all("--data.photo_captions=null" in s.fit_args for s in single)
    captioned = [s for s in specs if s.variant.name == "captions"]
    assert all("--data.photo_captions=captions.txt" in s.fit_args for s in captioned)
