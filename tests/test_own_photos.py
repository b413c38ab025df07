"""Your own photos on every shipped config: the README's "Your own subject" commands, run as written.

The commands are read from the README itself and run in a temporary working directory that holds
`my_photos/` (so `runs/...` and `my_photos` resolve as they would for a user). Each fit gets two extra
flags that only shorten it (`--trainer.max_steps 2 --trainer.val_check_interval 2`) and `--run.wandb false`
(no offline wandb files to write); the DreamBench config also gets what a CPU test machine without the hub
needs: `--model.preset tiny` (the issue's choice), the CPU, float32 and no DINO/CLIP callback, and its
evaluation the offline stand-ins `tiny-dino` / `tiny-clip` on two prompts. The download is not run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
from pathlib import Path

import pytest

from tests.docs_pages import blocks, page, section, shell_lines
from varlit.cli import main
from varlit.data.datamodule import SubjectDataModule, filename_phrase
from varlit.data.subjects import SubjectError
from varlit.subject_args import replace_config_choices
from varlit.tuning.adapter import read_adapter_meta
from varlit.world.scenes import CONTEXTS

REPO = Path(__file__).resolve().parents[1]
README = page("README.md")
SHORT = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--run.wandb", "false"]
OFFLINE_CPU = [
    "--model.preset",
    "tiny",
    "--trainer.accelerator",
    "cpu",
    "--trainer.precision",
    "32-true",
    "--trainer.callbacks=[]",
    "--data.cache_dir",
    "runs/.cache/tokens",
]


# Commands of the section that are not run here: the download needs the network (its syntax is checked in
# tests/test_docs_commands.py, its plan in tests/test_newcomer.py).
NOT_RUN = ("varlit download",)


def readme_commands() -> list[str]:
    """The `varlit ...` lines of the README's own-photos section (CPU and GPU blocks), comments dropped."""
    commands = []
    for block in blocks(section(README, "Your own subject"), "bash"):
        for _, line in shell_lines(block):
            words = shlex.split(line, comments=True)
            if words and words[0].endswith("varlit"):
                command = " ".join(["varlit", *words[1:]])
                if not command.startswith(NOT_RUN):
                    commands.append(command)
    return commands


OFFLINE_EVAL = [
    "--model.preset",
    "tiny",
    "--eval.dino",
    "tiny-dino",
    "--eval.clip",
    "tiny-clip",
    "--eval.lpips",
    "false",
    "--eval.prompts",
    '["a {} in the snow", "a {} on the beach"]',
]


def _run(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(argv)
    return out.getvalue()


@pytest.fixture(scope="module")
def own_photos_runs(tmp_path_factory):
    """Every README command, in order, from a folder holding `my_photos` (a world subject's photos, no
    captions: what a user's own folder looks like)."""
    work = tmp_path_factory.mktemp("own")
    photos = work / "my_photos"
    photos.mkdir()
    for png in sorted((REPO / "varlit" / "world" / "subject_photos" / "twotone_cup").glob("*.png")):
        shutil.copy(png, photos / png.name)
    outputs = {}
    old = os.getcwd()
    os.chdir(work)
    try:
        for command in readme_commands():
            argv = [
                a.replace("experiments/", f"{REPO}/experiments/")
                for a in shlex.split(command, comments=True)[1:]
            ]
            extra = []
            if argv[0] == "fit":
                extra = SHORT + (OFFLINE_CPU if "dreambench.yaml" in command else [])
            elif argv[0] == "eval":
                extra = ["--eval.seeds=[0]", "--eval.num_class_samples", "2"]
                if "dreambench.yaml" in command:  # offline stand-ins for DINO / CLIP, a few prompts
                    extra += OFFLINE_EVAL
            outputs[command] = _run(argv + extra)
    finally:
        os.chdir(old)
    return work, outputs


def test_the_readme_shows_the_own_photos_path_for_every_shipped_config():
    commands = readme_commands()
    for config in ("world.yaml", "tiny.yaml", "dreambench.yaml"):
        assert any(f"--config experiments/{config} --data.subject_dir my_photos" in c for c in commands)
    # the section comes right after the two set-up commands
    after_setup = README.split("make test   #", 1)[1]
    assert after_setup.split("\n## ", 1)[1].startswith("Your own subject")


def test_world_fit_with_own_photos(own_photos_runs):
    work, outputs = own_photos_runs
    out = next(v for k, v in outputs.items() if k.startswith("varlit fit --config experiments/world.yaml"))
    assert "captions: none; all 5 photos train on 'a photo of a <placeholder> cup'" in out
    assert "backgrounds" in out and "--data.caption_from_filename true" in out
    run = work / "runs" / "world"
    meta = read_adapter_meta(run / "adapter.safetensors")
    assert meta["preset"] == "world" and meta["class_word"] == "cup"
    assert meta["data"]["subject"] is None and meta["data"]["subject_dir"] == "my_photos"
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    rows = [
        dict(zip(header, r.split(","))) for r in (run / "csv" / "metrics.csv").read_text().splitlines()[1:]
    ]
    # validated at the last step, on prompts naming world contexts (the judge reads the context from them)
    assert any(r.get("val/judge_context_acc") for r in rows)


def test_sample_takes_the_base_from_the_adapter(own_photos_runs):
    work, _ = own_photos_runs
    index = json.loads((work / "runs" / "samples" / "samples.json").read_text())
    assert index["preset"] == "world" and len(index["images"]) == 1


def test_world_eval_of_own_photos_uses_the_world_contexts(own_photos_runs):
    work, _ = own_photos_runs
    doc = json.loads((work / "runs" / "world" / "eval" / "metrics.json").read_text())
    (entry,) = doc["subjects"].values()
    prompts = json.dumps(entry)
    for phrase in CONTEXTS.values():  # no captions: every world context is unseen
        assert phrase in prompts
    assert "Eiffel" not in prompts and "cobblestone" not in prompts


@pytest.mark.parametrize("config, preset", [("tiny", "tiny"), ("dreambench", "tiny")])
def test_tiny_and_dreambench_fit_with_own_photos(own_photos_runs, config, preset):
    work, _ = own_photos_runs
    meta = read_adapter_meta(work / "runs" / config / "adapter.safetensors")
    assert meta["preset"] == preset and meta["data"]["subject_dir"] == "my_photos"
    assert meta["class_word"] == "cup"
    if config == "dreambench":  # the config's 2B text encoder and pixel budget went with its preset
        assert meta["hparams"]["text_encoder"] is None


def test_the_gpu_blocks_sample_and_eval_take_the_adapters_base(own_photos_runs):
    """The README's GPU block, shortened to the tiny preset: sample and eval read the base from the adapter."""
    work, _ = own_photos_runs
    index = json.loads((work / "runs" / "dreambench" / "samples" / "samples.json").read_text())
    assert index["preset"] == "tiny" and len(index["images"]) == 1
    doc = json.loads((work / "runs" / "dreambench" / "eval" / "metrics.json").read_text())
    assert len(doc["subjects"]) == 1 and "dino" in doc["overall"]


def test_a_contradicting_flag_is_refused_by_name(own_photos_runs, capsys):
    work, _ = own_photos_runs
    adapter = str(work / "runs" / "world" / "adapter.safetensors")
    with pytest.raises(SystemExit):
        main(["sample", "--adapter", adapter, "--preset", "tiny", "--prompts", '["a cup"]'])
    err = capsys.readouterr().err
    assert "--preset tiny contradicts the adapter" in err and "preset world" in err
    with pytest.raises(SystemExit):
        main(["eval", "--eval.adapters", adapter, "--model.init_seed", "3", "--out", str(work / "e")])
    err = capsys.readouterr().err
    assert "--model.init_seed 3 contradicts the adapter" in err


def test_command_line_subject_replaces_the_configs():
    args = ["--config", "c.yaml", "--data.subject_dir", "me", "--data.class_word", "cup"]
    assert replace_config_choices(args) == [
        *args[:4],
        "--data.subject=null",
        "--data.photo_captions=null",
        *args[4:],
    ]
    # what the command line sets itself is kept; a null choice resets nothing (sweeps pass those)
    kept = ["--data.subject_dir=me", "--data.photo_captions", "c.txt", "--data.subject=null"]
    assert replace_config_choices(kept) == kept
    assert replace_config_choices(["--model.preset", "tiny"]) == [
        "--model.preset",
        "tiny",
        "--model.weights=null",
        "--model.vae_weights=null",
        "--model.text_encoder=null",
        "--data.pn=null",
    ]


def test_captions_from_file_names(tmp_path):
    assert filename_phrase("on_the_beach-2.png") == "on the beach"
    assert filename_phrase("IMG0042.jpg") == ""
    from tests.helpers import make_subject_photos

    folder = make_subject_photos(tmp_path / "mine", n=3)
    (folder / "00.png").rename(folder / "in_the_snow.png")
    dm = SubjectDataModule(subject_dir=str(folder), class_word="toy", caption_from_filename=True)
    dm.setup()
    assert dm.photo_prompts == {"in_the_snow.png": "a photo of <placeholder> toy in the snow"}
    assert dm.caption_report().startswith("captions: 1 of 3 photos captioned from their file names")
    with pytest.raises(ValueError, match="keep one"):
        SubjectDataModule(
            subject_dir=str(folder), class_word="toy", caption_from_filename=True, photo_captions="c.txt"
        )
    missing = SubjectDataModule(subject_dir=str(folder), class_word="toy", photo_captions="c.txt")
    missing.setup()
    with pytest.raises(SubjectError, match="--data.photo_captions null"):
        missing.photo_prompts  # noqa: B018
